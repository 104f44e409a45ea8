"""Label propagation speed and memory at the README protocol, against the machine's own matrix-multiply rate.

    python bench/propagation.py --data ../shared/data/davis-dev [--compare-with /tmp/main-copy] [--seqs hockey]

Protocol of the README: --cropSize -1 (854x480), L 20, k 10, R 12, tau 0.05, pretrained.pth. Rows:

  whole process   test.py on the --seqs sequences of davis-dev (imports, model, decoding, propagation, writing):
                  frames / wall seconds, and peak RSS of the process
  own video       test.py --video assets/hockey/hockey.mp4 --max-side 480 (the bundled 40-frame clip)
  start-up, exit  test.py --help: the imports, the parser and the interpreter's exit, every process's fixed cost
  stages          seconds per frame of each stage, in one process over the first --seqs sequence: decode (wait
                  for the loader), encoder, propagation (for this tree also its parts: the first frame's full
                  comparison, the windowed scores, the selection, the rest), upsample + argmax, write (mask PNG
                  + blend JPEG); all frames and t > L
  reference       (this tree) the windowed path vs the release's algorithm on the same t > L frames of real
                  features: max |soft difference| and argmax agreement

score = frames/s x 130 GFLOP / sgemm rate, where 130 GFLOP is the cost of a 480p frame at this protocol
before the windowed rewrite (encoder 43, first frame 21, windowed 66) and the sgemm rate is a 2048^3
torch.mm on 2 threads measured in the same run (start and end). --compare-with DIR: a checkout of another
revision (e.g. ``git archive main | tar -x -C DIR``); its rows are measured alternately with this tree's.
Prints markdown tables and appends them to bench/RESULTS.md.
"""
import argparse
import functools
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)
GFLOP_PER_FRAME = 130
README_FLAGS = ['--model-type', 'scratch', '--resume', 'pretrained.pth', '--topk', '10', '--videoLen', '20',
                '--radius', '12', '--temperature', '0.05', '--cropSize', '-1', '--workers', '1']


