"""Your own video: test.py --video/--mask, the Python API (propagation.propagate / VideoPropagator), masks on
later frames, and bad masks and videos. Synthetic clips with exact masks, built here; tiny sizes."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import FullDisk, ids_of, load_script, one_line, only_line, run_test_py
from crw.data.labels import davis_palette, save_indexed_png
from crw.data.synthetic import make_sequence, write_davis_layout, write_frame_folder, write_video
from crw.data.video_io import iter_frames, probe_video
from crw.eval.davis_io import read_label_png
from crw.propagation import Protocol, VideoPropagator, load_encoder, propagate
from crw.utils.errors import CRWError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL = ['--topk', '10', '--videoLen', '20', '--radius', '12', '--temperature', '0.05', '--cropSize', '-1',
            '--workers', '0', '--device', 'cpu']


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    """A 6-frame clip laid out as DAVIS (PNG frames, lossless) plus its filelist."""
    root = tmp_path_factory.mktemp('clip')
    seq = make_sequence(num_frames=6, height=48, width=80, num_objects=3, seed=5)
    filelist = write_davis_layout(str(root), {'clip': seq}, ext='png')
    return root, filelist, seq


@pytest.fixture(scope='module')
def filelist_out(clip, ckpt, tmp_path_factory):
    """test.py --filelist's masks of the clip [T, H, W]."""
    root, filelist, seq = clip
    out = tmp_path_factory.mktemp('fl')
    assert run_test_py(['--filelist', filelist, '--resume', ckpt, '--save-path', str(out)] + PROTOCOL) == 0
    return np.stack([ids_of(out / f'0_{t}_mask.png') for t in range(len(seq['frames']))])


def run_filelist(frames_dir, ann_dir, ckpt, out):
    """test.py --filelist on one video (a one-line filelist beside ``out``)."""
    filelist = out.parent / (out.name + '_list.txt')
    filelist.write_text(f'{frames_dir} {ann_dir}\n')
    return run_test_py(['--filelist', str(filelist), '--resume', ckpt, '--save-path', str(out)] + PROTOCOL)


# ----------------------------------------------------------------------------------------------------------
# --video == --filelist on the same frames and mask
# ----------------------------------------------------------------------------------------------------------

def test_video_folder_equals_filelist(clip, ckpt, filelist_out, tmp_path):
    root, filelist, seq = clip
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    # a palette of its own in the first mask: kept in the outputs
    pal = np.random.default_rng(0).integers(0, 256, (256, 3)).astype(np.uint8)
    save_indexed_png(str(tmp_path / 'first.png'), seq['masks'][0], pal)
    assert run_test_py(['--video', str(frames_dir), '--mask', str(tmp_path / 'first.png'), '--resume', ckpt,
                     '--save-path', str(tmp_path / 'v'), '--save-blend'] + PROTOCOL) == 0
    for t in range(6):
        out = Image.open(tmp_path / 'v' / 'clip' / f'{t:05d}.png')
        assert out.mode == 'P' and np.array_equal(np.asarray(out.getpalette(), np.uint8).reshape(-1, 3)[:256], pal)
        assert np.array_equal(np.asarray(out), filelist_out[t]), t
        assert (tmp_path / 'v' / 'clip_blend' / f'{t:05d}.jpg').exists()
    assert np.array_equal(ids_of(tmp_path / 'v' / 'clip' / '00000.png'), seq['masks'][0])
    assert probe_video(str(tmp_path / 'v' / 'clip_overlay.mp4'))[0] == 6
    assert not [n for n in os.listdir(tmp_path / 'v') if n.endswith('.tmp')]


def test_video_file_equals_filelist_on_its_decoded_frames(clip, ckpt, tmp_path):
    # an mp4 decodes to other pixels than the frames it was made from: compare with the filelist path run on
    # the decoded frames themselves (written losslessly as PNG)
    root, _, seq = clip
    mp4 = write_video(str(tmp_path / 'my clip.mp4'), seq['frames'])
    decoded = np.stack([f for _, f in iter_frames(mp4)])
    assert decoded.shape == seq['frames'].shape
    d = tmp_path / 'dec'
    write_frame_folder(str(d / 'JPEGImages' / 'v'), decoded, ext='png')
    (d / 'Annotations' / 'v').mkdir(parents=True)
    save_indexed_png(str(d / 'Annotations' / 'v' / '00000.png'), seq['masks'][0])
    assert run_filelist(d / 'JPEGImages' / 'v', d / 'Annotations' / 'v', ckpt, tmp_path / 'fl') == 0
    first = root / 'Annotations' / '480p' / 'clip' / '00000.png'
    assert run_test_py(['--video', mp4, '--mask', str(first), '--resume', ckpt, '--save-path', str(tmp_path / 'v')]
                    + PROTOCOL) == 0
    for t in range(6):
        assert np.array_equal(ids_of(tmp_path / 'v' / 'my clip' / f'{t:05d}.png'),
                              ids_of(tmp_path / 'fl' / f'0_{t}_mask.png')), t
    assert probe_video(str(tmp_path / 'v' / 'my clip_overlay.mp4'))[0] == 6


