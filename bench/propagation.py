"""Label propagation speed and memory: the windowed path vs the release's reference algorithm.

    OMP_NUM_THREADS=2 python bench/propagation.py --data ../shared/data/davis-dev [--device cpu|cuda]

Protocol of the README: --cropSize -1 (854x480), L 20, k 10, R 12, tau 0.05; random-init scratch encoder
unless --resume. Rows (each measured in its own subprocess, so peak memory is per row):

  windowed, davis-dev           the streaming pipeline of test.py (lazy frames, features in batches of 4,
                                propagation, upsample + argmax), over the first --seqs sequences
  windowed / reference, t > L   steady state (21 context frames) on the same frames of the first sequence:
                                the history (frames 0..L) is built with the windowed path, then both
                                algorithms predict the next --reference-frames frames from identical context
                                (the reference is slow: all-pairs affinities against 21 frames); their
                                outputs are compared too
  windowed, 100 frames          a 100-frame 480p video (the first sequence played forwards and backwards)

"features incl." counts encoder + propagation time, "excl." propagation only (upsample/argmax included
in the first and last rows). Peak memory: process peak RSS (VmHWM) on the CPU, max allocated on CUDA.
Prints a markdown table and appends it to bench/RESULTS.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.inference.filelists import VideoEntry  # noqa: E402
from data.inference.frames import VideoFrames  # noqa: E402
from data.inference.vos import VOSVideo  # noqa: E402
from data.labels import resize_nearest, soft_labels  # noqa: E402
from propagation import (Protocol, ReferencePropagator, WindowedPropagator, encode_frames, load_encoder,  # noqa: E402
                         make_propagator, soft_to_index)
from bench.results import device_name, publish  # noqa: E402
from utils.misc import git_revision, peak_memory_bytes, reset_peak_memory  # noqa: E402

PROTOCOL = Protocol(topk=10, radius=12, temperature=0.05, video_len=20, long_mem=(0,))
BATCH = 4


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def peak_mb(device):
    rss = peak_memory_bytes('cpu') / 2 ** 20
    gpu = peak_memory_bytes(device) / 2 ** 20 if device.type == 'cuda' else float('nan')
    return rss, gpu


def sequences(data):
    with open(os.path.join(data, 'ImageSets', '2017', 'val.txt')) as f:
        names = [n.strip() for n in f if n.strip()]
    return [VideoEntry(i, os.path.join(data, 'JPEGImages', '480p', n), os.path.join(data, 'Annotations', '480p', n),
                       'davis', i + 1) for i, n in enumerate(names)]


def first_labels(video):
    """map size -> frame 0's soft labels [h, w, K] at it, as VideoPropagator computes them."""
    values = np.unique(video.mask)
    return lambda map_size: soft_labels(resize_nearest(video.mask, video.size), values, map_size)


def encoder_for(a, device):
    torch.manual_seed(0)
    return load_encoder(a.resume or None, device)


def stream(video_frames, first_labels_fn, enc, device, size=None, upsample=True):
    """Run the windowed pipeline over a VideoFrames dataset; returns (frames, feature seconds, propagation s)."""
    loader = torch.utils.data.DataLoader(video_frames, batch_size=BATCH, num_workers=1, prefetch_factor=2)
    t_feat = t_prop = 0.0
    n, prop = 0, None
    for imgs, _, ts in loader:
        sync(device)
        t0 = time.perf_counter()
        feats = encode_frames(enc, imgs.to(device))
        sync(device)
        t1 = time.perf_counter()
        for b, t in enumerate(ts.tolist()):
            if t == 0:
                prop = make_propagator(feats[b], first_labels_fn(feats.shape[-2:]).to(device), PROTOCOL)
            else:
                soft = prop.step(feats[b])
                if upsample:
                    soft_to_index(soft, size).cpu()
            n += 1
        sync(device)
        t_feat += t1 - t0
        t_prop += time.perf_counter() - t1
    return n, t_feat, t_prop


