"""Label images (data/labels.py): reading every kind of mask into ids, the palette, the checks, nearest resizing,
soft labels at the feature map, writing; and the eval readers built on it. Tiny hand-made images."""
import numpy as np
import pytest
import torch
from PIL import Image

from crw.data.labels import (MaskReader, check_label_range, davis_palette, decode_colours, fit_mask, load_label_image,
                         read_ids, resize_nearest, save_grey_png, save_indexed_png, soft_labels)
from crw.eval import davis_io, eval_vip
from crw.utils.errors import CRWError


def blobs(shape=(37, 53), seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[5:20, 4:30] = 7
    lab[22:35, 30:50] = 3
    lab[rng.random(lab.shape) < 0.05] = 12
    return lab


# ----------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------

def test_palette_png_ids_and_own_palette(tmp_path):
    lab = blobs()
    pal = np.random.default_rng(1).integers(0, 256, (256, 3)).astype(np.uint8)
    save_indexed_png(str(tmp_path / 'a.png'), lab, pal)
    reader = MaskReader()
    ids = reader.read(str(tmp_path / 'a.png'))
    assert ids.dtype == np.int64 and np.array_equal(ids, lab)
    assert np.array_equal(reader.palette, pal)                          # outputs keep the mask's colours
    stored = load_label_image(str(tmp_path / 'a.png'))
    assert not stored.is_colour and np.array_equal(stored.palette, pal)


def test_rgb_masks_davis_colours_or_numbered(tmp_path):
    lab = blobs()
    # RGB annotation in DAVIS colours -> palette ids, whatever the ids are
    Image.fromarray(davis_palette()[lab]).save(tmp_path / 'rgb.png')
    ids = MaskReader().read(str(tmp_path / 'rgb.png'))
    assert np.array_equal(ids, lab)
    # colours outside the palette -> 0, 1, ... in colour order, black first
    odd = np.zeros((8, 8, 3), np.uint8)
    odd[:4] = (10, 20, 30)
    odd[:, 6:] = (200, 1, 2)
    Image.fromarray(odd).save(tmp_path / 'odd.png')
    reader = MaskReader()
    ids = reader.read(str(tmp_path / 'odd.png'))
    assert np.unique(ids).tolist() == [0, 1, 2] and ids[7, 0] == 0 and ids[0, 0] == 1 and ids[0, 7] == 2
    assert reader.palette[2].tolist() == [200, 1, 2]


def test_numbered_colours_continue_over_a_video(tmp_path):
    # RGB masks outside the DAVIS palette: one numbering for all masks of a video, new colours appended
    a = np.zeros((8, 8, 3), np.uint8)
    a[:4] = (200, 10, 10)
    b = a.copy()
    b[6:, :2] = (10, 10, 200)
    Image.fromarray(a).save(tmp_path / 'a.png')
    Image.fromarray(b).save(tmp_path / 'b.png')
    reader = MaskReader()
    assert np.unique(reader.read(str(tmp_path / 'a.png'))).tolist() == [0, 1]
    ids_b = reader.read(str(tmp_path / 'b.png'))
    assert ids_b[0, 0] == 1 and ids_b[7, 0] == 2
    assert reader.palette[1].tolist() == [200, 10, 10] and reader.palette[2].tolist() == [10, 10, 200]


def test_refused_masks_name_the_file(tmp_path):
    Image.fromarray(np.arange(35, dtype=np.uint8).repeat(2).reshape(10, 7), mode='L').save(tmp_path / 'g.png')
    with pytest.raises(CRWError, match='g.png: 35 distinct grey levels'):
        MaskReader().read(str(tmp_path / 'g.png'))
    big = np.zeros((6, 6), np.int64)
    big[2:4, 2:4] = 300                                                # a 16-bit mask with id 300
    Image.fromarray(big.astype(np.uint16)).save(tmp_path / 'wide.png')
    with pytest.raises(CRWError, match=r'wide.png: label ids must lie in 0\.\.255'):
        MaskReader().read(str(tmp_path / 'wide.png'))
    with pytest.raises(CRWError, match=r'the mask: label ids must lie in 0\.\.255'):
        MaskReader().ids(np.full((4, 4), -1))
    with pytest.raises(CRWError, match='integer label ids'):
        MaskReader().ids(np.zeros((4, 4), np.float32))
    (tmp_path / 'not.png').write_bytes(b'no image')
    with pytest.raises(CRWError, match='not.png: cannot read the label image'):
        MaskReader().read(str(tmp_path / 'not.png'))


def test_binary_mask_note_once(tmp_path):
    notes = []
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8), mode='L').save(tmp_path / 'b.png')
    reader = MaskReader(note=notes.append)
    for _ in range(2):
        assert reader.read(str(tmp_path / 'b.png')).tolist() == [[0, 1], [1, 0]]
    assert len(notes) == 1 and '0/255' in notes[0]