def test_python_api_is_what_test_py_uses(clip, ckpt, filelist_out):
    root, filelist, seq = clip
    encoder = load_encoder(ckpt, 'cpu')
    protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
    mask = str(root / 'Annotations' / '480p' / 'clip' / '00000.png')
    out = list(propagate(encoder, iter(seq['frames']), mask, protocol, 'cpu'))    # a generator of frames
    assert [t for t, _ in out] == list(range(6))
    written = filelist_out
    frames_from_paths = list(propagate(encoder, sorted((root / 'JPEGImages' / '480p' / 'clip').iterdir()),
                                       {0: seq['masks'][0]}, protocol, 'cpu'))
    for (t, ids), (_, ids2) in zip(out, frames_from_paths):
        assert ids.dtype == np.uint8 and ids.shape == (48, 80)
        assert np.array_equal(ids, written[t]) and np.array_equal(ids2, written[t])
    # one frame at a time: None before the first mask, the mask itself on its frame
    vp = VideoPropagator(encoder, protocol)
    assert vp.step(seq['frames'][0]) is None
    assert np.array_equal(vp.step(torch.from_numpy(seq['frames'][1]), mask=seq['masks'][1]), seq['masks'][1])
    nxt = vp.step(seq['frames'][2])
    assert nxt.shape == (48, 80) and set(np.unique(nxt)) <= {0, 1, 2, 3} and vp.start == 1


def test_max_side_propagates_smaller_and_writes_full_size(clip, ckpt, tmp_path):
    root, _, seq = clip
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    first = root / 'Annotations' / '480p' / 'clip' / '00000.png'
    assert run_test_py(['--video', str(frames_dir), '--mask', str(first), '--resume', ckpt, '--save-path',
                     str(tmp_path), '--max-side', '40'] + PROTOCOL) == 0
    ids = ids_of(tmp_path / 'clip' / '00003.png')
    assert ids.shape == (48, 80) and set(np.unique(ids)) <= {0, 1, 2, 3}


# ----------------------------------------------------------------------------------------------------------
# masks on later frames
# ----------------------------------------------------------------------------------------------------------

class FlatColourEncoder(torch.nn.Module):
    """Features = the mean colour of each 8x8 block (stride 8), for flat-coloured test videos."""

    def frames(self, x):
        return F.avg_pool2d(x, 8, ceil_mode=True)


def flat_clip(T=9):
    """Grey background; object 1 (four feature cells wide, one colour per cell column: red to yellow) moves
    right 8 px (one cell) a frame from frame 0; object 2 (green) enters at the top left at frame 3 and moves down
    8 px a frame. Exact masks."""
    H, W = 96, 128
    pal = np.array([[128, 128, 128], [230, 30, 30], [30, 200, 30]], np.uint8)
    masks = np.zeros((T, H, W), np.uint8)
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        masks[t, 48:80, 8 + 8 * t:40 + 8 * t] = 1
        if t >= 3:
            y = 8 * (t - 3)
            masks[t, y:y + 24, 0:24] = 2
        frames[t] = pal[masks[t]]
        for c in range(4):
            frames[t, 48:80, 8 + 8 * t + 8 * c:16 + 8 * t + 8 * c] = (230, 30 + 60 * c, 30)
    return frames, masks


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_later_mask_adds_an_object_and_corrects_one():
    frames, masks = flat_clip()
    only1 = np.where(masks[0] == 1, 1, 0)
    only2 = np.where(masks[3] == 2, 2, 0)                       # frame 3 annotates the newcomer only
    half1 = masks[6] == 1
    half1[:, np.nonzero(half1.any(0))[0][16:]] = False          # frame 6 redraws object 1 as its left half
    # L = 3: with flat colours the same object cell ties exactly across frames; a short context keeps every
    # tied candidate inside the top-k
    protocol = Protocol(topk=10, video_len=3, radius=4, temperature=0.05)
    out = dict(propagate(FlatColourEncoder(), frames, {0: only1, 3: only2, 6: np.where(half1, 1, 0)}, protocol,
                         'cpu'))
    assert sorted(out) == list(range(9))
    for t in range(3):
        assert 2 not in out[t]
        assert iou(out[t] == 1, masks[t] == 1) > 0.95
    assert np.array_equal(out[3] == 2, masks[3] == 2)            # the annotation itself
    assert iou(out[3] == 1, masks[3] == 1) > 0.95                # object 1 goes on as predicted
    for t in (4, 5):
        for k in (1, 2):
            assert iou(out[t] == k, masks[t] == k) > 0.9, (t, k)
    # frame 6: object 1 is exactly the new annotation; its other pixels are no longer object 1
    assert np.array_equal(out[6] == 1, half1)
    assert iou(out[6] == 2, masks[6] == 2) > 0.9
    # and the corrected object 1 is what is propagated after it: about half the true object
    for t in (7, 8):
        assert 0.35 < (out[t] == 1).sum() / (masks[t] == 1).sum() < 0.65, t
        assert iou(out[t] == 2, masks[t] == 2) > 0.9, t


def test_mask_folder_starts_at_first_annotated_frame(clip, ckpt, tmp_path, capsys):
    root, _, seq = clip
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    md = tmp_path / 'masks'
    md.mkdir()
    save_indexed_png(str(md / '00002.png'), seq['masks'][2])
    save_indexed_png(str(md / '00004.png'), np.where(seq['masks'][4] == 3, 3, 0))
    assert run_test_py(['--video', str(frames_dir), '--mask', str(md), '--resume', ckpt, '--save-path',
                     str(tmp_path / 'o')] + PROTOCOL) == 0
    err = capsys.readouterr().err
    assert 'the first annotated frame is 00002' in err and 'get no output' in err
    assert sorted(os.listdir(tmp_path / 'o' / 'clip')) == [f'{t:05d}.png' for t in range(2, 6)]
    assert np.array_equal(ids_of(tmp_path / 'o' / 'clip' / '00002.png'), seq['masks'][2])
    four = ids_of(tmp_path / 'o' / 'clip' / '00004.png')
    assert np.array_equal(four == 3, seq['masks'][4] == 3)
    assert probe_video(str(tmp_path / 'o' / 'clip_overlay.mp4'))[0] == 4


