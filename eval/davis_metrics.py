"""Per-frame DAVIS measures and their per-object statistics, on one binary object mask at a time (numpy, OpenCV).

* J: intersection over union of prediction and ground truth, void pixels left out of both; 1 when both empty.
* F: harmonic mean of boundary precision and recall. Both masks become 1-pixel boundary maps (Martin et al.'s
  seg2bmap, ``boundary_map``); a boundary pixel is matched when it lies in the other map dilated by a disk
  of radius ceil(0.008 x image diagonal); empty boundaries follow the official davis2017-evaluation scorer.
* per object over a sequence's frames: Mean, Recall (fraction of frames > 0.5) and Decay (mean of the first
  quarter of the frames minus mean of the last, quarters cut as the official scorer cuts them).
"""
import functools
import math
import warnings

import numpy as np

import cv2

VOID_LABEL = 255
BOUND_TH = 0.008


def _as_bool(a):
    return np.asarray(a).astype(bool)


def _void_or_none(void, shape):
    if void is None:
        return None
    void = _as_bool(void)
    if void.shape != shape:
        raise ValueError(f'void mask {void.shape} and masks {shape} differ in shape')
    return void


def region_similarity(gt, pred, void=None):
    """J of one frame: |pred & gt| / |pred | gt| over the non-void pixels, 1.0 when that union is empty.

    gt, pred: [H, W] masks (anything non-zero is foreground); void: optional [H, W] mask of pixels to ignore.
    """
    gt, pred = _as_bool(gt), _as_bool(pred)
    if gt.shape != pred.shape:
        raise ValueError(f'ground truth {gt.shape} and prediction {pred.shape} differ in shape')
    void = _void_or_none(void, gt.shape)
    inter = gt & pred
    union = gt | pred
    if void is not None:
        keep = ~void
        inter &= keep
        union &= keep
    n_union = int(union.sum())
    if n_union == 0:
        return 1.0
    return int(inter.sum()) / n_union


def boundary_map(mask):
    """1-pixel boundary of a binary mask in the seg2bmap convention.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour (pixels past the
    right/bottom border count as background for those comparisons); on the last row only the east neighbour
    is compared, on the last column only the south one, and the bottom-right pixel is never a boundary pixel.
    """
    m = _as_bool(mask)
    if m.ndim != 2:
        raise ValueError(f'boundary_map expects a 2-D mask, got shape {m.shape}')
    east = np.zeros_like(m)
    south = np.zeros_like(m)
    south_east = np.zeros_like(m)
    east[:, :-1] = m[:, 1:]
    south[:-1, :] = m[1:, :]
    south_east[:-1, :-1] = m[1:, 1:]
    b = (m ^ east) | (m ^ south) | (m ^ south_east)
    b[-1, :] = m[-1, :] ^ east[-1, :]
    b[:, -1] = m[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def boundary_radius(shape, bound_th=BOUND_TH):
    """Tolerance radius in pixels: bound_th itself when >= 1, else ceil(bound_th x image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


@functools.lru_cache(maxsize=16)
def disk(radius):
    """[2r+1, 2r+1] uint8 disk: the offsets (y, x) with y^2 + x^2 <= r^2 (skimage.morphology.disk's shape)."""
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    out = ((yy * yy + xx * xx) <= r * r).astype(np.uint8)
    out.setflags(write=False)
    return out


def _dilate(b, radius):
    return cv2.dilate(b.astype(np.uint8), disk(radius)).astype(bool)


def boundary_precision_recall(gt, pred, void=None, bound_th=BOUND_TH):
    """(precision, recall) of the predicted boundary against the ground-truth one.

    Void pixels are cleared from both masks before their boundaries are taken. Empty boundaries: neither → (1, 1);
    only the ground truth's → (1, 0); only the prediction's → (0, 1).
    """
    gt, pred = _as_bool(gt), _as_bool(pred)
    if gt.shape != pred.shape:
        raise ValueError(f'ground truth {gt.shape} and prediction {pred.shape} differ in shape')
    void = _void_or_none(void, gt.shape)
    if void is not None:
        gt = gt & ~void
        pred = pred & ~void
    radius = boundary_radius(gt.shape, bound_th)
    gt_b = boundary_map(gt)
    pred_b = boundary_map(pred)
    n_gt = int(gt_b.sum())
    n_pred = int(pred_b.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    if n_pred == 0:
        return 1.0, 0.0
    if n_gt == 0:
        return 0.0, 1.0
    pred_matched = int((pred_b & _dilate(gt_b, radius)).sum())
    gt_matched = int((gt_b & _dilate(pred_b, radius)).sum())
    return pred_matched / n_pred, gt_matched / n_gt


def f_from_pr(precision, recall):
    """Harmonic mean 2PR / (P + R), 0 when P + R == 0."""
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def boundary_f_measure(gt, pred, void=None, bound_th=BOUND_TH):
    """F of one frame (see boundary_precision_recall for the conventions)."""
    return f_from_pr(*boundary_precision_recall(gt, pred, void=void, bound_th=bound_th))


def decay_bins(n, n_bins=4):
    """Index ranges [start, stop) of the quarters used by Decay for n per-frame values.

    Cut points are round(linspace(1, n, 5)) - 1 (halves rounded up), and each range includes both of its cut
    points, so neighbouring quarters share a frame - exactly the official scorer's binning.
    """
    cuts = (np.round(np.linspace(1, n, n_bins + 1) + 1e-10) - 1).astype(np.int64)
    return [(int(cuts[i]), int(cuts[i + 1]) + 1) for i in range(n_bins)]


def _nanmean(a):
    a = np.asarray(a, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=RuntimeWarning)
        return float(np.nanmean(a)) if a.size else float('nan')


def statistics(values, threshold=0.5):
    """(Mean, Recall, Decay) of one object's per-frame values (J or F).

    Recall is the fraction of frames scoring strictly above ``threshold``; Decay is mean(first quarter) -
    mean(last quarter) with the quarters of decay_bins. NaNs are skipped as the official scorer does.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    mean = _nanmean(v)
    recall = _nanmean(v > threshold) if v.size else float('nan')
    if v.size == 0:
        return mean, recall, float('nan')
    bins = decay_bins(v.size)
    first, last = bins[0], bins[-1]
    decay = _nanmean(v[first[0]:first[1]]) - _nanmean(v[last[0]:last[1]])
    return mean, recall, decay


def frame_scores(gt_labels, pred_labels, num_objects, void=None, bound_th=BOUND_TH):
    """J and F of every object 1..num_objects in one frame of label maps.

    gt_labels, pred_labels: [H, W] integer label maps (0 background); void: optional [H, W] bool mask.
    Returns two float arrays of length num_objects.
    """
    j = np.zeros(num_objects)
    f = np.zeros(num_objects)
    for k in range(1, num_objects + 1):
        g = gt_labels == k
        p = pred_labels == k
        j[k - 1] = region_similarity(g, p, void)
        f[k - 1] = boundary_f_measure(g, p, void, bound_th)
    return j, f
