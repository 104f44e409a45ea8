"""Label propagation through one video, frame by frame, with annotations on any frames: what ``test.py`` uses
for both ``--filelist`` and ``--video``, and the Python API for your own code.

    from propagation import Protocol, VideoPropagator, load_encoder, propagate
    encoder = load_encoder('pretrained.pth', 'cpu')
    protocol = Protocol(temperature=0.05)
    for t, ids in propagate(encoder, frames, 'first.png', protocol):     # a generator: streams any length
        ...                                   # ids [H, W] uint8 label ids of frame t, at the frame's size

    vp = VideoPropagator(encoder, protocol)
    ids = vp.step(frame0, mask='first.png')   # an annotated frame: returns its mask
    ids = vp.step(frame1)                     # propagated

Frames: uint8 [H, W, 3] RGB arrays or tensors, or image paths. Masks: label ids [H, W] (integer array or
tensor) or a label image path (palette PNG, or greyscale/RGB with a few flat colours; see
``data.vos.AnnotationReader``), at the frame's size (another size with the same aspect ratio is resized
with nearest neighbour, with one warning).

Annotations after the first (``masks={0: ..., 40: ...}``, or ``step(frame, mask=...)`` later on):
propagation starts at the first annotated frame (frame 0 of the protocol: long-term memory, padding of the
short-term context); frames before it give None. In a later annotation, 0 means "not annotated here" and
every other id it contains is taken as given from that frame on, whether it is new or already tracked:

* a new id gets a new label channel (zero in every earlier frame);
* on that frame, the pixels the annotation gives an id take that id; the other pixels keep the prediction
  with the annotated ids removed (an annotated object is exactly where the annotation says, not also where
  it was predicted), renormalised (background where nothing else is left);
* what earlier frames in the context (frame 0 included) said about the annotated ids is withdrawn: their
  soft labels for those ids become 0, so those nodes no longer vote for them. An annotated id is thus
  propagated from its latest annotation only, exactly as an object first annotated on that frame would be;
* the frame's corrected soft labels (at the feature map: the annotation's one-hot brought down bilinearly,
  as for the first frame, plus the remaining prediction weighted by the part of each cell the annotation
  leaves uncovered) replace its predicted labels in the context. Ids the annotation does not mention go on
  as predicted.

Shapes: features [C, h, w] with h, w = ceil(H'/8), ceil(W'/8) for frames propagated at H' x W'.
"""
import os

import numpy as np
import torch

from data.images import davis_palette, read_image, resize_nearest
from data.outputs import SequenceWriter
from data.user_video import UserVideo, check_masks, mask_files
from data.vos import AnnotationReader, downsample_labels, fit_mask, one_hot, prepare_frame, processing_size
from propagation.api import encode_frames, make_propagator, soft_to_index
from propagation.protocol import Protocol
from utils.errors import CRWError

FEATURE_BATCH = 4   # frames per encoder call


def as_frame(frame):
    """A frame as uint8 [H, W, 3] numpy (RGB): from an array, a tensor or an image path."""
    if isinstance(frame, (str, bytes)) or hasattr(frame, '__fspath__'):
        return read_image(frame)
    if torch.is_tensor(frame):
        frame = frame.cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise CRWError(f'a frame must be uint8 [H, W, 3] RGB, got {frame.dtype} {list(frame.shape)}')
    return frame


