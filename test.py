#!/usr/bin/env python
"""Label propagation with a trained CRW encoder: the release's test.py command line.

    python test.py --filelist /path/to/davis/vallist.txt --model-type scratch --resume pretrained.pth \\
        --save-path /save/path --topk 10 --videoLen 20 --radius 12 --temperature 0.05 --cropSize -1

For video i (0-based line of the filelist) and frame t it writes ``{save}/{i}_{t}_mask.png`` (8-bit
palette PNG whose pixel values are the annotation's label ids) and ``{save}/{i}_{t}_blend.jpg`` (image and
label colours half and half); ``eval/convert_davis.py`` turns them into DAVIS results. JHMDB filelists
(``<frames folder> <joint_positions.mat>``) write ``{save}/{i}.dat`` (joint coordinates [2, 15, T] in
feature cells, as the release; scored by ``eval/eval_pck.py``) and ``{i}_{t}_blend.jpg`` with the
skeleton. VIP filelists (annotation folders in ``.../Category_ids/``, or ``--vip``) write the release's VIP
layout ``{save}/<video>/<frame>.png``: greyscale label ids at the annotation's resolution, scored by
``eval/eval_vip.py``. ``--finetune N`` adapts a copy of the encoder to each video first
(``propagation/finetune.py``).

Pipeline per video: frames are read lazily by a DataLoader (``--workers`` processes prefetching), encoded
in small batches on the device, L2-normalised, and propagated frame by frame by ``propagation`` (the
windowed path by default, the release's reference algorithm with ``--dense``); outputs are written by
background threads so the device does not wait on PNG/JPEG encoding. Memory stays bounded by a few frames
whatever the video's length.

Differences from the release, on purpose: label maps are resized with nearest neighbour (the release
blended them bilinearly by an argument slip); frame 0's mask is its ground truth at the output size (the
release wrote the ground truth after a down/up-sampling round trip; scorers skip frame 0 anyway);
``--norm_mask`` changes only what is written, not the soft labels later frames use (the release's in-place
normalisation leaked into one copy of frame 0's labels); TF32 is disabled on CUDA so features are float32.
"""
import concurrent.futures
import os
import random
import sys
import threading
import time
import warnings

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data.images import davis_palette, list_frames, save_grey_png, save_indexed_png
from data.jhmdb import draw_pose, joint_heatmaps, load_joints, pose_from_soft_map
from data.vos import VideoFrames, VOSVideo, first_annotation, frame_size, read_annotation, read_filelist
from propagation import STRIDE, Protocol, encode_frames, load_encoder, make_propagator, soft_to_index
from propagation.finetune import VideoAdapter
from utils.arguments import test_args
from utils.errors import CRWError, report
from utils.misc import atomic_write, git_revision, peak_memory_bytes, reset_peak_memory

FEATURE_BATCH = 4   # frames per encoder call


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------

def build_encoder(args, device):
    """The encoder for ``args`` (layer4 removed by default), weights from --resume."""
    if not args.resume and args.model_type != 'imagenet18':
        warnings.warn(f'no --resume: the {args.model_type} encoder has random weights (seed {args.manualSeed})',
                      stacklevel=2)
    encoder = load_encoder(args.resume or None, device, args.model_type, args.remove_layers, args.imagenet_weights)
    print(f'encoder: {args.model_type}, {sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M params')
    return encoder


# ----------------------------------------------------------------------------------------------------------
# Output writing
# ----------------------------------------------------------------------------------------------------------

class AsyncWriter:
    """Runs write jobs on background threads, at most ``max_pending`` queued; close() re-raises errors."""

    def __init__(self, threads=2, max_pending=16):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
        self.slots = threading.Semaphore(max_pending)
        self.futures = []

    def submit(self, fn, *a):
        self.slots.acquire()
        fut = self.pool.submit(fn, *a)
        fut.add_done_callback(lambda _: self.slots.release())
        self.futures.append(fut)
        if len(self.futures) > 256:
            self.futures = [f for f in self.futures if not f.done() or f.exception()]

    def wait(self):
        for f in self.futures:
            f.result()
        self.futures = []

    def close(self):
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)