def test_propagator_label_channels_grow_on_both_paths():
    from crw.propagation import ReferencePropagator, WindowedPropagator
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(4, 8, 6, 7, generator=g), dim=1)
    labels = torch.softmax(torch.randn(6, 7, 2, generator=g), -1)
    p = Protocol(topk=5, video_len=2, radius=3, temperature=0.05)
    outs = []
    for cls in (WindowedPropagator, ReferencePropagator):
        prop = cls(feats[0], labels, p)
        prop.step(feats[1])
        prop.add_labels(1)
        new = torch.zeros(6, 7, 3)
        new[..., 2] = 1
        prop.set_labels(new)                      # frame 1 is now all object "2"
        outs.append(prop.step(feats[2]))
    assert outs[0].shape == (6, 7, 3)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert outs[0][..., 2].sum() > 0 and torch.allclose(outs[0].sum(-1), torch.ones(6, 7), atol=1e-5)


@pytest.mark.parametrize('video_len', [2, 5])
def test_correction_is_the_same_on_both_paths(video_len):
    """correct(): the corrected frame joins the long-term frames and relabels the short-term ones; the
    windowed and the reference propagators agree through two corrections."""
    from crw.propagation import ReferencePropagator, WindowedPropagator
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(12, 8, 6, 7, generator=g), dim=1)
    labels = torch.softmax(torch.randn(6, 7, 2, generator=g) * 3, -1)
    p = Protocol(topk=5, video_len=video_len, radius=3, temperature=0.05)
    outs = []
    for cls in (WindowedPropagator, ReferencePropagator):
        prop, out = cls(feats[0], labels, p), []
        for t in range(1, 12):
            out.append(prop.step(feats[t]))
            if t in (3, 4, 7):
                prop.correct(torch.softmax(torch.randn(6, 7, 2, generator=torch.Generator().manual_seed(t)), -1))
        outs.append(torch.stack(out))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    # the context of frame 8 (after the corrections at 3, 4 and 7): frames 0, 3, 4, 7 in full, 8-L ... 7
    prop = ReferencePropagator(feats[0], labels, p)
    for t in range(1, 8):
        prop.step(feats[t])
        if t in (3, 4, 7):
            prop.correct(labels)
    _, (frames, _, _) = prop.step(feats[8], return_topk=True)
    assert set(frames.unique().tolist()) <= {0, 3, 4, 7} | set(range(8 - video_len, 8))


