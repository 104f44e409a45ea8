"""Your own video's inputs and outputs: test.py --video's defaults (the README's protocol, the bundled
pretrained.pth), --export formats decoded back, masks as people save them (RGBA, alpha only, JPEG) and rotated
videos. Real frames (the bundled hockey clip, shrunk) where the content matters; tiny synthetic ones elsewhere."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ids_of, only_line, run_test_py
from crw.data.inference.frames import DEFAULT_MAX_SIDE
from crw.data.labels import MaskReader, davis_palette, save_indexed_png
from crw.data.synthetic import make_sequence, write_frame_folder, write_video
from crw.data.video_io import iter_frames
from crw.propagation import PropagationOptions, Protocol, VideoPropagator, load_encoder, propagate
from crw.propagation.video import soft_to_index
from crw.utils.arguments import BUNDLED_CHECKPOINT, VIDEO_MAX_SIDE
from crw.utils.arguments import test_args as parse_test_args
from crw.utils.errors import CRWError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOCKEY = os.path.join(ROOT, 'assets', 'hockey')
README_FLAGS = ['--resume', os.path.join(ROOT, 'pretrained.pth'), '--topk', '10', '--videoLen', '20', '--radius', '12',
                '--temperature', '0.05', '--cropSize', '-1']
FAST = ['--workers', '0', '--device', 'cpu']


@pytest.fixture(scope='module')
def hockey(tmp_path_factory):
    """The bundled hockey clip's first 4 frames at a quarter of their size (214x120, PNG) and its first mask
    with a second object."""
    root = tmp_path_factory.mktemp('hockey')
    frames = [f for _, f in zip(range(4), (f for _, f in iter_frames(os.path.join(HOCKEY, 'hockey.mp4'))))]
    small = np.stack([np.asarray(Image.fromarray(f).resize((214, 120), Image.BILINEAR)) for f in frames])
    write_frame_folder(str(root / 'frames'), small, ext='png')
    ann = Image.open(os.path.join(HOCKEY, 'Annotations', '480p', 'hockey', '00000.png'))
    mask = np.array(ann.resize((214, 120), Image.NEAREST))
    assert len(np.unique(mask)) == 2      # its one object (a player); a second one, a patch of the rink:
    mask[80:110, 20:60][mask[80:110, 20:60] == 0] = 2
    save_indexed_png(str(root / 'first.png'), mask)
    return root, small, mask


# ----------------------------------------------------------------------------------------------------------
# defaults: --video has the README's protocol, the video's own size (<= 854 px) and pretrained.pth
# ----------------------------------------------------------------------------------------------------------

def test_video_defaults_are_the_readme_protocol_and_the_api_s(hockey):
    root, _, _ = hockey
    args = parse_test_args(['--video', str(root / 'frames'), '--mask', str(root / 'first.png')])
    assert (args.topk, args.videoLen, args.radius, args.temperature) == (10, 20, 12, 0.05)
    assert (args.cropSize, args.max_side, args.resume) == (-1, VIDEO_MAX_SIDE, BUNDLED_CHECKPOINT)
    assert args.export == ['palette'] and VIDEO_MAX_SIDE == DEFAULT_MAX_SIDE
    # the Python API has the same defaults
    assert PropagationOptions.from_args(args) == PropagationOptions()
    assert Protocol() == Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
    vp = VideoPropagator(torch.nn.Conv2d(3, 4, 1))
    assert (vp.protocol, vp.crop_size, vp.max_side) == (Protocol(), -1, DEFAULT_MAX_SIDE)
    # --max-side 0: no limit; explicit flags win
    args = parse_test_args(['--video', str(root / 'frames'), '--mask', str(root / 'first.png'), '--max-side', '0',
                      '--temperature', '0.07', '--cropSize', '320'])
    assert (args.max_side, args.temperature, args.cropSize) == (None, 0.07, 320)


def test_filelist_keeps_the_release_defaults(tmp_path):
    filelist = tmp_path / 'list.txt'
    filelist.write_text('a b\n')
    args = parse_test_args(['--filelist', str(filelist)])
    assert (args.temperature, args.cropSize, args.max_side, args.resume) == (0.07, 320, None, '')


@pytest.mark.parametrize('argv, words', [
    (['--random-init', '--resume', 'pretrained.pth'], 'exclude each other'),
    (['--export', 'palette,tiff'], '--export tiff'),
    (['--model-type', 'scratch_zeropad'], '--random-init'),
])
def test_video_flag_errors_are_one_line(argv, words, hockey, capsys):
    root, _, _ = hockey
    with pytest.raises(SystemExit) as e:
        parse_test_args(['--video', str(root / 'frames'), '--mask', str(root / 'first.png')] + argv)
    assert e.value.code != 0 and words in only_line(capsys)


def test_random_init_only_with_the_flag(hockey):
    root, _, _ = hockey
    args = parse_test_args(['--video', str(root / 'frames'), '--mask', str(root / 'first.png'), '--random-init'])
    assert args.resume == ''
    with pytest.raises(SystemExit):
        parse_test_args(['--filelist', 'x.txt', '--random-init'])


def test_bare_video_command_equals_the_readme_command(hockey, tmp_path, capsys):
    # real frames, the bundled pretrained.pth: `test.py --video X --mask Y` writes what the README command writes
    root, frames, _ = hockey
    base = ['--video', str(root / 'frames'), '--mask', str(root / 'first.png')]
    assert run_test_py(base + ['--save-path', str(tmp_path / 'bare')] + FAST) == 0
    assert 'temperature 0.05 (--video default)' in capsys.readouterr().out
    assert run_test_py(base + README_FLAGS + ['--save-path', str(tmp_path / 'readme')] + FAST) == 0
    for t in range(len(frames)):
        bare, readme = ids_of(tmp_path / 'bare' / 'frames' / f'{t:05d}.png'), ids_of(
            tmp_path / 'readme' / 'frames' / f'{t:05d}.png')
        assert bare.shape == frames.shape[1:3] and np.array_equal(bare, readme), t
    assert len(np.unique(bare)) >= 3     # the objects survive to the last frame


# ----------------------------------------------------------------------------------------------------------
# --export: every format decodes back to the written label maps
# ----------------------------------------------------------------------------------------------------------

def test_exports_decode_back_to_the_label_maps(hockey, tmp_path):
    from pycocotools import mask as rle
    from pycocotools.coco import COCO
    root, frames, first = hockey
    out = tmp_path / 'out'
    assert run_test_py(['--video', str(root / 'frames'), '--mask', str(root / 'first.png'), '--save-path', str(out),
                     '--export', 'palette,binary', '--export', 'coco,soft'] + FAST) == 0
    maps = [ids_of(out / 'frames' / f'{t:05d}.png') for t in range(len(frames))]
    objects = [int(k) for k in np.unique(first) if k != 0]
    assert np.array_equal(maps[0], first)
    # binary: one 0/255 PNG per object per frame
    for t, ids in enumerate(maps):
        for k in objects:
            binary = ids_of(out / 'frames_binary' / str(k) / f'{t:05d}.png')
            assert binary.dtype == np.uint8 and np.array_equal(binary, np.where(ids == k, 255, 0)), (t, k)
    # coco: one JSON, run-length encoded, read back with pycocotools
    coco = COCO(str(out / 'frames_coco.json'))
    assert sorted(coco.getCatIds()) == objects
    for t, ids in enumerate(maps):
        image = coco.imgs[t + 1]
        assert (image['frame_index'], image['file_name'], image['height'], image['width']) == (
            t, f'{t:05d}.png', *ids.shape)
        rebuilt = np.zeros_like(ids)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[t + 1])):
            m = coco.annToMask(ann).astype(bool)
            assert not (rebuilt[m] != 0).any() and ann['area'] == m.sum()
            assert ann['bbox'] == [float(v) for v in rle.toBbox(rle.encode(np.asfortranarray(m.astype(np.uint8))))]
            rebuilt[m] = ann['category_id']
        assert np.array_equal(rebuilt, ids), t
    # soft: per-object probabilities at the feature map; their argmax, upsampled, is the written mask
    for t, ids in enumerate(maps):
        with np.load(out / 'frames_soft' / f'{t:05d}.npz') as z:
            probs, labels, size, annotated = z['probs'], z['ids'], tuple(z['size']), bool(z['annotated'])
        assert probs.dtype == np.float32 and probs.shape[0] == len(labels) and size == ids.shape
        assert list(labels) == [0] + objects and annotated == (t == 0)
        assert np.allclose(probs.sum(0), 1, atol=1e-4)
        if not annotated:
            index = soft_to_index(torch.from_numpy(probs).permute(1, 2, 0), size).numpy()
            assert np.array_equal(labels[index], ids), t


def test_export_without_palette_writes_only_what_is_asked(hockey, tmp_path):
    root, frames, _ = hockey
    assert run_test_py(['--video', str(root / 'frames'), '--mask', str(root / 'first.png'), '--save-path',
                     str(tmp_path), '--export', 'binary'] + FAST) == 0
    assert sorted(os.listdir(tmp_path)) == ['.crw_outputs.json', 'frames_binary', 'frames_overlay.mp4']
    recorded = json.loads((tmp_path / '.crw_outputs.json').read_text())['runs'][0]['files']
    written = sorted(os.path.relpath(os.path.join(r, n), tmp_path) for r, _, names in os.walk(tmp_path)
                     for n in names if n != '.crw_outputs.json')
    assert sorted(recorded) == written      # the run's record lists exactly what it wrote


def test_api_per_object_masks(hockey, ckpt):
    root, frames, first = hockey
    encoder = load_encoder(ckpt, 'cpu')
    frames, first = frames[:3, ::2, ::2], first[::2, ::2]
    plain = list(propagate(encoder, frames, first))
    per_object = list(propagate(encoder, frames, first, per_object=True))
    objects = [int(k) for k in np.unique(first) if k != 0]
    assert [t for t, _ in per_object] == [0, 1, 2]
    for (t, ids), (t2, masks) in zip(plain, per_object):
        assert t == t2 and sorted(masks) == objects
        for k, m in masks.items():
            assert m.dtype == bool and np.array_equal(m, ids == k)


# ----------------------------------------------------------------------------------------------------------
# masks as people save them
# ----------------------------------------------------------------------------------------------------------

def two_objects(H=12, W=16):
    ids = np.zeros((H, W), np.int64)
    ids[2:6, 2:7] = 1
    ids[7:11, 9:15] = 2
    return ids


def rgba(ids, colours, background, alpha_objects=255):
    """An RGBA image: ``colours[k]`` on object k (opaque), ``background`` (transparent) elsewhere."""
    out = np.zeros(ids.shape + (4,), np.uint8)
    out[..., :3] = background
    for k, c in colours.items():
        out[ids == k, :3] = c
    out[..., 3] = np.where(ids > 0, alpha_objects, 0)
    return out


@pytest.mark.parametrize('case', ['davis colours', 'own colours', 'alpha only, black', 'alpha only, white'])
def test_rgba_mask_transparent_pixels_are_background(case, tmp_path):
    ids = two_objects()
    davis = davis_palette()
    if case == 'davis colours':
        img, want = rgba(ids, {1: davis[1], 2: davis[2]}, (255, 255, 255)), ids
    elif case == 'own colours':    # numbered in colour order: blue (0x0000ff) before red
        img, want = rgba(ids, {1: (255, 0, 0), 2: (0, 0, 255)}, (255, 255, 255)), np.choose(ids, [0, 2, 1])
    else:                          # the object only in the alpha channel; one colour everywhere
        colour = (0, 0, 0) if 'black' in case else (255, 255, 255)
        img, want = rgba(ids, {1: colour, 2: colour}, colour), (ids > 0).astype(np.int64)
    Image.fromarray(img, 'RGBA').save(tmp_path / 'm.png')
    assert np.array_equal(MaskReader(note=lambda m: None).read(str(tmp_path / 'm.png')), want)


def test_greyscale_alpha_and_opaque_rgba_masks(tmp_path):
    ids = two_objects()
    grey = np.where(ids > 0, ids, 200).astype(np.uint8)     # a grey level under the transparent pixels
    la = np.stack([grey, np.where(ids > 0, 255, 0).astype(np.uint8)], -1)
    Image.fromarray(la, 'LA').save(tmp_path / 'la.png')
    assert np.array_equal(MaskReader().read(str(tmp_path / 'la.png')), ids)
    # an alpha channel that is opaque everywhere changes nothing: black is background
    img = rgba(ids, {1: davis_palette()[1], 2: davis_palette()[2]}, (0, 0, 0))
    img[..., 3] = 255
    Image.fromarray(img, 'RGBA').save(tmp_path / 'opaque.png')
    assert np.array_equal(MaskReader().read(str(tmp_path / 'opaque.png')), ids)


def test_rgba_mask_through_test_py_equals_its_palette_png(hockey, ckpt, tmp_path):
    root, _, first = hockey
    colours = {int(k): davis_palette()[k] for k in np.unique(first) if k != 0}
    Image.fromarray(rgba(first, colours, (255, 255, 255)), 'RGBA').save(tmp_path / 'first_rgba.png')
    for name, mask in (('rgba', tmp_path / 'first_rgba.png'), ('palette', root / 'first.png')):
        assert run_test_py(['--video', str(root / 'frames'), '--mask', str(mask), '--resume', ckpt, '--save-path',
                         str(tmp_path / name)] + FAST) == 0
    for t in range(4):
        assert np.array_equal(ids_of(tmp_path / 'rgba' / 'frames' / f'{t:05d}.png'),
                              ids_of(tmp_path / 'palette' / 'frames' / f'{t:05d}.png')), t


@pytest.mark.parametrize('name', ['first.jpg', 'first.png'])   # refused by content, whatever the name
def test_jpeg_mask_refused_in_one_line(name, hockey, ckpt, tmp_path, capsys):
    root, _, first = hockey
    Image.fromarray(davis_palette()[first]).save(tmp_path / name, format='JPEG', quality=95)
    with pytest.raises(CRWError, match='JPEG'):
        MaskReader().read(str(tmp_path / name))
    assert run_test_py(['--video', str(root / 'frames'), '--mask', str(tmp_path / name), '--resume', ckpt,
                     '--save-path', str(tmp_path / 'out')] + FAST) != 0
    line = only_line(capsys)
    assert name in line and 'JPEG' in line and 'PNG' in line
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')


# ----------------------------------------------------------------------------------------------------------
# rotated videos (phones): both decoders give the upright frames
# ----------------------------------------------------------------------------------------------------------

def decode_with(backend, path, monkeypatch):
    monkeypatch.setenv('CRW_VIDEO_BACKEND', backend)
    return np.stack([f for _, f in iter_frames(path)])


@pytest.mark.parametrize('rotation', [90, 180])
def test_rotated_video_decodes_upright_with_both_backends(rotation, tmp_path, monkeypatch):
    seq = make_sequence(num_frames=3, height=32, width=48, num_objects=2, seed=3)
    try:
        path = write_video(str(tmp_path / 'phone.mp4'), seq['frames'], rotation=rotation)
    except NotImplementedError as e:
        pytest.skip(str(e))
    tc, pyav = decode_with('torchcodec', path, monkeypatch), decode_with('pyav', path, monkeypatch)
    assert np.array_equal(tc, pyav)
    upright = np.stack([np.rot90(f, rotation // 90) for f in seq['frames']]).astype(int)
    assert tc.shape == upright.shape
    err = np.abs(tc.astype(int) - upright).mean()
    assert err < 20   # codec loss only
    if rotation == 180:   # the frames as stored are much further off: the rotation was applied
        assert np.abs(tc.astype(int) - seq['frames'].astype(int)).mean() > 2 * err


def test_pyav_rotation_from_side_data_when_frames_have_no_rotation(tmp_path):
    # older PyAV: no VideoFrame.rotation; the display matrix is read from the frame's side data
    import av
    from crw.data.video_io import _pyav_rotation
    seq = make_sequence(num_frames=2, height=16, width=16, num_objects=1, seed=1)
    try:
        path = write_video(str(tmp_path / 'r.mp4'), seq['frames'], rotation=90)
    except NotImplementedError as e:
        pytest.skip(str(e))
    with av.open(path) as c:
        frame = next(c.decode(video=0))
        bare = argparse.Namespace(side_data=frame.side_data)
        assert _pyav_rotation(bare) == _pyav_rotation(frame) == 90


def test_rotated_video_masks_agree_between_backends(ckpt, tmp_path, monkeypatch):
    seq = make_sequence(num_frames=4, height=32, width=48, num_objects=2, seed=4)
    try:
        path = write_video(str(tmp_path / 'phone.mp4'), seq['frames'], rotation=180)
    except NotImplementedError as e:
        pytest.skip(str(e))
    save_indexed_png(str(tmp_path / 'first.png'), np.rot90(seq['masks'][0], 2))
    for backend in ('torchcodec', 'pyav'):
        monkeypatch.setenv('CRW_VIDEO_BACKEND', backend)
        assert run_test_py(['--video', path, '--mask', str(tmp_path / 'first.png'), '--resume', ckpt,
                         '--save-path', str(tmp_path / backend)] + FAST) == 0
    for t in range(4):
        assert np.array_equal(ids_of(tmp_path / 'torchcodec' / 'phone' / f'{t:05d}.png'),
                              ids_of(tmp_path / 'pyav' / 'phone' / f'{t:05d}.png')), t


# ----------------------------------------------------------------------------------------------------------
# reverse decoding (--bidirectional on a video file): PyAV, pinned or as TorchCodec's fallback
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def long_clip(tmp_path_factory):
    """A 20-frame 24x16 mp4 (more than REVERSE_CHUNK frames) and its frames decoded forward by PyAV [T, H, W, 3]
    (TorchCodec's within 1)."""
    from crw.data.video_io import REVERSE_CHUNK
    T = REVERSE_CHUNK + 4
    path = write_video(str(tmp_path_factory.mktemp('rev') / 'long.mp4'),
                       make_sequence(num_frames=T, height=16, width=24, num_objects=1, seed=7)['frames'])
    with pytest.MonkeyPatch.context() as mp:
        forward, tc = decode_with('pyav', path, mp), decode_with('torchcodec', path, mp)
    assert np.abs(tc.astype(int) - forward.astype(int)).max() <= 1     # the backends agree, as their tests ask
    return path, forward


@pytest.mark.parametrize('last, chunk', [(18, None), (6, 4), (3, 4)])
def test_pyav_reverse_decoding_is_forward_decoding_reversed(last, chunk, long_clip, monkeypatch):
    """iter_frames_reversed with PyAV pinned: frames last, ..., 0, each the frame forward decoding gives, across
    chunk boundaries (REVERSE_CHUNK's: frames 3-18 then 0-2; 4: 3-6 then 0-2; one whole chunk), from a frame
    that is not the video's last; TorchCodec is never asked."""
    from crw.data import video_io
    path, forward = long_clip
    monkeypatch.setattr(video_io, '_open_torchcodec', lambda p: pytest.fail('TorchCodec used'))
    monkeypatch.setenv('CRW_VIDEO_BACKEND', 'pyav')
    got = list(video_io.iter_frames_reversed(path, last) if chunk is None else
               video_io.iter_frames_reversed(path, last, chunk))
    assert [t for t, _ in got] == list(range(last, -1, -1))
    for t, img in got:
        assert img.dtype == np.uint8 and np.array_equal(img, forward[t]), t


def test_reverse_decoding_falls_back_to_pyav_when_torchcodec_fails(long_clip, monkeypatch, capsys):
    """TorchCodec opens the file but fails on its first chunk: PyAV decodes it, with one warning; the next
    reverse decoding of the file goes to PyAV directly."""
    from crw.data import video_io
    path, forward = long_clip

    class Broken:
        def get_frames_at(self, indices):
            raise RuntimeError('cannot seek')
    monkeypatch.delenv('CRW_VIDEO_BACKEND', raising=False)
    monkeypatch.setattr(video_io, '_torchcodec_decoder', lambda: object)
    monkeypatch.setattr(video_io, '_open_torchcodec', lambda p: Broken())
    monkeypatch.setattr(video_io, '_TC_FAILED_FILES', set())
    for _ in range(2):
        got = list(video_io.iter_frames_reversed(path, 5, 4))
        assert [t for t, _ in got] == list(range(5, -1, -1))
        assert all(np.array_equal(img, forward[t]) for t, img in got)
    warnings = [x for x in capsys.readouterr().err.splitlines() if 'TorchCodec failed' in x]
    assert len(warnings) == 1 and 'cannot seek' in warnings[0] and 'PyAV' in warnings[0]
