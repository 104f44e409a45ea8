"""The propagation loop: ``VideoPropagator`` carries labels through one video, frame by frame; every path
(test.py's DAVIS, VIP, JHMDB and --video runs, and ``propagate`` for your own code) runs it.

    from crw.propagation import VideoPropagator, load_encoder, propagate
    encoder = load_encoder('pretrained.pth', 'cpu')
    for t, ids in propagate(encoder, frames, 'first.png'):   # streams any length; README protocol, <= 854 px
        ...                                   # ids [H, W] uint8 label ids of frame t, at the frame's size

Frames: uint8 [H, W, 3] RGB arrays or tensors, or image paths; masks: label ids [H, W] or label image paths
(``data.labels.MaskReader``), on any frames (``{t: mask}``): propagation starts at the first one, and a later
one corrects the ids it contains (see ``VideoPropagator._annotate``). ``VideoPropagator.run`` feeds each
``PropagatedFrame`` (ids, soft maps, features) to sinks (``data.inference.outputs``). Shapes: features
[C, h, w] with h, w = ceil(H'/8), ceil(W'/8) for frames propagated at H' x W'.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from crw.data.inference.frames import DEFAULT_MAX_SIDE, as_frame, prepare_frame, processing_size
from crw.data.labels import MaskReader, downsample_labels, object_masks, one_hot, resize_nearest, soft_labels
from crw.propagation.encoder import encode_frames
from crw.propagation.protocol import Protocol, min_max_normalize
from crw.propagation.reference import ReferencePropagator
from crw.propagation.windowed import WindowedPropagator
from crw.utils.errors import CRWError


def feature_batch(device):
    """Frames per encoder call: 4 on a GPU; 1 on the CPU, where a 480p frame alone already fills the cores
    (measured: as fast per frame, and 160 MB less peak memory than 4)."""
    return 4 if torch.device(device).type == 'cuda' else 1


def make_propagator(first_feat, first_labels, protocol, reference=False, **windowed_opts):
    """The windowed propagator (default) or the release's reference one (``reference=True``), on
    first_feat's device and dtype. ``windowed_opts``: tile, mode, budget_bytes (see WindowedPropagator)."""
    first_labels = first_labels.to(first_feat.device, first_feat.dtype)
    if reference:
        return ReferencePropagator(first_feat, first_labels, protocol, budget_bytes=windowed_opts.get('budget_bytes'))
    return WindowedPropagator(first_feat, first_labels, protocol, **windowed_opts)


def soft_to_index(soft, size, norm_mask=False):
    """Soft map [h, w, K] -> label index map [H, W] (argmax after bilinear upsampling), on soft's device."""
    if norm_mask:
        soft = min_max_normalize(soft)
    x = soft.permute(2, 0, 1)[None]
    x = F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)
    return torch.max(x[0], 0).indices   # argmax(0)'s result (first maximum) at a tenth of its cost on the CPU


@dataclass(frozen=True)
class PropagationOptions:
    """How test.py propagates, from its flags (``from_args``, built once): the protocol, the size frames are
    propagated at (--cropSize, --max-side), --no-l2, --norm_mask and --dense."""
    protocol: Protocol = field(default_factory=Protocol)
    crop_size: int = -1
    max_side: Optional[int] = DEFAULT_MAX_SIDE
    l2: bool = True
    norm_mask: bool = False
    reference: bool = False

    @classmethod
    def from_args(cls, args):
        """From test.py's namespace; a protocol value out of range raises CRWError (``Protocol``)."""
        return cls(Protocol.from_args(args), crop_size=args.cropSize, max_side=args.max_side, l2=not args.no_l2,
                   norm_mask=args.norm_mask, reference=args.dense)

    def propagator(self, encoder, device=None, note=None, **windowed_opts):
        return VideoPropagator(encoder, self.protocol, device, crop_size=self.crop_size, max_side=self.max_side,
                               l2=self.l2, norm_mask=self.norm_mask, reference=self.reference, note=note,
                               **windowed_opts)


