"""The JHMDB (PCK) and VIP (human-part mIoU) benchmarks: scorers on hand-made inputs with known answers,
the filelist builders, test.py's VIP layout and the JHMDB chain test.py -> eval_pck.py on a synthetic clip.
Expected values are worked out by hand in the comments."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.io import savemat

from conftest import ROOT, load_script
from crw.data.synthetic import make_sequence
from crw.eval import eval_pck, eval_vip, jhmdb_filelist, run_test, vip_filelist

W, H, FEAT_RES = 160, 120, 40.0


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------

def write_jhmdb_video(root, name, gt, size=(H, W)):
    """A JHMDB-style video: frames 00001.png ... (plain grey, size (H, W)) and joint_positions.mat holding
    gt [2, J, T] 0-based pixels (stored 1-based). Returns (frames folder, mat path)."""
    frames = os.path.join(root, 'Rename_Images', 'act', name)
    os.makedirs(frames, exist_ok=True)
    for t in range(gt.shape[2]):
        Image.fromarray(np.full((*size, 3), 128, np.uint8)).save(os.path.join(frames, f'{t + 1:05d}.png'))
    mat_dir = os.path.join(root, 'joint_positions', 'act', name)
    os.makedirs(mat_dir, exist_ok=True)
    mat = os.path.join(mat_dir, 'joint_positions.mat')
    savemat(mat, {'pos_img': gt + 1})
    return frames, mat


def to_cells(px, size=(H, W), feat_res=FEAT_RES):
    """Pixel predictions [2, J, T] -> feature cells as test.py writes them (the inverse of eval_pck's rescale)."""
    out = np.array(px, dtype=np.float64)
    out[0] = out[0] / size[1] * feat_res
    out[1] = out[1] / size[0] * feat_res
    return out


def write_case(tmp_path, videos):
    """videos: [(gt px [2, J, T], pred px [2, J, T] with x = -1 marking invisible, size)] -> (filelist, results)."""
    results = tmp_path / 'results'
    results.mkdir(exist_ok=True)
    lines = []
    for i, (gt, pred, size) in enumerate(videos):
        frames, mat = write_jhmdb_video(str(tmp_path / 'jhmdb'), f'v{i}', gt, size)
        lines.append(f'{frames} {mat}')
        cells = to_cells(pred, size)
        cells[0][pred[0] < 0] = -1
        cells[1][pred[0] < 0] = -1
        cells.dump(str(results / f'{i}.dat'))
    filelist = tmp_path / 'jhmdb.txt'
    filelist.write_text('\n'.join(lines) + '\n')
    return str(filelist), str(results)


def spread_joints(T=5, J=15, seed=0):
    """Ground-truth joints [2, J, T] spread over the image, moving a little."""
    rng = np.random.default_rng(seed)
    base = np.stack([rng.uniform(20, W - 20, J), rng.uniform(15, H - 15, J)])
    return base[:, :, None] + rng.uniform(-3, 3, (2, J, T))


def box(gt_t):
    """0.6 x the diagonal of the box of joints gt_t [2, J]."""
    return 0.6 * np.hypot(np.ptp(gt_t[0]), np.ptp(gt_t[1]))


def loop_pck(gts, preds, sizes, feat_res, alphas):
    """The release's PCK written as its loops (one joint, one frame at a time), as an oracle."""
    dist = {}
    for gt, pred, (h, w) in zip(gts, preds, sizes):
        J, T = pred.shape[1], pred.shape[2]
        vis = [[pred[0, j, k] >= 0 for k in range(T)] for j in range(J)]
        px = [[(pred[0, j, k] / feat_res * w, pred[1, j, k] / feat_res * h) for k in range(T)] for j in range(J)]
        boxes = []
        for k in range(T):
            minx, miny, maxx, maxy = 1e6, 1e6, -1, -1
            for j in range(J):
                if vis[j][k]:
                    minx, miny = min(minx, gt[0, j, k]), min(miny, gt[1, j, k])
                    maxx, maxy = max(maxx, gt[0, j, k]), max(maxy, gt[1, j, k])
            boxes.append(0.6 * np.hypot(maxx - minx, maxy - miny))
        for j in range(J):
            for k in range(1, T):
                if vis[j][k]:
                    d = np.hypot(px[j][k][0] - gt[0, j, k], px[j][k][1] - gt[1, j, k])
                    with np.errstate(divide='ignore', invalid='ignore'):
                        dist.setdefault(j, []).append(np.float64(d) / np.float64(boxes[k]))
    out = []
    for a in alphas:
        per_joint = [100.0 * sum(x <= a for x in dist[j]) / len(dist[j]) for j in sorted(dist)]
        out.append(np.mean(per_joint))
    return np.array(out)


# ----------------------------------------------------------------------------------------------------------
# PCK
# ----------------------------------------------------------------------------------------------------------

def test_pck_exact_predictions_score_100(tmp_path):
    gt = spread_joints()
    filelist, results = write_case(tmp_path, [(gt, gt, (H, W))])
    per_joint, mean, counts = eval_pck.evaluate(filelist, results, FEAT_RES)
    assert np.allclose(per_joint, 100) and np.allclose(mean, 100)
    assert counts.tolist() == [4] * 15            # frames 1..4: frame 0 is not scored


def test_pck_known_shifts_frame0_ignored(tmp_path):
    # joints 0-4 off by 0.05 box, 5-9 by 0.15, 10-14 by 0.25 (along x), in every frame 1..4; frame 0 is wrong by
    # a mile but is the given pose and not scored. Per joint PCK@0.1 = 100 / 0 / 0, PCK@0.2 = 100 / 100 / 0,
    # PCK@0.3 = 100 everywhere; means 33.33, 66.67, 100.
    gt = spread_joints(seed=1)
    frac = np.repeat([0.05, 0.15, 0.25], 5)
    pred = gt.copy()
    for t in range(gt.shape[2]):
        pred[0, :, t] += frac * box(gt[:, :, t])
    pred[:, :, 0] += 500
    filelist, results = write_case(tmp_path, [(gt, pred, (H, W))])
    per_joint, mean, _ = eval_pck.evaluate(filelist, results, FEAT_RES)
    assert per_joint[:, 0].tolist() == [100] * 5 + [0] * 10
    assert per_joint[:, 1].tolist() == [100] * 10 + [0] * 5
    assert mean[:3] == pytest.approx([100 / 3, 200 / 3, 100])


def test_pck_invisible_joints_box_and_mean_over_joints(tmp_path):
    # Joint 14 is invisible (predicted x < 0) in frames 1-3, where its ground truth sits far outside the image:
    # it must be left out of those frames' boxes and entries. Every visible joint of frames 1-3 is off by 0.15 x
    # the box of the *visible* joints (a miss at 0.1, a hit at 0.2; with joint 14 in the box they would all hit at
    # 0.1). In frame 4 all joints are visible and joint 14 is exact, the others off by 0.15 x that frame's box.
    # PCK@0.1: joint 14 has one entry, a hit -> 100; joints 0-13 have 4 misses -> 0. The release averages the
    # joints' PCKs: 100 / 15 = 6.67 (the pooled ratio would be 1 / 57 = 1.75).
    gt = spread_joints(seed=2)
    gt[:, 14, 1:4] = [[900.0], [700.0]]
    pred = gt.copy()
    for t in range(1, 5):
        vis = np.arange(15) < 14 if t < 4 else np.ones(15, bool)
        b = box(gt[:, vis, t])
        pred[0, :14, t] += 0.15 * b
    pred[0, 14, 1:4] = -1
    filelist, results = write_case(tmp_path, [(gt, pred, (H, W))])
    per_joint, mean, counts = eval_pck.evaluate(filelist, results, FEAT_RES)
    assert counts[14] == 1 and counts[:14].tolist() == [4] * 14
    assert per_joint[14, 0] == 100 and per_joint[:14, 0].tolist() == [0] * 14
    assert mean[0] == pytest.approx(100 / 15)
    assert per_joint[:, 1].tolist() == [100] * 15


def test_pck_matches_release_loops_on_random_inputs(tmp_path):
    # two videos of different sizes, random predictions and invisibility, a frame with one visible joint
    # (box 0: d / 0 is a miss) and a frame with none
    rng = np.random.default_rng(3)
    videos, gts, preds, sizes = [], [], [], []
    for i, size in enumerate([(H, W), (90, 200)]):
        gt = np.stack([rng.uniform(0, size[1], (15, 7)), rng.uniform(0, size[0], (15, 7))])
        pred = gt + rng.normal(0, 12, gt.shape)
        pred[0][rng.random((15, 7)) < 0.2] = -1
        if i == 0:
            pred[0, 1:, 2] = -1             # frame 2: one visible joint
            pred[0, :, 3] = -1              # frame 3: none
        videos.append((gt, pred, size))
        gts.append(gt)
        sizes.append(size)
        cells = to_cells(pred, size)
        cells[:, pred[0] < 0] = -1
        preds.append(cells)
    filelist, results = write_case(tmp_path, videos)
    _, mean, _ = eval_pck.evaluate(filelist, results, FEAT_RES)
    assert mean == pytest.approx(loop_pck(gts, preds, sizes, FEAT_RES, eval_pck.ALPHAS), abs=1e-9)


def test_eval_pck_cli_table_csv_and_errors(tmp_path, capsys):
    gt = spread_joints()
    filelist, results = write_case(tmp_path, [(gt, gt, (H, W))])
    assert eval_pck.main(['--filelist', filelist, '--results', results, '--feat-res', '40']) == 0
    out = capsys.readouterr().out
    assert 'PCK@0.1: 100.00' in out and 'right ankle' in out
    rows = {r.split(',')[0]: r for r in open(os.path.join(results, 'pck.csv')).read().splitlines()}
    assert rows['mean'].startswith('mean,60,100.000,100.000')
    os.remove(os.path.join(results, '0.dat'))
    assert eval_pck.main(['--filelist', filelist, '--results', results]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '0.dat: no prediction' in err and ':1:' in err


class _Planted:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for any code a planted .dat could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_eval_pck_loads_predictions_without_running_code(tmp_path, capsys):
    gt = spread_joints()
    filelist, results = write_case(tmp_path, [(gt, gt, (H, W))])
    # the release's pickled ndarray (write_case uses ndarray.dump) and test.py's .npy format both load
    pickled = eval_pck.load_prediction(os.path.join(results, '0.dat'))
    with open(os.path.join(results, '0.dat'), 'wb') as f:
        np.save(f, pickled)
    assert np.array_equal(eval_pck.load_prediction(os.path.join(results, '0.dat')), pickled)
    # a planted pickle is refused before anything in it runs
    marker = tmp_path / 'ran'
    with open(os.path.join(results, '0.dat'), 'wb') as f:
        pickle.dump(_Planted(str(marker)), f, protocol=2)
    assert eval_pck.main(['--filelist', filelist, '--results', results]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '0.dat' in err and 'io.open' in err and 'nothing in it was run' in err
    assert not marker.exists()
    # an object array (pickles inside the pickle) is refused too
    with open(os.path.join(results, '0.dat'), 'wb') as f:
        np.array([_Planted(str(marker))], dtype=object).dump(f)
    assert eval_pck.main(['--filelist', filelist, '--results', results]) == 1
    assert not marker.exists()
    assert '0.dat' in capsys.readouterr().err


def test_jhmdb_filelist_builder(tmp_path):
    gt = spread_joints(T=3)
    root = tmp_path / 'JHMDB'
    for name in ('a1', 'a2', 'a3'):
        write_jhmdb_video(str(root), name, gt)
    (root / 'splits').mkdir()
    (root / 'splits' / 'act_test_split1.txt').write_text('a1.avi 1\na2.avi 2 \na3.avi 2\n')
    (root / 'splits' / 'act_test_split2.txt').write_text('a1.avi 2\na2.avi 1\na3.avi 1\n')
    out = tmp_path / 'list.txt'
    assert jhmdb_filelist.main(['--jhmdb', str(root), '--out', str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines == [f"{root}/Rename_Images/act/{v} {root}/joint_positions/act/{v}/joint_positions.mat"
                     for v in ('a2', 'a3')]
    assert jhmdb_filelist.build(str(root), split=2) == [lines[0].replace('a2', 'a1')]
    (root / 'splits' / 'act_test_split1.txt').write_text('a9.avi 2\n')
    with pytest.raises(Exception, match='a9'):
        jhmdb_filelist.build(str(root))


# ----------------------------------------------------------------------------------------------------------
# JHMDB end to end: test.py -> eval_pck.py on textured blobs carrying the joints
# ----------------------------------------------------------------------------------------------------------

def _blob_clip(T=8, size=128):
    """Three textured square blobs moving over a textured background without overlapping; 5 joints on each,
    at fixed offsets inside the blob. Returns (frames [T, S, S, 3], joints [2, 15, T] 0-based pixels)."""
    for seed in range(100):
        seq = make_sequence(num_frames=T, height=size, width=size, num_objects=3, seed=seed, max_speed=3,
                            object_size=(34, 40), shapes=('rect',), cell=6)
        areas = [(seq['masks'] == k).sum((1, 2)) for k in (1, 2, 3)]
        if all(a.min() == a.max() > 0 for a in areas):
            break
    offsets = np.array([[6, 6], [26, 6], [6, 26], [26, 26], [16, 16]], np.float64)    # (x, y) inside a blob
    joints = np.zeros((2, 15, T))
    for k in (1, 2, 3):
        for t in range(T):
            ys, xs = np.nonzero(seq['masks'][t] == k)
            joints[:, 5 * (k - 1):5 * k, t] = (np.array([xs.min(), ys.min()])[:, None] + offsets.T)
    return seq['frames'], joints


def test_jhmdb_chain_known_answer(tmp_path):
    frames, joints = _blob_clip()
    folder = tmp_path / 'Rename_Images' / 'act' / 'blobs'
    folder.mkdir(parents=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f'{t + 1:05d}.png')
    savemat(str(tmp_path / 'joint_positions.mat'), {'pos_img': joints + 1})
    filelist = tmp_path / 'jhmdb.txt'
    filelist.write_text(f'{folder} {tmp_path / "joint_positions.mat"}\n')
    out = tmp_path / 'out'
    test_py = load_script('test.py')
    assert test_py.main(['--filelist', str(filelist), '--resume', os.path.join(ROOT, 'pretrained.pth'),
                         '--save-path', str(out), '--cropSize', '128', '--videoLen', '7', '--radius', '12',
                         '--temperature', '0.05', '--topk', '10', '--workers', '0', '--device', 'cpu']) == 0
    per_joint, mean, counts = eval_pck.evaluate(str(filelist), str(out), feat_res=128 / 8)
    assert counts.tolist() == [7] * 15
    assert mean[1] > 90, per_joint[:, 1]


def test_run_test_jhmdb_dryrun_and_skip(tmp_path, capsys):
    fl = tmp_path / 'jhmdb.txt'
    fl.write_text('x y.mat\n')
    argv = ['--dataset', 'jhmdb', '--filelist', str(fl), '--model-path', 'pretrained.pth', '--T', '0.05',
            '--out-dir', str(tmp_path / 'runs'), '--dryrun']
    assert run_test.main(argv) == 0
    out = capsys.readouterr().out
    assert '--videoLen 7' in out and '--cropSize 320' in out and '--temperature 0.05' in out
    assert 'eval/eval_pck.py --filelist' in out and '--feat-res 40' in out
    tag = out.splitlines()[0].split('] ')[1]
    done = tmp_path / 'runs' / f'jhmdb_{tag}'
    done.mkdir(parents=True)
    (done / 'pck.csv').write_text('joint,entries,PCK@0.1,PCK@0.2\nmean,10,55.000,77.000\n')
    assert run_test.main([a for a in argv if a != '--dryrun']) == 0
    out = capsys.readouterr().out
    assert 'skipped' in out and '55.000' in out and '77.000' in out
    assert run_test.main(['--dataset', 'jhmdb', '--model-path', 'scratch', '--dryrun']) == 1
    assert 'needs --filelist' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# VIP
# ----------------------------------------------------------------------------------------------------------

def _grey(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8), mode='L').save(path)


def _vip_case(root):
    """Two videos, hand-made: see test_vip_confusion_by_hand."""
    gt, pre = os.path.join(root, 'gt'), os.path.join(root, 'pre')
    _grey(f'{gt}/v1/a.png', [[0, 0, 1, 1], [2, 2, 255, 1]])
    _grey(f'{pre}/v1/a.png', [[0, 1, 1, 1], [2, 0, 3, 1]])
    g2 = np.full((4, 4), 3)
    g2[:2, :2] = 0
    _grey(f'{gt}/v2/b.png', g2)
    _grey(f'{pre}/v2/b.png', [[0, 3], [3, 4]])          # half resolution: nearest x2
    Image.new('RGB', (4, 4)).save(f'{pre}/v2/b_blend.jpg')  # not a .png: ignored
    return gt, pre


def test_vip_confusion_by_hand(tmp_path):
    # v1/a (gt, pred): (0,0) (0,1) (1,1) (1,1) | (2,2) (2,0) (255,3 ignored) (1,1)
    # v2/b: the 2x2 prediction becomes 2x2 blocks: 0 over gt 0 (4 px), 3 over gt 3 (8 px), 4 over gt 3 (4 px)
    gt, pre = _vip_case(str(tmp_path))
    hist = eval_vip.compute_hist(eval_vip.frame_pairs(gt, pre))
    expected = np.zeros((20, 20), np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 0], expected[2, 2] = 5, 1, 3, 1, 1
    expected[3, 3], expected[3, 4] = 8, 4
    assert (hist == expected).all()
    s = eval_vip.scores(hist)
    # rows 6, 3, 2, 12; columns 6, 4, 1, 8, 4; 23 pixels
    assert s['pixel_acc'] == pytest.approx(17 / 23)
    ious = [5 / 7, 3 / 4, 1 / 2, 8 / 12, 0.0]
    assert s['iou'][:5] == pytest.approx(ious) and np.isnan(s['iou'][5:]).all()
    assert s['mean_iou'] == pytest.approx(np.mean(ious))              # class 4: predicted only -> 0, counted
    assert s['mean_acc'] == pytest.approx(np.mean([5 / 6, 1, 1 / 2, 8 / 12]))
    assert s['fw_iou'] == pytest.approx((6 * 5 / 7 + 3 * 3 / 4 + 2 * 1 / 2 + 12 * 8 / 12) / 23)


def test_eval_vip_cli_and_errors(tmp_path, capsys):
    gt, pre = _vip_case(str(tmp_path))
    assert eval_vip.main(['--gt_dir', gt, '--pre_dir', pre, '--csv', str(tmp_path / 'vip.csv')]) == 0
    out = capsys.readouterr().out
    assert f'mean IU {np.mean([5 / 7, 3 / 4, 1 / 2, 8 / 12, 0]):.6f}' in out and 'left-shoe' in out
    assert 'mean,' in (tmp_path / 'vip.csv').read_text()
    _grey(f'{gt}/v1/c.png', np.zeros((2, 4)))                          # a ground-truth frame nobody predicted
    assert eval_vip.main(['-g', gt, '-p', pre]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'missing prediction' in err and 'c.png' in err
    os.remove(f'{gt}/v1/c.png')
    _grey(f'{pre}/v1/a.png', [[0, 1, 1, 1], [2, 0, 21, 1]])
    assert eval_vip.main(['-g', gt, '-p', pre]) == 1
    assert 'outside the 20 VIP classes' in capsys.readouterr().err
    assert eval_vip.main(['-g', gt, '-p', str(tmp_path / 'nothing')]) == 1
    assert 'no such folder' in capsys.readouterr().err


class FlatColourEncoder(torch.nn.Module):
    """'Features' = the mean colour of each 8x8 cell: flat-coloured regions are matched by colour."""

    def frames(self, x):
        return F.avg_pool2d(x, 8, ceil_mode=True)


def test_vip_layout_end_to_end(tmp_path, monkeypatch):
    # flat-coloured 'parts' (class ids 0, 5, 13; one moving by one feature cell per frame) at 120x160; test.py
    # runs at --cropSize 160 (the square resize of VIP's protocol), writes <save>/<video>/<frame>.png at the
    # annotation's 120x160, and eval_vip scores the known answer
    T, Hh, Ww = 5, 120, 160
    pal = np.array([[128, 128, 128], [230, 30, 30], [30, 200, 30]], np.uint8)
    ids = np.array([0, 5, 13])
    vip = tmp_path / 'VIP_Fine'
    for t in range(T):
        m = np.zeros((Hh, Ww), np.int64)
        m[24:72, 16 + 8 * t:80 + 8 * t] = 1
        m[78:114, 96:144] = 2
        write = vip / 'Images' / 'videos7'
        write.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pal[m]).save(write / f'{25 * t + 1:012d}.png')
        _grey(str(vip / 'Annotations' / 'Category_ids' / 'videos7' / f'{25 * t + 1:012d}.png'), ids[m])
    (vip / 'lists').mkdir()
    (vip / 'lists' / 'val_videos.txt').write_text('videos7\n')
    filelist = tmp_path / 'vip.txt'
    assert vip_filelist.main(['--vip', str(vip), '--out', str(filelist)]) == 0
    test_py = load_script('test.py')
    monkeypatch.setattr(test_py, 'build_encoder', lambda args, device: FlatColourEncoder())
    out = tmp_path / 'out'
    assert test_py.main(['--filelist', str(filelist), '--save-path', str(out), '--cropSize', '160', '--videoLen', '4',
                         '--temperature', '0.05', '--radius', '4', '--workers', '0', '--device', 'cpu']) == 0
    written = sorted(os.listdir(out / 'videos7'))
    assert written == [f'{25 * t + 1:012d}.png' for t in range(T)]
    first = Image.open(out / 'videos7' / written[0])
    assert first.mode == 'L' and first.size == (Ww, Hh)
    gt_dir = vip / 'Annotations' / 'Category_ids'
    assert (np.asarray(first) == np.asarray(Image.open(gt_dir / 'videos7' / written[0]))).all()
    s = eval_vip.scores(eval_vip.compute_hist(eval_vip.frame_pairs(str(gt_dir), str(out))))
    assert s['iou'][[0, 5, 13]].min() > 0.9 and s['mean_iou'] > 0.9


def test_vip_filelist_builder_errors(tmp_path):
    vip = tmp_path / 'VIP_Fine'
    (vip / 'lists').mkdir(parents=True)
    (vip / 'lists' / 'val_videos.txt').write_text('videos1\n')
    with pytest.raises(Exception, match='videos1: no frames folder'):
        vip_filelist.build(str(vip))
    with pytest.raises(Exception, match='no such video list'):
        vip_filelist.build(str(vip), str(vip / 'lists' / 'other.txt'))


def test_eval_vip_refuses_ground_truth_videos_without_predictions(tmp_path, capsys):
    # v3 has ground truth but no prediction: scoring v1 and v2 only would report a score for a part of the set
    gt, pre = _vip_case(str(tmp_path))
    _grey(f'{gt}/v3/c.png', np.zeros((2, 2)))
    assert eval_vip.main(['-g', gt, '-p', pre]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '1 of the 3 videos of the videos of --gt_dir' in err[0] and '(v3)' in err[0], err
    # the videos to score can be named: a list, or test.py's record of the filelist it ran
    (tmp_path / 'two.txt').write_text('v1\nv2\n')
    assert eval_vip.main(['-g', gt, '-p', pre, '--list', str(tmp_path / 'two.txt')]) == 0
    assert 'result of' in capsys.readouterr().out
    (tmp_path / 'three.txt').write_text('v1\nv2\nv3\n')
    assert eval_vip.main(['-g', gt, '-p', pre, '--list', str(tmp_path / 'three.txt')]) == 1
    assert '(v3)' in capsys.readouterr().err
    from crw.utils.output_folders import write_manifest
    record = {'tool': 'test.py', 'unit': '*', 'status': 'complete', 'command': 'test.py', 'files': [],
              'info': {'filelist': 'vip.txt', 'videos': [{'name': 'v1', 'kind': 'vip'}, {'name': 'v2', 'kind': 'vip'}]}}
    write_manifest(pre, [record])
    assert eval_vip.main(['-g', gt, '-p', pre]) == 0
    record['status'] = 'running'                          # a test.py run that did not finish
    write_manifest(pre, [record])
    assert eval_vip.main(['-g', gt, '-p', pre]) == 1
    assert 'did not finish' in capsys.readouterr().err
