#!/usr/bin/env python
"""Human-part mIoU of propagated VIP labels: the release's ``eval/eval_vip.py`` (same flags, same measures).

    python eval/eval_vip.py --gt_dir /path/to/VIP_Fine/Annotations/Category_ids --pre_dir /save/path

Every ``<pre_dir>/<video>/<frame>.png`` (test.py's label ids for a VIP filelist; other files ignored) of the
videos to score (``videos_to_score``) is compared with ``<gt_dir>/<video>/<frame>.png``, resized to it with
nearest neighbour when its size differs. A 20 x 20 confusion histogram (rows ground truth, columns prediction;
ground truth outside 0..19 ignored) summed over all frames gives pixel accuracy = trace / total, class
accuracy = diag / row, IoU = diag / (row + col - diag), their nan-means over the classes (mean accuracy, mean
IU; a class absent from both is left out) and frequency-weighted IU = sum of (row / total) x IoU. A prediction
id above 19, or a ground-truth frame or video left unpredicted, is an error naming the file.
"""
import csv
import os
import sys

if __name__ == '__main__' and not __package__:  # run by path: eval/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from crw.data.labels import load_label_image, read_ids, resize_nearest  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.errors import CRWError, report  # noqa: E402
from crw.eval.vip_filelist import read_video_list  # noqa: E402
from crw.utils.misc import atomic_write  # noqa: E402
from crw.utils.output_folders import find_run  # noqa: E402

N_CLASSES = 20
CLASSES = ('background', 'hat', 'hair', 'sun-glasses', 'upper-clothes', 'dress', 'coat', 'socks', 'pants',
           'gloves', 'scarf', 'skirt', 'torso-skin', 'face', 'right-arm', 'left-arm', 'right-leg', 'left-leg',
           'right-shoe', 'left-shoe')


# ----------------------------------------------------------------------------------------------------------
# Measures
# ----------------------------------------------------------------------------------------------------------

