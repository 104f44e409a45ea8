"""Training throughput: clips/s of the README configuration, and where a training step's time goes.

Rows:
  model step      forward + backward + Adam on synthetic, already augmented input (fp32, and bf16 autocast)
  release walks   the same step with the release's walk computation (every palindrome multiplied from scratch)
  data pipeline   DataLoader (decode + frame crops in workers) + batch augmentation on the device, no model
Step breakdown (--breakdown): one table per configuration (README: grid 7x7 of 64² patches of 256² frames;
pretrained.pth's recipe: dense 128² frames, layer4 removed, batch 8), seconds per step in data (the next
batch from the loader, to the device, BatchAugment; random uint8 clips without --data-path), forward (encoder
and node embedding), walk (affinities, transitions, palindromes, loss), backward and optimizer, for the
release's Adam (a loop of elementwise operations per tensor, torch's CPU default) and build_optimizer's
(fused), measured alternately in one process, with the fixed-seed losses of both.

    python bench/train_throughput.py --data-path ../shared/data/kinetics-mini --workers 2 [--breakdown]
Prints markdown tables and appends them to bench/RESULTS.md.
"""
import argparse
import os
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

import crw.utils.startup  # noqa: E402,I001  (OpenMP settings before torch loads, collector paused, as train.py)
import torch  # noqa: E402

from crw.bench.results import device_name, publish  # noqa: E402
from crw.data.training.gpu_augment import BatchAugment  # noqa: E402
from crw.data.training.sampler import build_train_sampler  # noqa: E402
from crw.data.training.video_dataset import build_train_dataset  # noqa: E402
from crw.model import CRW  # noqa: E402
from tests.reference_walk import release_walks  # noqa: E402
from train import build_optimizer  # noqa: E402
from crw.utils.arguments import train_args  # noqa: E402
from crw.utils.misc import git_revision  # noqa: E402

crw.utils.startup.imports_done()

CONFIGS = {   # name: (train.py flags, batch on CUDA, batch on the CPU)
    'readme': (['--frame-aug', 'grid', '--img-size', '256', '--patch-size', '64', '64', '3'], 20, 4),
    'pretrained': (['--frame-aug', '', '--img-size', '128', '--remove-layers', 'layer4'], 8, 8),
}
PHASES = ('data', 'forward', 'walk', 'backward', 'optimizer')


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_args(config, data_path, batch, workers=0, extra=()):
    """train.py's arguments for a CONFIGS entry (README flags: clip-len 4, temp 0.05, dropout 0.1, lr 1e-4)."""
    return train_args(['--data-path', data_path or '.', '--dropout', '0.1', '--clip-len', '4', '--temp', '0.05',
                       '--model-type', 'scratch', '--workers', str(workers), '--batch-size', str(batch),
                       '--cache-dataset', '--lr', '0.0001', '--output-dir', os.path.join('/tmp', 'crw-bench')]
                      + CONFIGS[config][0] + list(extra))