def test_correction_relabels_the_short_term_frames():
    """After a correction at frame 6 (L = 4), frames 3-5 hold what frame 6's labels give them by one step of
    the protocol (brute force here: per node, the k best in-radius nodes of frame 6); frame 0 (annotated)
    and frame 2 (outside the window) keep theirs."""
    from crw.propagation import ReferencePropagator
    g = torch.Generator().manual_seed(4)
    feats = F.normalize(torch.randn(8, 8, 5, 6, generator=g), dim=1)
    labels = torch.softmax(torch.randn(5, 6, 3, generator=g) * 3, -1)
    p = Protocol(topk=4, video_len=4, radius=2, temperature=0.1)
    prop = ReferencePropagator(feats[0], labels, p)
    for t in range(1, 7):
        prop.step(feats[t])
    before = [lab.clone() for lab in prop.labels]
    corrected = torch.softmax(torch.randn(5, 6, 3, generator=g) * 3, -1)
    prop.correct(corrected)
    src, lab6 = feats[6].reshape(8, -1), corrected.reshape(-1, 3)
    for j in (3, 4, 5):
        q = feats[j].reshape(8, -1)
        for n in range(30):
            y, x = divmod(n, 6)
            near = [m for m in range(30) if (m // 6 - y) ** 2 + (m % 6 - x) ** 2 < 4]
            s = torch.tensor([float(q[:, n] @ src[:, m]) for m in near])
            v, i = s.topk(4)
            want = (torch.softmax(v / 0.1, 0)[:, None] * lab6[[near[k] for k in i]]).sum(0)
            assert torch.allclose(prop.labels[j][n], want, atol=1e-5), (j, n)
    for j in (0, 1, 2):
        assert torch.equal(prop.labels[j], before[j])
    assert torch.equal(prop.labels[6], lab6)


def test_correction_on_real_frames_helps():
    """The bundled hockey clip (real DAVIS frames), 24 frames at longer side 214, pretrained.pth: the ground
    truth of frame 12 as a correction beats no correction on the frames after it and is about as good as a
    fresh start from it (measured: 0.473, 0.581, 0.591; on davis-dev in bench/RESULTS.md)."""
    clip = os.path.join(ROOT, 'assets', 'hockey')
    frames = [f for _, f in zip(range(24), (f for _, f in iter_frames(os.path.join(clip, 'hockey.mp4'))))]
    truth = [read_label_png(os.path.join(clip, 'Annotations', '480p', 'hockey', f'{t:05d}.png')) for t in range(24)]
    encoder = load_encoder(os.path.join(ROOT, 'pretrained.pth'), 'cpu')
    protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)

    def score(masks):
        out = dict(propagate(encoder, frames, masks, protocol, 'cpu', max_side=214))
        return np.mean([iou(out[t] > 0, truth[t] > 0) for t in range(13, 24)])
    none, corrected, fresh = score({0: truth[0]}), score({0: truth[0], 12: truth[12]}), score({12: truth[12]})
    assert corrected > none + 0.05 and corrected > fresh - 0.03, (none, corrected, fresh)


# ----------------------------------------------------------------------------------------------------------
# bad input: one line, nothing written half
# ----------------------------------------------------------------------------------------------------------

def antialiased_rgb(path, mask):
    """An RGB rendering of mask with blurred (anti-aliased) edges: many colours."""
    rgb = davis_palette()[mask].astype(np.float32)
    k = np.ones(5, np.float32) / 5
    for axis in (0, 1):
        rgb = np.apply_along_axis(lambda v: np.convolve(v, k, mode='same'), axis, rgb)
    Image.fromarray(rgb.round().astype(np.uint8)).save(path)


def test_antialiased_rgb_mask_refused(clip, ckpt, tmp_path, capsys):
    root, _, seq = clip
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    antialiased_rgb(tmp_path / 'aa.png', seq['masks'][0])
    assert run_test_py(['--video', str(frames_dir), '--mask', str(tmp_path / 'aa.png'), '--resume', ckpt,
                     '--save-path', str(tmp_path / 'o')] + PROTOCOL) == 1
    line = only_line(capsys)
    assert line.startswith('test.py: error:') and 'aa.png' in line and 'distinct colours' in line
    assert 'palette PNG' in line and int(line.split(': ')[3].split()[0]) > 32
    assert not (tmp_path / 'o').exists()


def test_binary_0_255_mask_is_object_1_on_both_paths(clip, ckpt, tmp_path, capsys):
    root, _, seq = clip
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    ann = tmp_path / 'ann'
    ann.mkdir()
    Image.fromarray(np.where(seq['masks'][0] == 2, 255, 0).astype(np.uint8), mode='L').save(ann / '00000.png')
    assert run_test_py(['--video', str(frames_dir), '--mask', str(ann / '00000.png'), '--resume', ckpt,
                     '--save-path', str(tmp_path / 'o')] + PROTOCOL) == 0
    err = capsys.readouterr().err
    notes = [x for x in err.splitlines() if '0/255' in x]
    assert len(notes) == 1 and 'object 1' in notes[0]
    assert set(np.unique(ids_of(tmp_path / 'o' / 'clip' / '00003.png'))) <= {0, 1}
    assert np.array_equal(ids_of(tmp_path / 'o' / 'clip' / '00000.png'), (seq['masks'][0] == 2).astype(np.uint8))
    assert run_filelist(frames_dir, ann, ckpt, tmp_path / 'f') == 0
    assert len([x for x in capsys.readouterr().err.splitlines() if '0/255' in x]) == 1
    assert set(np.unique(ids_of(tmp_path / 'f' / '0_0_mask.png'))) == {0, 1}


@pytest.mark.parametrize('case', ['antialiased', 'no first frame'])
def test_filelist_annotation_refused(case, clip, ckpt, tmp_path, capsys):
    # the filelist path reads annotations with the same code: an anti-aliased mask is refused there too; and
    # a video whose first frame has no annotation is refused rather than started from frame 1's
    root, _, seq = clip
    ann = tmp_path / 'ann'
    ann.mkdir()
    if case == 'antialiased':
        antialiased_rgb(ann / '00000.png', seq['masks'][0])
        expected = ['distinct colours', 'palette PNG', ':1:']
    else:
        save_indexed_png(str(ann / '00001.png'), seq['masks'][1])
        expected = ['no annotation of the first frame 00000.png', '00001.png', ':1:']
    assert run_filelist(root / 'JPEGImages' / '480p' / 'clip', ann, ckpt, tmp_path / 'f') == 1
    line = only_line(capsys)
    assert line.startswith('test.py: error:') and all(e in line for e in expected), line
    assert not list((tmp_path / 'f').glob('*_mask.png'))


def test_mask_size(clip, ckpt, tmp_path, capsys):
    root, _, seq = clip
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    big = np.repeat(np.repeat(seq['masks'][0], 2, 0), 2, 1)               # same aspect ratio, twice the size
    save_indexed_png(str(tmp_path / 'big.png'), big)
    assert run_test_py(['--video', str(frames_dir), '--mask', str(tmp_path / 'big.png'), '--resume', ckpt,
                     '--save-path', str(tmp_path / 'o')] + PROTOCOL) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if 'nearest neighbour' in x]
    assert len(warnings) == 1 and '160x96' in warnings[0] and '80x48' in warnings[0]
    assert np.array_equal(ids_of(tmp_path / 'o' / 'clip' / '00000.png'), seq['masks'][0])
    save_indexed_png(str(tmp_path / 'wide.png'), seq['masks'][0][:40])    # 80x40: another aspect ratio
    assert run_test_py(['--video', str(frames_dir), '--mask', str(tmp_path / 'wide.png'), '--resume', ckpt,
                     '--save-path', str(tmp_path / 'w')] + PROTOCOL) == 1
    line = only_line(capsys)
    assert 'wide.png' in line and 'aspect ratio' in line
    assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_bad_video_and_mask_folder_are_one_line(clip, ckpt, tmp_path, capsys):
    root, _, seq = clip
    bad = tmp_path / 'broken.mp4'
    bad.write_bytes(b'not a video at all' * 100)
    save_indexed_png(str(tmp_path / 'm.png'), seq['masks'][0])
    md = tmp_path / 'masks'
    md.mkdir()
    save_indexed_png(str(md / '00042.png'), seq['masks'][0])
    common = ['--resume', ckpt, '--save-path', str(tmp_path / 'o')] + PROTOCOL
    # as a user runs it: one line on stderr, no traceback
    r = subprocess.run([sys.executable, 'test.py', '--video', str(bad), '--mask', str(tmp_path / 'm.png')] + common,
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and 'broken.mp4: cannot decode' in err[0], r.stderr[-800:]
    assert run_test_py(['--video', str(root / 'JPEGImages' / '480p' / 'clip'), '--mask', str(md)] + common) == 1
    assert 'no mask is named like a frame' in only_line(capsys)
    for extra, text in ((['--video', str(bad)], '--video needs --mask'),
                        (['--video', str(bad), '--mask', str(md), '--filelist', str(bad)], 'not both'),
                        (['--filelist', str(bad), '--max-side', '100'], '--max-side goes with --video')):
        with pytest.raises(SystemExit) as e:
            run_test_py(extra + common)
        assert e.value.code == 2 and text in only_line(capsys)
    assert not (tmp_path / 'o').exists() or not any((tmp_path / 'o').rglob('*.png'))


def test_later_mask_with_wide_ids_refused_before_anything_is_written(clip, ckpt, tmp_path, capsys):
    # every mask of the folder is read before the first frame: an id an 8-bit PNG cannot hold, in frame 4's
    # 16-bit mask, is one line naming that file, and nothing is written
    root, _, seq = clip
    md = tmp_path / 'masks'
    md.mkdir()
    save_indexed_png(str(md / '00000.png'), seq['masks'][0])
    Image.fromarray(seq['masks'][4].astype(np.uint16) * 100).save(md / '00004.png')    # ids 0, 100, 200, 300
    assert run_test_py(['--video', str(root / 'JPEGImages' / '480p' / 'clip'), '--mask', str(md), '--resume', ckpt,
                     '--save-path', str(tmp_path / 'o')] + PROTOCOL) == 1
    line = only_line(capsys)
    assert '00004.png' in line and '0..255' in line
    assert not (tmp_path / 'o').exists()


# ----------------------------------------------------------------------------------------------------------
# outputs: never on an input, never mixed with another run's (utils/output_folders.py)
# ----------------------------------------------------------------------------------------------------------

def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    out = {}
    for r, _, files in os.walk(folder):
        for n in files:
            out[os.path.relpath(os.path.join(r, n), folder)] = open(os.path.join(r, n), 'rb').read()
    return out


@pytest.mark.parametrize('where', ['ground truth', 'frames'])
def test_save_path_onto_an_input_is_refused_before_anything_is_written(where, ckpt, tmp_path, capsys):
    # --save-path D/Annotations/480p would write D/Annotations/480p/clip/<frame>.png over the ground truth;
    # the parent of a PNG frames folder would write <parent>/clip/<frame>.png over the frames
    seq = make_sequence(num_frames=3, height=24, width=40, num_objects=2, seed=1)
    write_davis_layout(str(tmp_path / 'D'), {'clip': seq}, ext='png')
    save = {'ground truth': tmp_path / 'D' / 'Annotations' / '480p',
            'frames': tmp_path / 'D' / 'JPEGImages' / '480p' / '.' / ''}[where]
    before = snapshot(tmp_path)
    assert run_test_py(['--video', str(tmp_path / 'D' / 'JPEGImages' / '480p' / 'clip'), '--mask',
                     str(tmp_path / 'D' / 'Annotations' / '480p' / 'clip' / '00000.png'), '--resume', ckpt,
                     '--save-path', str(save)] + PROTOCOL) == 1
    line = only_line(capsys)
    assert line.startswith('test.py: error: --save-path') and 'an input' in line
    assert ('the folder of the mask' if where == 'ground truth' else 'the frames folder') in line
    assert snapshot(tmp_path) == before


def test_output_folder_of_another_run_is_refused_then_overwritten_exactly(clip, ckpt, tmp_path, capsys):
    # a 9-frame "clip" ran into the folder first; the 6-frame clip of the same name must not leave it mixed
    long = make_sequence(num_frames=9, height=48, width=80, num_objects=3, seed=6)
    long_dir = tmp_path / 'long' / 'clip'
    write_frame_folder(str(long_dir), long['frames'], ext='png')
    save_indexed_png(str(tmp_path / 'long_first.png'), long['masks'][0])
    out = tmp_path / 'out'
    assert run_test_py(['--video', str(long_dir), '--mask', str(tmp_path / 'long_first.png'), '--resume', ckpt,
                     '--save-path', str(out)] + PROTOCOL) == 0
    assert len(os.listdir(out / 'clip')) == 9
    (out / 'notes.txt').write_text('mine')
    root, _, seq = clip
    argv = ['--video', str(root / 'JPEGImages' / '480p' / 'clip'), '--mask',
            str(root / 'Annotations' / '480p' / 'clip' / '00000.png'), '--resume', ckpt, '--save-path', str(out)]
    capsys.readouterr()
    before = snapshot(out)
    assert run_test_py(argv + PROTOCOL) == 1
    line = only_line(capsys)
    assert 'holds the outputs of test.py --video' in line and '(10 files)' in line and '--overwrite' in line
    assert snapshot(out) == before
    assert run_test_py(argv + PROTOCOL + ['--overwrite']) == 0
    assert sorted(os.listdir(out / 'clip')) == [f'{t:05d}.png' for t in range(6)]      # 00006..00008 removed
    assert (out / 'notes.txt').read_text() == 'mine' and probe_video(str(out / 'clip_overlay.mp4'))[0] == 6
    runs = json.loads((out / '.crw_outputs.json').read_text())['runs']
    assert len(runs) == 1 and runs[0]['status'] == 'complete' and '--overwrite' in runs[0]['command']
    assert runs[0]['files'] == [f'clip/{t:05d}.png' for t in range(6)] + ['clip_overlay.mp4']


def test_save_path_that_is_a_file_is_one_line(clip, ckpt, tmp_path, capsys):
    root, _, seq = clip
    (tmp_path / 'results').write_text('not a folder')
    assert run_test_py(['--video', str(root / 'JPEGImages' / '480p' / 'clip'), '--mask',
                     str(root / 'Annotations' / '480p' / 'clip' / '00000.png'), '--resume', ckpt,
                     '--save-path', str(tmp_path / 'results')] + PROTOCOL) == 1
    assert 'results: is a file, not a folder' in only_line(capsys)
    assert (tmp_path / 'results').read_text() == 'not a folder'


@pytest.mark.parametrize('sig, status', [('SIGINT', 130), ('SIGTERM', 143)])
def test_ctrl_c_or_sigterm_mid_video_is_one_line_and_leaves_no_partial_overlay(sig, status, clip, ckpt, tmp_path,
                                                                               capsys, monkeypatch):
    import signal
    from crw.data.inference import outputs
    root, _, seq = clip
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    save_indexed_png(str(tmp_path / 'first.png'), seq['masks'][0])
    real_write = outputs.SequenceWriter.write

    def write_then_signal(self, frame):   # the signal arrives while frame 3 is being written (a real signal)
        real_write(self, frame)
        if frame.t == 3:
            os.kill(os.getpid(), getattr(signal, sig))
    monkeypatch.setattr(outputs.SequenceWriter, 'write', write_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / 'v'
    argv = ['--video', str(frames_dir), '--mask', str(tmp_path / 'first.png'), '--resume', ckpt,
            '--save-path', str(out)] + PROTOCOL
    assert run_test_py(argv) == status
    text = capsys.readouterr().err
    err = [line for line in text.replace('\r', '\n').splitlines() if 'test.py' in line]   # not the progress bar
    assert len(err) == 1 and err[0].startswith(f'test.py: interrupted ({"Ctrl-C" if sig == "SIGINT" else sig})'), text
    assert 'Traceback' not in text and '--overwrite' in err[0]
    # no overlay video, not even its hidden temporary file; the run is recorded as unfinished
    assert not [n for n in os.listdir(out) if n.endswith('.tmp') or n.endswith('.mp4')]
    assert json.loads((out / '.crw_outputs.json').read_text())['runs'][0]['status'] == 'running'
    assert signal.getsignal(signal.SIGTERM) is before
    # the re-run the message asks for completes
    monkeypatch.setattr(outputs.SequenceWriter, 'write', real_write)
    assert run_test_py(argv + ['--overwrite']) == 0
    assert probe_video(str(out / 'clip_overlay.mp4'))[0] == 6


def test_temporary_overlay_of_a_killed_run_is_removed(clip, ckpt, tmp_path):
    root, _, seq = clip
    save_indexed_png(str(tmp_path / 'first.png'), seq['masks'][0])
    out = tmp_path / 'v'
    out.mkdir()
    (out / '.clip_overlay.mp4.k1ll3d.tmp').write_bytes(b'half a video')   # SIGKILL: no clean-up ran
    assert run_test_py(['--video', str(root / 'JPEGImages' / '480p' / 'clip'), '--mask', str(tmp_path / 'first.png'),
                     '--resume', ckpt, '--save-path', str(out)] + PROTOCOL) == 0
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]


class _SeekableFullDisk(FullDisk):
    """FullDisk that also passes seeking on to the file (for the overlay video's writer)."""

    def seekable(self):
        return self.f.seekable()

    def seek(self, *a):
        return self.f.seek(*a)


@pytest.mark.parametrize('what', ['masks', 'overlay'])
def test_full_disk_stops_at_the_first_failed_write_in_one_line(what, clip, ckpt, tmp_path, capsys, monkeypatch):
    import contextlib
    from crw.data import video_io
    from crw.data.inference import outputs
    root, _, seq = clip
    save_indexed_png(str(tmp_path / 'first.png'), seq['masks'][0])
    frames_written = []
    real_write = outputs.SequenceWriter.write
    monkeypatch.setattr(outputs.SequenceWriter, 'write',
                        lambda self, frame: (frames_written.append(frame.t), real_write(self, frame)))
    if what == 'masks':    # the mask PNG of frame 1 (the first after the given one) finds the disk full
        real_png = outputs.save_indexed_png

        def png(path, *a):
            if not path.endswith('00000.png'):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_png(path, *a)
        monkeypatch.setattr(outputs, 'save_indexed_png', png)
        culprit = os.path.join('clip', '00001.png')
    else:                  # the overlay video's own file: PyAV's writes fail after 2000 bytes
        real_atomic = video_io.atomic_write

        @contextlib.contextmanager
        def small_disk(path, *a, **kw):
            with real_atomic(path, *a, **kw) as f:
                yield _SeekableFullDisk(f, 2000)
        monkeypatch.setattr(video_io, 'atomic_write', small_disk)
        culprit = 'clip_overlay.mp4'
    out = tmp_path / 'v'
    assert run_test_py(['--video', str(root / 'JPEGImages' / '480p' / 'clip'), '--mask', str(tmp_path / 'first.png'),
                     '--resume', ckpt, '--save-path', str(out)] + PROTOCOL) == 1
    text = capsys.readouterr().err
    err = [line for line in text.replace('\r', '\n').splitlines() if 'test.py' in line]
    assert len(err) == 1 and 'Traceback' not in text
    assert err[0].startswith(f'test.py: error: {out / culprit}: cannot write (No space left on device)')
    if what == 'masks':    # stopped at the next frames, not after the whole video
        assert max(frames_written) < len(seq['frames']) - 1, frames_written
    assert not [n for n in os.listdir(out) if n.endswith('.tmp') or n.endswith('.mp4')]


# ----------------------------------------------------------------------------------------------------------
# corrections on a textured scene; backward propagation
# ----------------------------------------------------------------------------------------------------------

class PatchEncoder(torch.nn.Module):
    """Features = the pixels of each 8x8 block (stride 8): textured blocks match where they moved to."""

    def frames(self, x):
        return F.pixel_unshuffle(x, 8)


def textured_clip(T=14, seed=3):
    """A static textured background; a textured object 3 cells tall and 4 wide moving right one cell (8 px) a
    frame, with a little noise on every frame. Exact masks [T, H, W]; the object's texture moves with it."""
    from crw.data.synthetic import smooth_texture
    rng = np.random.default_rng(seed)
    H, W = 64, 200
    background = smooth_texture(rng, H, W, cell=4)
    obj = smooth_texture(rng, 24, 32, cell=4)
    frames = np.zeros((T, H, W, 3), np.uint8)
    masks = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        frames[t] = background
        frames[t, 24:48, 8 * t:8 * t + 32] = obj
        masks[t, 24:48, 8 * t:8 * t + 32] = 1
        noise = rng.normal(0, 2, size=frames[t].shape)
        frames[t] = np.clip(frames[t] + noise, 0, 255).astype(np.uint8)
    return frames, masks


def test_correction_on_a_textured_scene_grows_the_object():
    """Frame 0 annotates the object's left half; frame 6 corrects it to the whole object. The frames after 6
    must follow the correction (zeroing the object in every stored frame, as before, lost it: IoU about 0.2)."""
    frames, masks = textured_clip()
    left = masks[0].copy()
    left[:, 16:] = 0
    protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
    out = dict(propagate(PatchEncoder(), frames, {0: left, 6: masks[6]}, protocol, 'cpu'))
    for t in range(1, 6):     # before the correction: the left half, carried along
        assert iou(out[t] == 1, (masks[t] == 1) & (np.arange(200) < 8 * t + 16)) > 0.8, t
    assert np.array_equal(out[6], masks[6])
    for t in range(7, len(frames)):
        assert iou(out[t] == 1, masks[t] == 1) > 0.9, t
    # at least as good as a fresh start from frame 6's mask
    fresh = dict(propagate(PatchEncoder(), frames, {6: masks[6]}, protocol, 'cpu'))
    for t in range(7, len(frames)):
        assert iou(out[t] == 1, masks[t] == 1) >= iou(fresh[t] == 1, masks[t] == 1) - 0.02, t


def test_backward_from_the_last_frame_api():
    frames, masks = textured_clip(T=10)
    T = len(frames)
    protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
    out = list(propagate(PatchEncoder(), frames, {T - 1: masks[T - 1]}, protocol, 'cpu', reverse=True))
    assert [t for t, _ in out] == list(range(T - 1, -1, -1))
    for t, ids in out:
        assert iou(ids == 1, masks[t] == 1) > 0.9, t
    with pytest.raises(CRWError, match='sequence'):
        next(propagate(PatchEncoder(), iter(frames), {T - 1: masks[T - 1]}, protocol, 'cpu', reverse=True))


def test_reversed_decoding_by_chunks(tmp_path):
    from crw.data.video_io import iter_frames_reversed
    seq = make_sequence(num_frames=8, height=32, width=48, num_objects=1, seed=2)
    path = str(tmp_path / 'v.mp4')
    write_video(path, seq['frames'])
    forward = dict(iter_frames(path))
    got = list(iter_frames_reversed(path, 6, chunk=3))
    assert [t for t, _ in got] == [6, 5, 4, 3, 2, 1, 0]
    for t, img in got:
        assert np.array_equal(img, forward[t]), t


def recorded_is_written(out):
    """The run's .crw_outputs.json lists exactly the files under ``out``."""
    recorded = json.loads((out / '.crw_outputs.json').read_text())['runs'][0]['files']
    written = sorted(os.path.relpath(os.path.join(r, n), out) for r, _, names in os.walk(out) for n in names
                     if n != '.crw_outputs.json')
    return sorted(recorded) == written


def coco_maps(path, T, shape):
    """The label maps [T, H, W] a --export coco JSON holds (checking that it holds every frame once, in order)."""
    from pycocotools.coco import COCO
    data = json.loads(path.read_text())
    assert [im['frame_index'] for im in data['images']] == list(range(T))
    assert [im['id'] for im in data['images']] == list(range(1, T + 1))
    assert [a['id'] for a in data['annotations']] == list(range(1, len(data['annotations']) + 1))
    assert [a['image_id'] for a in data['annotations']] == sorted(a['image_id'] for a in data['annotations'])
    coco = COCO(str(path))
    maps = np.zeros((T, *shape), np.uint8)
    for t in range(T):
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[t + 1])):
            m = coco.annToMask(ann).astype(bool)
            assert not maps[t][m].any()
            maps[t][m] = ann['category_id']
    return maps


