"""Batch augmentation of training clips on the device: colour jitter, the grid of patches (nodes), normalisation.

Input: uint8 clips [B, T, 3, S, S], already cropped/resized (and flipped) per frame by the dataset. In order:
1. ``cj`` in ``--frame-transforms``: per-frame colour jitter as ColorJitter(0.1, 0.1, 0.1, 0) (brightness,
   contrast, saturation factors uniform in [0.9, 1.1], in a random order per frame).
2. ``--frame-aug`` (``utils.arguments.parse_frame_aug``): ``grid`` cuts every frame into the walk's P×P patches
   (``data/training/nodes.py``), each random-resized-cropped back to P×P (scale (0.7, 0.9), ratio (3/4, 4/3),
   bilinear), and ``cj``/``flip`` then act per patch; without ``grid`` they act per frame (a second jitter, a
   flip with probability 1/2); ``''`` and ``none`` change nothing.
3. Normalisation with the CIFAR statistics, as the release trained.
Random parameters are drawn on a CPU ``torch.Generator`` seeded by ``seed``: CPU and GPU runs draw the same.
"""
import torch

from crw.data.training.nodes import crop_patches, grid_positions
from crw.data.training.transforms import random_crop_boxes
from crw.utils.arguments import parse_frame_aug

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
PATCH_SCALE = (0.7, 0.9)
PATCH_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CJ = (0.1, 0.1, 0.1)
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, PIL's 'L' conversion


def color_jitter_params(n, strengths, generator):
    """``(factors [n, 3], order [n, 3])``: brightness/contrast/saturation factors uniform in [1-s, 1+s] and a
    uniformly random order of the three operations per image."""
    lo = torch.tensor([1 - s for s in strengths], dtype=torch.float32)
    hi = torch.tensor([1 + s for s in strengths], dtype=torch.float32)
    factors = lo + (hi - lo) * torch.rand(n, 3, generator=generator)
    order = torch.rand(n, 3, generator=generator).argsort(dim=1)
    return factors, order


