"""One command for a new device: does it agree with the CPU, and how fast is it?

    python bench/device_check.py --device cuda --davis DIR --videos DIR [--results bench/RESULTS.md]
    python bench/device_check.py --quick --device cpu          # tiny sizes, synthetic clips (the CI test)

Checks (exit status 1 when an agreement check fails):
  features, walk loss, gradients   the README training model (grid of patches, dropout off) on a fixed random
                                   clip, float32 on --device against float32 on the CPU (TF32 off; on
                                   --device cpu the CPU meets itself: the quick run checks that it all runs)
  masks                            the windowed propagator on --device against the release's algorithm on the
                                   CPU (pixel agreement of the label maps), first --agree-frames frames
Measured: propagation frames/s and peak memory at the README protocol (L 20, k 10, R 12, tau 0.05,
pretrained.pth, full-size frames); training clips/s of the README configuration in fp32, --amp, channels-last
(and torch.compile on CUDA); the data pipeline's clips/s (decode + crops) with 1 and --workers workers.
--davis: a DAVIS-layout folder (its first sequence); --videos: a Kinetics-style folder (train.py --data-path).
Without them synthetic clips are used (data/synthetic.py). Nothing is written unless --results FILE is given.
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

import crw.utils.startup  # noqa: E402,I001  (OpenMP settings before torch loads, collector paused, as train.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from crw.bench.results import device_name  # noqa: E402
from crw.bench.train_throughput import make_args, time_data, time_model_step  # noqa: E402
from crw.model import CRW  # noqa: E402
from crw.propagation import Protocol, load_encoder, propagate  # noqa: E402
from crw.utils.errors import CRWError  # noqa: E402
from crw.utils.misc import git_revision, peak_memory_bytes, reset_peak_memory  # noqa: E402

crw.utils.startup.imports_done()

PROTOCOL = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
SIZES = {   # quick: tiny; full: the README sizes
    True: dict(train=['--img-size', '64', '--patch-size', '32', '32', '3'], batch=2, iters=1, frames=8,
               clip=(64, 96), clips=4, agree_frames=8),
    False: dict(train=[], batch=None, iters=10, frames=None, clip=(480, 854), clips=64, agree_frames=30)}
TOL = dict(features=1e-3, loss=1e-3, grads=1e-2, masks=0.99)   # relative errors; pixel agreement


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# -- agreement ----------------------------------------------------------------------------------------------

def walk_outputs(model, x):
    """(node features, walk loss, {name: gradient}) of one forward and backward pass on clip x."""
    model.zero_grad(set_to_none=True)
    B, T, NC, H, W = x.shape
    q, _ = model.embed(x.reshape(B, T, NC // 3, 3, H, W))
    loss, _ = model.walk_loss(q, size=H)
    loss.backward()
    return q.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def check_training_agreement(device, size):
    """Largest relative errors of features, loss and gradients: ``device`` vs the CPU, both float32."""
    args = make_args('readme', '', 2, extra=size['train'] + ['--dropout', '0'])
    torch.manual_seed(0)
    ref = CRW(args).train()
    dev = CRW(args).train()
    dev.load_state_dict(ref.state_dict())
    dev.to(device)
    P, n = args.patch_size[0], ((args.img_size - args.patch_size[0]) // (args.patch_size[0] // 2) + 1) ** 2
    x = torch.randn(2, args.clip_len, n * 3, P, P, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    q0, l0, g0 = walk_outputs(ref, x)
    q1, l1, g1 = walk_outputs(dev, x.to(device))
    if g0.keys() != g1.keys():
        raise CRWError(f'{device}: gradients of different parameters than on the CPU')
    feats = ((q1.double().cpu() - q0).abs().max() / q0.abs().max()).item()
    loss = abs(l1.double().item() - l0.item()) / abs(l0.item())
    grads = max(((g1[k].double().cpu() - g0[k]).norm() / g0[k].norm().clamp_min(1e-30)).item() for k in g0)
    return dict(features=feats, loss=loss, grads=grads)


def check_mask_agreement(device, clip, frames):
    """Per-frame pixel agreement of the label maps: windowed on ``device`` vs the reference on the CPU."""
    imgs, mask = clip['frames'][:frames], clip['mask']
    enc_dev, enc_cpu = load_encoder(os.path.join(ROOT, 'pretrained.pth'), device), load_encoder(
        os.path.join(ROOT, 'pretrained.pth'), 'cpu')
    fast = dict(propagate(enc_dev, imgs, mask, PROTOCOL, device))
    ref = dict(propagate(enc_cpu, imgs, mask, PROTOCOL, 'cpu', reference=True))
    agree = [float((np.asarray(fast[t]) == np.asarray(ref[t])).mean()) for t in sorted(ref) if t > 0]
    return dict(mean=float(np.mean(agree)), worst=float(np.min(agree)), frames=len(agree))


# -- speed --------------------------------------------------------------------------------------------------

def propagation_speed(device, clip):
    """frames/s of the windowed propagation (encoder included, frames already decoded) and its peak memory."""
    enc = load_encoder(os.path.join(ROOT, 'pretrained.pth'), device)
    imgs = clip['frames']
    for _ in propagate(enc, imgs[:5], clip['mask'], PROTOCOL, device):   # warm-up (cudnn, allocator)
        pass
    sync(device)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    n = sum(1 for _ in propagate(enc, imgs, clip['mask'], PROTOCOL, device))
    sync(device)
    return dict(fps=n / (time.perf_counter() - t0), frames=n, peak_mb=peak_memory_bytes(device) / 2 ** 20)


def training_speed(device, size, compile_, amp):
    """clips/s of the README training step (synthetic, already augmented input) per variant."""
    batch = size['batch'] or (20 if device.type == 'cuda' else 4)
    args = make_args('readme', '', batch, extra=size['train'])
    variants = [('fp32', dict(amp=False)), ('fp32, channels-last', dict(amp=False, channels_last=True))]
    if amp:
        variants.insert(1, ('--amp (bf16)', dict(amp=True)))
    if compile_:
        variants.append(('fp32, torch.compile', dict(amp=False, compile=True)))
    out = {}
    for name, kw in variants:
        torch.manual_seed(0)
        clips_s, loss, mem = time_model_step(args, device, batch, iters=size['iters'], **kw)
        if not np.isfinite(loss):
            raise CRWError(f'training step {name} on {device}: loss {loss}')
        out[name] = dict(clips_s=clips_s, batch=batch, loss=loss, peak_gib=mem)
    return out


def data_speed(device, videos, size, workers):
    """clips/s of the training DataLoader (decode + crops) and BatchAugment, with 1 and ``workers`` workers."""
    out = {}
    for w in sorted({1, workers}):
        args = make_args('readme', videos, 8 if size['clips'] > 8 else 2, workers=w, extra=size['train'])
        args.cache_dataset = False   # no metadata cache left in the user's home
        out[w] = time_data(args, device, max(1, size['clips'] // args.batch_size))
    return out


# -- inputs -------------------------------------------------------------------------------------------------

def davis_clip(davis, frames=None):
    """{'frames': paths, 'mask': frame 0's annotation path, 'name'} of the first sequence of a DAVIS folder."""
    from crw.data.images import list_frames
    with open(os.path.join(davis, 'ImageSets', '2017', 'val.txt')) as f:
        name = f.readline().strip()
    paths = list_frames(os.path.join(davis, 'JPEGImages', '480p', name))[:frames]
    if not paths:
        raise CRWError(f'--davis {davis}: no frames in JPEGImages/480p/{name}')
    ann = os.path.join(davis, 'Annotations', '480p', name, os.path.splitext(os.path.basename(paths[0]))[0] + '.png')
    return dict(frames=paths, mask=ann, name=name)


def synthetic_clip(size):
    """A synthetic sequence at size['clip'] (H, W) with exact masks (data.synthetic)."""
    from crw.data.synthetic import make_sequence
    h, w = size['clip']
    seq = make_sequence(num_frames=size['frames'] or 40, height=h, width=w, num_objects=2, seed=0,
                        object_size=(h // 4, h // 3), cell=max(4, h // 16))
    return dict(frames=list(seq['frames']), mask=seq['masks'][0], name=f'synthetic {w}x{h}')


def synthetic_videos(root, size):
    """A Kinetics-style folder of 4 short synthetic videos (train_256/<class>/<video>.mp4)."""
    from crw.data.synthetic import make_sequence, write_video
    for v in range(4):
        seq = make_sequence(num_frames=24, height=96 if size['train'] else 256, width=128 if size['train'] else 340,
                            seed=v)
        write_video(os.path.join(root, 'train_256', f'class{v % 2}', f'video{v}.mp4'), seq['frames'])
    return root


# -- report -------------------------------------------------------------------------------------------------

def report(a, device, res, seconds):
    ok = lambda good: 'ok' if good else '**FAIL**'  # noqa: E731
    tr, mk = res['training_agreement'], res['mask_agreement']
    lines = [f"### device check — {time.strftime('%Y-%m-%d %H:%M')} — {device.type}: {device_name(device)}, "
             f"torch {torch.__version__}, git {git_revision()}{' (--quick: tiny sizes)' if a.quick else ''}",
             f"`python bench/device_check.py {' '.join(sys.argv[1:])}` — {seconds:.0f} s; propagation on "
             f"{res['clip']}; training data: {res['videos']}; load average {os.getloadavg()[0]:.1f}\n",
             '| check | result | limit | |', '|---|---:|---:|---|']
    for k in ('features', 'loss', 'grads'):
        lines.append(f"| {k} ({device.type} vs cpu, fp32, relative) | {tr[k]:.1e} | {TOL[k]:.0e} | "
                     f"{ok(tr[k] <= TOL[k])} |")
    lines.append(f"| masks ({device.type} windowed vs cpu reference, {mk['frames']} frames): mean / worst "
                 f"pixel agreement | {100 * mk['mean']:.3f}% / {100 * mk['worst']:.3f}% | {100 * TOL['masks']:.0f}% "
                 f"| {ok(mk['worst'] >= TOL['masks'])} |")
    p = res['propagation']
    mem = 'peak GPU memory (allocated)' if device.type == 'cuda' else 'peak RSS'
    lines += ['', '| measurement | value |', '|---|---:|',
              f"| propagation, README protocol, {p['frames']} frames: frames/s | {p['fps']:.2f} |",
              f"| propagation: {mem} | {p['peak_mb']:.0f} MB |"]
    for name, t in res['training'].items():
        gpu = f", peak {t['peak_gib']:.1f} GiB" if device.type == 'cuda' else ''
        lines.append(f"| training, README config {name}, batch {t['batch']}: clips/s{gpu} | {t['clips_s']:.1f} |")
    for w, rate in res['data'].items():
        lines.append(f"| data pipeline, {w} worker{'s' if w > 1 else ''}: clips/s (per worker) | "
                     f"{rate:.1f} ({rate / w:.1f}) |")
    return '\n'.join(lines) + '\n'


def failures(res):
    tr, mk = res['training_agreement'], res['mask_agreement']
    bad = [f'{k} {tr[k]:.1e} > {TOL[k]:.0e}' for k in ('features', 'loss', 'grads') if not tr[k] <= TOL[k]]
    if not mk['worst'] >= TOL['masks']:
        bad.append(f"masks: worst frame agreement {100 * mk['worst']:.3f}% < {100 * TOL['masks']:.0f}%")
    return bad


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--quick', action='store_true', help='tiny sizes (seconds on a CPU): checks that it all runs')
    p.add_argument('--davis', default='', help='DAVIS-layout folder (its first sequence); default: synthetic')
    p.add_argument('--videos', default='', help='training videos (train.py --data-path); default: synthetic')
    p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1), help='data pipeline workers')
    p.add_argument('--agree-frames', type=int, default=0, help='frames of the mask agreement (0: by mode)')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help='also time torch.compile (default: on CUDA without --quick)')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='also time --amp (default: on CUDA; CPUs without native bf16 run it very slowly)')
    p.add_argument('--results', default='', help='append the table to this markdown file (e.g. bench/RESULTS.md)')
    return p