@pytest.fixture
def overlay_frames(monkeypatch):
    """The frames test.py hands to the overlay videos' encoder, in order (a list; the videos are still written)."""
    from crw.data.inference import outputs
    frames = []

    class Recording(outputs.VideoWriter):
        def write(self, frame):
            frames.append(np.array(frame))
            super().write(frame)
    monkeypatch.setattr(outputs, 'VideoWriter', Recording)
    return frames


def assert_overlay_in_order(video, recorded, frames, maps):
    """The overlay video has every frame; its frame t is frame t with its own label map over it."""
    from crw.data.inference.outputs import blend_labels
    assert probe_video(video)[0] == len(recorded) == len(maps)
    for t, (got, frame, ids) in enumerate(zip(recorded, frames, maps)):
        assert np.array_equal(got, blend_labels(frame, ids, davis_palette(), overlay=True)), t


@pytest.mark.parametrize('as_video', [False, True])
def test_bidirectional_cli(clip, ckpt, tmp_path, as_video, overlay_frames):
    """--bidirectional from a middle frame's mask with every --export format: every frame gets its entry in each
    format, named as a forward run names them, equal to the API's backward and forward runs; the COCO JSON holds
    every frame once, in order; the overlay video has every frame, in order; the record lists every file."""
    from crw.propagation.video import soft_to_index
    root, _, seq = clip
    T, M = len(seq['frames']), 3
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    video = str(frames_dir)
    if as_video:
        video = str(tmp_path / 'clip.mp4')
        write_video(video, seq['frames'])
    md = tmp_path / 'masks'
    md.mkdir()
    save_indexed_png(str(md / f'{M:05d}.png'), seq['masks'][M])
    out = tmp_path / 'b'
    assert run_test_py(['--video', video, '--mask', str(md), '--resume', ckpt, '--save-path', str(out),
                     '--bidirectional', '--export', 'palette,binary,coco,soft'] + PROTOCOL) == 0
    names = [f'{t:05d}' for t in range(T)]
    assert sorted(os.listdir(out / 'clip')) == [n + '.png' for n in names]
    maps = np.stack([ids_of(out / 'clip' / f'{n}.png') for n in names])
    decoded = [img for _, img in iter_frames(video)] if as_video else sorted(str(p) for p in frames_dir.iterdir())
    encoder, protocol = load_encoder(ckpt, 'cpu'), Protocol(temperature=0.05)
    api = dict(propagate(encoder, decoded, {M: seq['masks'][M]}, protocol, 'cpu', reverse=True))
    api.update(propagate(encoder, decoded, {M: seq['masks'][M]}, protocol, 'cpu'))
    for t in range(T):
        assert np.array_equal(maps[t], api[t]), t
    assert np.array_equal(maps[M], seq['masks'][M])
    objects = [int(k) for k in np.unique(seq['masks'][M]) if k != 0]
    for k in objects:
        assert sorted(os.listdir(out / 'clip_binary' / str(k))) == [n + '.png' for n in names]
        for t, n in enumerate(names):
            assert np.array_equal(ids_of(out / 'clip_binary' / str(k) / f'{n}.png'), np.where(maps[t] == k, 255, 0))
    assert np.array_equal(coco_maps(out / 'clip_coco.json', T, maps.shape[1:]), maps)
    assert sorted(os.listdir(out / 'clip_soft')) == [n + '.npz' for n in names]
    for t, n in enumerate(names):
        with np.load(out / 'clip_soft' / f'{n}.npz') as z:
            probs, labels, annotated = z['probs'], z['ids'], bool(z['annotated'])
        assert annotated == (t == M) and list(labels) == [0] + objects
        if not annotated:
            index = soft_to_index(torch.from_numpy(probs).permute(1, 2, 0), maps.shape[1:]).numpy()
            assert np.array_equal(labels[index], maps[t]), t
    frames = np.stack([f if as_video else ids_of(f) for f in decoded])
    assert_overlay_in_order(str(out / 'clip_overlay.mp4'), overlay_frames, frames, maps)
    assert recorded_is_written(out)