def confusion(gt, pred, n=N_CLASSES):
    """[n, n] int64 histogram, rows ground truth, columns prediction; gt outside 0..n-1 ignored.
    gt, pred: integer arrays of the same shape, pred in 0..n-1."""
    gt = np.asarray(gt, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    k = (gt >= 0) & (gt < n)
    return np.bincount(n * gt[k] + pred[k], minlength=n * n).reshape(n, n)


def scores(hist):
    """Measures of a confusion histogram -> dict: pixel_acc, class_acc [n], mean_acc, iou [n], mean_iou,
    fw_iou (formulas: the module docstring). A class predicted but absent from the ground truth has IoU 0."""
    hist = np.asarray(hist, dtype=np.float64)
    diag, rows, cols, total = np.diag(hist), hist.sum(1), hist.sum(0), hist.sum()
    with np.errstate(divide='ignore', invalid='ignore'):
        class_acc = diag / rows
        iou = diag / (rows + cols - diag)
        pixel_acc = diag.sum() / total
        freq = rows / total
    present = freq > 0
    nanmean = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else float('nan')  # noqa: E731
    return {'pixel_acc': float(pixel_acc), 'class_acc': class_acc, 'mean_acc': nanmean(class_acc),
            'iou': iou, 'mean_iou': nanmean(iou), 'fw_iou': float((freq[present] * iou[present]).sum())}


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------

def read_prediction(path):
    """[H, W] int64 label ids of a predicted PNG (single channel as stored; colour: the red channel)."""
    stored = load_label_image(path)
    return stored.values[..., 0].astype(np.int64) if stored.is_colour else stored.values


def read_ground_truth(path):
    return read_ids(path, 'expected a single-channel class-id PNG (VIP_Fine/Annotations/Category_ids)')


def _pngs(folder):
    return sorted(n for n in os.listdir(folder) if n.lower().endswith('.png') and not n.startswith('.'))


def videos_to_score(gt_dir, pre_dir, video_list=None):
    """(video names, where the names come from): those of ``--list`` (e.g. VIP's ``lists/val_videos.txt``), else
    those test.py's record of its run in ``--pre_dir`` names, else ``<gt_dir>/../../lists/val_videos.txt``
    (VIP_Fine's layout) when it exists, else every video of ``--gt_dir``."""
    if video_list:
        if not os.path.isfile(video_list):
            raise CRWError(f'--list {video_list}: no such file')
        return read_video_list(video_list), f'--list {video_list}'
    run = find_run(pre_dir, tool='test.py', unit='*')
    videos = [v['name'] for v in (run or {}).get('info', {}).get('videos', []) if v.get('kind') == 'vip']
    if videos:
        if run.get('status') != 'complete':
            raise CRWError(f"--pre_dir {pre_dir}: test.py's run into it did not finish ({run.get('command')}); "
                           'rerun it with --overwrite')
        return videos, f"the filelist of test.py's run ({run['info'].get('filelist', run.get('command'))})"
    default = os.path.join(gt_dir, os.pardir, os.pardir, 'lists', 'val_videos.txt')
    if os.path.isfile(default):
        return read_video_list(default), os.path.normpath(default)
    names = [v for v in sorted(os.listdir(gt_dir)) if not v.startswith('.') and os.path.isdir(os.path.join(gt_dir, v))
             and _pngs(os.path.join(gt_dir, v))]
    return names, f'the videos of --gt_dir {gt_dir}'


def frame_pairs(gt_dir, pre_dir, video_list=None):
    """[(prediction path, ground-truth path)] for every video to score (``videos_to_score``); raises CRWError for
    a video without predictions, a prediction without ground truth, a ground-truth frame without prediction,
    or nothing to score. Predicted videos that are not to be scored are named in one note."""
    if not os.path.isdir(pre_dir):
        raise CRWError(f'--pre_dir {pre_dir}: no such folder (test.py --save-path of a VIP filelist)')
    if not os.path.isdir(gt_dir):
        raise CRWError(f'--gt_dir {gt_dir}: no such folder (VIP_Fine/Annotations/Category_ids)')
    videos, source = videos_to_score(gt_dir, pre_dir, video_list)
    predicted = [v for v in sorted(os.listdir(pre_dir)) if not v.startswith('.')
                 and os.path.isdir(os.path.join(pre_dir, v)) and _pngs(os.path.join(pre_dir, v))]
    unpredicted = [v for v in videos if v not in predicted]
    if unpredicted:
        raise CRWError(f'{len(unpredicted)} of the {len(videos)} videos of {source} have no predictions in '
                       f'--pre_dir {pre_dir} ({", ".join(unpredicted[:3])}{", ..." if len(unpredicted) > 3 else ""}); '
                       'run test.py on them, or pass --list naming the videos to score')
    extra = [v for v in predicted if v not in videos]
    if extra:
        print(f'eval_vip.py: note: {len(extra)} predicted video(s) not in {source} are not scored '
              f'({", ".join(extra[:3])}{", ..." if len(extra) > 3 else ""})', file=sys.stderr)
    pairs = []
    for video in videos:
        pv, gv = os.path.join(pre_dir, video), os.path.join(gt_dir, video)
        preds = _pngs(pv)
        if not os.path.isdir(gv):
            raise CRWError(f'{pv}: no ground truth folder {gv} for this video (wrong --gt_dir?)')
        missing = sorted(set(_pngs(gv)) - set(preds))
        if missing:
            raise CRWError(f'missing prediction {os.path.join(pv, missing[0])} for {os.path.join(gv, missing[0])} '
                           f'({len(missing)} frame(s) of {video} unpredicted; rerun test.py for this video)')
        for name in preds:
            g = os.path.join(gv, name)
            if not os.path.isfile(g):
                raise CRWError(f'{os.path.join(pv, name)}: no ground truth {g}')
            pairs.append((os.path.join(pv, name), g))
    if not pairs:
        raise CRWError(f'--pre_dir {pre_dir}: no predictions (<video>/<frame>.png) to score')
    return pairs


def compute_hist(pairs, n=N_CLASSES):
    """Sum of the confusion histograms of every (prediction, ground truth) pair."""
    hist = np.zeros((n, n), dtype=np.int64)
    for pred_path, gt_path in pairs:
        gt = read_ground_truth(gt_path)
        pred = read_prediction(pred_path)
        if pred.max(initial=0) >= n or pred.min(initial=0) < 0:
            raise CRWError(f'{pred_path}: label id {int(pred.max())} outside the {n} VIP classes 0..{n - 1}')
        if pred.shape != gt.shape:
            pred = resize_nearest(pred, gt.shape)
        hist += confusion(gt, pred, n)
    return hist


def format_report(s):
    lines = ['=' * 50, f'>>> overall accuracy {s["pixel_acc"]:.6f}', '-' * 50,
             f'{"class":<15}{"accuracy":>10}{"IoU":>10}']
    for i, name in enumerate(CLASSES):
        lines.append(f'{name:<15}{s["class_acc"][i]:>10.6f}{s["iou"][i]:>10.6f}')
    lines += ['-' * 50, f'>>> mean accuracy {s["mean_acc"]:.6f}', f'>>> mean IU {s["mean_iou"]:.6f}',
              f'>>> fwavacc {s["fw_iou"]:.6f}', '=' * 50]
    return '\n'.join(lines)


def write_csv(path, s):
    with atomic_write(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['class', 'accuracy', 'IoU'])
        for i, name in enumerate(CLASSES):
            w.writerow([name, f'{s["class_acc"][i]:.6f}', f'{s["iou"][i]:.6f}'])
        w.writerow(['mean', f'{s["mean_acc"]:.6f}', f'{s["mean_iou"]:.6f}'])
        w.writerow(['overall pixel accuracy', f'{s["pixel_acc"]:.6f}', ''])
        w.writerow(['frequency-weighted IU', '', f'{s["fw_iou"]:.6f}'])


def get_args_parser():
    p = OneLineParser(description='mIoU of VIP human-part propagation (test.py outputs)')
    p.add_argument('-g', '--gt_dir', required=True,
                   help='ground truth: VIP_Fine/Annotations/Category_ids (<video>/<frame>.png class ids)')
    p.add_argument('-p', '--pre_dir', required=True,
                   help="predictions: test.py's --save-path for the VIP filelist (<video>/<frame>.png)")
    p.add_argument('--list', default=None,
                   help='the videos to score, one name a line (a VIP list such as VIP_Fine/lists/val_videos.txt); '
                        "default: those of test.py's run in --pre_dir, else <gt_dir>/../../lists/val_videos.txt, "
                        'else every video of --gt_dir. A listed video without predictions is an error')
    p.add_argument('--csv', default=None, help='also write the per-class table to this CSV file')
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        pairs = frame_pairs(args.gt_dir, args.pre_dir, args.list)
        print(f'result of {args.pre_dir}: {len(pairs)} frames of {len({os.path.dirname(p) for p, _ in pairs})} '
              'videos')
        s = scores(compute_hist(pairs))
        print(format_report(s))
        if args.csv:
            write_csv(args.csv, s)
            print(f'per-class table written to {args.csv}')
    except CRWError as e:
        return report('eval_vip.py', e)
    return 0


if __name__ == '__main__':
    sys.exit(main())
