"""Test-time adaptation (test.py --finetune N) on davis-dev: J&F without and with adaptation, and its cost.

    nice -n 10 python bench/finetune_davis.py --data ../shared/data/davis-dev \\
        --models pretrained.pth scratch --steps 0 10 50

For every model x N: ``test.py`` (README protocol: --topk 10 --videoLen 20 --radius 12 --temperature 0.05
--cropSize -1; ``--finetune N --head-depth 0`` as eval/run_test.py passes it, other adaptation flags at
test.py's defaults unless given here), ``eval/convert_davis.py``, ``eval/evaluate_davis.py``. A model is a
checkpoint or ``scratch`` (random initialisation, --manualSeed 777). "adapt s/video" is the mean over the
videos of the adaptation time test.py prints (the copy, the N steps and their clip loading); "propagation
s/video" the rest of each video's time. Per model, a control row repeats the smallest N > 0 at
--finetune-lr 1e-12: the weights stay put, but BatchNorm runs in training mode during the steps, so its running
statistics move to the video's; the row says how much of the gain is the statistics alone. Each finished configuration is kept in ``--out`` (its scores and
a timing file), so an interrupted run picks up where it stopped. Prints a markdown table and appends it to
bench/RESULTS.md.
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

from crw.bench.results import device_name, publish  # noqa: E402
from crw.eval.run_test import build_commands, resolve_model  # noqa: E402
from crw.utils.arguments import get_test_args_parser  # noqa: E402
from crw.utils.misc import git_revision  # noqa: E402

REVISION = os.environ.get('BENCH_GIT_REVISION') or git_revision()   # set when run from an exported copy

PROTOCOL = dict(L=20, K=10, T=0.05, R=12, crop=-1)
VIDEO_LINE = re.compile(r'^video (\d+) (\S+): (\d+) frames, ([\d.]+) frames/s')
ADAPT = re.compile(r'adapted in ([\d.]+) s')


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'davis-dev'),
                   help='a DAVIS-layout folder (davis-dev)')
    p.add_argument('--filelist', default=os.path.join(ROOT, 'eval', 'davis_dev_list.txt'),
                   help='test.py filelist relative to --data')
    p.add_argument('--models', nargs='+', default=['pretrained.pth', 'scratch'],
                   help="checkpoints, or 'scratch' for a random-init encoder")
    p.add_argument('--steps', nargs='+', type=int, default=[0, 10, 50], help='values of --finetune N')
    p.add_argument('--finetune-lr', type=float, default=None, help="test.py --finetune-lr (default: test.py's)")
    p.add_argument('--finetune-batch', type=int, default=None, help="test.py --finetune-batch (default: test.py's)")
    p.add_argument('--no-bn-control', action='store_true',
                   help='skip the control row per model: the smallest N > 0 at --finetune-lr 1e-12, where the '
                        'weights stay put and only the BatchNorm running statistics (updated in training mode) '
                        'adapt to the video')
    p.add_argument('--workers', type=int, default=1, help='test.py --workers')
    p.add_argument('--out', default=os.path.join(ROOT, 'results', 'bench_finetune'), help='working folder')
    p.add_argument('--no-write', action='store_true', help="print the table, don't append it to RESULTS.md")
    return p


def _read_global(path):
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    return dict(zip(rows[0], rows[1]))


BN_CONTROL_LR = 1e-12   # Adam's steps are about lr in size: the weights do not move, the BN statistics do


def run_config(model, steps, a, python, lr=None):
    """Run (or reuse) one configuration (``lr``: --finetune-lr, default a.finetune_lr); returns its result."""
    lr = a.finetune_lr if lr is None else lr
    if not os.path.exists(model) and os.path.exists(os.path.join(ROOT, model)):
        model = os.path.join(ROOT, model)
    ckpt, mtype, name = resolve_model(model)
    extra = []
    if steps and lr is not None:
        extra += ['--finetune-lr', f'{lr:g}']
    if steps and a.finetune_batch is not None:
        extra += ['--finetune-batch', str(a.finetune_batch)]
    tag = f'{name}_ft{steps}' + ''.join(x.strip('-').replace('finetune-', '') for x in extra)
    base = os.path.join(os.path.abspath(a.out), tag)
    done = os.path.join(base, 'result.json')
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    raw, converted = os.path.join(base, 'raw'), os.path.join(base, 'converted')
    test, convert, score = build_commands(ckpt, mtype, PROTOCOL['L'], PROTOCOL['K'], PROTOCOL['T'], PROTOCOL['R'],
                                          PROTOCOL['crop'], raw, converted, os.path.abspath(a.data),
                                          os.path.abspath(a.filelist), os.path.join(ROOT, 'eval', 'evaluate_davis.py'),
                                          python, steps, workers=a.workers, extra=extra, force=True)
    os.makedirs(base, exist_ok=True)
    print(f'# {tag}', flush=True)
    t0 = time.time()
    proc = subprocess.run(test, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with open(os.path.join(base, 'test_stdout.txt'), 'w') as f:
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f'finetune_davis.py: test.py failed for {tag} (see {base}/test_stdout.txt)')
    wall = time.time() - t0
    videos = []
    for line in proc.stdout.splitlines():
        m = VIDEO_LINE.match(line)
        if m:
            n, fps = int(m.group(3)), float(m.group(4))
            ad = ADAPT.search(line)
            videos.append({'name': m.group(2), 'frames': n, 'prop_s': n / fps,
                           'adapt_s': float(ad.group(1)) if ad else 0.0})
    for cmd in (convert, score):
        if subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode != 0:
            raise SystemExit(f'finetune_davis.py: {cmd[1]} failed for {tag}')
    g = _read_global(os.path.join(converted, 'global_results-val.csv'))
    res = {'model': model, 'steps': steps, 'tag': tag, 'lr': lr, 'J&F': float(g['J&F-Mean']), 'J': float(g['J-Mean']),
           'F': float(g['F-Mean']), 'videos': videos, 'wall_s': wall,
           'cmd': ' '.join(test[1:])}
    with open(done, 'w') as f:
        json.dump(res, f, indent=1)
    print(f"  J&F {res['J&F']:.3f} (J {res['J']:.3f}, F {res['F']:.3f}), {wall:.0f} s", flush=True)
    return res


def main():
    a = get_args_parser().parse_args()
    t0 = time.time()
    load0 = os.getloadavg()[0]
    results = []
    for m in a.models:
        results += [run_config(m, n, a, sys.executable) for n in a.steps]
        if not a.no_bn_control and any(n > 0 for n in a.steps):
            results.append(run_config(m, min(n for n in a.steps if n > 0), a, sys.executable, lr=BN_CONTROL_LR))
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    lines = [f"### finetune_davis — {time.strftime('%Y-%m-%d %H:%M')} — {device_name('cpu')}, "
             f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, git {REVISION}",
             f"`python bench/finetune_davis.py --models {' '.join(a.models)} --steps {' '.join(map(str, a.steps))}"
             + (f' --finetune-lr {a.finetune_lr:g}' if a.finetune_lr is not None else '')
             + (f' --finetune-batch {a.finetune_batch}' if a.finetune_batch is not None else '')
             + f"` — davis-dev (5 sequences, 250 frames, 854x480), L 20, k 10, R 12, tau 0.05; load average "
             f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end (shared machine); {time.time() - t0:.0f} s",
             '', '| model | --finetune N | --finetune-lr | J&F-Mean | J-Mean | F-Mean | adapt s/video | '
                 'propagation s/video |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in results:
        v = r['videos']
        lr = r.get('lr') or get_test_args_parser().get_default('finetune_lr')
        lr = '—' if not r['steps'] else f'{lr:g}' + (' (BN only)' if lr == BN_CONTROL_LR else '')
        lines.append(f"| {r['model']} | {r['steps']} | {lr} | {r['J&F']:.3f} | {r['J']:.3f} | {r['F']:.3f} | "
                     f"{mean([x['adapt_s'] for x in v]):.1f} | {mean([x['prop_s'] for x in v]):.1f} |")
    publish('\n'.join(lines) + '\n', write=not a.no_write)


if __name__ == '__main__':
    main()
