"""Label propagation: the windowed path == the release's reference algorithm, known-answer propagation, the
test.py pipeline end to end. Synthetic data only, tiny sizes."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import load_script
from crw.data.synthetic import make_sequence, write_davis_layout
from crw.propagation import Protocol, WindowedPropagator, make_propagator
from crw.propagation.video import soft_to_index
from crw.propagation.protocol import context_frames, min_max_normalize, radius_offsets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------

def random_video(T, C, h, w, K, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(T, C, h, w, generator=g, dtype=dtype), dim=1)
    labels = torch.softmax(3 * torch.randn(h, w, K, generator=g, dtype=dtype), dim=-1)
    return feats, labels


def clip_video(T, seed=0, C=16):
    """Features of a synthetic clip: a fixed random 8x8/stride-8 conv of the frames (spatially structured,
    static background), plus a little noise so that only the designed duplicates (copies of frame 0) tie."""
    seq = make_sequence(num_frames=T, height=72, width=104, num_objects=3, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(seq['frames']).permute(0, 3, 1, 2).float() / 255
    f = F.conv2d(x, torch.randn(C, 3, 8, 8, generator=g), stride=8)
    f = f + 0.3 * torch.randn(f.shape, generator=g)   # conv outputs are ~5: breaks the static-background ties
    m = F.interpolate(F.one_hot(torch.from_numpy(seq['masks'][:1]).long(), 4).permute(0, 3, 1, 2).float(),
                      size=f.shape[-2:], mode='bilinear', align_corners=False)[0].permute(1, 2, 0)
    return F.normalize(f, dim=1), m


def propagate_features(feats, first, protocol, reference=False, return_topk=False, **windowed_opts):
    """(t, soft labels[, top-k info]) for every frame of precomputed features [T, C, h, w] (the propagators
    alone, no encoder); frame 0's are the given labels (top-k info None)."""
    prop = make_propagator(feats[0], first, protocol, reference=reference, **windowed_opts)
    yield (0, first, None) if return_topk else (0, first)
    for t in range(1, len(feats)):
        out = prop.step(feats[t], return_topk=return_topk)
        yield (t, *out) if return_topk else (t, out)


def entries(info, rows=None):
    """Per target node (or the given rows): Counter of the chosen (frame, node) with a non-negligible logit,
    their logits by identity, and the sorted logits (masked fill-ins of weight 0 are left out)."""
    from collections import Counter
    frames, nodes, logits = (x.cpu() for x in info)
    out = []
    for p in (range(frames.shape[0]) if rows is None else rows):
        keep = logits[p] > -1e9
        ids = list(zip(frames[p][keep].tolist(), nodes[p][keep].tolist()))
        val = dict(zip(ids, logits[p][keep].tolist()))
        out.append((Counter(ids), val, torch.sort(logits[p][keep], descending=True).values))
    return out


def identity_keys(info):
    """[N, k] sorted (frame, node) keys per target node, masked fill-ins as +inf-like sentinels."""
    frames, nodes, logits = (x.cpu() for x in info)
    key = frames.long() * 10 ** 7 + nodes.long()
    key[logits <= -1e9] = 2 ** 62
    return key.sort(dim=1).values


def same_topk_up_to_ties(d, f, tol=1e-4):
    """True if the two top-k multisets are equal, or differ only by entries tied at the k-th logit."""
    (cd, vd, ld), (cf, vf, lf) = d, f
    if cd == cf:
        return True
    only_d, only_f = cd - cf, cf - cd
    return (all(abs(vd[e] - ld[-1].item()) < tol for e in only_d)
            and all(abs(vf[e] - lf[-1].item()) < tol for e in only_f))


