"""Reading and writing videos: metadata probes, frame decoding (clips, or a whole video streamed), clip frame
indices, encoding (``VideoWriter``).

Videos are decoded with TorchCodec (``torchcodec.decoders.VideoDecoder``, exact seek mode, only the frames a
clip needs) and, when TorchCodec cannot be imported or fails on a file, with PyAV. The environment variable
``CRW_VIDEO_BACKEND`` (``torchcodec`` | ``pyav``) pins one backend (tests, debugging).

Frame indices are positions in presentation order, identical for both backends. Frames come upright: a
video whose display matrix says "rotate by 90/180/270 degrees" (phone videos) is decoded rotated by both
backends (TorchCodec does it itself; PyAV's frames are turned here), so that both give the same frames.
"""
import functools
import math
import os
import re
import sys
from fractions import Fraction

import numpy as np
import torch

from crw.utils.errors import DecodeError
from crw.utils.misc import atomic_write

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
def _open_torchcodec(path):
    """A TorchCodec decoder of ``path`` giving [H, W, 3] frames; one FFmpeg thread (workers parallelise)."""
    vd = _torchcodec_decoder()
    if vd is None:
        raise DecodeError('TorchCodec is not available')
    return vd(path, seek_mode='exact', dimension_order='NHWC', num_ffmpeg_threads=1)


def _decode_torchcodec(path, indices):
    return _decode_torchcodec_with(_open_torchcodec(path), indices)


def _decode_torchcodec_with(decoder, indices):
    """Frames ``indices`` of an open TorchCodec decoder: uint8 tensor [n, H, W, 3]."""
    return decoder.get_frames_at([int(i) for i in indices]).data


def display_rotation(matrix):
    """Counter-clockwise rotation in degrees of a display matrix (9 int32: 16.16 fixed point, FFmpeg's
    ``av_display_rotation_get``), or 0.0 when it is degenerate."""
    m = np.asarray(matrix, np.float64)[:9] / 65536.0
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return 0.0
    return -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))


def _pyav_rotation(frame):
    """The display rotation of a decoded PyAV frame (counter-clockwise degrees): ``VideoFrame.rotation`` where
    PyAV has it, else its DISPLAYMATRIX side data."""
    rotation = getattr(frame, 'rotation', None)
    if rotation is not None:
        return float(rotation)
    for side in getattr(frame, 'side_data', ()):
        if 'DISPLAYMATRIX' in str(getattr(side, 'type', '')).upper():
            return display_rotation(np.frombuffer(bytes(side), np.int32))
    return 0.0


def upright(frame, rotation):
    """[H, W, C] frame turned counter-clockwise by ``rotation`` degrees rounded to a quarter turn."""
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


def _pyav_rgb(frame):
    """A decoded PyAV frame -> uint8 [H, W, 3] RGB, upright (its display rotation applied)."""
    return upright(frame.to_ndarray(format='rgb24'), _pyav_rotation(frame))


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
                arr = _pyav_rgb(frame)
                for k in wanted[i]:
                    out[k] = arr
            if i >= last:
                break
    if any(o is None for o in out):
        raise DecodeError(f'frame {last} requested but the video has fewer decodable frames')
    return torch.from_numpy(np.stack(out))


def _with_fallback(path, attempt):
    """``attempt(backend)`` with TorchCodec first, then PyAV if TorchCodec is unavailable or fails on ``path``
    (the failure is remembered for the file and told once). Returns what the first working backend gave;
    raises ``DecodeError`` (every backend's error) if none works."""
    errors = []
    backends = _backends()
    for backend in backends:
        if backend == 'torchcodec' and path in _TC_FAILED_FILES and len(backends) > 1:
            continue
        try:
            result = attempt(backend)
        except Exception as e:
            errors.append(f'{backend}: {_short(e)}')
            if backend == 'torchcodec':
                _TC_FAILED_FILES.add(path)
            continue
        if errors:  # TorchCodec failed on this file, PyAV did not: say so once
            warn(f'TorchCodec failed on {path} ({errors[0]}); decoding it with PyAV')
        return result
    raise DecodeError('; '.join(errors))


def decode_frames(path, indices):
    """Frames ``indices`` (presentation order, 0-based) of ``path`` as a uint8 tensor [n, H, W, 3] (RGB).

    TorchCodec first; PyAV if TorchCodec is unavailable or fails on this file (told once per file).
    Raises ``DecodeError`` if neither works."""
    if len(indices) == 0:
        raise ValueError('no frame indices')
    return _with_fallback(path, lambda backend: _decode_torchcodec(path, indices) if backend == 'torchcodec'
                          else _decode_pyav(path, indices))


def _iter_torchcodec(path, start):
    dec = _open_torchcodec(path)
    first = dec[start] if start < len(dec) else None    # fails here, before anything is yielded, if it fails
    if first is None:
        return
    yield start, first.numpy()
    for i in range(start + 1, len(dec)):              # in order: decodes on, no seek
        yield i, dec[i].numpy()


