"""What --visualize costs a training run: the training step, and one drawing (the five views of the batch's
first clip, as train.py's ``Visualizer.pictures`` makes them: tensors copied on the loop's thread, drawing,
PNG encoding and sending on a background thread) for each set of sinks, and the overhead that makes at
--vis-every 50 (the default) and 1.

    python bench/vis_overhead.py                 # README grid config and the dense 128² config of pretrained.pth
    python bench/vis_overhead.py --batch-size 20 --device cuda

With --visualize off, train.py's loop only adds one ``vis is not None`` test per step: the training step
here is that step. A local visdom server is started (visdom must be installed: scripts/setup.sh does it);
wandb runs offline when it is installed. Prints a markdown table and appends it to bench/RESULTS.md.
"""
import argparse
import os
import sys
import tempfile
import time
from types import SimpleNamespace as NS

import numpy as np
import torch

if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crw.bench.results import device_name, publish  # noqa: E402
from crw.data.training.gpu_augment import BatchAugment  # noqa: E402
from crw.data.synthetic import make_sequence  # noqa: E402
from crw.model import CRW  # noqa: E402
from crw.utils.misc import git_revision  # noqa: E402
from tests.visdom_server import local_visdom_server  # noqa: E402
from crw.vis.sinks import Visualizer  # noqa: E402

CONFIGS = {  # name: (frame_aug, img_size, remove_layers)
    'grid 7x7 of 64², 256² frames (README)': ('grid', 256, []),
    'dense 16x16 nodes, 128² frames (pretrained.pth)': ('', 128, ['layer4']),
}


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_clips(batch, clip_len, size, device):
    clips = [make_sequence(num_frames=clip_len, height=size, width=size, num_objects=3, seed=b,
                           object_size=(size // 4, size // 3))['frames'] for b in range(batch)]
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).contiguous().to(device)


def sink_sets(vis):
    """(label, the sinks to keep on) for each timed row; the others are switched off for that row."""
    sets = [('PNG', ()), ('PNG + visdom', ('vis',))]
    if vis.wandb is not None:
        sets.append(('PNG + visdom + wandb', ('vis', 'wandb')))
    return sets


def bench_config(frame_aug, size, remove_layers, a, device, vis):
    """(seconds per training step, {sink set: (seconds per drawing in all, of which the loop waits)})."""
    torch.manual_seed(0)
    model = CRW(NS(remove_layers=remove_layers, dropout=0.1, temp=0.05)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    aug = BatchAugment(frame_aug=frame_aug, frame_transforms='crop', patch_size=[64, 64, 3], img_size=size)
    clips = make_clips(a.batch_size, a.clip_len, size, device)
    state = {}

    def step(i):
        video = aug(clips, i)
        q, loss, _ = model(video)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.update(video=video, q=q)

    step(0)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i + 1)
    sync(device)
    t_step = (time.perf_counter() - t0) / a.steps

    sinks, n, out = {'vis': vis.vis, 'wandb': vis.wandb}, 0, {}
    vis.pictures(model, clips, state['video'], state['q'], n)  # warm-up: first PNG, first request
    vis.background.wait()
    for label, keep in sink_sets(vis):
        for k, v in sinks.items():
            setattr(vis, k, v if k in keep else None)
        total = blocked = 0.0
        for _ in range(a.repeats):
            n += 1
            sync(device)
            t0 = time.perf_counter()
            vis.pictures(model, clips, state['video'], state['q'], n)   # what the training loop waits for
            t1 = time.perf_counter()
            vis.background.wait()                                     # drawing and sending, in the background
            total += time.perf_counter() - t0
            blocked += t1 - t0
        out[label] = (total / a.repeats, blocked / a.repeats)
    for k, v in sinks.items():
        setattr(vis, k, v)
    return t_step, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch-size', type=int, default=None, help='clips per step (default: 20 on GPU, 2 on CPU)')
    p.add_argument('--clip-len', type=int, default=4, help='README configuration')
    p.add_argument('--steps', type=int, default=None, help='timed training steps (default: 20 on GPU, 3 on CPU)')
    p.add_argument('--repeats', type=int, default=5, help='timed drawings per row')
    p.add_argument('--no-write', action='store_true', help='do not append to bench/RESULTS.md')
    p.add_argument('--note', default='', help='a line appended under the table')
    a = p.parse_args()
    device = torch.device(a.device)
    a.batch_size = a.batch_size or (20 if device.type == 'cuda' else 2)
    a.steps = a.steps or (20 if device.type == 'cuda' else 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, local_visdom_server(tmp) as port:
        os.environ.setdefault('WANDB_MODE', 'offline')
        vis = Visualizer(NS(output_dir=os.path.join(tmp, 'run'), name='bench', server='localhost', port=port,
                            vis_every=50))
        try:
            for name, (frame_aug, size, remove) in CONFIGS.items():
                t_step, drawings = bench_config(frame_aug, size, remove, a, device, vis)
                for label, (t, blocked) in drawings.items():
                    rows.append((name, label, t_step, t, blocked, 100 * t / (50 * t_step), 100 * t / t_step))
        finally:
            vis.close()

    head = (f"### vis_overhead — {time.strftime('%Y-%m-%d')} — {device.type}: {device_name(device)}, "
            f"torch {torch.__version__}, git {git_revision()}\n"
            f"`python bench/vis_overhead.py {' '.join(sys.argv[1:])}` (clip-len {a.clip_len}, batch {a.batch_size}, "
            f"{a.steps} timed steps, {a.repeats} timed drawings per row; load average "
            f"{os.getloadavg()[0]:.1f} at the end)\n\n"
            "| config | sinks | training step s | one drawing s (all) | of which the loop waits s | "
            "overhead at --vis-every 50 | at --vis-every 1 |\n|---|---|---:|---:|---:|---:|---:|\n")
    table = head + ''.join(f'| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.2f}% | {r[6]:.0f}% |\n'
                           for r in rows)
    table += ('\nOverhead at --vis-every N = one drawing / (N x training step): an upper bound, as if the '
              'background drawing never overlapped training (on a machine with idle cores it does).\n')
    if a.note:
        table += f'\n{a.note}\n'
    publish(table, write=not a.no_write)


if __name__ == '__main__':
    main()