def log(what):
    print(f"[device check {time.strftime('%H:%M:%S')}] {what} ...", flush=True)


def run(a):
    device = torch.device(a.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise CRWError('--device cuda: no CUDA device visible to torch')
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # float32 agreement
    size = SIZES[a.quick]
    for flag, path in (('--davis', a.davis), ('--videos', a.videos)):
        if path and not os.path.isdir(path):
            raise CRWError(f'{flag} {path}: no such folder')
    t0 = time.time()
    res = {}
    with tempfile.TemporaryDirectory(prefix='crw-device-check-') as tmp:
        clip = davis_clip(a.davis, size['frames']) if a.davis else synthetic_clip(size)
        res['clip'] = clip['name'] + (f' ({len(clip["frames"])} frames)')
        videos = a.videos or synthetic_videos(tmp, size)
        res['videos'] = a.videos or 'synthetic videos'
        log(f'{device}: training agreement')
        res['training_agreement'] = check_training_agreement(device, size)
        log('mask agreement')
        res['mask_agreement'] = check_mask_agreement(device, clip, a.agree_frames or size['agree_frames'])
        log('propagation speed')
        res['propagation'] = propagation_speed(device, clip)
        log('training speed')
        compile_ = a.compile if a.compile is not None else (device.type == 'cuda' and not a.quick)
        amp = a.amp if a.amp is not None else device.type == 'cuda'
        res['training'] = training_speed(device, size, compile_, amp)
        log('data pipeline')
        res['data'] = data_speed(device, videos, size, a.workers)
    table = report(a, device, res, time.time() - t0)
    print(table)
    if a.results:
        with open(a.results, 'a') as f:
            f.write(table + '\n')
    return res


def main(argv=None):
    a = get_args_parser().parse_args(argv)
    try:
        bad = failures(run(a))
    except CRWError as e:
        sys.exit(f'device_check: {e}')
    if bad:
        sys.exit('device_check: FAILED: ' + '; '.join(bad))


if __name__ == '__main__':
    main()
