"""Evaluation tools: DAVIS J/F measures, the scorer, convert_davis.py (including the release's BGR-swapped masks)
and run_test.py.

Only synthetic or hand-made data. Expected values are worked out by hand in the comments.
"""
import csv
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT as REPO, one_line, prop_argv, run_test_py
from crw.data.labels import davis_palette, save_indexed_png
from crw.data.synthetic import make_sequence, write_davis_layout
from crw.eval import convert_davis, evaluate_davis
from crw.eval import davis_metrics as dm
from crw.eval import evaluate_davis as ed
from crw.eval import run_test as rt
from crw.utils.errors import CRWError
from crw.utils.output_folders import write_manifest

ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
ENV.pop('DAVIS_ROOT', None)
ENV.pop('CRW_RESULTS', None)
ENV.pop('DAVIS_SCORER', None)


def run_script(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env or ENV,
                          timeout=120)


def square(h=20, w=20, top=2, left=2, size=10):
    m = np.zeros((h, w), dtype=bool)
    m[top:top + size, left:left + size] = True
    return m


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert 'Traceback' not in proc.stderr
    assert len(err.splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in err, (n, err)


# ------------------------------------------------------------------------------------------ per-frame measures

def test_j_of_squares_shifted_by_one_pixel():
    # 10x10 squares, one shifted right by a pixel: overlap 10x9 = 90, union 100 + 100 - 90 = 110
    gt, pred = square(), square(left=3)
    assert dm.region_similarity(gt, pred) == pytest.approx(90 / 110)
    assert dm.region_similarity(gt, gt) == 1.0


def test_boundary_map_of_a_square_is_the_ring_offset_towards_the_origin():
    # seg2bmap marks a pixel that differs from its E, S or SE neighbour: for the square rows/cols 2..11 that is
    # the outline of rows/cols 1..11, an 11x11 ring of 40 pixels
    b = dm.boundary_map(square())
    ring = np.zeros((20, 20), dtype=bool)
    ring[1:12, 1:12] = True
    ring[2:11, 2:11] = False
    assert np.array_equal(b, ring)
    assert b.sum() == 40


def test_f_of_squares_shifted_by_two_pixels():
    # 20x20 image: radius ceil(0.008 * 28.3) = 1, a plus-shaped disk. Predicted ring = gt ring moved 2 px right.
    # Of the 40 predicted boundary pixels the top and bottom rows match except their right-most pixel (2 x 10),
    # the left side matches only next to the corners (2): 22 / 40; by symmetry recall is 22 / 40 too.
    gt, pred = square(), square(left=4)
    assert dm.boundary_radius(gt.shape) == 1
    p, r = dm.boundary_precision_recall(gt, pred)
    assert p == pytest.approx(22 / 40) and r == pytest.approx(22 / 40)
    assert dm.boundary_f_measure(gt, pred) == pytest.approx(22 / 40)
    # one pixel off is inside the tolerance: a perfect F with an imperfect J
    assert dm.boundary_f_measure(gt, square(left=3)) == 1.0


def test_boundary_radius_and_disk():
    assert dm.boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6)
    d = dm.disk(2)
    assert d.shape == (5, 5) and d.sum() == 13  # y^2 + x^2 <= 4
    assert dm.boundary_radius((480, 854), bound_th=3) == 3


def test_void_pixels_are_ignored():
    gt, pred = square(), square(left=3)
    void = gt ^ pred  # every disagreeing pixel is void
    assert dm.region_similarity(gt, pred, void) == 1.0
    # void pixels of a prediction do not count against it
    pred2 = gt.copy()
    pred2[15:18, 15:18] = True
    void2 = np.zeros_like(gt)
    void2[14:19, 14:19] = True
    assert dm.region_similarity(gt, pred2, void2) == 1.0
    assert dm.region_similarity(gt, pred2) == pytest.approx(100 / 109)
    assert dm.boundary_f_measure(gt, pred2, void2) == 1.0
    assert dm.boundary_f_measure(gt, pred2) < 1.0


def test_empty_masks():
    empty = np.zeros((20, 20), dtype=bool)
    gt = square()
    # both empty
    assert dm.region_similarity(empty, empty) == 1.0
    assert dm.boundary_precision_recall(empty, empty) == (1.0, 1.0)
    assert dm.boundary_f_measure(empty, empty) == 1.0
    # only the ground truth
    assert dm.region_similarity(gt, empty) == 0.0
    assert dm.boundary_precision_recall(gt, empty) == (1.0, 0.0)
    assert dm.boundary_f_measure(gt, empty) == 0.0
    # only the prediction
    assert dm.region_similarity(empty, gt) == 0.0
    assert dm.boundary_precision_recall(empty, gt) == (0.0, 1.0)
    assert dm.boundary_f_measure(empty, gt) == 0.0
    assert dm.f_from_pr(0.0, 0.0) == 0.0