def compare_runs(feats, labels, soft_tol=1e-4, tile=(8, 8), mode='auto', budget_bytes=None, **protocol):
    """Run the reference and the windowed path; assert same top-k multisets (ties aside), soft maps, argmax."""
    protocol = Protocol(**protocol)
    dense = list(propagate_features(feats, labels, protocol, reference=True, return_topk=True))
    fast = list(propagate_features(feats, labels, protocol, return_topk=True, tile=tile, mode=mode,
                                   budget_bytes=budget_bytes, screen=False))   # the screen: test_screen.py
    assert len(dense) == len(fast) == len(feats)
    worst, mismatched = 0.0, 0
    for (t, pd, idd), (_, pf, idf) in zip(dense, fast):
        assert pd.shape == pf.shape == labels.shape
        worst = max(worst, (pd - pf).abs().max().item())
        top2 = pd.topk(min(2, pd.shape[-1]), dim=-1).values
        clear = (top2[..., 0] - top2[..., -1]) > 1e-4 if pd.shape[-1] > 1 else torch.ones(pd.shape[:2], dtype=bool)
        assert torch.equal(pd.argmax(-1)[clear], pf.argmax(-1)[clear]), f'frame {t}: argmax differs'
        if t == 0:
            continue
        vd = idd[2].cpu().masked_fill(idd[2].cpu() <= -1e9, float('-inf')).sort(1, descending=True).values
        vf = idf[2].cpu().sort(1, descending=True).values
        assert torch.equal(torch.isinf(vd), torch.isinf(vf)), f'frame {t}: different numbers of valid entries'
        fin = torch.isfinite(vd)
        assert torch.allclose(vd[fin], vf[fin], atol=1e-4, rtol=1e-5), f'frame {t}: top-k logits differ'
        differ = (identity_keys(idd) != identity_keys(idf)).any(1).nonzero()[:, 0].tolist()
        for d, f in zip(entries(idd, differ), entries(idf, differ)):
            assert len(d[2]) == len(f[2]), f'frame {t}: different numbers of valid top-k entries'
            assert torch.allclose(d[2], f[2], atol=1e-4, rtol=1e-5), f'frame {t}: top-k logits differ'
            if d[0] != f[0]:   # allowed only for ties: the differing entries sit at the k-th value
                mismatched += 1
                assert same_topk_up_to_ties(d, f), f'frame {t}: top-k sets differ'
    assert worst < soft_tol, f'soft maps differ by {worst}'
    return worst, mismatched


# ----------------------------------------------------------------------------------------------------------
# 1. windowed path == reference
# ----------------------------------------------------------------------------------------------------------

CASES = [
    # T, C, h, w, K, radius, topk, videoLen, long_mem, mode
    (8, 16, 9, 13, 3, 1.5, 5, 3, [0], 'auto'),
    (8, 16, 9, 13, 3, 3, 10, 3, [0], 'window'),
    (12, 16, 12, 17, 4, 3, 10, 20, [0], 'window'),      # shorter than L: copies of frame 0
    (30, 16, 10, 14, 2, 3, 5, 3, [0], 'window'),        # ring wraps many times
    (10, 16, 11, 9, 3, 12, 10, 20, [0], 'auto'),        # R=12 on a tiny map: full-score fallback
    (9, 16, 20, 28, 3, 12, 10, 4, [0], 'window'),       # R=12, windowed path forced
    (8, 16, 10, 12, 2, 1.5, 1, 1, [0], 'window'),       # k=1
    (8, 16, 10, 12, 2, 1.0, 5, 1, [], 'window'),        # fewer than k candidates: masked fill-ins
    (8, 16, 10, 12, 2, 2.5, 10, 3, [], 'full'),         # no long-term memory, full scores
    (12, 16, 10, 12, 3, 2.5, 5, 3, [0, 4], 'window'),   # extra long-term frame
    (6, 16, 7, 11, 2, 3, 10, 0, [0], 'auto'),           # L=0: long-term memory only
    (12, 32, 40, 40, 3, 12, 10, 8, [0], 'auto'),        # the --cropSize 320 map (40x40), t > L
    (23, 16, 15, 27, 2, 12, 10, 20, [0], 'window'),     # 854x480-shaped map at a quarter scale
    (6, 16, 7, 10, 2, 1e9, 10, 3, [0], 'window'),       # --radius 1e9: offsets clamped to the map
    (6, 16, 7, 10, 2, 1e9, 10, 3, [0], 'auto'),
]


@pytest.mark.parametrize('T,C,h,w,K,radius,topk,L,long_mem,mode', CASES)
def test_windowed_matches_reference_random(T, C, h, w, K, radius, topk, L, long_mem, mode):
    feats, labels = random_video(T, C, h, w, K, seed=T + h)
    compare_runs(feats, labels, topk=topk, radius=radius, temperature=0.05, video_len=L, long_mem=long_mem,
                 mode=mode)