@dataclass
class PropagatedFrame:
    """One frame's result, what sinks receive."""
    t: int                          # the frame's index, as the batches numbered it
    image: np.ndarray               # [H, W, 3] uint8: the frame as the batches gave it
    ids: Optional[np.ndarray]       # [H', W'] uint8 label ids at the output size (None: started from soft labels)
    soft: torch.Tensor              # [h, w, K] soft labels at the feature map, as later frames' context sees them
    features: torch.Tensor          # [C, h, w]
    labels: Optional[np.ndarray] = None   # [K] the label id of each soft channel (None: started from soft labels)
    annotated: bool = False         # a mask was given for this frame: ``ids`` is that mask, not an argmax


class VideoPropagator:
    """Propagates labels through one video, one frame (or a batch of consecutive frames) at a time.

    encoder: from ``load_encoder``; protocol: ``Protocol`` (default: the README's protocol, test.py --video's);
    device: where to compute (default: the encoder's). crop_size / max_side: the size frames are propagated
    at (``data.inference.frames.processing_size``; default: the frame's own, at most DEFAULT_MAX_SIDE = 854
    pixels on the longer side, as test.py --video; max_side=None: no limit); l2: L2-normalise the features;
    norm_mask: min-max normalise the soft maps before the argmax (``--norm_mask``); reference: the release's
    algorithm (``--dense``) instead of the windowed one; note: where one-line notes and warnings go (default stderr).
    After the first mask: ``values`` [K] are the label ids in channel order, ``palette`` [256, 3] the colours
    to write them with (the first mask file's own, else the DAVIS palette), ``start`` the first annotated
    frame's index.
    """

    def __init__(self, encoder, protocol=None, device=None, *, crop_size=-1, max_side=DEFAULT_MAX_SIDE, l2=True,
                 norm_mask=False, reference=False, note=None, **windowed_opts):
        self.encoder = encoder
        self.protocol = protocol or Protocol()
        self.device = torch.device(device) if device is not None else next(encoder.parameters()).device
        self.crop_size, self.max_side = crop_size, max_side
        self.l2, self.norm_mask, self.reference, self.windowed_opts = l2, norm_mask, reference, windowed_opts
        self.reader = MaskReader(note)
        self.note = self.reader.note
        self.values = None
        self.prop = None
        self.t = -1          # index of the last frame seen
        self.start = None    # index of the first annotated frame

    @property
    def palette(self):
        return self.reader.palette

    @property
    def started(self):
        return self.prop is not None

    def read_mask(self, mask, size=None):
        """Label ids [H, W] int64 of a mask (ids or a label image path), fitted to ``size`` if given."""
        return self.reader.ids(mask, size)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, batches, masks, sinks, out_size=None, progress=None):
        """Propagate through a whole video (see ``stream``), handing every frame to each sink
        (``write(frame)``), then ``close()`` them all; on an error each is ``abort(error)``ed instead.
        ``progress``: a tqdm-like bar, advanced by one per frame."""
        try:
            for frame in self.stream(batches, masks, out_size):
                for sink in sinks:
                    sink.write(frame)
                if progress is not None:
                    progress.update(1)
        except BaseException as e:
            for sink in sinks:
                sink.abort(e)
            raise
        error = None
        for sink in sinks:
            try:
                sink.close()
            except BaseException as e:  # noqa: BLE001 - close the others, then raise the first
                error = error or e
        if error is not None:
            raise error

    def stream(self, batches, masks, out_size=None):
        """The one loop over a video's frames: yields a PropagatedFrame per frame from the first annotated one on.

        batches: iterable of (prepared frames [B, 3, H', W'], the frames as they are to be written [B, H, W, 3]
        uint8, their indices t [B]), consecutive and in order (``data.inference.frames.frame_loader``), or in
        reverse order for a backward run (time reversed; the protocol is the same).
        masks: {t: mask} (anything with ``get(t)``): label ids or label image paths, resized with nearest
        neighbour to ``out_size`` (default: each batch's frame size), the size ids are returned at; or, for
        the first annotated frame only, a function (h, w) -> soft labels [h, w, K] at the feature map (JHMDB's
        joint heat maps), after which ``ids`` are None."""
        for imgs, images, ts in batches:
            ts = ts.tolist() if torch.is_tensor(ts) else list(ts)
            size = tuple(out_size) if out_size is not None else tuple(images[0].shape[:2])
            given = [masks.get(t) for t in ts]
            started = self.started
            for t, image, mask, out in zip(ts, images, given, self._batch(imgs, given, size)):
                if out is not None:
                    if not started:
                        self.start, started = t, True
                    image = image.numpy() if torch.is_tensor(image) else image
                    labels = None if self.values is None else self.values[:out[1].shape[-1]].copy()
                    yield PropagatedFrame(t, image, *out, labels=labels, annotated=mask is not None)

    # -- frames one at a time ---------------------------------------------------------------------------
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
        """Consecutive prepared frames ``imgs`` [B, 3, H', W'] (``data.inference.frames.prepare_frame``), their
        masks (B entries: None, or label ids / paths) and the size (H, W) to return label ids at -> list of B
        uint8 [H, W] arrays (None before the first mask). The frames are encoded in one call."""
        return [None if out is None else out[0] for out in self._batch(imgs, masks, tuple(out_size))]

    def _batch(self, imgs, masks, out_size):
        """-> B entries: None before the first mask, else (ids or None, soft labels, features)."""
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
        proc_size = tuple(imgs.shape[-2:])
        for b in range(skip, len(masks)):
            ids, soft = self._advance(feats[b - skip], masks[b], out_size, proc_size)
            out.append((ids, soft.clone(), feats[b - skip]))   # a copy: a later frame's mask edits the context
        return out

    def _advance(self, feat, mask, out_size, proc_size):
        """One encoded frame feat [C, h, w] and its mask (None, ids / a path, or a soft-labels function) ->
        (label ids at out_size or None, soft labels [h, w, K])."""
        self.t += 1
        if callable(mask):
            if self.started:
                raise ValueError('soft labels can only start the propagation')
            return None, self._start(feat, mask(tuple(feat.shape[-2:])).to(self.device))
        values = None
        if mask is not None:
            mask = self.read_mask(mask)
            values = np.unique(mask)     # before resizing: an object too small to survive keeps its id
            mask = resize_nearest(mask, out_size)
        if not self.started:
            self.values = values
            first = soft_labels(resize_nearest(mask, proc_size), values, feat.shape[-2:])
            return mask.astype(np.uint8), self._start(feat, first.to(self.device))
        soft = self.prop.step(feat)
        if self.values is None:
            if mask is not None:
                raise ValueError('a mask after soft labels: the propagation has no label ids')
            return None, soft
        if mask is None:
            index = soft_to_index(soft, out_size, self.norm_mask)
            return self.values[index.cpu().numpy()].astype(np.uint8), soft
        return self._annotate(soft, mask, values, out_size, proc_size)

    def _start(self, feat, first):
        self.prop = make_propagator(feat, first, self.protocol, reference=self.reference, **self.windowed_opts)
        self.start = self.t
        return first

    def _annotate(self, soft, mask, given, out_size, proc_size):
        """A later annotated frame: ``mask`` (ids at out_size; ``given`` its ids) merged with the prediction
        ``soft`` [h, w, K]. 0 means "not annotated here"; every other id is taken as given: a new id gets a new
        channel (zero in earlier frames); the pixels the annotation gives an id take it, the others keep the
        prediction without the annotated ids, renormalised (background where nothing is left). The frame's
        corrected soft labels (the annotation's one-hot at the feature map plus the rest of the prediction
        where it leaves a cell uncovered) become a long-term context frame and restart the short-term context
        (``correct`` of the propagators; README "Corrections"). Returns (label ids at out_size, the corrected
        soft labels)."""
        ann = resize_nearest(mask, proc_size)
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
        corrected = given_onehot + (1 - cover) * rest
        self.prop.correct(corrected)
        ids = self.values[soft_to_index(rest, out_size, self.norm_mask).cpu().numpy()].astype(np.uint8)
        annotated_pixels = mask != 0
        ids[annotated_pixels] = mask[annotated_pixels]
        return ids, corrected


