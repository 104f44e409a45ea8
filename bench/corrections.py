"""Corrections and backward propagation on real frames (davis-dev), through ``propagation.propagate``.

    python bench/corrections.py --data ../shared/data/davis-dev --max-side 320

Per sequence of T frames, M = T // 2, object IoU averaged over frames M+1 ... T-1 for: no correction (frame 0's
ground truth only); a correction with the ground truth of frame M (this code: the corrected frame becomes a
long-term frame and relabels the short-term frames); the same correction with the two earlier behaviours,
emulated here (the corrected ids zeroed in every stored frame; the short-term context restarted from the
corrected frame); a fresh start from frame M's ground truth.
Then davis-dev J&F (eval/evaluate_davis.py's scorer, frames 1 ... T-2) of forward propagation from frame 0's
ground truth and of backward propagation (``reverse=True``) from the last frame where the object covers at
least 1 % of the frame (T-1, except surf, whose surfer leaves: frame 51, and from there forward too, as
``test.py --bidirectional`` does). Encoder: the bundled
pretrained.pth; README protocol (topk 10, videoLen 20, radius 12, temperature 0.05); frames propagated at
``--max-side`` (outputs at 854x480). Each frame's features are computed once and reused by every run.
Prints a markdown table and appends it to bench/RESULTS.md.
"""
import argparse
import hashlib
import json
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

from crw.bench.results import device_name, publish  # noqa: E402
from crw.data.labels import save_indexed_png  # noqa: E402
from crw.eval.davis_io import annotation_frames, read_label_png, read_split, sequence_frames  # noqa: E402
from crw.eval.evaluate_davis import evaluate  # noqa: E402
from crw.propagation import Protocol, WindowedPropagator, load_encoder, propagate  # noqa: E402
from crw.utils.misc import git_revision  # noqa: E402

PROTOCOL = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'davis-dev'),
                   help='a DAVIS-layout folder (davis-dev)')
    p.add_argument('--resume', default=os.path.join(ROOT, 'pretrained.pth'), help='encoder checkpoint')
    p.add_argument('--max-side', type=int, default=320, help='longer side frames are propagated at')
    p.add_argument('--sequences', nargs='+', default=None,
                   help='only these sequences (default: all of val.txt); with --out, run several processes on parts '
                        'of the list, then one with --collect')
    p.add_argument('--out', default=os.path.join(ROOT, 'results', 'bench_corrections'),
                   help='folder of the per-sequence results (a finished sequence is not run again)')
    p.add_argument('--redo-directions', action='store_true',
                   help='recompute only the forward/backward J&F of finished sequences')
    p.add_argument('--collect', action='store_true', help='only gather the per-sequence results into the table')
    p.add_argument('--threads', type=int, default=None, help='torch threads')
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


def zeroing_correct(self, labels):
    """The first behaviour, for one-object ground truth: the corrected id zeroed in every stored frame."""
    self.labels[..., 1:] = 0
    self.set_labels(labels)


def restart_correct(self, labels):
    """The second behaviour: the corrected frame becomes a long-term frame and every short-term slot a copy of
    it (the short-term context restarts from it)."""
    t, own = self._t, self._ring_slot(self._t)
    self.set_labels(labels)
    for slot in range(1, self.video_len + 1):
        self.ring[:, slot], self.labels[slot], self.slot_frame[slot] = self.ring[:, own], self.labels[own], t
    self.labels = torch.cat([self.labels, self.labels[own][None]])
    self.slot_frame.append(t)
    self.full_feats[self.labels.shape[0] - 1] = self._last_feat.reshape(self.C, self.N).t().contiguous()
    self.correction_slots.append(self.labels.shape[0] - 1)


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def run(encoder, frames, masks, a, reverse=False):
    return dict(propagate(encoder, frames, masks, PROTOCOL, 'cpu', max_side=a.max_side, reverse=reverse))


def run_sequence(encoder, seq, a):
    """One sequence's IoUs (none, corrected, zeroing, restart, fresh) and its forward and backward J&F."""
    frames = sequence_frames(a.data, seq)
    gts = [p for _, p in annotation_frames(a.data, seq)]
    T, M = len(frames), len(frames) // 2
    truth = [read_label_png(p) > 0 for p in gts]
    score = lambda out: float(np.mean([iou(out[t] > 0, truth[t]) for t in range(M + 1, T)]))  # noqa: E731
    t0 = time.time()
    none = run(encoder, frames, {0: gts[0]}, a)
    corrected = run(encoder, frames, {0: gts[0], M: gts[M]}, a)
    with mock.patch.object(WindowedPropagator, 'correct', zeroing_correct):
        zeroing = run(encoder, frames, {0: gts[0], M: gts[M]}, a)
    with mock.patch.object(WindowedPropagator, 'correct', restart_correct):
        restart = run(encoder, frames, {0: gts[0], M: gts[M]}, a)
    fresh = run(encoder, frames, {M: gts[M]}, a)
    res = {'sequence': seq, 'T': T, 'M': M, 'none': score(none), 'corrected': score(corrected),
           'zeroing': score(zeroing), 'restart': score(restart), 'fresh': score(fresh),
           'seconds': time.time() - t0}
    res.update(score_directions(encoder, seq, frames, gts, truth, a, none))
    return res


