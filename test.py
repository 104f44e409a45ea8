#!/usr/bin/env python
"""Label propagation with a trained CRW encoder (SPEC §5): the release's test.py command line.

    python test.py --filelist /path/to/davis/vallist.txt --model-type scratch --resume pretrained.pth \\
        --save-path /save/path --topk 10 --videoLen 20 --radius 12 --temperature 0.05 --cropSize -1

For video i (0-based line of the filelist) and frame t it writes ``{save}/{i}_{t}_mask.png`` (8-bit
palette PNG whose pixel values are the annotation's label ids) and ``{save}/{i}_{t}_blend.jpg`` (image and
label colours half and half); ``eval/convert_davis.py`` turns them into DAVIS results. JHMDB filelists
(``<frames folder> <joint_positions.mat>``) write ``{save}/{i}.dat`` (joint coordinates [2, 15, T] in
feature cells, as the release) and ``{i}_{t}_blend.jpg`` with the skeleton.

Pipeline per video: frames are read lazily by a DataLoader (``--workers`` processes prefetching), encoded
in small batches on the device, L2-normalised, and propagated frame by frame by ``utils.propagation``
(fast local-window path by default, the release's dense algorithm with ``--dense``); outputs are written by
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

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from utils.misc import git_revision, peak_memory_bytes, reset_peak_memory  # noqa: E402

FEATURE_BATCH = 4   # frames per encoder call
STRIDE = 8          # encoder output stride (feature cell size in pixels)


# ----------------------------------------------------------------------------------------------------------
# Model and features
# ----------------------------------------------------------------------------------------------------------

def build_encoder(args, device):
    """CRW(args)'s encoder (layer4 removed by default), weights from --resume (head keys skipped)."""
    from model import CRW
    from utils.weights import load_checkpoint, partial_load
    model = CRW(args)
    if args.resume:
        ckpt = load_checkpoint(args.resume, map_location='cpu')
        partial_load(model, ckpt['model'], skip_keys=('selfsim_fc',))
        del ckpt
    elif args.model_type != 'imagenet18':
        warnings.warn(f'no --resume: the {args.model_type} encoder has random weights (seed {args.manualSeed})',
                      stacklevel=2)
    model.eval().to(device).to(memory_format=torch.channels_last)   # faster convolutions, same results
    print(f'encoder: {args.model_type}, {sum(p.numel() for p in model.encoder.parameters()) / 1e6:.2f}M params')
    return model.encoder


@torch.no_grad()
def encode_frames(encoder, imgs, l2=True):
    """imgs [B, 3, H, W] -> features [B, C, h, w], L2-normalised over C unless l2 is False."""
    if hasattr(encoder, 'frames'):
        feats = encoder.frames(imgs)
    else:   # generic encoder on [1, 3, T, H, W]
        feats = encoder(imgs.transpose(0, 1)[None])[0].transpose(0, 1)
    feats = feats.float()
    if l2:
        feats = F.normalize(feats, dim=1)
    return feats


def soft_to_index(soft, size, norm_mask=False):
    """Soft map [h, w, K] -> label index map [H, W] (argmax after bilinear upsampling), on soft's device."""
    if norm_mask:
        from utils.propagation import min_max_normalize
        soft = min_max_normalize(soft)
    x = soft.permute(2, 0, 1)[None]
    x = F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)
    return x[0].argmax(0)


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
    from utils.palette import davis_palette, save_indexed_png
    save_indexed_png(prefix + '_mask.png', ids)
    colours = davis_palette()[ids.astype(np.int64) % 256].astype(np.float32)
    blend = (disp.astype(np.float32) * 0.5 + colours * 0.5).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(blend).save(prefix + '_blend.jpg', quality=90)


# ----------------------------------------------------------------------------------------------------------
# One video
# ----------------------------------------------------------------------------------------------------------

def protocol(args):
    return dict(topk=args.topk, radius=args.radius, temperature=args.temperature, video_len=args.videoLen,
                long_mem=args.long_mem, dense=args.dense)


def _loader(frames, args, device):
    workers = max(0, int(args.workers))
    return torch.utils.data.DataLoader(
        frames, batch_size=FEATURE_BATCH, shuffle=False, num_workers=workers,
        pin_memory=torch.device(device).type == 'cuda', prefetch_factor=2 if workers else None,
        persistent_workers=False)


