"""Frame-level CPU transform of the training clips, done in the dataset, and the crop-box rule shared with
``data.training.gpu_augment``.

Each frame gets its own random resized crop (or a plain resize) to ``img_size`` and, with ``flip`` in
``--frame-transforms``, its own horizontal flip with probability 1/2. Colour jitter (``cj``) is left to
``data.training.gpu_augment.BatchAugment`` on the device (it is per-pixel and commutes with the flip in distribution).

Resizing is bilinear with antialiasing on uint8 tensors (``torch.nn.functional.interpolate(...,
antialias=True)``), which reproduces PIL's bilinear resize (the release's) to within one grey level.
All randomness comes from the ``numpy.random.Generator`` the caller passes.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

CROP_SCALE = (0.8, 0.95)
CROP_RATIO = (0.7, 1.3)


def fallback_crop_size(height, width, ratio):
    """``(h, w)`` of RandomResizedCrop's fallback when no random draw fits: the whole frame, narrowed to the
    nearest aspect ratio (w/h) inside ``ratio``."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def random_crop_box(rng, height, width, scale, ratio, attempts=10):
    """``(top, left, h, w)`` of a random crop: area fraction uniform in ``scale``, log aspect ratio (w/h)
    uniform in log ``ratio``; up to ``attempts`` draws, then the central crop clamped to ``ratio`` (the
    sampling rule of torchvision's RandomResizedCrop)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    h, w = fallback_crop_size(height, width, ratio)
    return (height - h) // 2, (width - w) // 2, h, w


def random_crop_boxes(n, height, width, scale, ratio, generator, attempts=10):
    """``(top, left, h, w)`` int64 tensors [n]: per box, up to ``attempts`` draws of an area fraction uniform in
    ``scale`` and a log-uniform aspect ratio (w/h) in ``ratio``, the first that fits wins; if none fits, the
    central crop clamped to ``ratio`` (torchvision RandomResizedCrop's rule), then a uniform position."""
    area = float(height * width)
    s = torch.empty(n, attempts, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    logr = torch.empty(n, attempts, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                 generator=generator)
    ar = torch.exp(logr)
    w = torch.round(torch.sqrt(area * s * ar)).to(torch.int64)
    h = torch.round(torch.sqrt(area * s / ar)).to(torch.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int64).argmax(dim=1, keepdim=True)
    found = ok.any(dim=1)
    w = w.gather(1, first)[:, 0]
    h = h.gather(1, first)[:, 0]
    fh, fw = fallback_crop_size(height, width, ratio)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1).to(torch.float64)).to(torch.int64).clamp(max=height - h)
    left = torch.floor(u[:, 1] * (width - w + 1).to(torch.float64)).to(torch.int64).clamp(max=width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return top, left, h, w


def parse_frame_transforms(spec):
    """``--frame-transforms`` → set of {'crop', 'cj', 'flip'} (substring test, as the release)."""
    spec = spec or ''
    return {name for name in ('crop', 'cj', 'flip') if name in spec}


def resize_uint8(chw, size):
    """[n, 3, h, w] uint8 → [n, 3, size, size] uint8, bilinear with antialiasing (PIL-like)."""
    if chw.shape[-2] == size and chw.shape[-1] == size:
        return chw.contiguous()
    return F.interpolate(chw, size=(size, size), mode='bilinear', antialias=True, align_corners=False)


class FrameTransform:
    """uint8 frames [T, H, W, 3] (tensor or array) → uint8 tensor [T, 3, S, S], per-frame random parameters."""

    def __init__(self, img_size=256, crop=True, flip=False, scale=CROP_SCALE, ratio=CROP_RATIO):
        self.img_size = int(img_size)
        self.crop, self.flip = bool(crop), bool(flip)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    @classmethod
    def from_args(cls, args):
        ft = parse_frame_transforms(args.frame_transforms)
        return cls(args.img_size, crop='crop' in ft, flip='flip' in ft)

    def __repr__(self):
        return (f'FrameTransform(size={self.img_size}, crop={self.crop and (self.scale, self.ratio)}, '
                f'flip={self.flip})')

    def __call__(self, frames, rng):
        if isinstance(frames, (list, tuple)):  # frames of different sizes: one at a time
            return torch.cat([self(f[None], rng) for f in frames])
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        chw = frames.permute(0, 3, 1, 2)  # channels-last view, no copy
        T, _, H, W = chw.shape
        S = self.img_size
        if self.crop:
            out = torch.empty((T, 3, S, S), dtype=torch.uint8)
            for t in range(T):
                top, left, h, w = random_crop_box(rng, H, W, self.scale, self.ratio)
                out[t] = resize_uint8(chw[t:t + 1, :, top:top + h, left:left + w], S)[0]
                if self.flip and rng.random() < 0.5:
                    out[t] = out[t].flip(-1)
            return out
        out = resize_uint8(chw, S).contiguous()
        if self.flip:
            for t in range(T):
                if rng.random() < 0.5:
                    out[t] = out[t].flip(-1)
        return out