def test_decay_quarters():
    # n = 10: round(linspace(1, 10, 5)) - 1 = [0, 2, 5, 7, 9] (5.5 rounds up); each quarter includes both cuts
    assert dm.decay_bins(10) == [(0, 3), (2, 6), (5, 8), (7, 10)]
    v = np.arange(10) / 10
    mean, recall, decay = dm.statistics(v)
    assert mean == pytest.approx(0.45)
    assert decay == pytest.approx((0.0 + 0.1 + 0.2) / 3 - (0.7 + 0.8 + 0.9) / 3)
    # n = 3: linspace = [1, 1.5, 2, 2.5, 3]; halves round up -> cuts [0, 1, 1, 2, 2]
    assert dm.decay_bins(3) == [(0, 2), (1, 2), (1, 3), (2, 3)]
    assert dm.statistics([1.0, 0.5, 0.0])[2] == pytest.approx(0.75)
    # one frame: every quarter is that frame
    assert dm.statistics([0.3]) == pytest.approx((0.3, 0.0, 0.0))


def test_recall_threshold_is_strictly_above_half():
    assert dm.statistics([0.5, 0.51, 0.2, 0.9])[1] == pytest.approx(0.5)
    assert dm.statistics([0.5, 0.5])[1] == 0.0


# ------------------------------------------------------------------------------------------------ the scorer

def two_rect_sequence(T=6, h=64, w=96):
    """Object 1: a fixed 16x16 square; object 2: a 16x20 rectangle moving right one pixel a frame; no overlap."""
    masks = np.zeros((T, h, w), dtype=np.uint8)
    for t in range(T):
        masks[t, 5:21, 5:21] = 1
        masks[t, 30:46, 40 + t:60 + t] = 2
    return {'frames': np.zeros((T, h, w, 3), dtype=np.uint8), 'masks': masks}


def write_results(root, name, masks):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for t, m in enumerate(masks):
        save_indexed_png(os.path.join(root, name, f'{t:05d}.png'), m)


@pytest.fixture
def layout(tmp_path):
    seqs = {'rects': two_rect_sequence(),
            'synth': make_sequence(num_frames=7, height=48, width=64, num_objects=3, seed=3)}
    davis = str(tmp_path / 'davis')
    filelist = write_davis_layout(davis, seqs)
    return davis, seqs, filelist


def test_perfect_prediction_scores_one(layout, tmp_path):
    davis, seqs, _ = layout
    res = str(tmp_path / 'res')
    for name, s in seqs.items():
        write_results(res, name, s['masks'])
    g, rows = ed.evaluate(davis, res, workers=1)
    assert list(g) == ed.GLOBAL_COLUMNS
    assert g == {'J&F-Mean': 1.0, 'J-Mean': 1.0, 'J-Recall': 1.0, 'J-Decay': 0.0, 'F-Mean': 1.0,
                 'F-Recall': 1.0, 'F-Decay': 0.0}
    assert [r['Sequence'] for r in rows] == ['rects_1', 'rects_2', 'synth_1', 'synth_2', 'synth_3']
    # the same through a process pool
    g2, rows2 = ed.evaluate(davis, res, workers=2)
    assert g2 == g and rows2 == rows


def test_shifted_and_swapped_objects(layout, tmp_path):
    davis, seqs, _ = layout
    masks = seqs['rects']['masks']
    # object 2 (16x20) predicted 2 px to the right: J = 16*18 / (16*22) = 9/11; F: its 17x21 boundary ring moved
    # 2 px (radius ceil(0.008 * 115.4) = 1) matches 2*20 + 2 of its 72 pixels both ways: F = 42/72 = 7/12
    shifted = masks.copy()
    shifted[masks == 2] = 0
    shifted[np.roll(masks == 2, 2, axis=2)] = 2
    res = str(tmp_path / 'shifted')
    write_results(res, 'rects', shifted)
    g, rows = ed.evaluate(davis, res, sequences=['rects'], workers=1)
    by = {r['Sequence']: r for r in rows}
    assert by['rects_1']['J-Mean'] == 1.0 and by['rects_1']['F-Mean'] == 1.0
    assert by['rects_2']['J-Mean'] == pytest.approx(9 / 11)
    assert by['rects_2']['F-Mean'] == pytest.approx(7 / 12)
    assert by['rects_2']['J-Decay'] == pytest.approx(0.0) and by['rects_2']['J-Recall'] == 1.0
    assert g['J-Mean'] == pytest.approx((1 + 9 / 11) / 2)
    assert g['F-Mean'] == pytest.approx((1 + 7 / 12) / 2)
    assert g['J&F-Mean'] == pytest.approx(((1 + 9 / 11) / 2 + (1 + 7 / 12) / 2) / 2)
    # objects 1 and 2 swapped: disjoint masks, so J = 0 on every frame; F far apart = 0 as well
    swapped = masks.copy()
    swapped[masks == 1], swapped[masks == 2] = 2, 1
    res = str(tmp_path / 'swapped')
    write_results(res, 'rects', swapped)
    g, rows = ed.evaluate(davis, res, sequences=['rects'], workers=1)
    assert g['J-Mean'] == 0.0 and g['J-Recall'] == 0.0 and g['F-Mean'] == 0.0 and g['J&F-Mean'] == 0.0


