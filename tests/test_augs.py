"""BatchAugment (data/training/gpu_augment.py), the grid of patches that are the walk's nodes
(data/training/nodes.py) and the frame-level transform (data/training/transforms.py), including the release's
--frame-aug spellings and its whole-frame cj/flip."""
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import train_argv
from crw.data.training.gpu_augment import MEAN, STD, BatchAugment, apply_color_jitter, color_jitter_params
from crw.data.training.nodes import crop_patches, grid_positions
from crw.data.training.transforms import FrameTransform, random_crop_box, random_crop_boxes
from crw.utils import arguments


def _args(**kw):
    a = dict(frame_aug='grid', frame_transforms='crop', patch_size=[64, 64, 3], img_size=256)
    a.update(kw)
    return types.SimpleNamespace(**a)


def grid_patches(frames, patch=64, stride=None):
    """The grid windows of ``frames`` [..., C, H, W] as [..., N, C, P, P] (row-major, exact copies)."""
    stride = stride or patch // 2
    *lead, C, H, W = frames.shape
    x = frames.unfold(-2, patch, stride).unfold(-2, patch, stride)  # [..., C, ny, nx, P, P]
    x = x.movedim(-5, -3)                                             # [..., ny, nx, C, P, P]
    return x.reshape(*lead, x.shape[-5] * x.shape[-4], C, patch, patch)


def _position_frames(n=1, size=256):
    """Float frames whose channels encode (row, col, frame number)."""
    rows = torch.arange(size, dtype=torch.float32).view(size, 1).expand(size, size)
    cols = torch.arange(size, dtype=torch.float32).view(1, size).expand(size, size)
    return torch.stack([torch.stack([rows, cols, torch.full_like(rows, k)]) for k in range(n)])


def test_grid_positions_row_major():
    pos = grid_positions(256, 256, 64)
    assert len(pos) == 49
    assert pos[:8] == [(0, 0), (0, 32), (0, 64), (0, 96), (0, 128), (0, 160), (0, 192), (32, 0)]
    assert pos[-1] == (192, 192)
    assert len(grid_positions(128, 128, 32)) == ((128 - 32) // 16 + 1) ** 2 == 49
    assert len(grid_positions(160, 224, 64)) == 4 * 6


def test_grid_patches_are_the_windows():
    x = _position_frames(2)
    p = grid_patches(x, 64)
    assert p.shape == (2, 49, 3, 64, 64)
    for n, (y0, x0) in enumerate(grid_positions(256, 256, 64)):
        r, c = divmod(n, 7)
        assert (y0, x0) == (32 * r, 32 * c)
        assert torch.equal(p[1, n], x[1, :, y0:y0 + 64, x0:x0 + 64])


def test_identity_crop_reproduces_the_windows():
    x = _position_frames(2)
    m = 2 * 49
    box = (torch.zeros(m, dtype=torch.long), torch.zeros(m, dtype=torch.long),
           torch.full((m,), 64, dtype=torch.long), torch.full((m,), 64, dtype=torch.long))
    out = crop_patches(x, box, 64)
    assert torch.allclose(out, grid_patches(x, 64), atol=1e-3)
    # scale 1 / ratio 1 through the random parameter path gives the same identity crop
    aug1 = BatchAugment(_args(), patch_scale=(1.0, 1.0), patch_ratio=(1.0, 1.0))
    params = aug1.sample_params(1, 2, 256, 256, seed=3)
    top, left, h, w = params['patch_box']
    assert (top == 0).all() and (left == 0).all() and (h == 64).all() and (w == 64).all()
    assert torch.allclose(crop_patches(x, params['patch_box'], aug1.patch), grid_patches(x, 64), atol=1e-3)


def test_patch_crop_matches_crop_then_bilinear_resize():
    """A patch is its box cut out of the window, resized bilinearly (half-pixel centres, edge clamped)."""
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 3, 256, 256, generator=g)
    box = random_crop_boxes(49, 64, 64, (0.7, 0.9), (3 / 4, 4 / 3), g)
    out = crop_patches(frame, box, 64)[0]
    for n in (0, 9, 48):
        y0, x0 = grid_positions(256, 256, 64)[n]
        t, l, h, w = (int(b[n]) for b in box)
        crop = frame[:, :, y0 + t:y0 + t + h, x0 + l:x0 + l + w]
        ref = F.interpolate(crop, size=(64, 64), mode='bilinear', align_corners=False)[0]
        assert torch.allclose(out[n], ref, atol=1e-4)