def test_bidirectional_without_palette(clip, ckpt, tmp_path, overlay_frames):
    """--bidirectional --export coco: no palette PNGs are needed (the backward run's label maps open the overlay
    video from memory); the JSON and the overlay video hold every frame, in order."""
    root, _, seq = clip
    T, M = len(seq['frames']), 2
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    (tmp_path / 'm').mkdir()
    save_indexed_png(str(tmp_path / 'm' / f'{M:05d}.png'), seq['masks'][M])
    out = tmp_path / 'o'
    assert run_test_py(['--video', str(frames_dir), '--mask', str(tmp_path / 'm'), '--resume', ckpt, '--save-path',
                     str(out), '--bidirectional', '--export', 'coco'] + PROTOCOL) == 0
    assert sorted(os.listdir(out)) == ['.crw_outputs.json', 'clip_coco.json', 'clip_overlay.mp4']
    paths = sorted(str(p) for p in frames_dir.iterdir())
    encoder, protocol = load_encoder(ckpt, 'cpu'), Protocol(temperature=0.05)
    api = dict(propagate(encoder, paths, {M: seq['masks'][M]}, protocol, 'cpu', reverse=True))
    api.update(propagate(encoder, paths, {M: seq['masks'][M]}, protocol, 'cpu'))
    maps = np.stack([api[t] for t in range(T)])
    assert np.array_equal(coco_maps(out / 'clip_coco.json', T, maps.shape[1:]), maps)
    assert_overlay_in_order(str(out / 'clip_overlay.mp4'), overlay_frames, seq['frames'], maps)
    assert recorded_is_written(out)