def test_decay_on_a_sequence(tmp_path):
    # 10 frames, 8 scored; object predicted right on frames 1-4 and empty on 5-8:
    # J per scored frame = [1,1,1,1,0,0,0,0]; quarters of 8: cuts [0,2,4,5,7] -> first [0:3] mean 1, last [7:8] 0
    T = 10
    masks = np.zeros((T, 32, 32), dtype=np.uint8)
    masks[:, 8:20, 8:20] = 1
    davis = str(tmp_path / 'davis')
    write_davis_layout(davis, {'one': {'frames': np.zeros((T, 32, 32, 3), np.uint8), 'masks': masks}})
    pred = masks.copy()
    pred[5:] = 0
    res = str(tmp_path / 'res')
    write_results(res, 'one', pred)
    g, rows = ed.evaluate(davis, res, workers=1)
    assert dm.decay_bins(8) == [(0, 3), (2, 5), (4, 6), (5, 8)]
    assert g['J-Mean'] == pytest.approx(0.5) and g['J-Recall'] == pytest.approx(0.5)
    assert g['J-Decay'] == pytest.approx(1.0) and g['F-Decay'] == pytest.approx(1.0)


def test_void_in_ground_truth(tmp_path):
    T = 5
    masks = np.zeros((T, 32, 32), dtype=np.uint8)
    masks[:, 8:20, 8:20] = 1
    gt = masks.copy()
    gt[1:, 8:20, 16:20] = 255  # the right third of the object is void after frame 0
    davis = str(tmp_path / 'davis')
    write_davis_layout(davis, {'v': {'frames': np.zeros((T, 32, 32, 3), np.uint8), 'masks': gt}})
    res = str(tmp_path / 'res')
    write_results(res, 'v', masks)  # predicts the whole square
    g, _ = ed.evaluate(davis, res, workers=1)
    assert g['J-Mean'] == 1.0 and g['F-Mean'] == 1.0
    # the official code path turns void into background instead: J = 12*8 / (12*12)
    g, _ = ed.evaluate(davis, res, workers=1, void='background')
    assert g['J-Mean'] == pytest.approx(96 / 144)