def test_patch_crop_params_distribution():
    g = torch.Generator().manual_seed(1)
    top, left, h, w = random_crop_boxes(20000, 64, 64, (0.7, 0.9), (3 / 4, 4 / 3), g)
    area = (h * w).double() / 4096
    assert area.min() >= 0.66 and area.max() <= 0.94          # rounding of h, w widens the range slightly
    assert (w <= 64).all() and (h <= 64).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 64).all() and (left + w <= 64).all()
    ratio = w.double() / h.double()
    assert ratio.min() > 0.7 and ratio.max() < 1.4
    # the fallback (no draw fits): central crop, full size for an in-range ratio
    t, l, hh, ww = random_crop_boxes(5, 64, 64, (2.0, 3.0), (1.0, 1.0), g)
    assert (hh == 64).all() and (ww == 64).all() and (t == 0).all() and (l == 0).all()


def test_shapes_dtypes_normalisation():
    clips = torch.randint(0, 256, (2, 3, 3, 256, 256), dtype=torch.uint8)
    out = BatchAugment(_args())(clips, seed=0)
    assert out.shape == (2, 3, 147, 64, 64) and out.dtype == torch.float32
    dense = BatchAugment(_args(frame_aug=''))(clips, seed=0)
    floats = clips.float() / 255
    keep = floats.clone()
    BatchAugment(_args(frame_aug=''))(floats, seed=0)
    assert torch.equal(floats, keep)   # the input is not modified
    assert dense.shape == (2, 3, 3, 256, 256) and dense.dtype == torch.float32
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(dense, (clips.float() / 255 - mean) / std, atol=1e-5)
    # constant frames stay constant through the grid crops: exact normalisation check
    flat = torch.full((1, 2, 3, 256, 256), 200, dtype=torch.uint8)
    g = BatchAugment(_args())(flat, seed=5).view(1, 2, 49, 3, 64, 64)
    assert torch.allclose(g, ((200 / 255 - mean) / std).expand_as(g), atol=1e-5)


def test_grid_patch_contents_come_from_their_window():
    x = _position_frames(1).unsqueeze(0)  # rows/cols as values (not uint8: floats accepted too)
    aug = BatchAugment(_args())
    std = torch.tensor(STD).view(3, 1, 1)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    out = aug(x, seed=2).view(49, 3, 64, 64) * std + mean   # undo normalisation → positions
    params = aug.sample_params(1, 1, 256, 256, seed=2)
    top, left, h, w = params['patch_box']
    for n, (y0, x0) in enumerate(grid_positions(256, 256, 64)):
        rows, cols = out[n, 0], out[n, 1]
        assert rows.min() >= y0 + top[n] - 1e-3 and rows.max() <= y0 + top[n] + h[n] - 1 + 1e-3
        assert cols.min() >= x0 + left[n] - 1e-3 and cols.max() <= x0 + left[n] + w[n] - 1 + 1e-3
        # centre of the patch = centre of its crop box
        assert abs(rows.mean() - (y0 + top[n] + (h[n] - 1) / 2)) < 0.05


def test_determinism_and_seed_dependence():
    clips = torch.randint(0, 256, (2, 2, 3, 256, 256), dtype=torch.uint8)
    for fa, ft in (('grid', 'crop+cj'), ('', 'cj'), ('grid', 'crop')):
        aug = BatchAugment(_args(frame_aug=fa, frame_transforms=ft))
        a, b, c = aug(clips, 7), aug(clips, 7), aug(clips, 8)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    aug = BatchAugment(_args(frame_transforms='crop+cj'))
    p1, p2 = aug.sample_params(2, 2, 256, 256, 11), aug.sample_params(2, 2, 256, 256, 11)
    for k in p1:
        for u, v in zip(p1[k], p2[k]):
            assert torch.equal(u, v)


def test_color_jitter_ranges_and_identity():
    g = torch.Generator().manual_seed(0)
    f, o = color_jitter_params(1000, (0.1, 0.1, 0.1), g)
    assert f.min() >= 0.9 and f.max() <= 1.1
    assert sorted(o[0].tolist()) == [0, 1, 2] and len({tuple(r) for r in o.tolist()}) == 6
    x = torch.rand(4, 3, 8, 8, generator=g)
    same = apply_color_jitter(x, torch.ones(4, 3), o[:4])
    assert torch.allclose(same, x, atol=1e-6)
    bright = apply_color_jitter(x * 0.5, torch.tensor([[1.1, 1.0, 1.0]]).expand(4, 3), o[:4])
    assert torch.allclose(bright, x * 0.55, atol=1e-6)
    grey = torch.full((1, 3, 4, 4), 0.3)
    assert torch.allclose(apply_color_jitter(grey, torch.tensor([[1.0, 0.9, 1.1]]), o[:1]), grey, atol=1e-6)