def release_adam(model, args):
    """The optimizer before build_optimizer fused it: torch's default Adam (per-tensor loop on the CPU)."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr, foreach=False)


def clip_source(args, device, seed=0):
    """An endless iterator of uint8 clips [B, T, 3, S, S]: the training DataLoader when args.data_path holds
    videos, else random clips."""
    if args.data_path and args.data_path != '.':
        ds = build_train_dataset(args)
        sampler = build_train_sampler(ds, args, rank=0, world_size=1)

        def batches():
            epoch = 0
            while True:
                sampler.set_epoch(epoch)
                sampler.set_start(0)
                yield from torch.utils.data.DataLoader(
                    ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True,
                    pin_memory=device.type == 'cuda', prefetch_factor=4 if args.workers else None)
                epoch += 1
        return batches()
    g = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (args.batch_size, args.clip_len, 3, args.img_size, args.img_size), generator=g,
                          dtype=torch.uint8)
    return iter(lambda: clips, None)


class Timer:
    """Accumulates seconds per phase, with the device synchronised at every boundary."""

    def __init__(self, device):
        self.device, self.total, self.t = device, defaultdict(float), None

    def start(self):
        sync(self.device)
        self.t = time.perf_counter()

    def lap(self, phase):
        sync(self.device)
        now = time.perf_counter()
        self.total[phase] += now - self.t
        self.t = now


def breakdown_step(model, opt, aug, clips, device, step, timer, amp=False):
    """One training step as train.py runs it, timed by phase; returns the loss (detached)."""
    timer.start()
    video = aug(next(clips).to(device, non_blocking=True), step)
    timer.lap('data')
    B, T, NC, H, W = video.shape
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        q, _ = model.embed(video.reshape(B, T, NC // 3, 3, H, W))
        timer.lap('forward')
        loss, _ = model.walk_loss(q, size=H)
        timer.lap('walk')
    opt.zero_grad(set_to_none=True)
    loss.backward()
    timer.lap('backward')
    opt.step()
    timer.lap('optimizer')
    return loss.detach()


def step_breakdown(config, device, steps, data_path='', workers=0, batch=None, optimizers=('release', 'fused')):
    """Seconds per phase and fixed-seed losses of ``steps`` steps (after one warm-up) for each optimizer,
    stepping the models alternately. Returns {optimizer: (phase seconds per step, [losses])}."""
    batch = batch or CONFIGS[config][1 if device.type == 'cuda' else 2]
    args = make_args(config, data_path, batch, workers)
    runs = {}
    for name in optimizers:
        torch.manual_seed(0)
        model = CRW(args).to(device).train()
        opt = build_optimizer(model, args) if name == 'fused' else release_adam(model, args)
        runs[name] = dict(model=model, opt=opt, clips=clip_source(args, device), timer=Timer(device), losses=[])
    aug = BatchAugment(args)
    for step in range(steps + 1):
        for name, r in runs.items():
            torch.manual_seed(step)   # edge dropout draws: the same for both optimizers
            if step == 1:
                r['timer'].total.clear()   # step 0 warms up (allocator, first-touch pages, worker start)
            r['losses'].append(breakdown_step(r['model'], r['opt'], aug, r['clips'], device, step, r['timer']).item())
    return {name: ({p: r['timer'].total[p] / steps for p in PHASES}, r['losses']) for name, r in runs.items()}


def time_model_step(args, device, batch, amp, iters, release_loop=False, channels_last=None, compile=False):
    """clips/s, last loss and peak GPU GiB of forward + backward + build_optimizer's Adam on random input that
    is already augmented."""
    model = CRW(args).to(device).train()
    if channels_last if channels_last is not None else device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, args)
    fwd = torch.compile(model) if compile else model
    P = args.patch_size[0] if 'grid' in args.frame_aug else args.img_size
    n = ((args.img_size - P) // (P // 2) + 1) ** 2 if 'grid' in args.frame_aug else 1
    x = torch.randn(batch, args.clip_len, n * 3, P, P, device=device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            if release_loop:
                q, _ = model.pixels_to_nodes(x.transpose(1, 2).reshape(batch, n, 3, args.clip_len, P, P))[:2]
                loss = release_walks(q, model.temperature, model.edgedrop_rate)[1]
            else:
                _, loss, _ = fwd(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    step()  # warm-up (cudnn autotune, allocator, compilation)
    sync(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        loss = step().detach()
    sync(device)
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else float('nan')
    return batch * iters / dt, loss.item(), mem


def time_data(args, device, iters):
    """clips/s of the DataLoader (args.workers workers) + BatchAugment on the device, after two warm-up batches."""
    clips = clip_source(args, device)
    aug = BatchAugment(args)
    n, t0 = 0, None
    for i in range(iters + 2):
        out = aug(next(clips).to(device, non_blocking=True), i)
        if i == 1:  # the first batches pay for worker start-up
            sync(device)
            t0 = time.perf_counter()
        elif i > 1:
            n += out.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def breakdown_table(config, device, res, steps, batch, data_path):
    head = (f"Step breakdown, {config} configuration ({' '.join(CONFIGS[config][0])}, batch {batch}, "
            f"{'clips from ' + data_path if data_path else 'random clips'}; mean of {steps} steps after one "
            "warm-up, the two optimizers stepped alternately; seconds per step)\n\n"
            f"| Adam | {' | '.join(PHASES)} | total | losses (fixed seed) |\n|---|" + '---:|' * (len(PHASES) + 1)
            + '---|\n')
    names = {'release': "release (torch's CPU default, per-tensor loop)", 'fused': 'build_optimizer (fused)'}
    rows = []
    for name, (phases, losses) in res.items():
        rows.append(f"| {names[name]} | {' | '.join(f'{phases[p]:.3f}' for p in PHASES)} | "
                    f"{sum(phases.values()):.3f} | {', '.join(repr(round(x, 7)) for x in losses)} |")
    return head + '\n'.join(rows) + '\n'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-path', default=os.path.join(ROOT, '..', 'shared', 'data', 'kinetics-mini'))
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch-size', type=int, default=20, help='README configuration')
    p.add_argument('--clip-len', type=int, default=4, help='README configuration')
    p.add_argument('--iters', type=int, default=None, help='timed steps (default: 20 on GPU, 2 on CPU)')
    p.add_argument('--data-iters', type=int, default=None, help='timed batches of the data pipeline')
    p.add_argument('--workers', type=int, default=os.cpu_count())
    p.add_argument('--skip-data', action='store_true')
    p.add_argument('--skip-throughput', action='store_true', help='only the step breakdown')
    p.add_argument('--breakdown', action='store_true', help='also the step breakdown tables')
    p.add_argument('--breakdown-steps', type=int, default=3)
    p.add_argument('--cpu-bf16', action='store_true', help='also time bf16 autocast on the CPU')
    p.add_argument('--skip-release', action='store_true', help='skip the release-walks row')
    p.add_argument('--no-write', action='store_true', help='do not append to bench/RESULTS.md')
    p.add_argument('--note', default='', help='a line appended under the table (e.g. what else ran)')
    a = p.parse_args()
    device = torch.device(a.device)
    iters = a.iters or (20 if device.type == 'cuda' else 2)
    data_path = a.data_path if os.path.isdir(a.data_path) else ''
    load = os.getloadavg()[0]
    head = (f"### train_throughput — {time.strftime('%Y-%m-%d %H:%M')} — {device.type}: {device_name(device)}, "
            f"torch {torch.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"git {git_revision()}\n`python bench/train_throughput.py {' '.join(sys.argv[1:])}`; load average "
            f"{load:.1f} at start")
    tables = []
    if not a.skip_throughput:
        args = train_args(['--data-path', a.data_path, '--frame-aug', 'grid', '--dropout', '0.1', '--clip-len',
                           str(a.clip_len), '--temp', '0.05', '--model-type', 'scratch', '--workers', str(a.workers),
                           '--batch-size', str(a.batch_size), '--cache-dataset', '--lr', '0.0001',
                           '--output-dir', os.path.join('/tmp', 'crw-bench')])
        torch.manual_seed(0)
        rows = []
        # train.py uses bf16 autocast on CUDA only (CPUs without bf16 units emulate it, many times slower)
        for amp in ((False, True) if device.type == 'cuda' or a.cpu_bf16 else (False,)):
            cps, loss, mem = time_model_step(args, device, a.batch_size, amp, iters)
            rows.append((f"model step ({'bf16' if amp else 'fp32'})", cps, loss, mem))
            if not a.skip_release:
                cps, loss, mem = time_model_step(args, device, a.batch_size, amp, iters, release_loop=True)
                rows.append((f"model step, release walks ({'bf16' if amp else 'fp32'})", cps, loss, mem))
        if not a.skip_data and data_path:
            cps = time_data(args, device, a.data_iters or (20 if device.type == 'cuda' else 5))
            rows.append((f'data pipeline ({a.workers} workers)', cps, float('nan'), float('nan')))
        tables.append(f"Throughput (grid, clip-len {a.clip_len}, batch {a.batch_size}, {iters} timed steps)\n\n"
                      "| what | clips/s | loss | peak GPU GiB |\n|---|---:|---:|---:|\n"
                      + ''.join(f'| {r[0]} | {r[1]:.{1 if r[1] >= 10 else 3}f} | {r[2]:.4f} | {r[3]:.1f} |\n'
                                for r in rows))
    if a.breakdown:
        for config in CONFIGS:
            batch = CONFIGS[config][1 if device.type == 'cuda' else 2]
            res = step_breakdown(config, device, a.breakdown_steps, data_path, min(a.workers, 2), batch)
            tables.append(breakdown_table(config, device, res, a.breakdown_steps, batch, data_path))
    table = head + f", {os.getloadavg()[0]:.1f} at end\n\n" + '\n'.join(tables)
    if a.note:
        table += f'\n{a.note}\n'
    publish(table, write=not a.no_write)


if __name__ == '__main__':
    main()
