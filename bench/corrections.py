"""Corrections and backward propagation on real frames (davis-dev), through ``propagation.propagate``.

    nice -n 10 python bench/corrections.py --data ../shared/data/davis-dev --max-side 427

Per sequence of T frames, M = T // 2, object IoU averaged over frames M+1 ... T-1 for: no correction (frame 0's
ground truth only); a correction with the ground truth of frame M (this code: the corrected frame becomes a
long-term frame and restarts the short-term context); the same correction with the previous behaviour
(the corrected ids zeroed in every stored frame, emulated here); a fresh start from frame M's ground truth.
Then davis-dev J&F (eval/evaluate_davis.py's scorer, frames 1 ... T-2) of forward propagation from frame 0's
ground truth and of backward propagation (``reverse=True``) from frame T-1's. Encoder: the bundled
pretrained.pth; README protocol (topk 10, videoLen 20, radius 12, temperature 0.05); frames propagated at
``--max-side`` (outputs at 854x480). Each frame's features are computed once and reused by every run.
Prints a markdown table and appends it to bench/RESULTS.md.
"""
import argparse
import hashlib
import os
import sys
import tempfile
import time
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.results import device_name, publish  # noqa: E402
from data.labels import save_indexed_png  # noqa: E402
from eval.davis_io import annotation_frames, read_label_png, read_split, sequence_frames  # noqa: E402
from eval.evaluate_davis import evaluate  # noqa: E402
from propagation import Protocol, WindowedPropagator, load_encoder, propagate  # noqa: E402
from utils.misc import git_revision  # noqa: E402

PROTOCOL = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'davis-dev'),
                   help='a DAVIS-layout folder (davis-dev)')
    p.add_argument('--resume', default=os.path.join(ROOT, 'pretrained.pth'), help='encoder checkpoint')
    p.add_argument('--max-side', type=int, default=427, help='longer side frames are propagated at')
    p.add_argument('--no-write', action='store_true', help="print the table, don't append it to RESULTS.md")
    return p


class CachedEncoder(torch.nn.Module):
    """The encoder, each distinct input frame encoded once (keyed by its bytes)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.cache = encoder, {}

    def frames(self, imgs):
        keys = [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in imgs.cpu()]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            with torch.no_grad():
                out = self.encoder.frames(imgs[todo])
            for i, f in zip(todo, out):
                self.cache[keys[i]] = f
        return torch.stack([self.cache[k] for k in keys])


def previous_correct(self, labels):
    """The behaviour before this change, for one-object ground truth: the corrected id zeroed everywhere."""
    self.bank_labels[..., 1:] = 0
    self.set_labels(labels)


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def run(encoder, frames, masks, a, reverse=False):
    return dict(propagate(encoder, frames, masks, PROTOCOL, 'cpu', max_side=a.max_side, reverse=reverse))


def main():
    a = get_args_parser().parse_args()
    t0, load0 = time.time(), os.getloadavg()[0]
    encoder = CachedEncoder(load_encoder(a.resume, 'cpu'))
    sequences, _ = read_split(a.data, 'val')
    rows, scored = [], tempfile.mkdtemp(prefix='bench_corrections_')
    for seq in sequences:
        frames = sequence_frames(a.data, seq)
        gts = [p for _, p in annotation_frames(a.data, seq)]
        T, M = len(frames), len(frames) // 2
        truth = [read_label_png(p) > 0 for p in gts]
        score = lambda out: float(np.mean([iou(out[t] > 0, truth[t]) for t in range(M + 1, T)]))  # noqa: E731
        none = run(encoder, frames, {0: gts[0]}, a)
        corrected = run(encoder, frames, {0: gts[0], M: gts[M]}, a)
        with mock.patch.object(WindowedPropagator, 'correct', previous_correct):
            previous = run(encoder, frames, {0: gts[0], M: gts[M]}, a)
        fresh = run(encoder, frames, {M: gts[M]}, a)
        backward = run(encoder, frames, {T - 1: gts[T - 1]}, a, reverse=True)
        for name, out in (('forward', none), ('backward', backward)):
            os.makedirs(os.path.join(scored, name, seq), exist_ok=True)
            for t, ids in out.items():
                save_indexed_png(os.path.join(scored, name, seq, f'{t:05d}.png'), ids)
        rows.append((seq, T, M, score(none), score(corrected), score(previous), score(fresh)))
        print(rows[-1], flush=True)
    jf = {name: evaluate(a.data, os.path.join(scored, name), sequences, workers=1)[0]
          for name in ('forward', 'backward')}
    mean = lambda i: float(np.mean([r[i] for r in rows]))  # noqa: E731
    lines = [f"### corrections — {time.strftime('%Y-%m-%d %H:%M')} — {device_name('cpu')}, git {git_revision()}",
             f'`python bench/corrections.py --max-side {a.max_side}` — davis-dev (5 sequences, 854x480 frames '
             f'propagated at longer side {a.max_side}), pretrained.pth, L 20, k 10, R 12, tau 0.05; load average '
             f'{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end (shared machine); {time.time() - t0:.0f} s',
             '', 'Mean IoU of frames M+1 ... T-1 (M = T // 2):', '',
             '| sequence | T | M | no correction | corrected at M | corrected at M, previous behaviour | '
             'fresh start at M |', '|---|---:|---:|---:|---:|---:|---:|']
    lines += [f'| {s} | {T} | {M} | {n:.3f} | {c:.3f} | {p:.3f} | {f:.3f} |' for s, T, M, n, c, p, f in rows]
    lines += [f'| mean | | | {mean(3):.3f} | {mean(4):.3f} | {mean(5):.3f} | {mean(6):.3f} |', '',
              '| direction (start) | J&F-Mean | J-Mean | F-Mean |', '|---|---:|---:|---:|']
    lines += [f"| {name} ({'frame 0' if name == 'forward' else 'last frame'}) | {g['J&F-Mean']:.3f} | "
              f"{g['J-Mean']:.3f} | {g['F-Mean']:.3f} |" for name, g in jf.items()]
    publish('\n'.join(lines) + '\n', write=not a.no_write)


if __name__ == '__main__':
    main()