def _gray(x):
    r, g, b = x.unbind(dim=-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def apply_color_jitter(x, factors, order):
    """Colour jitter of float images ``x`` [n, 3, H, W] in [0, 1] with per-image ``factors``/``order`` (on
    x's device). Each operation blends the image with a reference and clamps to [0, 1]: black (brightness),
    the mean grey level (contrast), the pixel's grey level (saturation)."""
    n = x.shape[0]
    for k in range(3):
        op = order[:, k]
        f = factors.gather(1, op[:, None])[:, 0].view(n, 1, 1, 1)
        gray = _gray(x)
        mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
        op = op.view(n, 1, 1, 1)
        ref = torch.where(op == 0, torch.zeros_like(gray), torch.where(op == 1, mean, gray))
        x = (f * x + (1 - f) * ref).clamp_(0, 1)
    return x


class BatchAugment:
    """``BatchAugment(args)(clips [B, T, 3, S, S], seed)`` → normalised float32 [B, T, N·3, P, P] (grid; channel
    n·3 + c is colour c of patch n) or [B, T, 3, S, S] (dense). ``clips``: uint8, or float in [0, 1] (not
    modified); any device. ``seed``: an int; the same seed gives the same parameters on every device."""

    def __init__(self, args=None, *, frame_aug=None, frame_transforms=None, patch_size=None, img_size=None,
                 patch_scale=PATCH_SCALE, patch_ratio=PATCH_RATIO):
        def pick(value, name, default):
            if value is not None:
                return value
            return getattr(args, name, default) if args is not None else default
        frame_aug = pick(frame_aug, 'frame_aug', '') or ''
        frame_transforms = pick(frame_transforms, 'frame_transforms', 'crop') or ''
        ps = pick(patch_size, 'patch_size', 64)
        self.patch = int(ps[0] if isinstance(ps, (list, tuple)) else ps)
        self.img_size = int(pick(img_size, 'img_size', 256))
        self.grid, aug_cj, aug_flip = parse_frame_aug(frame_aug)
        self.frame_cj = 'cj' in frame_transforms
        # --frame-aug cj/flip: per patch with the grid, per frame without it (the release's meaning)
        self.patch_cj, self.patch_flip = self.grid and aug_cj, self.grid and aug_flip
        self.frame_aug_cj, self.frame_aug_flip = aug_cj and not self.grid, aug_flip and not self.grid
        self.patch_scale, self.patch_ratio = tuple(patch_scale), tuple(patch_ratio)
        self._consts = {}

    def __repr__(self):
        return (f'BatchAugment(grid={self.grid and (self.patch, self.patch // 2)}, frame_cj={self.frame_cj}, '
                f'frame_aug_cj={self.frame_aug_cj}, frame_aug_flip={self.frame_aug_flip}, '
                f'patch_cj={self.patch_cj}, patch_flip={self.patch_flip}, patch_crop={self.patch_scale}/'
                f'{tuple(round(r, 4) for r in self.patch_ratio)})')

    def num_patches(self, height=None, width=None):
        return len(grid_positions(height or self.img_size, width or self.img_size, self.patch)) if self.grid else 1

    def sample_params(self, batch, frames, height, width, seed):
        """Every random parameter of one call, as CPU tensors (drawn from ``torch.Generator().manual_seed(seed)``)."""
        g = torch.Generator()
        g.manual_seed(int(seed) & ((1 << 63) - 1))
        n = batch * frames
        p = {}
        if self.frame_cj:
            p['frame_cj'] = color_jitter_params(n, CJ, g)
        if self.frame_aug_cj:
            p['frame_aug_cj'] = color_jitter_params(n, CJ, g)
        if self.frame_aug_flip:
            p['frame_aug_flip'] = torch.rand(n, generator=g) < 0.5
        if self.grid:
            m = n * self.num_patches(height, width)
            p['patch_box'] = random_crop_boxes(m, self.patch, self.patch, self.patch_scale,
                                                        self.patch_ratio, g)
            if self.patch_flip:
                p['patch_flip'] = torch.rand(m, generator=g) < 0.5
            if self.patch_cj:
                p['patch_cj'] = color_jitter_params(m, CJ, g)
        return p

    def _norm(self, device):
        key = ('norm', device)
        if key not in self._consts:
            self._consts[key] = (torch.tensor(MEAN, device=device).view(3, 1, 1),
                                 torch.tensor(STD, device=device).view(3, 1, 1))
        return self._consts[key]

    def __call__(self, clips, seed):
        if clips.dim() != 5 or clips.shape[2] != 3:
            raise ValueError(f'expected clips [B, T, 3, H, W], got {tuple(clips.shape)}')
        B, T, C, H, W = clips.shape
        params = self.sample_params(B, T, H, W, seed)
        dev = clips.device
        x = clips.reshape(B * T, C, H, W)
        x = x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)  # [0, 1]
        for key in ('frame_cj', 'frame_aug_cj'):
            if key in params:
                f, o = params[key]
                x = apply_color_jitter(x, f.to(dev), o.to(dev))
        if 'frame_aug_flip' in params:
            x = torch.where(params['frame_aug_flip'].to(dev).view(-1, 1, 1, 1), x.flip(-1), x)
        mean, std = self._norm(dev)
        if not self.grid:
            return x.sub_(mean).div_(std).view(B, T, C, H, W)
        P = self.patch
        raw = crop_patches(x, params['patch_box'], P, params.get('patch_flip'), layout='raw')  # [BT, C, N*P, P]
        N = raw.shape[2] // P
        if self.patch_cj:
            f, o = params['patch_cj']
            x = raw.view(B * T, C, N, P, P).transpose(1, 2).reshape(B * T * N, C, P, P)
            x = apply_color_jitter(x, f.to(dev), o.to(dev))
            return x.sub_(mean).div_(std).view(B, T, N * C, P, P)
        raw.sub_(mean).div_(std)
        return raw.view(B * T, C, N, P, P).transpose(1, 2).reshape(B, T, N * C, P, P)