class VideoPropagator:
    """Propagates labels through one video, one frame (or a batch of consecutive frames) at a time.

    encoder: from ``load_encoder``; protocol: ``Protocol`` (default: the release's test.py defaults);
    device: where to compute (default: the encoder's). crop_size / max_side: the size frames are propagated
    at (``data.vos.processing_size``: S x S for crop_size S > 0, else the frame's own size, shrunk so that
    its longer side is at most max_side); masks are returned at each frame's own size. l2: L2-normalise the
    features; norm_mask: min-max normalise the soft maps before the argmax (``--norm_mask``); reference: the
    release's algorithm (``--dense``) instead of the windowed one. ``note``: where one-line notes and warnings
    go (default stderr).

    After the first mask: ``values`` [K] are the label ids in channel order and ``palette`` [256, 3] the
    colours to write them with (the first mask file's own palette, else the DAVIS palette).
    """

    def __init__(self, encoder, protocol=None, device=None, *, crop_size=-1, max_side=None, l2=True,
                 norm_mask=False, reference=False, note=None, **windowed_opts):
        self.encoder = encoder
        self.protocol = protocol or Protocol()
        self.device = torch.device(device) if device is not None else next(encoder.parameters()).device
        self.crop_size, self.max_side = crop_size, max_side
        self.l2, self.norm_mask, self.reference, self.windowed_opts = l2, norm_mask, reference, windowed_opts
        self.reader = AnnotationReader(note)
        self.note = self.reader.note
        self.values = None
        self.prop = None
        self.t = -1          # index of the last frame seen
        self.start = None    # index of the first annotated frame
        self.last_features = None   # features [B', C, h, w] of the frames the last step_batch encoded
        self._warned_size = False

    @property
    def palette(self):
        return self.reader.palette if self.reader.palette is not None else davis_palette()

    @property
    def started(self):
        return self.prop is not None

    # -- masks ------------------------------------------------------------------------------------------
    def read_mask(self, mask, size=None):
        """Label ids [H, W] int64 of a mask (ids or a label image path), fitted to ``size`` if given."""
        what = 'the mask'
        if isinstance(mask, (str, bytes)) or hasattr(mask, '__fspath__'):
            what = str(mask)
            mask = self.reader.read(mask)
        elif torch.is_tensor(mask):
            mask = mask.cpu().numpy()
        ids = np.asarray(mask)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise CRWError(f'{what}: a mask must be integer label ids [H, W], got {ids.dtype} {list(ids.shape)}')
        ids = ids.astype(np.int64, copy=False)
        if size is not None:
            ids = fit_mask(ids, size, what, None if self._warned_size else self._warn_size)
        return ids

    def _warn_size(self, message):
        self._warned_size = True
        self.note(f'warning: {message}')

    # -- frames -----------------------------------------------------------------------------------------
    def step(self, frame, mask=None):
        """One frame (uint8 [H, W, 3] array/tensor or image path) and optionally its mask -> label ids [H, W]
        uint8 at the frame's size; None for a frame before the first mask."""
        if mask is None and not self.started:
            return self.skip()
        img = as_frame(frame)
        size = img.shape[:2]
        mask = None if mask is None else self.read_mask(mask, size)
        x = prepare_frame(img, processing_size(size, self.crop_size, self.max_side))
        return self.step_batch(x[None], [mask], size)[0]

    def skip(self):
        """Count a frame before the first mask (nothing to propagate yet); returns None."""
        if self.started:
            raise ValueError('skip() is for frames before the first mask')
        self.t += 1

    def step_batch(self, imgs, masks, out_size):
        """Consecutive prepared frames ``imgs`` [B, 3, H', W'] (``data.vos.prepare_frame``), their masks (B
        entries: None, or label ids / paths, resized with nearest neighbour to out_size if needed) and the size
        (H, W) to return label ids at -> list of B uint8 [H, W] arrays (None before the first mask). The
        frames are encoded in one call."""
        if len(masks) != len(imgs):
            raise ValueError(f'{len(imgs)} frames but {len(masks)} masks')
        skip = 0
        if not self.started:
            skip = next((i for i, m in enumerate(masks) if m is not None), len(masks))
        out = [None] * skip
        self.t += skip
        if skip == len(masks):
            return out
        feats = encode_frames(self.encoder, imgs[skip:].to(self.device, non_blocking=True), l2=self.l2)
        self.last_features = feats
        for b in range(skip, len(masks)):
            mask = values = None
            if masks[b] is not None:
                mask = self.read_mask(masks[b])
                values = np.unique(mask)     # before resizing: an object too small to survive keeps its id
                mask = resize_nearest(mask, out_size)
            out.append(self._advance(feats[b - skip], mask, values, tuple(out_size), tuple(imgs.shape[-2:])))
        return out

    def _advance(self, feat, mask, values, out_size, proc_size):
        """One encoded frame feat [C, h, w] (and its mask: ids at out_size, the ids of the mask as given) ->
        label ids at out_size."""
        self.t += 1
        if self.prop is None:
            ann = resize_nearest(mask, proc_size)
            if values.min() < 0 or values.max() > 255:
                raise CRWError('label ids must lie in 0..255 to be written as 8-bit PNGs')
            self.values = values
            first = downsample_labels(one_hot(np.searchsorted(values, ann), len(values)), feat.shape[-2:])
            self.prop = make_propagator(feat, first.to(self.device), self.protocol, reference=self.reference,
                                        **self.windowed_opts)
            self.start = self.t
            return mask.astype(np.uint8)
        soft = self.prop.step(feat)
        if mask is None:
            index = soft_to_index(soft, out_size, self.norm_mask)
            return self.values[index.cpu().numpy()].astype(np.uint8)
        return self._annotate(soft, mask, values, out_size, proc_size)

    def _annotate(self, soft, mask, values, out_size, proc_size):
        """A later annotated frame: merge ``mask`` (ids at out_size) with the prediction ``soft`` [h, w, K]
        (see the module's docstring), correct the propagator's labels, return the frame's label ids."""
        ann = resize_nearest(mask, proc_size)
        given = values
        if given.min() < 0 or given.max() > 255:
            raise CRWError('label ids must lie in 0..255 to be written as 8-bit PNGs')
        new = [int(v) for v in given if v != 0 and v not in self.values]
        if new:
            self.values = np.concatenate([self.values, np.array(new, self.values.dtype)])
            self.prop.add_labels(len(new))
            soft = torch.cat([soft, soft.new_zeros(*soft.shape[:2], len(new))], dim=-1)
        K = len(self.values)
        channel = {int(v): i for i, v in enumerate(self.values)}
        background = channel.get(0, 0)
        annotated = [channel[int(v)] for v in given if v != 0]
        # prediction without the annotated objects, renormalised; background where nothing is left
        rest = soft.clone()
        rest[..., annotated] = 0
        mass = rest.sum(-1, keepdim=True)
        fallback = torch.zeros_like(rest)
        fallback[..., background] = 1
        rest = torch.where(mass > 1e-6, rest / mass.clamp_min(1e-12), fallback)
        # the annotation's one-hot at the feature map (its 0 pixels, channel K, carry no label) and the part
        # of each cell it leaves to the prediction
        table = np.full(256, K, np.int64)
        for v in given:
            if v != 0:
                table[int(v)] = channel[int(v)]
        given_onehot = downsample_labels(one_hot(table[ann], K + 1), soft.shape[:2])[..., :K].to(soft)
        cover = given_onehot.sum(-1, keepdim=True)
        self.prop.drop_labels(annotated)
        self.prop.set_labels(given_onehot + (1 - cover) * rest)
        ids = self.values[soft_to_index(rest, out_size, self.norm_mask).cpu().numpy()].astype(np.uint8)
        annotated_pixels = mask != 0
        ids[annotated_pixels] = mask[annotated_pixels]
        return ids


