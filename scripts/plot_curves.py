"""Draw the training curves of a train.py run: loss and walk accuracy per walk length against iterations.

    python scripts/plot_curves.py checkpoints/<run>/            # reads train_log.jsonl, writes curves.png there
"""
import argparse
import json
import os
import re
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if __name__ == '__main__' and not __package__:  # run by path: scripts/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.misc import atomic_write  # noqa: E402


def load_log(path):
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    sys.exit(f'{path}:{n}: not a JSON line (is this a train_log.jsonl?)')
    if not records:
        sys.exit(f'{path}: no records yet; train for at least --print-freq iterations')
    return records


def plot(records, out, smooth=10):
    def smoothed(v):
        v = np.asarray(v, dtype=float)
        k = max(1, min(smooth, len(v) // 4))
        return np.convolve(v, np.ones(k) / k, mode='valid'), k
    steps = [r['global_step'] for r in records]
    walks = sorted({m.group(2) for r in records for key in r for m in [re.match(r'(\d+) acc cyc ([rl]\d+)', key)] if m},
                   key=lambda s: int(s[1:]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    y, k = smoothed([r['loss'] for r in records])
    ax1.plot(steps[k - 1:], y, color='k', label='loss (mean over walks)')
    for w in walks:
        key = next(key for key in records[-1] if key.endswith(f'xent cyc {w}'))
        y, k = smoothed([r.get(key, np.nan) for r in records])
        ax1.plot(steps[k - 1:], y, label=f'walk {w} (length {2 * (int(w[1:]) + 1)})', alpha=0.8)
        key = next(key for key in records[-1] if key.endswith(f'acc cyc {w}'))
        y, k = smoothed([r.get(key, np.nan) for r in records])
        ax2.plot(steps[k - 1:], y, label=f'walk {w}')
    ax1.set(xlabel='iteration', ylabel='cross-entropy', title='cycle loss')
    ax2.set(xlabel='iteration', ylabel='accuracy', title='walk returns to its start node', ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(out) as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run', help='output folder of a train.py run (or its train_log.jsonl)')
    p.add_argument('--out', default='', help='figure path (default: <run>/curves.png)')
    p.add_argument('--smooth', type=int, default=10, help='moving-average window, in log records')
    a = p.parse_args(argv)
    log = a.run if a.run.endswith('.jsonl') else os.path.join(a.run, 'train_log.jsonl')
    if not os.path.isfile(log):
        sys.exit(f'{log}: no such file (train.py writes it into --output-dir)')
    out = a.out or os.path.join(os.path.dirname(log), 'curves.png')
    print(plot(load_log(log), out, a.smooth))


if __name__ == '__main__':
    main()