@pytest.mark.parametrize('radius,topk,L,tile', [(12, 10, 20, (8, 8)), (3, 5, 3, (8, 16)), (1.5, 10, 20, (4, 4)),
                                                (5, 10, 20, (4, 4)), (5, 7, 6, (2, 8))])
def test_windowed_matches_reference_clip(radius, topk, L, tile):
    feats, labels = clip_video(14, seed=3)
    _, mismatched = compare_runs(feats, labels, topk=topk, radius=radius, temperature=0.05, video_len=L,
                                 long_mem=[0], mode='window', tile=tile)
    assert mismatched < 5


@pytest.mark.parametrize('tile,budget', [((4, 4), 1), ((2, 8), 3000), ((3, 5), 40000), ((4, 4), None)])
def test_windowed_chunks_and_tiles(tile, budget):
    # tiles of any shape (regions shifted into the map at its borders, a partial last tile), frames split into
    # chunks by a small budget (1 byte: one frame per chunk; frame 0's copies alone in its chunk), a long-term
    # frame, a non-square map: the same results as the reference
    feats, labels = random_video(26, 16, 13, 22, 3, seed=11)
    compare_runs(feats, labels, tile=tile, mode='window', topk=10, radius=4.5, temperature=0.05, video_len=6,
                 long_mem=[0, 3], budget_bytes=budget)


def test_windowed_matches_reference_float64_exactly():
    feats, labels = random_video(10, 8, 9, 14, 3, seed=5, dtype=torch.float64)
    worst, mismatched = compare_runs(feats, labels, soft_tol=1e-12, topk=10, radius=3, temperature=0.07,
                                     video_len=4, long_mem=[0])
    assert mismatched == 0


def test_masked_fill_ins_have_zero_weight():
    # radius 1 keeps only the same position; one short-term frame, no long-term memory, k=5: the release's
    # top-5 holds 1 real entry and 4 masked ones of weight exactly 0 -> prediction = previous label
    feats, labels = random_video(4, 8, 5, 6, 3, seed=1)
    out = list(propagate_features(feats, labels, Protocol(topk=5, radius=1, temperature=0.05, video_len=1,
                                                       long_mem=[])))
    for t, pred in out:
        assert torch.allclose(pred, labels, atol=1e-6)


def test_bank_is_bounded():
    feats, labels = random_video(3, 8, 9, 10, 2)
    p = WindowedPropagator(feats[0], labels, Protocol(topk=5, radius=3, temperature=0.05, video_len=7,
                                                      long_mem=[0, 2]))
    for t in range(1, 40):
        p.step(feats[t % 3])
    assert p.labels.shape[0] == 1 + 7 + 1         # frame 0, the ring, frame 2
    assert p.ring.shape[1] == 1 + 7               # frame 0 and the ring, by tile


def test_context_and_offsets():
    assert context_frames(1, 3) == ([0], [0, 0, 0])
    assert context_frames(2, 3) == ([0], [0, 0, 1])
    assert context_frames(5, 3) == ([0], [2, 3, 4])
    assert context_frames(3, 2, [0, 4]) == ([0, 0], [1, 2])     # frame 4 not yet seen -> frame 0
    assert context_frames(6, 2, [0, 4]) == ([0, 4], [4, 5])
    assert context_frames(4, 5, pad=2) == ([0], [2, 2, 1, 2, 3])  # after a correction at 2: its copies pad
    assert radius_offsets(1).tolist() == [[0, 0]]
    assert len(radius_offsets(1.5)) == 9
    assert len(radius_offsets(2)) == 9                          # distance 2 itself is excluded (strict <)
    assert len(radius_offsets(12)) == int((radius_offsets(12) ** 2).sum(1).lt(144).sum())
    # clamped to the map: a huge radius gives every offset that joins two nodes of a 3x4 map, no more
    assert radius_offsets(1e9, 3, 4).shape == (5 * 7, 2) and radius_offsets(1e9, 3, 4).abs().amax(0).tolist() == [2, 3]
    assert torch.equal(radius_offsets(2.5, 30, 40), radius_offsets(2.5))