def _iter_pyav(path, start):
    import av
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i >= start:
                yield i, _pyav_rgb(frame)


def iter_frames(path, start=0):
    """Yield (index, uint8 [H, W, 3] RGB frame) for the frames of ``path`` from ``start`` on, in presentation
    order, decoding as it goes (one frame in memory at a time, whatever the video's length). TorchCodec first,
    PyAV if TorchCodec is unavailable or cannot open the file; a failure after the first frame raises
    ``DecodeError``."""
    errors = []
    for backend in _backends():
        it = _iter_torchcodec(path, start) if backend == 'torchcodec' else _iter_pyav(path, start)
        try:
            first = next(it, None)
        except Exception as e:
            errors.append(f'{backend}: {_short(e)}')
            continue
        if first is None:
            return
        yield first
        try:
            yield from it
        except Exception as e:
            raise DecodeError(f'{path}: decoding stopped after frame {first[0]} ({backend}: {_short(e)})') from e
        return
    raise DecodeError(f'{path}: cannot decode ({"; ".join(errors)})')


REVERSE_CHUNK = 16   # frames decoded at a time by iter_frames_reversed


def iter_frames_reversed(path, last, chunk=REVERSE_CHUNK):
    """Yield (index, uint8 [H, W, 3] RGB frame) for frames ``last``, last-1, ..., 0 of ``path``: decoded forward
    ``chunk`` frames at a time (at most that many in memory), each chunk yielded in reverse. TorchCodec seeks
    to each chunk (one decoder, so each keyframe interval is decoded about once more per chunk it spans); the
    PyAV fallback decodes from the start for every chunk (about last**2 / (2 * chunk) frames in all). As for
    ``decode_frames``, PyAV takes over when TorchCodec is unavailable or fails on the first chunk (told once per
    file); a failure after the first chunk raises ``DecodeError``."""
    if last < 0:
        return

    def indices(b):
        return list(range(max(0, b - chunk), b))

    def first_chunk(backend):
        if backend == 'torchcodec':
            decode = functools.partial(_decode_torchcodec_with, _open_torchcodec(path))
        else:
            decode = functools.partial(_decode_pyav, path)
        return decode, decode(indices(last + 1))

    try:
        decode, frames = _with_fallback(path, first_chunk)
    except DecodeError as e:
        raise DecodeError(f'{path}: cannot decode ({e})') from None
    for b in range(last + 1, 0, -chunk):
        ix = indices(b)
        if frames is None:
            try:
                frames = decode(ix)
            except Exception as e:
                raise DecodeError(f'{path}: decoding frames {ix[0]}-{ix[-1]} failed ({_short(e)})') from e
        for i, frame in zip(reversed(ix), reversed(list(frames))):
            yield i, np.asarray(frame)
        frames = None


# ---------------------------------------------------------------------------------------------- writing
class VideoWriter:
    """Encode RGB frames into a video file with PyAV, one at a time: H.264 (libx264, crf 18) or MPEG-4 where
    the PyAV build has no x264. yuv420p needs even sides: an odd height or width is padded by repeating the
    last row or column. The file is written under a temporary name and appears only when ``close()``
    succeeds; ``abort()`` (or an exception inside ``with``) removes it."""

    def __init__(self, path, fps=24):
        import av
        self._file_ctx = atomic_write(path)
        self._file = self._file_ctx.__enter__()
        fmt = {'.mkv': 'matroska', '.webm': 'webm', '.avi': 'avi', '.mov': 'mov'}.get(
            os.path.splitext(path)[1].lower(), 'mp4')
        self.container = av.open(self._file, mode='w', format=fmt)
        rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else 24
        try:
            self.stream = self.container.add_stream('libx264', rate=rate)
            self.stream.options = {'crf': '18', 'preset': 'ultrafast'}
        except Exception:  # PyAV builds without x264
            self.stream = self.container.add_stream('mpeg4', rate=rate)
        self.stream.pix_fmt = 'yuv420p'
        self._av = av
        self.size = None

    def write(self, frame):
        """frame: uint8 [H, W, 3] RGB; every frame the size of the first."""
        frame = np.asarray(frame)
        if self.size is None:
            self.size = frame.shape[:2]
            self.stream.height = frame.shape[0] + frame.shape[0] % 2
            self.stream.width = frame.shape[1] + frame.shape[1] % 2
        if frame.shape[:2] != self.size:
            raise ValueError(f'frame of size {frame.shape[:2]}, the video is {self.size}')
        if frame.shape[0] % 2 or frame.shape[1] % 2:
            frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode='edge')
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def close(self):
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
        except BaseException as e:
            self.abort(e)
            raise
        self._file_ctx.__exit__(None, None, None)

    def abort(self, error=None):
        """Drop the partial file."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the file is removed anyway
            pass
        error = error or RuntimeError('aborted')
        self._file_ctx.__exit__(type(error), error, None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)
        return False


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
