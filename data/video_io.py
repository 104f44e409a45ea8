"""Reading videos and frame folders: metadata probes, frame decoding, clip frame indices.

Videos are decoded with TorchCodec (``torchcodec.decoders.VideoDecoder``, exact seek mode, only the frames a
clip needs) and, when TorchCodec cannot be imported or fails on a file, with PyAV. The environment variable
``CRW_VIDEO_BACKEND`` (``torchcodec`` | ``pyav``) pins one backend (tests, debugging).

Frame indices are positions in presentation order, identical for both backends.
"""
import math
import os
import re
import sys

import numpy as np
import torch

from utils.errors import DecodeError

VIDEO_EXTENSIONS = ('.mp4', '.mkv', '.webm', '.avi', '.mov')

_TORCHCODEC = None          # cached result of the import attempt: the VideoDecoder class or False
_TC_FAILED_FILES = set()    # files TorchCodec failed on in this process (told once, then PyAV directly)


def warn(message):
    """One-line warning on stderr. Not ``warnings.warn``: the release's README runs ``python -W ignore``,
    which would hide a skipped file."""
    print(f'[data] warning: {message}', file=sys.stderr, flush=True)


def _torchcodec_decoder():
    """The TorchCodec ``VideoDecoder`` class, or ``None`` if TorchCodec (or FFmpeg for it) is unavailable."""
    global _TORCHCODEC
    if _TORCHCODEC is None:
        try:
            from torchcodec.decoders import VideoDecoder
            _TORCHCODEC = VideoDecoder
        except Exception as e:  # ImportError, or FFmpeg shared libraries missing (RuntimeError/OSError)
            warn(f'TorchCodec unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); '
                 'decoding videos with PyAV')
            _TORCHCODEC = False
    return _TORCHCODEC or None


def _backends():
    forced = os.environ.get('CRW_VIDEO_BACKEND', '').strip().lower()
    if forced == 'pyav':
        return ('pyav',)
    if forced == 'torchcodec':
        return ('torchcodec',)
    if forced:
        raise ValueError(f'CRW_VIDEO_BACKEND={forced!r}: use torchcodec or pyav')
    return ('torchcodec', 'pyav') if _torchcodec_decoder() is not None else ('pyav',)


_CPP_LOCATION = re.compile(r'\S+\.(?:cpp|h|c):\d+,?\s*')


def _short(e, limit=160):
    """One short line for an exception (first line, C++ source locations dropped)."""
    lines = str(e).strip().splitlines()
    text = _CPP_LOCATION.sub('', lines[0]) if lines else ''
    text = text[:limit] + ('...' if len(text) > limit else '')
    return text if isinstance(e, DecodeError) else f'{type(e).__name__}: {text}'


# ---------------------------------------------------------------------------------------------- probing
def _probe_torchcodec(path):
    vd = _torchcodec_decoder()
    if vd is None:
        raise DecodeError('TorchCodec is not available')
    dec = vd(path, seek_mode='exact')
    md = dec.metadata
    n = int(md.num_frames or 0)
    fps = md.average_fps_from_header or md.average_fps
    if n > 0:
        dec.get_frame_at(0)  # the stream must actually decode
    return n, float(fps) if fps else 0.0


def _probe_pyav(path):
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        n = 0
        first_decoded = False
        for packet in container.demux(stream):
            if packet.size == 0:  # flush packet
                continue
            n += 1
            if not first_decoded:
                for _ in packet.decode():
                    first_decoded = True
        if n > 0 and not first_decoded:
            # decoders with delay: flush to see whether anything comes out at all
            for frame in stream.decode(None):
                first_decoded = True
                break
        if n > 0 and not first_decoded:
            raise DecodeError('no frame could be decoded')
    return n, fps


def probe_video(path):
    """``(num_frames, fps)`` of the first video stream of ``path`` (frames counted by a demux scan, fps from
    the stream header, as torchvision's metadata did). Raises ``DecodeError`` if no backend can read it or no
    frame decodes."""
    errors = []
    for backend in _backends():
        try:
            n, fps = _probe_torchcodec(path) if backend == 'torchcodec' else _probe_pyav(path)
            if n <= 0:
                raise DecodeError('no video frames')
            return n, fps
        except Exception as e:
            errors.append(f'{backend}: {_short(e)}')
    raise DecodeError('; '.join(errors))