@pytest.mark.slow
def test_cli_writes_csvs_and_reuses_them(layout, tmp_path):
    davis, seqs, _ = layout
    res = str(tmp_path / 'res')
    for name, s in seqs.items():
        write_results(res, name, s['masks'])
    p = run_script('eval/evaluate_davis.py', '--task', 'semi-supervised', '--results_path', res, '--set', 'val',
                   '--davis_path', davis, '--workers', '1')
    assert p.returncode == 0, p.stderr
    assert 'Global results for val' in p.stdout and 'J&F-Mean' in p.stdout
    with open(os.path.join(res, 'global_results-val.csv'), newline='') as f:
        table = list(csv.reader(f))
    assert table == [ed.GLOBAL_COLUMNS, ['1.000', '1.000', '1.000', '0.000', '1.000', '1.000', '0.000']]
    with open(os.path.join(res, 'per-sequence_results-val.csv'), newline='') as f:
        table = list(csv.reader(f))
    assert table[0] == ['Sequence', 'J-Mean', 'F-Mean']
    assert [r[0] for r in table[1:]] == ['rects_1', 'rects_2', 'synth_1', 'synth_2', 'synth_3']
    assert all(r[1:] == ['1.000', '1.000'] for r in table[1:])
    # existing CSVs are reused when the record beside them matches these inputs (a marker value shows it)
    assert os.path.isfile(os.path.join(res, '.scores-val.json'))
    with open(os.path.join(res, 'global_results-val.csv'), 'w') as f:
        f.write(','.join(ed.GLOBAL_COLUMNS) + '\n0.123,0.100,0.100,0.100,0.146,0.100,0.100\n')
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis)
    assert p.returncode == 0 and 'precomputed' in p.stdout and '0.123' in p.stdout
    # other masks in the same folder (another model's run): recomputed, not the old score
    blank = seqs['synth']['masks'].copy()
    blank[1:-1] = 0
    write_results(res, 'synth', blank)
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis, '--workers', '1')
    assert p.returncode == 0 and 'precomputed' not in p.stdout and 'recomputing' in p.stdout
    assert '0.123' not in p.stdout and '1.000,' not in open(os.path.join(res, 'global_results-val.csv')).read()
    # CSVs without the record (e.g. the official scorer's): recomputed as well
    write_results(res, 'synth', seqs['synth']['masks'])
    os.remove(os.path.join(res, '.scores-val.json'))
    with open(os.path.join(res, 'global_results-val.csv'), 'w') as f:
        f.write(','.join(ed.GLOBAL_COLUMNS) + '\n0.123,0.100,0.100,0.100,0.146,0.100,0.100\n')
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis, '--workers', '1')
    assert p.returncode == 0 and 'precomputed' not in p.stdout and '0.123' not in p.stdout
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis, '--force',
                   '--workers', '1')
    assert p.returncode == 0 and '0.123' not in p.stdout
    with open(os.path.join(res, 'global_results-val.csv')) as f:
        assert f.read().splitlines()[1].startswith('1.000,')
    # --set as a list file: its stem names the CSVs
    lst = tmp_path / 'only_rects.txt'
    lst.write_text('rects\n')
    g, rows = ed.evaluate(davis, res, set_name=str(lst), workers=1)
    assert [r['Sequence'] for r in rows] == ['rects_1', 'rects_2']
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis, '--set', str(lst),
                   '--workers', '1')
    assert p.returncode == 0 and os.path.isfile(os.path.join(res, 'global_results-only_rects.csv'))


@pytest.mark.slow
def test_missing_result_frame_and_unknown_object(layout, tmp_path):
    davis, seqs, _ = layout
    res = str(tmp_path / 'res')
    for name, s in seqs.items():
        write_results(res, name, s['masks'])
    os.remove(os.path.join(res, 'synth', '00004.png'))
    with pytest.raises(CRWError, match=r'synth: result frame 00004 is missing'):
        ed.evaluate(davis, res, workers=1)
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis, '--workers', '2')
    assert_one_line_error(p, 'synth', '00004')
    # object id 3 in a sequence with 2 objects
    write_results(res, 'synth', seqs['synth']['masks'])
    bad = seqs['rects']['masks'][2].copy()
    bad[0:3, 0:3] = 3
    save_indexed_png(os.path.join(res, 'rects', '00002.png'), bad)
    with pytest.raises(CRWError, match=r'rects: result frame 00002 has object id\(s\) \[3\]'):
        ed.evaluate(davis, res, workers=1)
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis, '--workers', '1')
    assert_one_line_error(p, 'rects', '00002', 'object id')
    # ground truth without frame 0: refused, not scored from frame 1 as the first frame
    write_results(res, 'rects', seqs['rects']['masks'])
    os.remove(os.path.join(davis, 'Annotations', '480p', 'rects', '00000.png'))
    with pytest.raises(CRWError, match=r'rects: the ground truth has no annotation of the first frame 00000'):
        ed.evaluate(davis, res, workers=1)
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis, '--workers', '1')
    assert_one_line_error(p, 'rects', 'first frame', '00001.png')
    # without the frames folder the first result frame is the first frame
    shutil.rmtree(os.path.join(davis, 'JPEGImages', '480p', 'rects'))
    with pytest.raises(CRWError, match=r'rects: the ground truth has no annotation of the first frame 00000.png'):
        ed.evaluate(davis, res, workers=1)
    # a bad task or a missing dataset: one line too
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', davis, '--task', 'unsupervised')
    assert_one_line_error(p, 'semi-supervised')
    p = run_script('eval/evaluate_davis.py', '--results_path', res, '--davis_path', str(tmp_path / 'nope'))
    assert_one_line_error(p, 'nope')


# -------------------------------------------------------------------------------------------- convert_davis.py