def run_davis_video(entry, args, encoder, device, writer, progress=None):
    """Propagate frame 0's labels through one DAVIS-style video and queue its outputs. Returns #frames."""
    from data.vos import VOSVideo
    from utils.propagation import make_propagator
    video = VOSVideo(entry, args.cropSize)
    values, size = video.labels.values, video.size
    if progress is not None:
        progress.reset(total=len(video))
    if values.max() > 255:
        raise SystemExit(f'line {entry.line_no}: label ids above 255 cannot be written as 8-bit PNGs')
    prop = None
    prefix = os.path.join(args.save_path, str(entry.index))
    for imgs, disp, ts in _loader(video.frames, args, device):
        feats = encode_frames(encoder, imgs.to(device, non_blocking=True), l2=not args.no_l2)
        for b, t in enumerate(ts.tolist()):
            if t == 0:
                first = video.first_labels(feats.shape[-2:]).to(device)
                prop = make_propagator(feats[b], first, **protocol(args))
                index = torch.from_numpy(video.labels.label_map)        # ground truth
            else:
                index = soft_to_index(prop.step(feats[b]), size, args.norm_mask)
            ids = values[index.cpu().numpy()].astype(np.uint8)
            writer.submit(write_mask_and_blend, f'{prefix}_{t}', ids, disp[b].numpy())
            if progress is not None:
                progress.update(1)
    return len(video)


def run_jhmdb_video(entry, args, encoder, device, writer, progress=None):
    """JHMDB pose propagation: joint heat maps from frame 0, propagated, decoded per frame -> {i}.dat."""
    from data.vos import VideoFrames, image_size, list_frames
    from utils.pose import draw_pose, joint_heatmaps, load_joints, pose_from_soft_map
    from utils.propagation import make_propagator
    paths = list_frames(entry.frames_dir)
    if not paths:
        raise SystemExit(f'line {entry.line_no}: no frames in {entry.frames_dir}')
    H0, W0 = image_size(paths[0], -1)
    H, W = image_size(paths[0], args.cropSize)
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
                prop = make_propagator(feats[b], first, **protocol(args))
                soft = first
            else:
                soft = prop.step(feats[b])
            xy = pose_from_soft_map(soft).cpu().numpy()                  # [2, J] feature cells
            coords.append(xy)
            writer.submit(draw_pose, f'{prefix}_{t}_blend.jpg', disp[b].numpy(), xy * STRIDE)
            if progress is not None:
                progress.update(1)
    np.stack(coords, axis=-1).dump(prefix + '.dat')
    return len(paths)


# ----------------------------------------------------------------------------------------------------------

def main(argv=None):
    from utils.arguments import test_args
    argv = sys.argv[1:] if argv is None else list(argv)
    args = test_args(argv)
    if any(a == '--gpu-id' or a.startswith('--gpu-id=') for a in argv) or 'CUDA_VISIBLE_DEVICES' not in os.environ:
        os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu_id    # before CUDA is initialised (release behaviour)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'test.py: error: --device {args.device}: CUDA is not available')

    print(f'git revision: {git_revision()}')
    print('Arguments', args)
    print(f'Context length {args.videoLen}, image size {args.cropSize}, device {device}, '
          f"{'dense (release) propagation' if args.dense else 'fast propagation'}")
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

    from data.vos import FilelistError, read_filelist
    try:
        entries = read_filelist(args.filelist, args.data_root)
    except FilelistError as e:
        raise SystemExit(f'test.py: error: {e}')
    if any(e.kind == 'jhmdb' for e in entries) and args.cropSize <= 0:
        raise SystemExit('test.py: error: JHMDB pose propagation needs --cropSize > 0 (the release used 320)')

    encoder = build_encoder(args, device)
    os.makedirs(args.save_path, exist_ok=True)

    from tqdm import tqdm
    writer = AsyncWriter()
    try:
        for entry in entries:
            reset_peak_memory(device)
            t0 = time.time()
            run = run_jhmdb_video if entry.kind == 'jhmdb' else run_davis_video
            with tqdm(desc=f'[{entry.index}] {entry.name}', unit='frame', leave=False,
                      mininterval=1.0, file=sys.stderr) as bar:
                try:
                    n = run(entry, args, encoder, device, writer, bar)
                except FilelistError as e:
                    raise SystemExit(f'test.py: error: line {entry.line_no}: {e}')
                writer.wait()
            dt = time.time() - t0
            print(f'video {entry.index} {entry.name}: {n} frames, {n / dt:.2f} frames/s, '
                  f'peak {"GPU" if device.type == "cuda" else "RSS"} memory '
                  f'{peak_memory_bytes(device) / 2 ** 20:.0f} MB', flush=True)
    finally:
        writer.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