def test_min_max_normalize():
    x = torch.tensor([[[0.2, 0.5, 0.3], [0.4, 0.4, 0.4]]])
    y = min_max_normalize(x)
    assert torch.allclose(y[0, 0], torch.tensor([0.0, 1.0, 1 / 3]))
    assert torch.equal(y[0, 1], torch.zeros(3))


def test_soft_to_index_is_the_argmax_of_the_upsampled_map():
    g = torch.Generator().manual_seed(0)
    soft = torch.softmax(3 * torch.randn(9, 13, 4, generator=g), dim=-1)
    soft[:3, :, 2] = soft[:3, :, 1]                                  # ties: the first channel wins
    up = F.interpolate(soft.permute(2, 0, 1)[None], size=(70, 101), mode='bilinear', align_corners=False)[0]
    ids = soft_to_index(soft, (70, 101))
    assert torch.equal(ids, up.argmax(0)) and len(ids.unique()) == 4
    assert bool((ids[:15] != 2).all()) and bool((ids[:15] == 1).any())   # rows taken from rows 0-2 only


# ----------------------------------------------------------------------------------------------------------
# 2. known answer: a 'perfect' extractor built from the ground-truth motion
# ----------------------------------------------------------------------------------------------------------

def _non_occluding_sequence(T=12):
    for seed in range(200):
        seq = make_sequence(num_frames=T, height=24, width=32, num_objects=3, seed=seed, max_speed=1,
                            object_size=(5, 7), cell=2)
        areas = [(seq['masks'] == k).sum((1, 2)) for k in (1, 2, 3)]
        if all(a.min() == a.max() > 0 for a in areas):
            return seq
    raise AssertionError('no non-occluding synthetic sequence found')


def perfect_features(seq):
    """One feature cell per pixel of a cell-resolution clip. Object k's cells: one-hot of (k, position in the
    object's texture), positions from the ground-truth motion (mask bounding boxes); background cells: a
    shared 'background' unit plus their own position (a revealed background cell still matches background)."""
    masks = seq['masks']
    T, h, w = masks.shape
    dims = {}
    feats = torch.zeros(T, 1 + h * w + 3 * 64, h, w, dtype=torch.float64)
    for t in range(T):
        for y in range(h):
            for x in range(w):
                k = int(masks[t, y, x])
                if k == 0:
                    feats[t, 0, y, x] = 1
                    feats[t, 1 + y * w + x, y, x] = 1
                else:
                    ys, xs = np.nonzero(masks[t] == k)
                    key = (k, y - ys.min(), x - xs.min())
                    dims.setdefault(key, 1 + h * w + len(dims))
                    feats[t, dims[key], y, x] = 1
    return F.normalize(feats, dim=1)


@pytest.mark.parametrize('reference', [False, True])
def test_known_answer_propagation(reference):
    seq = _non_occluding_sequence()
    feats = perfect_features(seq)
    first = F.one_hot(torch.from_numpy(seq['masks'][0]).long(), 4).to(torch.float64)
    protocol = Protocol(topk=10, radius=3, temperature=0.05, video_len=5, long_mem=[0])
    for t, pred in propagate_features(feats, first, protocol, reference=reference):
        lab = pred.argmax(-1).numpy()
        gt = seq['masks'][t]
        for k in (1, 2, 3):
            iou = ((lab == k) & (gt == k)).sum() / ((lab == k) | (gt == k)).sum()
            assert iou > 0.9, f'frame {t} object {k}: IoU {iou:.3f}'


# ----------------------------------------------------------------------------------------------------------
# 3. test.py end to end
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp('davis')
    seqs = {'three': make_sequence(num_frames=5, height=48, width=72, num_objects=3, seed=1),
            'two': make_sequence(num_frames=4, height=40, width=40, num_objects=2, seed=2)}
    filelist = write_davis_layout(str(root), seqs)
    import crw.model as model
    ckpt = str(root / 'scratch.pth')
    torch.manual_seed(0)
    m = model.CRW(argparse.Namespace(model_type='scratch', head_depth=0, remove_layers=[]))
    torch.save({'model': m.state_dict(), 'args': argparse.Namespace(model_type='scratch')}, ckpt)
    return root, filelist, ckpt, seqs