def write_raw(raw, seqs, size=None, skip=(), record=True):
    """test.py --filelist's masks {i}_{t}_mask.png of ``seqs`` (video i = the i-th sequence) and, as test.py does,
    the record of its run naming each video (``record=False``: masks only, like the release's test.py)."""
    os.makedirs(raw, exist_ok=True)
    for i, s in enumerate(seqs.values()):
        for t, m in enumerate(s['masks']):
            if (i, t) in skip:
                continue
            im = Image.fromarray(m)  # 8-bit greyscale, value = object id
            if size:
                im = im.resize((size, size), Image.NEAREST)
            im.save(os.path.join(raw, f'{i}_{t}_mask.png'))
    if record:
        videos = [{'index': i, 'name': name, 'kind': 'davis', 'num_frames': len(s['masks'])}
                  for i, (name, s) in enumerate(seqs.items())]
        write_manifest(raw, [{'tool': 'test.py', 'unit': '*', 'status': 'complete', 'command': 'test.py',
                              'files': sorted(os.listdir(raw)), 'info': {'videos': videos}}])


@pytest.mark.slow
def test_convert_resizes_to_gt_size_with_palette(layout, tmp_path):
    davis, seqs, _ = layout
    raw, out = str(tmp_path / 'raw'), str(tmp_path / 'converted')
    write_raw(raw, seqs, size=32)  # as test.py writes them with --cropSize 32
    p = run_script('eval/convert_davis.py', '--in_folder', raw + '/', '--out_folder', out, '--dataset', davis)
    assert p.returncode == 0, p.stderr
    for i, (name, s) in enumerate(seqs.items()):
        h, w = s['masks'].shape[1:]
        files = sorted(os.listdir(os.path.join(out, name)))
        assert files == [f'{t:05d}.png' for t in range(len(s['masks']))]
        for t in (0, len(files) - 1):
            with Image.open(os.path.join(out, name, f'{t:05d}.png')) as im:
                assert im.mode == 'P' and im.size == (w, h)
                assert np.array_equal(np.array(im.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256],
                                      davis_palette())
                got = np.array(im)
            small = Image.open(os.path.join(raw, f'{i}_{t}_mask.png'))
            # nearest neighbour with pixel centres aligned, as PIL does it
            assert np.array_equal(got, np.array(small.resize((w, h), Image.NEAREST)))
    # the converted folder scores: a coarse 32x32 round trip is imperfect but sensible
    g, _ = ed.evaluate(davis, out, workers=1)
    assert 0.3 < g['J-Mean'] < 1.0


def test_convert_native_size_round_trip_and_colour_masks(layout, tmp_path):
    davis, seqs, _ = layout
    raw, out = str(tmp_path / 'raw'), str(tmp_path / 'converted')
    write_raw(raw, seqs)
    # the release's test.py wrote coloured masks (annotation colours read by OpenCV, so BGR, written as RGB): a
    # sequence written that way maps back to its ids
    import cv2
    for t in range(len(seqs['rects']['masks'])):
        gt = os.path.join(davis, 'Annotations', '480p', 'rects', f'{t:05d}.png')
        Image.fromarray(cv2.imread(gt)).save(os.path.join(raw, f'0_{t}_mask.png'))
    from crw.eval.convert_davis import convert
    done = convert(raw, out, davis, workers=1)
    assert [d[2] for d in done] == ['bgr', 'ids']
    g, _ = ed.evaluate(davis, out, workers=1)
    assert g['J&F-Mean'] == 1.0


@pytest.mark.slow
def test_convert_missing_frame_is_one_line_error(layout, tmp_path):
    davis, seqs, _ = layout
    raw, out = str(tmp_path / 'raw'), str(tmp_path / 'converted')
    write_raw(raw, seqs, skip={(1, 4)})
    p = run_script('eval/convert_davis.py', '--in_folder', raw, '--out_folder', out, '--dataset', davis)
    assert_one_line_error(p, os.path.join(raw, '1_4_mask.png'), 'incomplete')
    assert not os.path.exists(out)  # nothing written before the inputs were checked


# ------------------------------------------------------------------------------------------------ run_test.py

def test_davis_vallist():
    with open(os.path.join(REPO, 'eval', 'davis_vallist.txt')) as f:
        lines = f.read().splitlines()
    names = ['bike-packing', 'blackswan', 'bmx-trees', 'breakdance', 'camel', 'car-roundabout', 'car-shadow', 'cows',
             'dance-twirl', 'dog', 'dogs-jump', 'drift-chicane', 'drift-straight', 'goat', 'gold-fish',
             'horsejump-high', 'india', 'judo', 'kite-surf', 'lab-coat', 'libby', 'loading', 'mbike-trick',
             'motocross-jump', 'paragliding-launch', 'parkour', 'pigs', 'scooter-black', 'shooting', 'soapbox']
    assert lines == [f'JPEGImages/480p/{n} Annotations/480p/{n}' for n in names]