def propagate(encoder, frames, masks, protocol=None, device=None, batch_size=FEATURE_BATCH, **options):
    """Propagate masks through ``frames``, streaming: a generator of (t, label ids [H, W] uint8) for every frame
    from the first annotated one on (earlier frames are counted, not read).

    frames: an iterable of frames (uint8 [H, W, 3] RGB arrays/tensors or image paths), consumed lazily;
    masks: the mask of frame 0, or {t: mask} for annotations on any frames (label ids or label image paths);
    options: those of ``VideoPropagator`` (crop_size, max_side, l2, norm_mask, reference, note, ...).
    Frames are encoded ``batch_size`` at a time (test.py's batching), so at most that many are held."""
    vp = VideoPropagator(encoder, protocol, device, **options)
    masks = dict(masks) if isinstance(masks, dict) else {0: masks}
    if not masks:
        raise CRWError('no mask: give the first frame\'s mask, or {frame index: mask}')
    batch, ts, batch_masks, size = [], [], [], None

    def flush():
        out = vp.step_batch(torch.stack(batch), batch_masks, size)
        done = [(t, ids) for t, ids in zip(ts, out) if ids is not None]
        batch.clear(), ts.clear(), batch_masks.clear()
        return done

    first = min(masks)
    for t, frame in enumerate(frames):
        if t < first:
            vp.skip()
            continue
        img = as_frame(frame)
        if size is not None and img.shape[:2] != size:
            raise CRWError(f'frame {t} is {img.shape[1]}x{img.shape[0]}, the first one {size[1]}x{size[0]}; all '
                           'frames of a video must have one size')
        size = img.shape[:2]
        mask = masks.get(t)
        batch_masks.append(None if mask is None else vp.read_mask(mask, size))
        batch.append(prepare_frame(img, processing_size(size, vp.crop_size, vp.max_side)))
        ts.append(t)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
    missing = sorted(t for t in masks if t > vp.t)
    if missing:
        raise CRWError(f'masks given for frames {missing[:5]} but the video has {vp.t + 1} frames')