def write_mask_and_blend(prefix, ids, disp):
    """ids [H, W] label ids, disp [H, W, 3] uint8 -> {prefix}_mask.png and {prefix}_blend.jpg."""
    save_indexed_png(prefix + '_mask.png', ids)
    colours = davis_palette()[ids.astype(np.int64) % 256].astype(np.float32)
    blend = (disp.astype(np.float32) * 0.5 + colours * 0.5).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(blend).save(prefix + '_blend.jpg', quality=90)


# ----------------------------------------------------------------------------------------------------------
# One video
# ----------------------------------------------------------------------------------------------------------

def _loader(frames, args, device):
    workers = max(0, int(args.workers))
    return torch.utils.data.DataLoader(
        frames, batch_size=FEATURE_BATCH, shuffle=False, num_workers=workers,
        pin_memory=torch.device(device).type == 'cuda', prefetch_factor=2 if workers else None,
        persistent_workers=False)


def propagate_labels(video, args, encoder, device, out_size, first_ids, progress=None):
    """Propagate frame 0's labels through a VOSVideo. Yields (t, label ids [out_size] uint8, display image
    [H, W, 3] uint8) per frame; frame 0's ids are ``first_ids`` (its ground truth)."""
    values = video.labels.values
    if progress is not None:
        progress.reset(total=len(video))
    if values.max() > 255:
        raise CRWError(f'{video.entry.target}: label ids above 255 cannot be written as 8-bit PNGs')
    prop = None
    for imgs, disp, ts in _loader(video.frames, args, device):
        feats = encode_frames(encoder, imgs.to(device, non_blocking=True), l2=not args.no_l2)
        for b, t in enumerate(ts.tolist()):
            if t == 0:
                first = video.first_labels(feats.shape[-2:]).to(device)
                prop = make_propagator(feats[b], first, Protocol.from_args(args), reference=args.dense)
                ids = first_ids
            else:
                ids = values[soft_to_index(prop.step(feats[b]), out_size, args.norm_mask).cpu().numpy()]
            yield t, ids.astype(np.uint8), disp[b].numpy()
            if progress is not None:
                progress.update(1)


def run_davis_video(entry, args, encoder, device, writer, progress=None):
    """Propagate frame 0's labels through one DAVIS-style video and queue its outputs. Returns #frames."""
    video = VOSVideo(entry, args.cropSize)
    prefix = os.path.join(args.save_path, str(entry.index))
    first_ids = video.labels.values[video.labels.label_map]
    for t, ids, disp in propagate_labels(video, args, encoder, device, video.size, first_ids, progress):
        writer.submit(write_mask_and_blend, f'{prefix}_{t}', ids, disp)
    return len(video)


def run_vip_video(entry, args, encoder, device, writer, progress=None):
    """VIP: label ids written as ``{save}/<video>/<frame>.png`` (greyscale) at the annotation's resolution,
    the layout VIP scorers read; no blends (they would sit among the scored files). Returns #frames."""
    video = VOSVideo(entry, args.cropSize)
    first_ids, _ = read_annotation(first_annotation(entry.target, video.paths[0]))   # at its own size
    out_dir = os.path.join(args.save_path, entry.name)
    os.makedirs(out_dir, exist_ok=True)
    for t, ids, _ in propagate_labels(video, args, encoder, device, first_ids.shape[:2], first_ids, progress):
        stem = os.path.splitext(os.path.basename(video.paths[t]))[0]
        writer.submit(save_grey_png, os.path.join(out_dir, stem + '.png'), ids)
    return len(video)