@pytest.mark.slow
def test_dryrun_prints_the_product_and_runs_nothing(tmp_path):
    marker = tmp_path / 'ran'
    fake = tmp_path / 'fake_test.py'
    fake.write_text(f'open({str(marker)!r}, "w").close()\n')
    model = tmp_path / 'ckpt.pth'
    model.write_bytes(b'')
    out = tmp_path / 'out'
    p = run_script('eval/run_test.py', '--model-path', str(model), '--L', '10', '20', '--K', '5', '10',
                   '--T', '0.05', '--cropSize', '-1', '--out-dir', str(out), '--test-script', str(fake), '--dryrun')
    assert p.returncode == 0, p.stderr
    lines = [ln.strip() for ln in p.stdout.splitlines()]
    heads = [ln for ln in lines if ln.startswith('# [')]
    assert len(heads) == 4
    cmds = [ln for ln in lines if ln.startswith(sys.executable)]
    assert len(cmds) == 12
    seen = set()
    for n in range(4):
        test, conv, score = cmds[3 * n:3 * n + 3]
        assert str(fake) in test and f'--resume {model}' in test and '--cropSize -1' in test
        assert '--temperature 0.05' in test and '--data-root' in test and 'davis_vallist.txt' in test
        L, K = test.split('--videoLen ')[1].split()[0], test.split('--topk ')[1].split()[0]
        seen.add((L, K))
        raw = test.split('--save-path ')[1].split()[0]
        assert 'eval/convert_davis.py' in conv and f'--in_folder {raw}' in conv
        converted = conv.split('--out_folder ')[1].split()[0]
        assert 'eval/evaluate_davis.py --task semi-supervised' in score and f'--results_path {converted}' in score
        assert '--set val' in score
    assert seen == {('10', '5'), ('10', '10'), ('20', '5'), ('20', '10')}
    assert not marker.exists() and not out.exists()


@pytest.mark.slow
def test_folder_model_path_picks_newest(tmp_path):
    ckdir = tmp_path / 'run'
    ckdir.mkdir()
    for i, name in enumerate(['model_10.pth', 'model_2.pth', 'model_1.pth', 'checkpoint.pth']):
        (ckdir / name).write_bytes(b'')
        os.utime(ckdir / name, (1000 + i, 1000 + i))  # model_1 is the latest by time, model_10 by epoch
    assert rt.newest_checkpoint(str(ckdir)) == str(ckdir / 'model_10.pth')
    p = run_script('eval/run_test.py', '--model-path', str(ckdir), '--out-dir', str(tmp_path / 'o'), '--dryrun')
    assert p.returncode == 0 and f'--resume {ckdir / "model_10.pth"}' in p.stdout
    # release heuristic for the model type, and a bare model type
    assert rt.resolve_model('/x/zero_pad/model_3.pth', dryrun=True)[1] == 'scratch_zeropad'
    assert rt.resolve_model('imagenet18') == (None, 'imagenet18', 'imagenet18')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(CRWError, match='no model_'):
        rt.newest_checkpoint(str(empty))


@pytest.mark.slow
def test_run_test_missing_dataset_is_one_line_error(tmp_path):
    model = tmp_path / 'm.pth'
    model.write_bytes(b'')
    p = run_script('eval/run_test.py', '--model-path', str(model), '--out-dir', str(tmp_path / 'o'))
    assert_one_line_error(p, 'DAVIS_ROOT')
    p = run_script('eval/run_test.py', '--model-path', str(model), '--out-dir', str(tmp_path / 'o'),
                   '--davis-path', str(tmp_path / 'nope'))
    assert_one_line_error(p, 'nope')


FAKE_TEST = textwrap.dedent('''
    """Stand-in for test.py: copies each video's ground truth as {i}_{t}_mask.png."""
    import argparse, os
    import numpy as np
    from PIL import Image
    p = argparse.ArgumentParser()
    p.add_argument('--filelist'); p.add_argument('--data-root', default=''); p.add_argument('--save-path')
    a, _ = p.parse_known_args()
    os.makedirs(a.save_path, exist_ok=True)
    for i, line in enumerate(open(a.filelist).read().split('\\n')):
        if not line.strip():
            continue
        ann = os.path.join(a.data_root, line.split()[1])
        for t, f in enumerate(sorted(os.listdir(ann))):
            m = np.array(Image.open(os.path.join(ann, f)))
            Image.fromarray(m).save(os.path.join(a.save_path, f'{i}_{t}_mask.png'))
''')