def score_directions(encoder, seq, frames, gts, truth, a, forward):
    """J&F of ``forward`` (from frame 0) and of both directions from the last frame showing the object
    (at least 1 % of the pixels; backward to frame 0 and, when the object leaves before the end, forward from
    there too)."""
    last = max(t for t, m in enumerate(truth) if m.mean() >= 0.01)
    backward = run(encoder, frames, {last: gts[last]}, a, reverse=True)
    backward.update(run(encoder, frames, {last: gts[last]}, a))
    res = {'backward_start': last}
    scored = tempfile.mkdtemp(prefix='bench_corrections_')
    for name, out in (('forward', forward), ('backward', backward)):
        os.makedirs(os.path.join(scored, name, seq))
        for t, ids in out.items():
            save_indexed_png(os.path.join(scored, name, seq, f'{t:05d}.png'), ids)
        g = evaluate(a.data, os.path.join(scored, name), [seq], workers=1)[0]
        res[name] = {k: g[k] for k in ('J&F-Mean', 'J-Mean', 'F-Mean')}
    return res


def main():
    a = get_args_parser().parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    load0 = os.getloadavg()[0]
    sequences = a.sequences or read_split(a.data, 'val')[0]
    os.makedirs(a.out, exist_ok=True)
    path = lambda seq: os.path.join(a.out, f'{seq}_{a.max_side}.json')  # noqa: E731
    if not a.collect:
        encoder = CachedEncoder(load_encoder(a.resume, 'cpu'))
        for seq in sequences:
            if a.redo_directions and os.path.isfile(path(seq)):
                with open(path(seq)) as f:
                    res = json.load(f)
                frames = sequence_frames(a.data, seq)
                gts = [p for _, p in annotation_frames(a.data, seq)]
                truth = [read_label_png(p) > 0 for p in gts]
                forward = run(encoder, frames, {0: gts[0]}, a)
                res.update(score_directions(encoder, seq, frames, gts, truth, a, forward))
                with open(path(seq), 'w') as f:
                    json.dump(res, f)
                print(res, flush=True)
            elif not os.path.isfile(path(seq)):
                res = run_sequence(encoder, seq, a)
                res['load'] = [load0, os.getloadavg()[0]]
                with open(path(seq), 'w') as f:
                    json.dump(res, f)
                print(res, flush=True)
        if a.sequences:
            return
    rows = []
    for seq in sequences:
        with open(path(seq)) as f:
            rows.append(json.load(f))
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    loads = [x for r in rows for x in r['load']]
    lines = [f"### corrections — {time.strftime('%Y-%m-%d %H:%M')} — {device_name('cpu')}, git {git_revision()}",
             f'`python bench/corrections.py --max-side {a.max_side}` — davis-dev (5 sequences, 854x480 frames '
             f'propagated at longer side {a.max_side}, outputs at 854x480), pretrained.pth, L 20, k 10, R 12, '
             f'tau 0.05; load average {min(loads):.1f} to {max(loads):.1f} (shared machine); '
             f"{sum(r['seconds'] for r in rows):.0f} s of propagation in all",
             '', 'Mean IoU of frames M+1 ... T-1 (M = T // 2):', '',
             '| sequence | T | M | no correction | corrected at M | zeroing (first behaviour) | '
             'restart (second behaviour) | fresh start at M |', '|---|---:|---:|---:|---:|---:|---:|---:|']
    lines += [f"| {r['sequence']} | {r['T']} | {r['M']} | {r['none']:.3f} | {r['corrected']:.3f} | "
              f"{r['zeroing']:.3f} | {r['restart']:.3f} | {r['fresh']:.3f} |" for r in rows]
    lines += [f"| mean | | | {mean('none'):.3f} | {mean('corrected'):.3f} | {mean('zeroing'):.3f} | "
              f"{mean('restart'):.3f} | {mean('fresh'):.3f} |", '',
              'J&F (eval/evaluate_davis.py, frames 1 ... T-2; one object per sequence, so the mean over sequences):',
              '', '| direction (start) | J&F-Mean | J-Mean | F-Mean |', '|---|---:|---:|---:|']
    for name, start in (('forward', 'frame 0'), ('backward', 'the last frame showing the object')):
        g = {k: float(np.mean([r[name][k] for r in rows])) for k in ('J&F-Mean', 'J-Mean', 'F-Mean')}
        lines.append(f"| {name} ({start}) | {g['J&F-Mean']:.3f} | {g['J-Mean']:.3f} | {g['F-Mean']:.3f} |")
    publish('\n'.join(lines) + '\n', write=not a.no_write)


if __name__ == '__main__':
    main()
