"""How much does ``train.py --amp`` (bf16 autocast) change the training signal? Loss, affinities and the full
gradient of the README configuration (grid, clip-len 4, temp 0.05), fp32 against bf16 autocast, on real clips.

Per clip (batch of one, BatchNorm in training mode as in training, edge dropout 0 so that both runs see the
same graph) and per initialisation of the encoder:

  fp32           the reference: everything in float32
  amp            bf16 autocast as train.py --amp runs it (encoder in bf16; node embedding and walks in fp32)
  amp, bf16 nodes  the same but with the node embedding (patch mean, head, L2 norm) also under autocast, as
                 before the embedding was pinned to float32: shows what that change buys

Columns: loss of each run, |Δloss|, max |ΔA| over the affinities A = q_tᵀ q_{t+1} (×1/τ for logits), and the
cosine between the flattened gradient of all parameters and the fp32 one (plus its relative error). For
scale, the last column is the cosine between two fp32 gradients of the same clip with two draws of the README
recipe's edge dropout (0.1): the noise the recipe itself puts into every step.

    python bench/amp_agreement.py --data-path ../shared/data/kinetics-mini --clips 6
With no GPU, CPU autocast (bf16) is the proxy for CUDA autocast: the same bf16 rounding of the convolutions,
other kernels. Prints a markdown table and appends it to bench/RESULTS.md.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

from crw.bench.results import device_name, publish  # noqa: E402
from crw.data.training.gpu_augment import BatchAugment  # noqa: E402
from crw.data.training.video_dataset import build_train_dataset  # noqa: E402
from crw.model import CRW  # noqa: E402
from crw.utils.arguments import train_args  # noqa: E402
from crw.utils.checkpoint import load_checkpoint, partial_load  # noqa: E402
from crw.utils.misc import git_revision  # noqa: E402


def pick_clips(ds, n):
    """``n`` clip indices: the middle clip of ``n`` videos spread evenly over the dataset."""
    videos = [v for v in range(len(ds.clip_counts)) if ds.clip_counts[v] > 0]
    step = max(1, len(videos) // n)
    chosen = videos[::step][:n]
    return [(int(ds.offsets[v] + ds.clip_counts[v] // 2), os.path.basename(ds._name(v))) for v in chosen]


def bf16_nodes_loss(model, video, device_type):
    """The loss with the node embedding under autocast too (the behaviour before it was pinned to fp32)."""
    B, T, NC, H, W = video.shape
    N = NC // 3
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        maps = model.encoder.frames(video.reshape(B * T * N, 3, H, W))
        q = F.normalize(model.selfsim_fc(maps.mean((-2, -1))), p=2, dim=-1)
        q = q.reshape(B, T, N, q.shape[-1]).permute(0, 3, 1, 2)
        loss, _ = model.walk_loss(q, size=H)
    return q, loss


def run(model, video, mode, device_type):
    """(loss, affinities [B, T-1, N, N], flattened gradient) of one forward/backward in ``mode``."""
    model.zero_grad(set_to_none=True)
    if mode == 'amp, bf16 nodes':
        q, loss = bf16_nodes_loss(model, video, device_type)
    else:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=mode == 'amp'):
            q, loss, _ = model(video)
    loss.backward()
    grad = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
    with torch.no_grad():
        A = model.affinity(q.float())
    return loss.item(), A, grad


def dropout_noise(model, video, rate, seed):
    """Cosine between the fp32 gradients of two edge-dropout draws (rate ``rate``) on the same clip."""
    keep, model.edgedrop_rate = model.edgedrop_rate, rate
    grads = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        grads.append(run(model, video, 'fp32', video.device.type)[2])
    model.edgedrop_rate = keep
    return F.cosine_similarity(grads[0], grads[1], dim=0).item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-path', default=os.path.join(ROOT, '..', 'shared', 'data', 'kinetics-mini'))
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--clips', type=int, default=6, help='clips (one per video, spread over the data set)')
    p.add_argument('--init', nargs='+', default=['scratch'],
                   help="encoder initialisations: 'scratch' (seeded random init, where training starts) and/or "
                        'checkpoint paths (loaded with partial_load; missing layers stay random)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-write', action='store_true', help='do not append to bench/RESULTS.md')
    p.add_argument('--note', default='', help='a line appended under the table')
    a = p.parse_args()
    device = torch.device(a.device)
    args = train_args(['--data-path', a.data_path, '--frame-aug', 'grid', '--dropout', '0', '--clip-len', '4',
                       '--temp', '0.05', '--model-type', 'scratch', '--batch-size', '1', '--workers', '1',
                       '--cache-dataset', '--output-dir', os.path.join('/tmp', 'crw-bench')])
    ds = build_train_dataset(args)
    aug = BatchAugment(args)
    clips = pick_clips(ds, a.clips)
    modes = ('fp32', 'amp', 'amp, bf16 nodes')
    t0 = time.time()
    rows = []
    for init in a.init:
        torch.manual_seed(a.seed)
        model = CRW(args)
        if init != 'scratch':
            partial_load(model, load_checkpoint(init)['model'])
        model = model.to(device).train()
        for k, (ci, name) in enumerate(clips):
            video = aug(ds[(ci, a.seed + k)][None].to(device), a.seed + k)
            res = {m: run(model, video, m, device.type) for m in modes}
            l32, A32, g32 = res['fp32']
            row = [os.path.basename(init), name, l32]
            for m in modes[1:]:
                loss, A, g = res[m]
                dA = (A - A32).abs().max().item()
                row += [loss, abs(loss - l32), dA, dA / args.temp, F.cosine_similarity(g, g32, dim=0).item(),
                        ((g - g32).norm() / g32.norm()).item()]
            row.append(dropout_noise(model, video, 0.1, a.seed + 1000 * k))
            rows.append(row)
            print(f'{init} {name}: ' + ' '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in row[2:]),
                  flush=True)

    head = (f"### amp_agreement — {time.strftime('%Y-%m-%d')} — {device.type}: {device_name(device)}, "
            f"torch {torch.__version__}, git {git_revision()}\n"
            f"`python bench/amp_agreement.py {' '.join(sys.argv[1:])}` — grid 7x7 of 64², clip-len 4, tau 0.05, "
            f"edge dropout 0, batch 1, BatchNorm in training mode; bf16 autocast on {device.type}"
            + (' (CPU proxy for CUDA autocast)' if device.type == 'cpu' else '')
            + f'; {time.time() - t0:.0f} s\n\n'
            '| init | clip | loss fp32 | loss amp | \\|Δloss\\| | max \\|ΔA\\| (logits) | grad cos '
            '| grad rel. err | bf16 nodes: max \\|ΔA\\| (logits) | grad cos | grad rel. err '
            '| fp32, two dropout-0.1 draws: grad cos |\n'
            '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n')
    body = ''
    for r in rows:
        (init, name, l32, la, dla, dA, dlog, cos, rel, _, _, dA2, dlog2, cos2, rel2, noise) = r
        body += (f'| {init} | {name} | {l32:.5f} | {la:.5f} | {dla:.1e} | {dA:.1e} ({dlog:.3f}) | {cos:.4f} | '
                 f'{rel:.3f} | {dA2:.1e} ({dlog2:.3f}) | {cos2:.4f} | {rel2:.3f} | {noise:.4f} |\n')
    cos = [r[7] for r in rows]
    cos2 = [r[13] for r in rows]
    noise = [r[15] for r in rows]
    summary = (f'\nGradient cosine fp32 vs amp: mean {sum(cos) / len(cos):.4f}, min {min(cos):.4f} '
               f'(with bf16 nodes: mean {sum(cos2) / len(cos2):.4f}, min {min(cos2):.4f}); between two edge-dropout '
               f'draws in fp32: mean {sum(noise) / len(noise):.4f}, min {min(noise):.4f}.\n')
    if a.note:
        summary += f'\n{a.note}\n'
    publish(head + body + summary, write=not a.no_write)


if __name__ == '__main__':
    main()