def _mask_ids(path):
    return np.asarray(Image.open(path))


def run_main(argv):
    return load_script('test.py').main(argv)


@pytest.mark.parametrize('crop', [-1, 64])
def test_end_to_end(davis, tmp_path, crop, capsys):
    root, filelist, ckpt, seqs = davis
    out = tmp_path / 'out'
    argv = ['--filelist', filelist, '--model-type', 'scratch', '--resume', ckpt, '--save-path', str(out),
            '--topk', '10', '--videoLen', '20', '--radius', '12', '--temperature', '0.05', '--cropSize', str(crop),
            '--workers', '0' if crop < 0 else '1', '--device', 'cpu'] + (['--norm_mask'] if crop > 0 else [])
    assert run_main(argv) == 0
    for i, seq in enumerate(seqs.values()):
        first = seq['masks'][0]
        for t in range(len(seq['frames'])):
            ids = _mask_ids(out / f'{i}_{t}_mask.png')
            assert ids.shape == (first.shape if crop < 0 else (crop, crop))
            assert set(np.unique(ids)) <= set(np.unique(first))
            blend = Image.open(out / f'{i}_{t}_blend.jpg')
            assert blend.size == (ids.shape[1], ids.shape[0])
        if crop < 0:   # frame 0 is its ground truth
            assert np.array_equal(_mask_ids(out / f'{i}_0_mask.png'), first)
    # the record of the run names each video (eval/convert_davis.py matches sequences by it) ...
    run = json.loads((out / '.crw_outputs.json').read_text())['runs'][0]
    assert run['status'] == 'complete' and [(v['index'], v['name']) for v in run['info']['videos']] == \
        [(0, 'three'), (1, 'two')] and len(run['files']) == 2 * (5 + 4)
    # ... and a second run into the folder is refused, before anything is written, unless --overwrite
    if crop < 0:
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        assert run_main(argv) == 1
        assert 'holds the outputs of test.py --filelist' in capsys.readouterr().err
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize('where', ['annotations', 'frames', 'data root'])
def test_save_path_onto_an_input_is_refused(davis, tmp_path, capsys, where):
    # an output folder that is an input folder (compared as real paths: '..', trailing '/') is refused before
    # anything is written
    root, filelist, ckpt, seqs = davis
    save = {'annotations': f'{root}/Annotations/480p/three/', 'frames': f'{root}/JPEGImages/480p/three/../two',
            'data root': str(root)}[where]
    before = {str(p): p.stat().st_mtime_ns for p in root.rglob('*')}
    assert run_main(['--filelist', filelist, '--resume', ckpt, '--save-path', save, '--data-root', str(root),
                     '--device', 'cpu', '--workers', '0']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('test.py: error: --save-path') and 'an input' in err[0], err
    assert {'annotations': 'the annotations folder of', 'frames': 'the frames folder of',
            'data root': '--data-root'}[where] in err[0]
    assert {str(p): p.stat().st_mtime_ns for p in root.rglob('*')} == before


@pytest.mark.slow
def test_cli_subprocess_and_dense(davis, tmp_path):
    root, filelist, ckpt, seqs = davis
    cmd = [sys.executable, 'test.py', '--filelist', filelist, '--model-type', 'scratch', '--resume', ckpt,
           '--save-path', str(tmp_path), '--topk', '5', '--videoLen', '3', '--radius', '4', '--temperature', '0.05',
           '--cropSize', '-1', '--workers', '0', '--dense']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'git revision' in r.stdout and 'frames/s' in r.stdout
    assert (tmp_path / '1_3_mask.png').exists()


def test_missing_resume_is_one_line_error(davis, tmp_path, capsys):
    root, filelist, ckpt, seqs = davis
    with pytest.raises(SystemExit) as e:
        run_main(['--filelist', filelist, '--resume', str(tmp_path / 'nope.pth'), '--save-path', str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'nope.pth' in err


@pytest.mark.parametrize('flags, needle', [(['--topk', '0'], '--topk must be >= 1'),
                                           (['--temperature', '-1'], '--temperature -1: the softmax temperature must be positive'),
                                           (['--videoLen', '0', '--long-mem'], 'no context')])
def test_protocol_values_are_one_line_parse_errors(davis, tmp_path, capsys, flags, needle):
    # the protocol's range checks (propagation.Protocol) are test.py's parse errors: exit 2, one line
    root, filelist, ckpt, seqs = davis
    with pytest.raises(SystemExit) as e:
        run_main(['--filelist', filelist, '--save-path', str(tmp_path / 'o')] + flags)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].endswith('(see --help)'), err
    assert not (tmp_path / 'o').exists()


def test_missing_frames_folder_is_one_line_error(davis, tmp_path, capsys):
    root, filelist, ckpt, seqs = davis
    bad = tmp_path / 'list.txt'
    lines = open(filelist).read().splitlines()
    bad.write_text(lines[0] + '\n' + lines[1].replace('/two', '/missing', 1) + '\n')
    assert run_main(['--filelist', str(bad), '--resume', ckpt, '--save-path', str(tmp_path)]) == 1
    msg = capsys.readouterr().err.strip()
    assert len(msg.splitlines()) == 1 and msg.startswith('test.py: error:') and 'missing' in msg and ':2:' in msg
    assert not list(tmp_path.glob('*_mask.png'))     # nothing was computed


class FlatColourEncoder(torch.nn.Module):
    """Features = the mean colour of each 8x8 block (stride 8), for flat-coloured test videos."""

    def frames(self, x):
        return F.avg_pool2d(x, 8, ceil_mode=True)


def test_pipeline_known_answer(tmp_path, monkeypatch):
    # flat-coloured rectangles moving over grey by one feature cell (8 px) per frame: the cell colour
    # identifies the object, so the pipeline (reading, label sets, propagation, upsampling, writing) must
    # recover the masks
    T, H, W = 6, 96, 128
    pal = np.array([[128, 128, 128], [230, 30, 30], [30, 200, 30], [40, 40, 220]], np.uint8)
    frames = np.zeros((T, H, W, 3), np.uint8)
    masks = np.zeros((T, H, W), np.uint8)
    boxes = [(8, 8, 32, 32, 0, 8), (56, 8, 32, 40, 0, 8), (8, 88, 24, 32, 8, 0)]   # y, x, h, w, dy, dx
    for t in range(T):
        for k, (y, x, hh, ww, dy, dx) in enumerate(boxes, 1):
            masks[t, y + dy * t:y + dy * t + hh, x + dx * t:x + dx * t + ww] = k
        frames[t] = pal[masks[t]]
    filelist = write_davis_layout(str(tmp_path / 'd'), {'flat': {'frames': frames, 'masks': masks * 2}}, ext='png')
    test_script = load_script('test.py')
    monkeypatch.setattr(test_script, 'build_encoder', lambda args, device: FlatColourEncoder())
    out = tmp_path / 'out'
    assert test_script.main(['--filelist', filelist, '--save-path', str(out), '--cropSize', '-1',
                             '--workers', '0', '--temperature', '0.05', '--radius', '4', '--device', 'cpu']) == 0
    for t in range(1, T):
        ids = _mask_ids(out / f'0_{t}_mask.png')
        for k in (2, 4, 6):      # label ids are the annotation's values
            iou = ((ids == k) & (masks[t] * 2 == k)).sum() / ((ids == k) | (masks[t] * 2 == k)).sum()
            assert iou > 0.95, (t, k, iou)


def test_soft_labels_start_the_loop_and_come_out_per_frame():
    # JHMDB's start: soft labels at the feature map (heat maps), not a mask; every frame then comes out as soft
    # maps (ids None), through the same loop that writes masks
    from crw.data.inference.jhmdb import joint_heatmaps, pose_from_soft_map
    from crw.propagation import VideoPropagator
    T, H, W = 5, 64, 96
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        frames[t, 16:40, 8 + 8 * t:32 + 8 * t] = (230, 30, 30)      # one block moving right by a cell a frame
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() - 128) / 64
    heat = joint_heatmaps(np.array([[2.0], [3.0]]), (8, 12))          # one joint at cell (x 2, y 3)
    vp = VideoPropagator(FlatColourEncoder(), Protocol(topk=5, video_len=2, radius=4, temperature=0.05), 'cpu')
    out = list(vp.stream([(x[:3], frames[:3], [0, 1, 2]), (x[3:], frames[3:], [3, 4])],
                         {0: lambda map_size: heat if tuple(map_size) == (8, 12) else None}))
    assert [f.t for f in out] == list(range(T)) and all(f.ids is None for f in out)
    assert torch.equal(out[0].soft, heat) and out[0].features.shape[-2:] == (8, 12)
    xs = [pose_from_soft_map(f.soft)[0, 0].item() for f in out]
    assert xs[0] == pytest.approx(2.0, abs=0.3) and all(b > a for a, b in zip(xs, xs[1:]))   # the joint moves right


def test_jhmdb_pose_end_to_end(davis, tmp_path):
    from scipy.io import savemat
    root, filelist, ckpt, seqs = davis
    seq = seqs['two']
    frames_dir = tmp_path / 'clip'
    frames_dir.mkdir()
    T = len(seq['frames'])
    for t, f in enumerate(seq['frames']):
        Image.fromarray(f).save(frames_dir / f'{t + 1:05d}.png')
    rng = np.random.default_rng(0)
    pos = np.stack([rng.uniform(5, 35, (15, T)), rng.uniform(5, 35, (15, T))]) + 1   # 1-based pixels
    savemat(str(tmp_path / 'joint_positions.mat'), {'pos_img': pos})
    fl = tmp_path / 'jhmdb.txt'
    fl.write_text(f'{frames_dir} {tmp_path / "joint_positions.mat"}\n')
    out = tmp_path / 'out'
    assert run_main(['--filelist', str(fl), '--resume', ckpt, '--save-path', str(out), '--cropSize', '64',
                     '--workers', '0', '--device', 'cpu']) == 0
    coords = np.load(out / '0.dat', allow_pickle=False)
    assert open(out / '0.dat', 'rb').read(6) == b'\x93NUMPY'   # .npy format: loads without unpickling
    assert coords.shape == (2, 15, T)
    # frame 0 comes from the ground-truth heat maps: within a cell of the scaled joints
    assert np.abs(coords[:, :, 0] - (pos[:, :, 0] - 1) * 64 / 40 / 8).max() < 1.0
    assert (out / f'0_{T - 1}_blend.jpg').exists()
    assert run_main(['--filelist', str(fl), '--resume', ckpt, '--save-path', str(out), '--cropSize', '-1']) == 1


@pytest.mark.parametrize('h, w, tile, radius', [(60, 107, (4, 4), 12), (9, 31, (2, 3), 3.5), (5, 6, (4, 4), 12)])
def test_tile_layout_scores_exactly_the_pairs_in_the_radius(h, w, tile, radius):
    """window_index points every (target, in-radius context node) pair at a score whose tile entry is the context
    node and whose region entry is the target; a region holds only nodes some tile node reaches (584 for a
    4 x 4 tile at radius 12, against 676 for its bounding square)."""
    from crw.propagation.windowed import TileLayout
    offsets = radius_offsets(radius, h, w)
    L = TileLayout(h, w, tile, offsets, 'cpu')
    if (h, w) == (60, 107):
        assert L.region_nodes == 584
    flat, node = L.window_index()
    tiled_node = L.tiled(torch.arange(h * w, dtype=torch.float64).view(1, h, w))[..., 0].long()   # [tiles, T]
    sentinel = L.num_tiles * L.tile_nodes * L.region_nodes
    y, x = torch.div(torch.arange(h * w), w, rounding_mode='floor'), torch.arange(h * w) % w
    cy, cx = y[:, None] + offsets[:, 0], x[:, None] + offsets[:, 1]
    inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    assert torch.equal(flat == sentinel, ~inside)
    f = flat[inside].long()
    tile_i, rest = f // (L.tile_nodes * L.region_nodes), f % (L.tile_nodes * L.region_nodes)
    j, p = rest // L.region_nodes, rest % L.region_nodes
    assert torch.equal(tiled_node[tile_i, j], (cy * w + cx)[inside])           # the context node
    assert torch.equal(L.region_index[tile_i, p], torch.arange(h * w)[:, None].expand(-1, len(offsets))[inside])
    assert torch.equal(node[inside].long(), (cy * w + cx)[inside])