def test_patch_flip_and_cj_options():
    clips = torch.randint(0, 256, (1, 2, 3, 256, 256), dtype=torch.uint8)
    aug = BatchAugment(_args(frame_aug='grid+flip+cj'))
    assert aug.patch_flip and aug.patch_cj
    out = aug(clips, 1)
    assert out.shape == (1, 2, 147, 64, 64)
    p = aug.sample_params(1, 2, 256, 256, 1)
    assert p['patch_flip'].shape == (98,) and 0 < p['patch_flip'].sum() < 98


def test_frame_transform_crop_params_and_resize():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        t, l, h, w = random_crop_box(rng, 256, 340, (0.8, 0.95), (0.7, 1.3))
        assert 0 <= t and t + h <= 256 and 0 <= l and l + w <= 340
        if (h, w) == (256, 333):   # the fallback: full height, widest allowed ratio, centred
            assert (t, l) == (0, 3)
            continue
        assert 0.79 <= h * w / (256 * 340) <= 0.96 and 0.69 <= w / h <= 1.31
    assert random_crop_box(rng, 10, 100, (0.8, 0.95), (0.7, 1.3)) == (0, 43, 10, 13)   # fallback: central crop
    frames = np.random.default_rng(1).integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    out = FrameTransform(64, crop=True, flip=True)(frames, np.random.default_rng(2))
    assert out.shape == (3, 3, 64, 64) and out.dtype == torch.uint8
    again = FrameTransform(64, crop=True, flip=True)(frames, np.random.default_rng(2))
    assert torch.equal(out, again)
    plain = FrameTransform(64, crop=False, flip=False)(frames, np.random.default_rng(2))
    ref = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(64, 64), mode='bilinear',
                        antialias=True, align_corners=False)
    assert (plain.float() - ref).abs().max() <= 1.0


def test_frame_transform_flip_is_per_frame():
    frames = np.zeros((16, 32, 32, 3), dtype=np.uint8)
    frames[:, :, :16] = 255  # left half white
    out = FrameTransform(32, crop=False, flip=True)(frames, np.random.default_rng(0))
    left_white = out[:, 0, 0, 0] == 255
    assert 0 < int(left_white.sum()) < 16
    assert (out[~left_white, 0, 0, -1] == 255).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    clips = torch.randint(0, 256, (2, 2, 3, 256, 256), dtype=torch.uint8)
    aug = BatchAugment(_args(frame_transforms='crop+cj'))
    a = aug(clips, 3)
    b = aug(clips.cuda(), 3).cpu()
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize('spec, grid, cj, flip', [
    ('', False, False, False), ('none', False, False, False), ('grid', True, False, False),
    ('gridcj', True, True, False), ('grid+flip', True, False, True), ('grid_cj_flip', True, True, True),
    ('cj', False, True, False), ('flip', False, False, True), ('cjflip', False, True, True)])
def test_frame_aug_release_spellings(frame_list, tmp_path, spec, grid, cj, flip):
    args = arguments.train_args(train_argv(frame_list, tmp_path, '--frame-aug', spec, '--patch-size', '16', '16'))
    aug = BatchAugment(args)
    assert (aug.grid, aug.patch_cj, aug.patch_flip) == (grid, grid and cj, grid and flip)
    assert (aug.frame_aug_cj, aug.frame_aug_flip) == (cj and not grid, flip and not grid)


def test_frame_aug_cj_and_flip_on_whole_frames():
    clips = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    plain = BatchAugment(frame_aug='none', frame_transforms='crop', img_size=32)(clips, 5)
    assert torch.equal(plain, BatchAugment(frame_aug='', frame_transforms='crop', img_size=32)(clips, 5))
    flip = BatchAugment(frame_aug='flip', frame_transforms='crop', img_size=32)
    flipped = flip.sample_params(2, 3, 32, 32, 5)['frame_aug_flip']
    assert 0 < int(flipped.sum()) < 6
    out = flip(clips, 5).flatten(0, 1)
    ref = plain.flatten(0, 1)
    assert torch.equal(out[flipped], ref[flipped].flip(-1)) and torch.equal(out[~flipped], ref[~flipped])
    cj = BatchAugment(frame_aug='cj', frame_transforms='crop', img_size=32)
    f, o = cj.sample_params(2, 3, 32, 32, 5)['frame_aug_cj']
    expect = apply_color_jitter(clips.flatten(0, 1).float() / 255, f, o)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(cj(clips, 5).flatten(0, 1), (expect - mean) / std, atol=1e-5)
