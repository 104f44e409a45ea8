#!/usr/bin/env python
"""PCK of propagated JHMDB poses (the release's eval/eval_pck.py, with flags for its hard-coded paths).

    python eval/eval_pck.py --filelist /path/to/jhmdb_test_split1.txt --results /save/path --feat-res 40

Inputs: test.py's JHMDB filelist (``<frames folder> <joint_positions.mat>`` lines) and its ``{results}/{i}.dat``
(video i): joints [2, 15, T] (x, y) in feature cells, rescaled to pixels by ``x / feat_res * W``,
``y / feat_res * H`` (feat_res = --cropSize / 8; W, H: the first frame's size). Ground truth: ``pos_img`` - 1.
A joint is visible in frame t when its predicted x >= 0. Normaliser of frame t: 0.6 x ||max - min|| of the
visible ground-truth joints (maxima from -1, minima from 1e6; one visible joint: 0, a miss). Entries: visible
(joint, frame), frame 0 excluded; PCK@a of a joint = 100 x #(||pred - gt|| / normaliser <= a) / #entries;
PCK@a = mean of the joints' PCKs (a joint without entries is left out). Prints a = 0.1 ... 0.5 and a per-joint
table at 0.1 and 0.2; writes every joint at every a to ``--csv`` (default ``{results}/pck.csv``).
"""
import csv
import os
import pickle
import sys

if __name__ == '__main__' and not __package__:  # run by path: eval/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from crw.data.images import image_size, list_frames  # noqa: E402
from crw.data.inference.filelists import read_filelist  # noqa: E402
from crw.data.inference.jhmdb import load_joints  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.arguments import finite_float  # noqa: E402
from crw.utils.errors import CRWError, report  # noqa: E402
from crw.utils.misc import atomic_write  # noqa: E402

ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)
BOX_SCALE = 0.6
# JHMDB's joint order (joint_positions.mat, 1-based in its documentation)
JOINT_NAMES = ('neck', 'belly', 'face', 'right shoulder', 'left shoulder', 'right hip', 'left hip',
               'right elbow', 'left elbow', 'right knee', 'left knee', 'right wrist', 'left wrist',
               'right ankle', 'left ankle')


# ----------------------------------------------------------------------------------------------------------
# The formulas (one video at a time, then pooled per joint)
# ----------------------------------------------------------------------------------------------------------

def to_pixels(pred, width, height, feat_res):
    """pred [2, J, T] feature cells -> (pixels [2, J, T] float64, visible [J, T] bool: predicted x >= 0).

    test.py writes x = -1 for a joint whose heat map lost all mass; JHMDB has no visibility flags, so this is
    the only visibility (ground-truth joints outside the image still count)."""
    pred = np.asarray(pred, dtype=np.float64)
    visible = pred[0] >= 0
    px = pred.copy()
    px[0] = pred[0] / float(feat_res) * width
    px[1] = pred[1] / float(feat_res) * height
    return px, visible


def human_boxes(gt, visible):
    """Normaliser per frame [T]: 0.6 x the diagonal of the box of the visible ground-truth joints.

    gt [2, J, T] pixels, visible [J, T]. Maxima start at -1 and minima at 1e6 (the release's loop), so a
    frame with one visible joint gets 0 and its distance inf (or nan): a miss at every alpha."""
    x, y = gt[0], gt[1]
    inf = np.inf
    minx = np.minimum(np.where(visible, x, inf).min(0), 1e6)
    miny = np.minimum(np.where(visible, y, inf).min(0), 1e6)
    maxx = np.maximum(np.where(visible, x, -inf).max(0), -1)
    maxy = np.maximum(np.where(visible, y, -inf).max(0), -1)
    return BOX_SCALE * np.hypot(maxx - minx, maxy - miny)