def phase_windowed(a, device):
    enc = encoder_for(a, device)
    reset_peak_memory(device)
    tot = [0, 0.0, 0.0]
    for e in sequences(a.data)[:a.seqs]:
        v = VOSVideo(e, -1)
        n, tf, tp = stream(v.frames, first_labels(v), enc, device, v.size)
        tot = [tot[0] + n, tot[1] + tf, tot[2] + tp]
    rss, gpu = peak_mb(device)
    return dict(frames=tot[0], t_feat=tot[1], t_prop=tot[2], rss=rss, gpu=gpu)


def phase_long(a, device):
    enc = encoder_for(a, device)
    v = VOSVideo(sequences(a.data)[0], -1)
    order = list(range(len(v))) + list(range(len(v) - 2, 0, -1))
    paths = [v.paths[order[i % len(order)]] for i in range(a.long_frames)]
    reset_peak_memory(device)
    n, tf, tp = stream(VideoFrames(paths, -1), first_labels(v), enc, device, v.size)
    rss, gpu = peak_mb(device)
    return dict(frames=n, t_feat=tf, t_prop=tp, rss=rss, gpu=gpu)


def phase_steady(a, device, which):
    """History 0..L with the windowed path, then time `which` ('windowed' | 'reference') on the next frames."""
    enc = encoder_for(a, device)
    v = VOSVideo(sequences(a.data)[0], -1)
    L, n = PROTOCOL.video_len, a.reference_frames
    if len(v) < L + 1 + n:
        raise SystemExit(f'{v.entry.name}: needs {L + 1 + n} frames')
    feats, t_feat = [], 0.0
    for i in range(0, L + 1 + n, BATCH):
        imgs = torch.stack([v.frames[j][0] for j in range(i, min(L + 1 + n, i + BATCH))]).to(device)
        sync(device)
        t0 = time.perf_counter()
        feats.extend(encode_frames(enc, imgs))
        sync(device)
        t_feat += time.perf_counter() - t0
    t_feat /= len(feats)
    first = first_labels(v)(feats[0].shape[-2:]).to(device)
    windowed = WindowedPropagator(feats[0], first, PROTOCOL)
    hist = [first]
    for t in range(1, L + 1):
        hist.append(windowed.step(feats[t]))
    if which == 'reference':
        prop = ReferencePropagator(feats[0], first, PROTOCOL)
        prop.feats = [f.reshape(f.shape[0], -1) for f in feats[:L + 1]]
        prop.labels = [h.reshape(-1, h.shape[-1]) for h in hist]
        del windowed
    else:
        prop = windowed
    reset_peak_memory(device)
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    preds, t_prop = [], 0.0
    for t in range(L + 1, L + 1 + n):
        sync(device)
        t0 = time.perf_counter()
        p = prop.step(feats[t])
        sync(device)
        t_prop += time.perf_counter() - t0
        preds.append(p.cpu())
    rss, gpu = peak_mb(device)
    out = os.path.join(a.tmp, f'steady_{which}.pt')
    torch.save(preds, out)
    return dict(frames=n, t_feat=t_feat * n, t_prop=t_prop, rss=rss, gpu=gpu, preds=out)


PHASES = {'windowed': phase_windowed, 'long': phase_long,
          'steady_windowed': lambda a, d: phase_steady(a, d, 'windowed'),
          'steady_reference': lambda a, d: phase_steady(a, d, 'reference')}


