"""Training throughput of the README configuration (grid, clip-len 4, batch 20), in clips/s.

Rows:
  model step      forward + backward + Adam on synthetic, already augmented input (fp32, and bf16 autocast)
  release walks   the same step with the release's walk computation (every palindrome multiplied from scratch)
  data pipeline   DataLoader (decode + frame crops in workers) + batch augmentation on the device, no model

    python bench/train_throughput.py --data-path ../shared/data/kinetics-mini --workers 2
Prints a markdown table and appends it to bench/RESULTS.md.
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

from data.training.gpu_augment import BatchAugment  # noqa: E402
from data.training.sampler import build_train_sampler  # noqa: E402
from data.training.video_dataset import build_train_dataset  # noqa: E402
from model import CRW  # noqa: E402
from tests.reference_walk import release_walks  # noqa: E402
from utils.arguments import train_args  # noqa: E402
from bench.results import device_name, publish  # noqa: E402
from utils.misc import git_revision  # noqa: E402


def time_model_step(args, device, batch, amp, iters, release_loop=False):
    model = CRW(args).to(device).train()
    if device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    P = args.patch_size[0]
    n = ((args.img_size - P) // (P // 2) + 1) ** 2
    x = torch.randn(batch, args.clip_len, n * 3, P, P, device=device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            if release_loop:
                q, _ = model.pixels_to_nodes(x.transpose(1, 2).reshape(batch, n, 3, args.clip_len, P, P))[:2]
                loss = release_walks(q, model.temperature, model.edgedrop_rate)[1]
            else:
                _, loss, _ = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    step()  # warm-up (cudnn autotune, allocator)
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
    ds = build_train_dataset(args)
    sampler = build_train_sampler(ds, args, rank=0, world_size=1)
    sampler.set_epoch(0)
    sampler.set_start(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler,
                                         num_workers=args.workers, drop_last=True,
                                         pin_memory=device.type == 'cuda',
                                         prefetch_factor=4 if args.workers else None)
    aug = BatchAugment(args)
    it = iter(loader)
    n, t0 = 0, None
    for i in range(iters + 2):
        try:
            clips = next(it)
        except StopIteration:
            sampler.set_epoch(i)
            it = iter(loader)
            clips = next(it)
        out = aug(clips.to(device, non_blocking=True), i)
        if i == 1:  # the first batches pay for worker start-up
            sync(device)
            t0 = time.perf_counter()
        elif i > 1:
            n += out.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


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
    p.add_argument('--cpu-bf16', action='store_true', help='also time bf16 autocast on the CPU')
    p.add_argument('--skip-release', action='store_true', help='skip the release-walks row')
    p.add_argument('--no-write', action='store_true', help='do not append to bench/RESULTS.md')
    p.add_argument('--note', default='', help='a line appended under the table (e.g. what else ran)')
    a = p.parse_args()
    device = torch.device(a.device)
    iters = a.iters or (20 if device.type == 'cuda' else 2)
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
    if not a.skip_data:
        cps = time_data(args, device, a.data_iters or (20 if device.type == 'cuda' else 5))
        rows.append((f'data pipeline ({a.workers} workers)', cps, float('nan'), float('nan')))

    head = (f"### train_throughput — {time.strftime('%Y-%m-%d')} — {device.type}: {device_name(device)}, "
            f"torch {torch.__version__}, git {git_revision()}\n"
            f"`python bench/train_throughput.py {' '.join(sys.argv[1:])}` (grid, clip-len {a.clip_len}, "
            f"batch {a.batch_size}, {iters} timed steps)\n\n"
            "| what | clips/s | loss | peak GPU GiB |\n|---|---:|---:|---:|\n")
    table = head + ''.join(f'| {r[0]} | {r[1]:.{1 if r[1] >= 10 else 3}f} | {r[2]:.4f} | {r[3]:.1f} |\n' for r in rows)
    if a.note:
        table += f'\n{a.note}\n'
    publish(table, write=not a.no_write)


if __name__ == '__main__':
    main()