def test_bidirectional_writer_that_cannot_open_aborts_the_exports(clip, ckpt, tmp_path, capsys, monkeypatch):
    """The forward run's writer fails to open after the backward run fed the exports: one line, and the open
    export sinks are aborted (no COCO JSON written from half the frames, no temporary file left)."""
    from crw.data.inference import outputs
    root, _, seq = clip
    frames_dir = root / 'JPEGImages' / '480p' / 'clip'
    (tmp_path / 'm').mkdir()
    save_indexed_png(str(tmp_path / 'm' / '00002.png'), seq['masks'][2])
    real_init = outputs.SequenceWriter.__init__

    def init(self, *args, overlay=True, **kwargs):
        if overlay:
            raise OSError(28, 'No space left on device', 'the overlay video')
        real_init(self, *args, overlay=overlay, **kwargs)
    monkeypatch.setattr(outputs.SequenceWriter, '__init__', init)
    script, aborted = load_script('test.py'), []
    real_sinks = script.export_sinks

    def sinks(*args, **kwargs):
        made = real_sinks(*args, **kwargs)
        for sink in made:
            real_abort = sink.abort
            sink.abort = lambda error=None, real_abort=real_abort, sink=sink: (aborted.append(sink),
                                                                                real_abort(error))
        return made
    monkeypatch.setattr(script, 'export_sinks', sinks)
    out = tmp_path / 'o'
    assert run_test_py(['--video', str(frames_dir), '--mask', str(tmp_path / 'm'), '--resume', ckpt, '--save-path',
                        str(out), '--bidirectional', '--export', 'coco,soft'] + PROTOCOL) == 1
    assert one_line(capsys.readouterr().err).startswith('test.py: error:')
    assert len(aborted) == 2, aborted
    left = [p.name for p in out.rglob('*') if p.is_file()]
    assert 'clip_coco.json' not in left and not [n for n in left if n.endswith('.tmp')], left