def test_ids_from_arrays_tensors_and_sizes(tmp_path):
    lab = blobs((24, 40))
    warnings = []
    reader = MaskReader(note=warnings.append)
    assert np.array_equal(reader.ids(torch.from_numpy(lab)), lab)
    big = np.repeat(np.repeat(lab, 2, 0), 2, 1)
    for _ in range(2):                                                 # same aspect ratio: resized, one warning
        assert np.array_equal(reader.ids(big, (24, 40)), lab)
    assert len(warnings) == 1 and '80x48' in warnings[0] and '40x24' in warnings[0]
    with pytest.raises(CRWError, match='another aspect ratio'):
        fit_mask(lab[:12], (24, 40))
    save_indexed_png(str(tmp_path / 'm.png'), big)
    assert reader.check_all([str(tmp_path / 'm.png')], (24, 40)).shape == (256, 3)


def test_eval_readers_keep_values_as_stored(tmp_path):
    # ground truth: 255 is void and stays 255 (no 0/255 mapping); a colour image is refused with a hint
    gt = np.array([[0, 255], [1, 2]], np.uint8)
    save_indexed_png(str(tmp_path / 'gt.png'), gt)
    assert davis_io.read_label_png(str(tmp_path / 'gt.png')).tolist() == gt.tolist()
    Image.fromarray(davis_palette()[gt]).save(tmp_path / 'rgb.png')
    with pytest.raises(CRWError, match='rgb.png is a colour image; label maps must be indexed'):
        davis_io.read_label_png(str(tmp_path / 'rgb.png'))
    with pytest.raises(CRWError, match='rgb.png is a colour image; expected a single-channel class-id PNG'):
        eval_vip.read_ground_truth(str(tmp_path / 'rgb.png'))
    assert eval_vip.read_prediction(str(tmp_path / 'rgb.png')).tolist() == davis_palette()[gt][..., 0].tolist()
    assert read_ids(str(tmp_path / 'gt.png'), '').tolist() == gt.tolist()


def test_colour_encodings():
    ids = np.array([[0, 1, 4], [3, 6, 32]])
    pal = davis_palette()
    assert np.array_equal(decode_colours(pal[ids], 'rgb'), ids)
    assert np.array_equal(decode_colours(pal[ids][..., ::-1], 'bgr'), ids)
    assert np.array_equal(decode_colours(np.repeat(ids[..., None], 3, -1).astype(np.uint8), 'grey'), ids)
    assert decode_colours(np.array([[[1, 2, 3]]], np.uint8), 'rgb') is None


# ----------------------------------------------------------------------------------------------------------
# sizes, soft labels, writing
# ----------------------------------------------------------------------------------------------------------

def test_resize_nearest_matches_pil_and_keeps_ids():
    # the release resized predictions with PIL's NEAREST; ours must pick the same pixels
    rng = np.random.default_rng(0)
    small = rng.integers(0, 20, (7, 11)).astype(np.uint8)
    for size in [(16, 23), (5, 9), (31, 40)]:
        ref = np.asarray(Image.fromarray(small).resize((size[1], size[0]), Image.NEAREST))
        assert (resize_nearest(small, size) == ref).all()
    lab = blobs().astype(np.int64)
    for size in [(37, 53), (64, 64), (19, 31), (320, 320)]:
        out = resize_nearest(lab, size)
        assert out.shape == size and out.dtype == np.int64 and set(np.unique(out)) <= {0, 3, 7, 12}


def test_soft_labels_at_the_feature_map():
    lab = np.zeros((20, 30), np.int64)
    lab[:, 15:] = 7
    soft = soft_labels(lab, np.array([0, 7]), (3, 4))                  # ceil(20 / 8) x ceil(30 / 8)
    assert soft.shape == (3, 4, 2) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(-1), torch.ones(3, 4))
    assert soft[0, 0].tolist() == [1.0, 0.0] and soft[0, 3].tolist() == [0.0, 1.0]


def test_writers_round_trip_and_refuse_wide_ids(tmp_path):
    lab = blobs()
    save_indexed_png(str(tmp_path / 'p.png'), lab)
    save_grey_png(str(tmp_path / 'g.png'), lab)
    p, g = Image.open(tmp_path / 'p.png'), Image.open(tmp_path / 'g.png')
    assert p.mode == 'P' and g.mode == 'L'
    assert np.array_equal(np.asarray(p), lab) and np.array_equal(np.asarray(g), lab)
    with pytest.raises(CRWError, match=r'x.png: label ids must lie in 0\.\.255'):
        save_grey_png(str(tmp_path / 'x.png'), np.full((2, 2), 256))
    assert not (tmp_path / 'x.png').exists()
    assert check_label_range(lab, 'lab') is not None