def run_jhmdb_video(entry, args, encoder, device, writer, progress=None):
    """JHMDB pose propagation: joint heat maps from frame 0, propagated, decoded per frame -> {i}.dat."""
    paths = list_frames(entry.frames_dir)
    if not paths:
        raise CRWError(f'{entry.frames_dir}: no frames')
    H0, W0 = frame_size(paths[0], -1)
    H, W = frame_size(paths[0], args.cropSize)
    joints = load_joints(entry.target)                                   # [2, J, T] pixels, 0-based
    if progress is not None:
        progress.reset(total=len(paths))
    prop, coords = None, []
    prefix = os.path.join(args.save_path, str(entry.index))
    for imgs, disp, ts in _loader(VideoFrames(paths, args.cropSize), args, device):
        feats = encode_frames(encoder, imgs.to(device, non_blocking=True), l2=not args.no_l2)
        h, w = feats.shape[-2:]
        for b, t in enumerate(ts.tolist()):
            if t == 0:
                # pixel -> feature cells, as the release: x * (W/W0) / 8, y * (H/H0) / 8
                scale = np.array([W / W0 / STRIDE, H / H0 / STRIDE])[:, None]
                first = joint_heatmaps(joints[:, :, 0] * scale, (h, w)).to(device)
                prop = make_propagator(feats[b], first, Protocol.from_args(args), reference=args.dense)
                soft = first
            else:
                soft = prop.step(feats[b])
            xy = pose_from_soft_map(soft).cpu().numpy()                  # [2, J] feature cells
            coords.append(xy)
            writer.submit(draw_pose, f'{prefix}_{t}_blend.jpg', disp[b].numpy(), xy * STRIDE)
            if progress is not None:
                progress.update(1)
    with atomic_write(prefix + '.dat') as f:     # the release's format: a pickled ndarray (ndarray.dump)
        np.stack(coords, axis=-1).dump(f)
    return len(paths)


# ----------------------------------------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = test_args(argv)
    if any(a == '--gpu-id' or a.startswith('--gpu-id=') for a in argv) or 'CUDA_VISIBLE_DEVICES' not in os.environ:
        os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu_id    # before CUDA is initialised (release behaviour)
    try:
        run(args)
    except CRWError as e:
        return report('test.py', e)
    return 0


def run(args):
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CRWError(f'--device {args.device}: CUDA is not available on this machine; use --device cpu')

    print(f'git revision: {git_revision()}')
    print('Arguments', args)
    print(f'Context length {args.videoLen}, image size {args.cropSize}, device {device}, '
          f"{'reference (release) propagation' if args.dense else 'windowed propagation'}")
    if args.visdom:
        warnings.warn('--visdom is not implemented in this test.py: results are only written to --save-path',
                      stacklevel=2)

    random.seed(args.manualSeed)
    np.random.seed(args.manualSeed % 2 ** 32)
    torch.manual_seed(args.manualSeed)
    if device.type == 'cuda':
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    entries = read_filelist(args.filelist, args.data_root, vip=args.vip)
    vip_names = [e.name for e in entries if e.kind == 'vip']
    if len(set(vip_names)) < len(vip_names):
        raise CRWError(f'{args.filelist}: two VIP videos have the same folder name; their outputs '
                       '(<save>/<video>/<frame>.png) would overwrite each other')
    if any(e.kind == 'jhmdb' for e in entries) and args.cropSize <= 0:
        raise CRWError('JHMDB pose propagation needs --cropSize > 0 (the release used 320)')

    encoder = build_encoder(args, device)
    adapter = VideoAdapter.from_args(args, device) if args.finetune > 0 else None
    if adapter is not None:
        print(adapter.describe())
    os.makedirs(args.save_path, exist_ok=True)

    writer = AsyncWriter()
    try:
        for entry in entries:
            reset_peak_memory(device)
            t0 = time.time()
            run_video = {'jhmdb': run_jhmdb_video, 'vip': run_vip_video}.get(entry.kind, run_davis_video)
            video_encoder, adapted, t_adapt = encoder, '', 0.0
            with tqdm(desc=f'[{entry.index}] {entry.name}', unit='frame', leave=False,
                      mininterval=1.0, file=sys.stderr) as bar:
                try:
                    if adapter is not None:   # a copy is adapted; the next video starts from `encoder` again
                        video_encoder, info = adapter.adapt(encoder, entry.frames_dir)
                        t_adapt = info['seconds']
                        adapted = (f", adapted in {t_adapt:.1f} s (walk loss {info['losses'][0]:.3f} -> "
                                   f"{info['losses'][-1]:.3f}, {info['head']} head)")
                    n = run_video(entry, args, video_encoder, device, writer, bar)
                except CRWError as e:
                    raise CRWError(f'{args.filelist}:{entry.line_no}: {e}') from e
                writer.wait()
            dt = time.time() - t0 - t_adapt
            print(f'video {entry.index} {entry.name}: {n} frames, {n / dt:.2f} frames/s, '
                  f'peak {"GPU" if device.type == "cuda" else "RSS"} memory '
                  f'{peak_memory_bytes(device) / 2 ** 20:.0f} MB{adapted}', flush=True)
    finally:
        writer.close()


if __name__ == '__main__':
    sys.exit(main())