def normalized_distances(gt, pred_px, visible):
    """Per joint, the normalised distances of its visible entries in frames 1..T-1 -> list of J arrays."""
    boxes = human_boxes(gt, visible)
    d = np.hypot(pred_px[0] - gt[0], pred_px[1] - gt[1])                       # [J, T]
    with np.errstate(divide='ignore', invalid='ignore'):
        dn = d / boxes[None]
    keep = visible.copy()
    keep[:, 0] = False                                                          # frame 0 is the given pose
    return [dn[j][keep[j]] for j in range(gt.shape[1])]


def pck_table(dists, alphas=ALPHAS):
    """dists: per joint, arrays of normalised distances (pooled over videos) -> (per_joint [J, A] in %,
    mean [A] = mean over joints of their PCKs; nan for a joint without entries, left out of the mean)."""
    per_joint = np.full((len(dists), len(alphas)), np.nan)
    for j, dj in enumerate(dists):
        if len(dj):
            per_joint[j] = [100.0 * np.count_nonzero(dj <= a) / len(dj) for a in alphas]
    with np.errstate(invalid='ignore'):
        mean = np.nanmean(per_joint, axis=0) if np.isfinite(per_joint).any() else np.full(len(alphas), np.nan)
    return per_joint, mean


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------

# the only globals a pickled numeric ndarray needs (``ndarray.dump``, numpy 1 or 2): nothing else is built
_ARRAY_GLOBALS = {('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', '_reconstruct'),
                  ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}


class _ArrayUnpickler(pickle.Unpickler):
    """Reads a pickled ndarray and refuses every other global (no code can run)."""

    def find_class(self, module, name):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f'holds {module}.{name}, not only an array')
        if name == '_reconstruct':
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, whatever its module
        return getattr(np, name) if module == 'numpy' else super().find_class(module, name)


def load_prediction(path):
    """{i}.dat as test.py writes it (``.npy`` format) or the release did (``ndarray.dump``, a pickle) ->
    [2, J, T] float64. Nothing is unpickled but a numeric array: other globals are refused before use."""
    if not os.path.isfile(path):
        raise CRWError(f'{path}: no prediction (run test.py with the same --filelist and --save-path first)')
    try:
        with open(path, 'rb') as f:
            if f.read(6) == b'\x93NUMPY':
                f.seek(0)
                pred = np.load(f, allow_pickle=False)
            else:
                f.seek(0)
                pred = _ArrayUnpickler(f).load()
    except Exception as e:
        raise CRWError(f'{path}: not a joint-coordinate array written by test.py ({type(e).__name__}: {e}); '
                       'nothing in it was run') from e
    if not isinstance(pred, np.ndarray) or pred.dtype.kind not in 'fiu':
        raise CRWError(f'{path}: expected a numeric array of joint coordinates, got '
                       f'{getattr(pred, "dtype", type(pred).__name__)}')
    pred = pred.astype(np.float64)
    if pred.ndim != 3 or pred.shape[0] != 2:
        raise CRWError(f'{path}: expected joint coordinates [2, J, T], got shape {pred.shape}')
    return pred


def video_distances(entry, results, feat_res):
    """Normalised distances per joint for one filelist entry (see the module docstring)."""
    gt = load_joints(entry.target)
    frames = list_frames(entry.frames_dir)
    if not frames:
        raise CRWError(f'{entry.frames_dir}: no frames (the image size comes from the first frame)')
    height, width = image_size(frames[0])
    pred = load_prediction(os.path.join(results, f'{entry.index}.dat'))
    if gt.ndim != 3 or gt.shape[0] != 2 or pred.shape[1] != gt.shape[1]:
        raise CRWError(f'{entry.target}: pos_img {gt.shape} does not match the prediction {pred.shape}')
    T = gt.shape[2]
    if pred.shape[2] < T:
        raise CRWError(f"{os.path.join(results, f'{entry.index}.dat')}: {pred.shape[2]} frames predicted, "
                       f'{entry.target} has {T}; rerun test.py for this video')
    px, visible = to_pixels(pred[:, :, :T], width, height, feat_res)
    return normalized_distances(gt, px, visible)