def propagate_user_video(encoder, video_path, mask_path, save_path, protocol=None, device=None, *, crop_size=-1,
                         max_side=None, l2=True, norm_mask=False, reference=False, save_blend=False, workers=1,
                         progress=None):
    """``test.py --video``: propagate ``mask_path`` (one label image: frame 0's; or a folder of them, named like
    their frames) through ``video_path`` (a video file or a folder of frames) and write
    ``{save_path}/<video>/<frame>.png``, ``{save_path}/<video>_overlay.mp4`` and, with save_blend,
    ``{save_path}/<video>_blend/<frame>.jpg`` (``data.outputs.SequenceWriter``). Every input is checked before
    anything is written. Frames are decoded as they are needed (``workers`` processes; one for a video file)
    and encoded in batches of FEATURE_BATCH. ``progress``: a tqdm-like bar (reset to the number of frames).
    Returns (frames written, first annotated frame's name)."""
    video = UserVideo(video_path)
    files = mask_files(mask_path, video)
    palette = check_masks(files, video.size)
    vp = VideoPropagator(encoder, protocol, device, crop_size=crop_size, max_side=max_side, l2=l2,
                         norm_mask=norm_mask, reference=reference)
    start = min(files)
    if start > 0:
        vp.note(f'{mask_path}: the first annotated frame is {video.frame_names[start]}; the {start} frame(s) before '
                'it get no output')
    proc_size = processing_size(video.size, crop_size, max_side)
    dataset = video.dataset(proc_size, start)
    workers = max(0, int(workers))
    if isinstance(dataset, torch.utils.data.IterableDataset):
        workers = min(workers, 1)     # one decoder streams the file; more would decode it twice
    loader = torch.utils.data.DataLoader(dataset, batch_size=FEATURE_BATCH, shuffle=False, num_workers=workers,
                                         pin_memory=vp.device.type == 'cuda')
    os.makedirs(save_path, exist_ok=True)
    out = SequenceWriter(save_path, video.name, palette, video.fps, save_blend)
    if progress is not None:
        progress.reset(total=len(video) - start)
    try:
        for imgs, frames, ts in loader:
            ts = ts.tolist()
            masks = [vp.read_mask(files[t], video.size) if t in files else None for t in ts]
            for t, ids, frame in zip(ts, vp.step_batch(imgs, masks, video.size), frames):
                out.write(video.frame_names[t], ids, frame.numpy())
            if progress is not None:
                progress.update(len(ts))
    except BaseException as e:
        out.abort(e)
        raise
    out.close()
    return out.frames, video.frame_names[start]