@pytest.mark.slow
def test_run_test_full_chain_then_skip(layout, tmp_path):
    davis, seqs, filelist = layout
    fake = tmp_path / 'fake_test.py'
    fake.write_text(FAKE_TEST)
    out = tmp_path / 'out'
    args = ['eval/run_test.py', '--model-path', 'imagenet18', '--L', '20', '--K', '10', '--T', '0.05',
            '--cropSize', '-1', '--filelist', filelist, '--test-script', str(fake), '--by-order']   # no record
    env = {**ENV, 'DAVIS_ROOT': davis, 'CRW_RESULTS': str(out)}
    p = run_script(*args, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    tag = rt.combination_tag('imagenet18', 20, 10, 0.05, 12, -1)
    g_csv = out / tag / 'converted' / 'global_results-val.csv'
    assert g_csv.read_text().splitlines()[1].startswith('1.000,1.000')
    assert 'J&F-Mean' in p.stdout
    # a second run skips the combination; --dryrun --force prints the commands again
    p = run_script(*args, env=env)
    assert p.returncode == 0 and 'skipped' in p.stdout and str(fake) not in p.stdout
    p = run_script(*args, '--force', '--dryrun', env=env)
    assert p.returncode == 0 and 'skipped' not in p.stdout and str(fake) in p.stdout


# ------------------------------------------------------------------- convert_davis.py: names, inputs, mixed folders

def test_convert_matches_sequences_by_name_not_by_line(layout, tmp_path, capsys):
    # test.py ran a filelist in another order than val.txt (video 0 = synth, video 1 = rects): matched by the
    # names test.py recorded, the conversion is exact; by line it would score the wrong sequences
    from crw.eval import convert_davis as cd
    davis, seqs, _ = layout
    raw, out = str(tmp_path / 'raw'), str(tmp_path / 'converted')
    write_raw(raw, {'synth': seqs['synth'], 'rects': seqs['rects']})
    assert cd.main(['--in_folder', raw, '--out_folder', out, '--dataset', davis, '--workers', '1']) == 0
    assert ed.evaluate(davis, out, workers=1)[0]['J&F-Mean'] == 1.0
    # by line: video 0 (7 frames of synth) is not rects (6 frames): refused, not scored
    assert cd.main(['--in_folder', raw, '--out_folder', str(tmp_path / 'o2'), '--dataset', davis,
                    '--by-order']) == 1
    assert 'video 0 has more frames than rects' in capsys.readouterr().err
    # masks without test.py's record (the release's): refused unless --by-order says the order is the split's
    os.remove(os.path.join(raw, '.crw_outputs.json'))
    assert cd.main(['--in_folder', raw, '--out_folder', str(tmp_path / 'o3'), '--dataset', davis]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'no record of which video is which sequence' in err[0] and '--by-order' in err[0]
    # a record that lacks a sequence of the split
    write_raw(raw, {'rects': seqs['rects']})
    with pytest.raises(CRWError, match='test.py propagated no video named synth'):
        cd.convert(raw, str(tmp_path / 'o4'), davis, workers=1)
    assert not any(os.path.exists(tmp_path / o) for o in ('o2', 'o3', 'o4'))


def test_convert_out_folder_onto_ground_truth_or_another_run_is_refused(layout, tmp_path, capsys):
    from crw.eval import convert_davis as cd
    davis, seqs, _ = layout
    raw = str(tmp_path / 'raw')
    write_raw(raw, seqs)

    def tree(folder):
        return {str(p): p.read_bytes() for p in __import__('pathlib').Path(folder).rglob('*') if p.is_file()}

    before = tree(davis)
    gt = os.path.join(davis, 'Annotations', '480p')
    for out in (gt, gt + '/../480p/', davis, raw):
        assert cd.main(['--in_folder', raw, '--out_folder', out, '--dataset', davis, '--workers', '1']) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and '--out_folder' in err[0] and 'an input' in err[0], err
    assert tree(davis) == before and sorted(os.listdir(raw)) == sorted(
        ['.crw_outputs.json'] + [f'{i}_{t}_mask.png' for i, s in enumerate(seqs.values()) for t in range(len(s['masks']))])
    # a converted folder with its scores: a second conversion is refused; --overwrite replaces both
    out = str(tmp_path / 'converted')
    assert cd.main(['--in_folder', raw, '--out_folder', out, '--dataset', davis, '--workers', '1']) == 0
    ed.write_csvs(out, 'val', *ed.evaluate(davis, out, workers=1))
    assert cd.main(['--in_folder', raw, '--out_folder', out, '--dataset', davis, '--workers', '1']) == 1
    assert 'holds the outputs of convert_davis.py' in capsys.readouterr().err
    assert cd.main(['--in_folder', raw, '--out_folder', out, '--dataset', davis, '--workers', '1',
                    '--overwrite']) == 0
    assert sorted(os.listdir(out)) == ['.crw_outputs.json', 'rects', 'synth']     # the old scores are gone


def release_mask(gt_png, out_png):
    """A mask as the release's test.py wrote an exact prediction: annotation colours read by OpenCV (BGR) and
    written by imageio as if they were RGB."""
    Image.fromarray(cv2.imread(gt_png)).save(out_png)


@pytest.fixture
def onefour(tmp_path):
    """A DAVIS layout whose objects are 1 and 4: the two ids the release's channel swap exchanges."""
    seq = make_sequence(num_frames=4, height=40, width=48, num_objects=2, seed=5)
    seq['masks'] = np.where(seq['masks'] == 2, 4, seq['masks']).astype(np.uint8)
    three = make_sequence(num_frames=3, height=32, width=40, num_objects=3, seed=6)
    davis = str(tmp_path / 'davis')
    write_davis_layout(davis, {'onefour': seq, 'three': three})
    return davis, {'onefour': seq, 'three': three}


def test_convert_release_bgr_masks_to_the_right_ids(onefour, tmp_path, capsys):
    davis, seqs = onefour
    raw, out = tmp_path / 'raw', tmp_path / 'out'
    raw.mkdir()
    for i, name in enumerate(seqs):
        for t in range(len(seqs[name]['masks'])):
            gt = os.path.join(davis, 'Annotations', '480p', name, f'{t:05d}.png')
            release_mask(gt, str(raw / f'{i}_{t}_mask.png'))
    # the release's frame 0 is the ground truth after a down/up-sampling round trip: not exact
    m0 = np.asarray(Image.open(raw / '0_0_mask.png')).copy()
    m0[::7] = 0
    Image.fromarray(m0).save(raw / '0_0_mask.png')
    assert convert_davis.main(['--in_folder', str(raw), '--out_folder', str(out), '--dataset', davis,
                               '--workers', '1', '--by-order']) == 0     # the release recorded no names
    summary = capsys.readouterr().out.splitlines()[0]
    assert 'red and blue swapped' in summary and 'all 2 sequences' in summary
    assert 'decided by frame 0 for onefour' in summary          # ids {1, 4} fit both colour orders
    for name, seq in seqs.items():
        for t in range(1, len(seq['masks'])):
            assert np.array_equal(np.asarray(Image.open(out / name / f'{t:05d}.png')), seq['masks'][t]), (name, t)
    # the same masks in RGB order are recognised as such and give the same ids
    rgb = tmp_path / 'rgb'
    rgb.mkdir()
    for t, m in enumerate(seqs['onefour']['masks']):
        Image.fromarray(davis_palette()[m]).save(rgb / f'0_{t}_mask.png')
    fmt, how = convert_davis.detect_format([str(rgb / f'0_{t}_mask.png') for t in range(4)],
                                           os.path.join(davis, 'Annotations', '480p', 'onefour', '00000.png'))
    assert fmt == 'rgb' and 'frame 0' in how
    assert np.array_equal(convert_davis.read_mask(str(rgb / '0_2_mask.png'), fmt), seqs['onefour']['masks'][2])


def test_convert_refuses_mixed_mask_formats(onefour, tmp_path):
    davis, seqs = onefour
    raw = tmp_path / 'raw'
    raw.mkdir()
    for i, name in enumerate(seqs):
        for t, m in enumerate(seqs[name]['masks']):
            Image.fromarray(m).save(raw / f'{i}_{t}_mask.png')
    Image.fromarray(davis_palette()[seqs['three']['masks'][2]]).save(raw / '1_2_mask.png')   # one colour mask
    with pytest.raises(CRWError, match='1_2_mask.png is an RGB PNG'):
        convert_davis.convert(str(raw), str(tmp_path / 'out'), davis, workers=1, by_order=True)


def test_scores_are_printed_when_the_csv_cannot_be_written(davis, tmp_path, capsys):
    root, filelist, ckpt, _ = davis
    raw, res = tmp_path / 'raw', tmp_path / 'res'
    assert run_test_py(prop_argv(filelist, ckpt, raw)) == 0
    assert convert_davis.main(['--in_folder', str(raw), '--out_folder', str(res), '--dataset', root]) == 0
    (res / 'global_results-val.csv').mkdir()                  # something that is not a file is in the way
    capsys.readouterr()
    assert evaluate_davis.main(['--davis_path', root, '--results_path', str(res), '--workers', '1']) == 1
    captured = capsys.readouterr()
    assert 'J&F-Mean' in captured.out and 'Per sequence results' in captured.out
    assert 'the scores above were not saved' in one_line(captured.err)