def run_phase(name, a):
    cmd = [sys.executable, os.path.abspath(__file__), '--phase', name, '--data', a.data, '--device', a.device,
           '--seqs', str(a.seqs), '--reference-frames', str(a.reference_frames), '--long-frames', str(a.long_frames),
           '--tmp', a.tmp] + (['--resume', a.resume] if a.resume else [])
    print(f'[bench] {name} ...', flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f'phase {name} failed:\n{r.stderr[-3000:]}')
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f'[bench] {name}: {res}', flush=True)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'davis-dev'))
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--resume', default='', help='checkpoint for the encoder (default: random-init scratch)')
    p.add_argument('--seqs', type=int, default=2, help='sequences of davis-dev for the windowed row')
    p.add_argument('--reference-frames', type=int, default=2, help='steady-state frames timed for windowed and reference')
    p.add_argument('--long-frames', type=int, default=100)
    p.add_argument('--skip-long', action='store_true')
    p.add_argument('--no-write', action='store_true', help='do not append to bench/RESULTS.md')
    p.add_argument('--phase', default='', help=argparse.SUPPRESS)
    p.add_argument('--tmp', default='', help=argparse.SUPPRESS)
    a = p.parse_args()
    device = torch.device(a.device)
    if a.phase:
        res = PHASES[a.phase](a, device)
        print(json.dumps(res))
        return
    if not os.path.isdir(os.path.join(a.data, 'JPEGImages', '480p')):
        raise SystemExit(f'--data {a.data}: not a DAVIS-layout folder (JPEGImages/480p missing)')
    a.tmp = tempfile.mkdtemp(prefix='crw-bench-')
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    t0 = time.time()
    res = {'windowed': run_phase('windowed', a), 'steady_windowed': run_phase('steady_windowed', a),
           'steady_reference': run_phase('steady_reference', a)}
    if not a.skip_long:
        res['long'] = run_phase('long', a)
    load_end = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')

    pf = torch.load(res['steady_windowed']['preds'])
    po = torch.load(res['steady_reference']['preds'])
    diff = max((x - y).abs().max().item() for x, y in zip(pf, po))
    agree = np.mean([(x.argmax(-1) == y.argmax(-1)).float().mean().item() for x, y in zip(pf, po)])

    def rate(r, feats):
        return r['frames'] / (r['t_prop'] + (r['t_feat'] if feats else 0.0))

    gpu = device.type == 'cuda'
    rows = []
    names = {'windowed': f"windowed, davis-dev first {a.seqs} seq. (streaming, t = 1..n)",
             'steady_windowed': f"windowed, t > L (seq. 0, {a.reference_frames} frames)",
             'steady_reference': "reference (the release's algorithm), t > L (same frames)",
             'long': f"windowed, {a.long_frames}-frame 480p video (streaming)"}
    for key in ('windowed', 'steady_windowed', 'steady_reference', 'long'):
        if key not in res:
            continue
        r = res[key]
        mem = f"{r['rss']:.0f}" + (f" / {r['gpu']:.0f}" if gpu else '')
        rows.append(f"| {names[key]} | {r['frames']} | {rate(r, True):.3f} | {rate(r, False):.3f} | {mem} |")
    sf, so = res['steady_windowed'], res['steady_reference']
    speed = rate(sf, False) / rate(so, False)
    speed_f = rate(sf, True) / rate(so, True)
    head = (f"### propagation — {time.strftime('%Y-%m-%d %H:%M')} — {device.type}: {device_name(device)}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch {torch.__version__}, "
            f"git {git_revision()}\n"
            f"`{' '.join(['python', 'bench/propagation.py'] + sys.argv[1:])}` — 854x480 (cropSize -1), L 20, k 10, "
            f"R 12, tau 0.05, random-init scratch encoder{' (' + a.resume + ')' if a.resume else ''}; "
            f"load average {load:.1f} at start, {load_end:.1f} at end (shared machine); {time.time() - t0:.0f} s\n\n"
            f"| run | frames | frames/s, features incl. | frames/s, features excl. | peak "
            f"{'RSS / GPU' if gpu else 'RSS'} MB |\n|---|---:|---:|---:|---:|\n")
    table = head + '\n'.join(rows) + (
        f"\n\nSteady state (t > L): windowed / reference = **{speed:.1f}x** (features excluded), {speed_f:.1f}x "
        f"(included). Windowed vs reference on those frames: max |soft difference| {diff:.1e}, argmax agreement "
        f"{agree * 100:.3f}%.\n")
    publish(table, write=not a.no_write)


if __name__ == '__main__':
    main()