def sgemm_rate(reps=5):
    """GFLOP/s of a 2048^3 float32 torch.mm on 2 threads (best of ``reps``)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float('inf')
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return 2 * 2048 ** 3 / best / 1e9


def whole_process(a, tmp):
    seqs = a.seqs
    os.makedirs(tmp, exist_ok=True)
    lst = os.path.join(tmp, 'list.txt')
    with open(lst, 'w') as f:
        f.writelines(f'JPEGImages/480p/{s} Annotations/480p/{s}\n' for s in seqs)
    frames = sum(len([n for n in os.listdir(os.path.join(a.data, 'JPEGImages', '480p', s)) if n.endswith('.jpg')])
                 for s in seqs)
    cmd = [sys.executable, 'test.py', '--filelist', lst, '--data-root', a.data, '--save-path',
           os.path.join(tmp, 'out')] + README_FLAGS
    return frames, cmd


def own_video(a, tmp):
    cmd = [sys.executable, 'test.py', '--video', 'assets/hockey/hockey.mp4', '--mask',
           'assets/hockey/Annotations/480p/hockey/00000.png', '--max-side', '480',
           '--save-path', os.path.join(tmp, 'own')] + README_FLAGS
    return 40, cmd


def startup_exit(a, tmp):
    return 0, [sys.executable, 'test.py', '--help']


def measure_rss_isolated(cmd, cwd):
    """Wall seconds and peak RSS (MB) of one command, through a helper process so that ru_maxrss is its own."""
    helper = ('import json, resource, subprocess, sys, time; t = time.perf_counter(); '
              'r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); '
              'w = time.perf_counter() - t; sys.stderr.write(r.stderr[-3000:] if r.returncode else ""); '
              'print(json.dumps({"rc": r.returncode, "wall": w, '
              '"rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))')
    p = subprocess.run([sys.executable, '-c', helper] + cmd, cwd=cwd, capture_output=True, text=True)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res['rc']:
        raise SystemExit(f'{" ".join(cmd)} failed in {cwd}:\n{p.stderr[-3000:]}')
    return res['wall'], res['rss']


def davis_video(data, name):
    """(VOSVideo of davis-dev sequence ``name``, map size -> frame 0's soft labels [h, w, K])."""
    import numpy as np
    from crw.data.inference.filelists import VideoEntry
    from crw.data.inference.vos import VOSVideo
    from crw.data.labels import resize_nearest, soft_labels
    v = VOSVideo(VideoEntry(0, os.path.join(data, 'JPEGImages', '480p', name),
                            os.path.join(data, 'Annotations', '480p', name), 'davis', 1), -1)
    values = np.unique(v.mask)
    return v, lambda map_size: soft_labels(resize_nearest(v.mask, v.size), values, map_size)


# -- stages (runs inside the tree being measured) ----------------------------------------------------------

def stages_worker(a):
    """Per-stage seconds of the first --seqs sequence, with the modules of the current working directory."""
    sys.path.insert(0, os.getcwd())
    try:
        import crw.utils.startup as startup  # the tree's start-up settings, as its test.py
    except ImportError:     # an older tree
        startup = None
        try:
            importlib.import_module('crw.utils.threads')
        except ImportError:
            pass
    import torch
    from crw.data.inference.outputs import write_mask_and_blend
    from crw.propagation import Protocol, encode_frames, load_encoder, make_propagator, soft_to_index
    from crw.propagation import video as video_module, windowed
    if startup is not None:
        startup.imports_done()
    batch = video_module.feature_batch('cpu') if hasattr(video_module, 'feature_batch') else 4   # its test.py's

    parts = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
            return out
        return wrapper

    W = windowed.WindowedPropagator
    for name in ('_topk_full', '_window_scores', '_topk_window'):   # this tree's parts of a step
        if hasattr(W, name):
            setattr(W, name, timed(name, getattr(W, name)))
    video, first_labels = davis_video(a.data, a.seqs[0])
    encoder = load_encoder('pretrained.pth', 'cpu')
    protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
    loader = torch.utils.data.DataLoader(video.frames, batch_size=batch, num_workers=1, prefetch_factor=2)
    out_dir = tempfile.mkdtemp(prefix='crw-stages-')
    rows, prop = [], None
    t_wait = time.perf_counter()
    for imgs, disp, ts in loader:
        t0 = time.perf_counter()
        decode = (t0 - t_wait) / len(ts)
        feats = encode_frames(encoder, imgs)
        enc = (time.perf_counter() - t0) / len(ts)
        for b, t in enumerate(ts.tolist()):
            parts.clear()
            t1 = time.perf_counter()
            if t == 0:
                prop = make_propagator(feats[b], first_labels(feats.shape[-2:]), protocol)
                soft = first_labels(feats.shape[-2:])
            else:
                soft = prop.step(feats[b])
            t2 = time.perf_counter()
            ids = soft_to_index(soft, video.size).cpu().numpy().astype('uint8')
            t3 = time.perf_counter()
            write_mask_and_blend(os.path.join(out_dir, f'0_{t}'), ids, disp[b].numpy())
            t4 = time.perf_counter()
            rows.append(dict(t=t, decode=decode, encoder=enc, propagation=t2 - t1, upsample=t3 - t2, write=t4 - t3,
                             **dict(parts)))
        t_wait = time.perf_counter()
    return rows


STAGES = [('decode', 'decode (wait for the loader)'), ('encoder', 'encoder'), ('propagation', 'propagation'),
          ('_topk_full', '· first frame, full comparison'), ('_topk_window', '· windowed: scores and selection'),
          ('_window_scores', '· · of which scores (gather, matmul, maxima)'), ('select', '· · of which selection'),
          ('other', '· vote, bank, rest'), ('upsample', 'upsample + argmax'), ('write', 'write (PNG + JPEG)'),
          ('total', 'total')]


def median_means(means):
    """Per stage, the median over rounds of ``stage_means`` (None where a tree has no such part)."""
    return {key: (statistics.median(v) if (v := [m[key] for m in means if m[key] is not None]) else None)
            for key, _ in STAGES}


def stage_means(rows, t_min):
    """Mean seconds per frame of every stage over the frames t >= t_min (None: the tree has no such part)."""
    sel = [r for r in rows if r['t'] >= t_min]
    out = {}
    for key, _ in STAGES:
        vals = []
        for r in sel:
            if key == 'select' and '_window_scores' in r:
                vals.append(r['_topk_window'] - r['_window_scores'])
            elif key == 'other' and '_topk_window' in r:
                vals.append(r['propagation'] - r.get('_topk_full', 0.0) - r['_topk_window'])
            elif key == 'total':
                vals.append(sum(r[k] for k in ('decode', 'encoder', 'propagation', 'upsample', 'write')))
            elif key in r:
                vals.append(r[key])
        out[key] = statistics.mean(vals) if vals else None
    return out


# -- reference check (this tree) ----------------------------------------------------------------------------

def reference_worker(a):
    import numpy as np
    import torch
    from crw.propagation import Protocol, ReferencePropagator, WindowedPropagator, encode_frames, load_encoder
    v, first_labels = davis_video(a.data, a.seqs[0])
    protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
    L, n = protocol.video_len, a.reference_frames
    enc = load_encoder('pretrained.pth', 'cpu')
    feats = []
    for i in range(0, L + 1 + n, 4):
        feats.extend(encode_frames(enc, torch.stack([v.frames[j][0] for j in range(i, min(L + 1 + n, i + 4))])))
    first = first_labels(feats[0].shape[-2:])
    windowed = WindowedPropagator(feats[0], first, protocol)
    hist = [first] + [windowed.step(feats[t]) for t in range(1, L + 1)]
    ref = ReferencePropagator(feats[0], first, protocol)
    ref.feats = [f.reshape(f.shape[0], -1) for f in feats[:L + 1]]
    ref.labels = [h.reshape(-1, h.shape[-1]) for h in hist]
    diff, agree = 0.0, []
    for t in range(L + 1, L + 1 + n):
        pw, pr = windowed.step(feats[t]), ref.step(feats[t])
        diff = max(diff, (pw - pr).abs().max().item())
        agree.append((pw.argmax(-1) == pr.argmax(-1)).float().mean().item())
    return dict(frames=n, diff=diff, agree=float(np.mean(agree)))


def run_worker(tree, phase, a):
    cmd = [sys.executable, os.path.abspath(__file__), '--phase', phase, '--data', a.data, '--seqs', *a.seqs,
           '--reference-frames', str(a.reference_frames)]
    r = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f'phase {phase} failed in {tree}:\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'davis-dev'))
    p.add_argument('--seqs', nargs='+', default=['hockey'], help='davis-dev sequences of the whole-process row')
    p.add_argument('--compare-with', default='', help='another checkout (e.g. main) measured alternately')
    p.add_argument('--rounds', type=int, default=1, help='repetitions of the whole-process rows and of the stage runs, trees alternating (median)')
    p.add_argument('--reference-frames', type=int, default=2, help='t > L frames of the reference check (0: skip)')
    p.add_argument('--skip-stages', action='store_true')
    p.add_argument('--skip-own', action='store_true')
    p.add_argument('--no-write', action='store_true', help='do not append to bench/RESULTS.md')
    p.add_argument('--note', default='')
    p.add_argument('--phase', default='', help=argparse.SUPPRESS)
    a = p.parse_args()
    a.data = os.path.abspath(a.data)
    if a.phase:
        print(json.dumps({'stages': stages_worker, 'reference': reference_worker}[a.phase](a)))
        return
    if not os.path.isdir(os.path.join(a.data, 'JPEGImages', '480p')):
        raise SystemExit(f'--data {a.data}: not a DAVIS-layout folder (JPEGImages/480p missing)')
    from crw.bench.results import device_name, publish
    from crw.utils.misc import git_revision
    trees = {'this tree': ROOT}
    if a.compare_with:
        trees = {os.path.basename(os.path.abspath(a.compare_with)): os.path.abspath(a.compare_with), **trees}
    tmp = tempfile.mkdtemp(prefix='crw-bench-')
    load0, t_start = os.getloadavg()[0], time.time()
    rates = [sgemm_rate()]
    runs = {}   # (row, tree) -> [(frames, wall, rss)]
    rows = [('whole', whole_process)] + ([] if a.skip_own else [('own', own_video)]) + [('startup', startup_exit)]
    for r in range(a.rounds):
        for row, make in rows:
            for name, tree in trees.items():
                frames, cmd = make(a, os.path.join(tmp, f'{row}-{r}-{name}'))
                wall, rss = measure_rss_isolated(cmd, tree)
                runs.setdefault((row, name), []).append((frames, wall, rss))
                print(f'[bench] {row} {name}: {frames} frames in {wall:.2f} s, peak RSS {rss:.0f} MB', flush=True)
        rates.append(sgemm_rate())
    stages = {}   # tree -> one list of per-frame rows per round (trees alternate, as for the whole process)
    if not a.skip_stages:
        for r in range(a.rounds):
            for name, tree in trees.items():
                stages.setdefault(name, []).append(run_worker(tree, 'stages', a))
                print(f'[bench] stages {name}: round {r + 1} done', flush=True)
    rates.append(sgemm_rate())
    ref = run_worker(ROOT, 'reference', a) if a.reference_frames > 0 else None
    sgemm = statistics.mean(rates)
    load1 = os.getloadavg()[0]

    title = {'whole': f"whole process, test.py on {', '.join(a.seqs)} (854x480)",
             'own': 'own video, test.py --video hockey.mp4 --max-side 480 (40 frames, 480x270)',
             'startup': 'start-up and exit, test.py --help'}
    out = [f"### propagation — {time.strftime('%Y-%m-%d %H:%M')} — cpu: {device_name('cpu')}, git {git_revision()}\n"
           f"`python bench/propagation.py {' '.join(sys.argv[1:])}` — README protocol (L 20, k 10, R 12, tau 0.05, "
           f"--cropSize -1), pretrained.pth; sgemm (2048³ torch.mm, 2 threads) {', '.join(f'{x:.1f}' for x in rates)} "
           f"GFLOP/s in this run (mean {sgemm:.1f}); load average {load0:.1f} at start, {load1:.1f} at end; "
           f"{time.time() - t_start:.0f} s\n",
           '| run | tree | frames | seconds | frames/s | score (fps × 130 / sgemm) | peak RSS MB |',
           '|---|---|---:|---:|---:|---:|---:|']
    for row, _ in rows:
        for name in trees:
            rs = runs[(row, name)]
            wall = statistics.median(x[1] for x in rs)
            fps = f'{rs[0][0] / wall:.3f}' if rs[0][0] else ''
            score = f'{rs[0][0] / wall * GFLOP_PER_FRAME / sgemm:.2f}' if row == 'whole' else ''
            out.append(f"| {title[row]} | {name} | {rs[0][0] or ''} | {wall:.{2 if row == 'startup' else 1}f} | "
                       f"{fps} | {score} | {max(x[2] for x in rs):.0f} |")
    if len(trees) == 2:
        (n0, _), (n1, _) = trees.items()
        for row, _ in rows:
            w0 = statistics.median(x[1] for x in runs[(row, n0)])
            w1 = statistics.median(x[1] for x in runs[(row, n1)])
            per = 'frames/s' if row != 'startup' else f'(seconds {n0} / {n1}, per round: ' + ', '.join(
                f'{x[1]:.2f} / {y[1]:.2f}' for x, y in zip(runs[(row, n0)], runs[(row, n1)])) + ')'
            out.append(f"\n{title[row]}: {n1} / {n0} = **{w0 / w1:.2f}x** {per}.")
    if stages:
        L = 20
        out.append(f"\nSeconds per frame by stage ({a.seqs[0]}, one process per tree and round, trees alternating, "
                   f"median of {a.rounds} round(s); 1 loader worker, features in the batches of each tree's test.py; "
                   "all frames t >= 1, and t > L):\n")
        names = list(stages)
        out.append('| stage | ' + ' | '.join(f'{n}, t ≥ 1 | {n}, t > {L}' for n in names) + ' |')
        out.append('|---|' + '---:|' * (2 * len(names)))
        means = {n: tuple(median_means([stage_means(rows, t0) for rows in stages[n]]) for t0 in (1, L + 1))
                 for n in names}
        for key, label in STAGES:
            cells = []
            for n in names:
                for m in means[n]:
                    cells.append('' if m[key] is None else f'{m[key]:.3f}')
            if any(cells):
                out.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    if ref:
        out.append(f"\nWindowed vs the release's algorithm (reference) on {ref['frames']} t > L frames of "
                   f"{a.seqs[0]} (real features, identical context): max |soft difference| {ref['diff']:.1e}, "
                   f"argmax agreement {100 * ref['agree']:.3f}%.")
    if a.note:
        out.append(f'\n{a.note}')
    publish('\n'.join(out) + '\n', write=not a.no_write)


if __name__ == '__main__':
    main()