def evaluate(filelist, results, feat_res, data_root='', alphas=ALPHAS):
    """PCK over every video of ``filelist`` -> (per_joint [J, A], mean [A], entries per joint [J])."""
    entries = read_filelist(filelist, data_root)
    bad = [e for e in entries if e.kind != 'jhmdb']
    if bad:
        raise CRWError(f'{filelist}:{bad[0].line_no}: expected "<frames folder> <joint_positions.mat>"')
    pooled = None
    for e in entries:
        try:
            d = video_distances(e, results, feat_res)
        except CRWError as err:
            raise CRWError(f'{filelist}:{e.line_no}: {err}') from err
        pooled = d if pooled is None else [np.concatenate([a, b]) for a, b in zip(pooled, d)]
    per_joint, mean = pck_table(pooled, alphas)
    return per_joint, mean, np.array([len(d) for d in pooled])


def joint_name(j):
    return JOINT_NAMES[j] if j < len(JOINT_NAMES) else f'joint {j + 1}'


def write_csv(path, per_joint, mean, counts, alphas=ALPHAS):
    with atomic_write(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['joint', 'entries'] + [f'PCK@{a:g}' for a in alphas])
        for j, row in enumerate(per_joint):
            w.writerow([joint_name(j), int(counts[j])] + [f'{v:.3f}' for v in row])
        w.writerow(['mean', int(counts.sum())] + [f'{v:.3f}' for v in mean])


def format_table(per_joint, mean, counts, alphas=ALPHAS):
    i1, i2 = alphas.index(0.1), alphas.index(0.2)
    lines = [f'{"joint":<16}{"entries":>8}{"PCK@0.1":>9}{"PCK@0.2":>9}']
    for j, row in enumerate(per_joint):
        lines.append(f'{joint_name(j):<16}{int(counts[j]):>8}{row[i1]:>9.2f}{row[i2]:>9.2f}')
    lines.append(f'{"mean":<16}{int(counts.sum()):>8}{mean[i1]:>9.2f}{mean[i2]:>9.2f}')
    lines.append('  '.join(f'PCK@{a:g}: {m:.2f}' for a, m in zip(alphas, mean)))
    return '\n'.join(lines)


def get_args_parser():
    p = OneLineParser(description='PCK of JHMDB pose propagation (test.py {i}.dat outputs)')
    p.add_argument('--filelist', required=True,
                   help='the JHMDB filelist test.py ran on: "<frames folder> <joint_positions.mat>" per line')
    p.add_argument('--results', required=True, help="test.py's --save-path (holds {i}.dat per video)")
    p.add_argument('--feat-res', default=40.0, type=finite_float,
                   help="test.py's --cropSize / 8: predictions are in cells of that square feature map "
                        '(40 for the release setting --cropSize 320)')
    p.add_argument('--data-root', default='', help='folder relative filelist paths are resolved against '
                                                    "(as test.py's --data-root)")
    p.add_argument('--csv', default=None, help='where to write per-joint PCKs (default: {results}/pck.csv)')
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        if args.feat_res <= 0:
            raise CRWError(f'--feat-res {args.feat_res:g}: must be positive (test.py --cropSize / 8)')
        if not os.path.isfile(args.filelist):
            raise CRWError(f'--filelist {args.filelist}: no such file')
        if not os.path.isdir(args.results):
            raise CRWError(f'--results {args.results}: no such folder (test.py --save-path)')
        per_joint, mean, counts = evaluate(args.filelist, args.results, args.feat_res, args.data_root)
        print(format_table(per_joint, mean, counts))
        path = args.csv or os.path.join(args.results, 'pck.csv')
        write_csv(path, per_joint, mean, counts)
        print(f'per-joint PCK written to {path}')
    except CRWError as e:
        return report('eval_pck.py', e)
    return 0


if __name__ == '__main__':
    sys.exit(main())