# ---------------------------------------------------------------------------------------------- decoding
def _decode_torchcodec(path, indices):
    vd = _torchcodec_decoder()
    if vd is None:
        raise DecodeError('TorchCodec is not available')
    dec = vd(path, seek_mode='exact', dimension_order='NHWC', num_ffmpeg_threads=1)
    return dec.get_frames_at([int(i) for i in indices]).data


def _decode_pyav(path, indices):
    import av
    wanted = {}
    for k, i in enumerate(indices):
        wanted.setdefault(int(i), []).append(k)
    last = max(wanted)
    out = [None] * len(indices)
    with av.open(path) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                arr = frame.to_ndarray(format='rgb24')
                for k in wanted[i]:
                    out[k] = arr
            if i >= last:
                break
    if any(o is None for o in out):
        raise DecodeError(f'frame {last} requested but the video has fewer decodable frames')
    return torch.from_numpy(np.stack(out))


def decode_frames(path, indices):
    """Frames ``indices`` (presentation order, 0-based) of ``path`` as a uint8 tensor [n, H, W, 3] (RGB).

    TorchCodec first; PyAV if TorchCodec is unavailable or fails on this file (told once per file).
    Raises ``DecodeError`` if neither works."""
    if len(indices) == 0:
        raise ValueError('no frame indices')
    errors = []
    backends = _backends()
    for backend in backends:
        if backend == 'torchcodec' and path in _TC_FAILED_FILES and len(backends) > 1:
            continue
        try:
            if backend == 'torchcodec':
                return _decode_torchcodec(path, indices)
            frames = _decode_pyav(path, indices)
        except Exception as e:
            errors.append(f'{backend}: {_short(e)}')
            if backend == 'torchcodec':
                _TC_FAILED_FILES.add(path)
            continue
        if errors:  # TorchCodec failed on this file, PyAV did not: say so once
            warn(f'TorchCodec failed on {path} ({errors[0]}); decoding it with PyAV')
        return frames
    raise DecodeError('; '.join(errors))


# ---------------------------------------------------------------------------------------------- resampling
def resampled_frame_indices(num_frames, fps, target_fps):
    """Indices of the frames kept when a ``num_frames``-frame video at ``fps`` is resampled to ``target_fps``.

    Same rule as torchvision's ``VideoClips`` (which the release used): with an integer ratio r = fps/target
    every r-th frame is kept (ceil(num_frames / r) frames); otherwise floor(num_frames · target / fps) frames
    at floor(k · r), computed in float32 like torchvision. Unknown fps (0/None) keeps every frame."""
    if not fps or not target_fps or fps <= 0:
        return np.arange(num_frames, dtype=np.int64)
    step = float(fps) / float(target_fps)
    if step.is_integer():
        return np.arange(0, num_frames, int(step), dtype=np.int64)
    total = int(math.floor(num_frames * float(target_fps) / float(fps)))
    return torch.floor(torch.arange(total, dtype=torch.float32) * step).to(torch.int64).numpy()


def num_resampled_frames(num_frames, fps, target_fps):
    """``len(resampled_frame_indices(...))`` without building it (vectorised over numpy arrays)."""
    num_frames = np.asarray(num_frames, dtype=np.int64)
    fps = np.asarray(fps, dtype=np.float64)
    out = num_frames.copy()
    if not target_fps:
        return out
    known = fps > 0
    step = np.where(known, fps / float(target_fps), 1.0)
    integer = known & (step == np.floor(step))
    istep = np.maximum(np.floor(step), 1).astype(np.int64)
    out = np.where(integer, -(-num_frames // istep), out)
    frac = known & ~integer
    with np.errstate(divide='ignore', invalid='ignore'):
        total = np.floor(num_frames * float(target_fps) / np.where(known, fps, 1.0)).astype(np.int64)
    return np.where(frac, total, out)