def propagate(encoder, frames, masks, protocol=None, device=None, batch_size=None, per_object=False,
              reverse=False, **options):
    """Propagate masks through ``frames``, streaming: a generator of (t, label ids [H, W] uint8) for every frame
    from the first annotated one on (earlier frames are counted, not read); with ``per_object``, of
    (t, {object id: bool [H, W] mask}) for every object annotated so far (background 0 left out).

    frames: an iterable of frames (uint8 [H, W, 3] RGB arrays/tensors or image paths), consumed lazily;
    masks: the mask of frame 0, or {t: mask} for annotations on any frames (label ids or label image paths);
    protocol: default ``Protocol()``, the README's;
    reverse: propagate backward in time (the same protocol on the time-reversed video): from the last
    annotated frame down to frame 0, yielded in that order, earlier annotations correcting as later ones do
    forward; ``frames`` must then be a sequence (``len`` and indexing; a list of paths holds no pixels).
    options: those of ``VideoPropagator`` (crop_size, max_side (default 854), l2, norm_mask, reference, note,
    ...), the defaults of test.py --video.
    Frames are encoded ``batch_size`` at a time (default ``feature_batch(device)``, test.py's), so at most that
    many are held."""
    vp = VideoPropagator(encoder, protocol, device, **options)
    batch_size = batch_size or feature_batch(vp.device)
    masks = dict(masks) if isinstance(masks, dict) else {0: masks}
    if not masks:
        raise CRWError('no mask: give the first frame\'s mask, or {frame index: mask}')
    if reverse:
        if not hasattr(frames, '__getitem__') or not hasattr(frames, '__len__'):
            raise CRWError('propagate(reverse=True) needs the frames as a sequence (a list of arrays or paths)')
        missing = sorted(t for t in masks if not 0 <= t < len(frames))
        if missing:
            raise CRWError(f'masks given for frames {missing[:5]} but the video has {len(frames)} frames')
        order = range(max(masks), -1, -1)
        ordered = ((t, frames[t]) for t in order)
    else:
        first = min(masks)
        ordered = ((t, f) if t >= first else (t, None) for t, f in enumerate(frames))
    fitted = {}   # t -> the mask read and fitted to its frame, filled as the frames are read

    def batches():
        batch, images, ts, size = [], [], [], None
        for t, frame in ordered:
            if frame is None:
                vp.skip()
                continue
            img = as_frame(frame)
            if size is not None and img.shape[:2] != size:
                raise CRWError(f'frame {t} is {img.shape[1]}x{img.shape[0]}, the first one {size[1]}x{size[0]}; all '
                               'frames of a video must have one size')
            size = img.shape[:2]
            if t in masks:
                fitted[t] = vp.read_mask(masks[t], size)
            batch.append(prepare_frame(img, processing_size(size, vp.crop_size, vp.max_side)))
            images.append(img)
            ts.append(t)
            if len(batch) == batch_size:
                yield torch.stack(batch), images, ts
                batch, images, ts = [], [], []
        if batch:
            yield torch.stack(batch), images, ts

    for frame in vp.stream(batches(), fitted):
        yield frame.t, object_masks(frame.ids, frame.labels) if per_object else frame.ids
    missing = sorted(t for t in masks if t > vp.t)
    if missing and not reverse:
        raise CRWError(f'masks given for frames {missing[:5]} but the video has {vp.t + 1} frames')
