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

Your own video (README "Your own video"): ``--video clip.mp4 --mask first.png`` (or a folder of frames, a
folder of masks named like their frames) writes ``{save}/clip/<frame>.png`` in the DAVIS result format and
``{save}/clip_overlay.mp4`` (``propagation.video.propagate_user_video``). Both paths propagate with
``propagation.video.VideoPropagator``.

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
import os
import random
import sys
import time
import warnings

import numpy as np
import torch
from tqdm import tqdm

from data.images import list_frames, save_grey_png
from data.jhmdb import draw_pose, joint_heatmaps, load_joints, pose_from_soft_map, pose_image
from data.outputs import AsyncWriter, blend_labels, write_mask_and_blend
from data.vos import VideoFrames, VOSVideo, frame_size, read_filelist
from model import PRETRAINED_TYPES
from propagation import STRIDE, Protocol, VideoPropagator, encode_frames, load_encoder, make_propagator
from propagation.finetune import VideoAdapter
from propagation.video import FEATURE_BATCH, propagate_user_video
from utils.arguments import test_args
from utils.errors import CRWError, report
from utils.misc import atomic_write, git_revision, peak_memory_bytes, reset_peak_memory, writable_folder
from utils.visualize import PropagationViewer

# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------

def build_encoder(args, device):
    """The encoder for ``args`` (layer4 removed by default), weights from --resume."""
    if not args.resume and args.model_type not in PRETRAINED_TYPES:
        warnings.warn(f'no --resume: the {args.model_type} encoder has random weights (seed {args.manualSeed})',
                      stacklevel=2)
    encoder = load_encoder(args.resume or None, device, args.model_type, args.remove_layers, args.imagenet_weights,
                           allow_partial=args.allow_partial, trust=args.trust_checkpoint)
    print(f'encoder: {args.model_type}, {sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M params')
    return encoder


def build_adapter(args, device):
    """The test-time adaptation for --finetune N > 0 (its settings printed), else None."""
    if args.finetune <= 0:
        return None
    adapter = VideoAdapter.from_args(args, device)
    print(adapter.describe())
    return adapter


# ----------------------------------------------------------------------------------------------------------
# One video
# ----------------------------------------------------------------------------------------------------------

def _loader(frames, args, device):
    workers = max(0, int(args.workers))
    return torch.utils.data.DataLoader(
        frames, batch_size=FEATURE_BATCH, shuffle=False, num_workers=workers,
        pin_memory=torch.device(device).type == 'cuda', prefetch_factor=2 if workers else None,
        persistent_workers=False)


def propagate_vos_video(video, args, encoder, device, out_size, progress=None, viewer=None):
    """Propagate frame 0's labels through a VOSVideo (and, with a ``PropagationViewer``, show them in visdom).
    Yields (t, label ids [out_size] uint8, display image [H, W, 3] uint8) per frame; frame 0's ids are its
    annotation brought to out_size."""
    entry = video.entry
    if progress is not None:
        progress.reset(total=len(video))
    if video.labels.values.max() > 255:
        raise CRWError(f'{entry.target}: label ids above 255 cannot be written as 8-bit PNGs')
    vp = VideoPropagator(encoder, Protocol.from_args(args), device, l2=not args.no_l2, norm_mask=args.norm_mask,
                         reference=args.dense)
    for imgs, disp, ts in _loader(video.frames, args, device):
        ts = ts.tolist()
        masks = [video.mask if t == 0 else None for t in ts]
        for b, (t, ids, d) in enumerate(zip(ts, vp.step_batch(imgs, masks, out_size), disp)):
            d = d.numpy()
            if viewer is not None:
                viewer.blend(entry.index, entry.name, t, blend_labels(d, ids))
                viewer.features(entry.index, entry.name, t, vp.last_features[b], ids.shape)
            yield t, ids, d
        if progress is not None:
            progress.update(len(ts))


def run_davis_video(entry, args, encoder, device, writer, progress=None, viewer=None):
    """DAVIS: ``{save}/{i}_{t}_mask.png`` and ``_blend.jpg`` at the frame size (the release's layout, read by
    eval/convert_davis.py). Returns #frames."""
    video = VOSVideo(entry, args.cropSize)
    prefix = os.path.join(args.save_path, str(entry.index))
    for t, ids, disp in propagate_vos_video(video, args, encoder, device, video.size, progress, viewer):
        writer.submit(write_mask_and_blend, f'{prefix}_{t}', ids, disp)
    return len(video)


def run_vip_video(entry, args, encoder, device, writer, progress=None, viewer=None):
    """VIP: label ids written as ``{save}/<video>/<frame>.png`` (greyscale) at the annotation's resolution,
    the layout VIP scorers read; no blends (they would sit among the scored files). Returns #frames."""
    video = VOSVideo(entry, args.cropSize)
    out_dir = os.path.join(args.save_path, entry.name)
    os.makedirs(out_dir, exist_ok=True)
    for t, ids, _ in propagate_vos_video(video, args, encoder, device, video.mask.shape[:2], progress, viewer):
        stem = os.path.splitext(os.path.basename(video.paths[t]))[0]
        writer.submit(save_grey_png, os.path.join(out_dir, stem + '.png'), ids)
    return len(video)


def run_jhmdb_video(entry, args, encoder, device, writer, progress=None, viewer=None):
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
            if viewer is not None:
                viewer.blend(entry.index, entry.name, t, pose_image(disp[b].numpy(), xy * STRIDE))
                viewer.features(entry.index, entry.name, t, feats[b], disp[b].shape[:2])
            if progress is not None:
                progress.update(1)
    with atomic_write(prefix + '.dat') as f:     # the release's format: a pickled ndarray (ndarray.dump)
        np.stack(coords, axis=-1).dump(f)
    return len(paths)


def run_user_video(args, device):
    """--video/--mask: your own video, through propagation.video.propagate_user_video (with --finetune, by an
    encoder adapted to the video's frames first)."""
    if args.finetune > 0 and not os.path.isdir(args.video):
        raise CRWError(f'--finetune with --video {args.video}: adaptation samples clips from a folder of frames; '
                       'extract the frames to a folder (e.g. ffmpeg -i clip.mp4 frames/%05d.jpg) and pass it')
    encoder = build_encoder(args, device)
    adapter = build_adapter(args, device)
    if adapter is not None:
        encoder, info = adapter.adapt(encoder, args.video)
        print(adapter.summary(info), flush=True)
    reset_peak_memory(device)
    t0 = time.time()
    with tqdm(desc=os.path.basename(os.path.normpath(args.video)), unit='frame', mininterval=1.0, delay=1.0,
              file=sys.stderr) as bar:
        n, first = propagate_user_video(
            encoder, args.video, args.mask, args.save_path, Protocol.from_args(args), device, crop_size=args.cropSize,
            max_side=args.max_side, l2=not args.no_l2, norm_mask=args.norm_mask, reference=args.dense,
            save_blend=args.save_blend, workers=args.workers, progress=bar)
    dt = time.time() - t0
    print(f'{args.video}: {n} frames from frame {first}, {n / dt:.2f} frames/s, peak '
          f'{"GPU" if device.type == "cuda" else "RSS"} memory {peak_memory_bytes(device) / 2 ** 20:.0f} MB; '
          f'masks and overlay video in {args.save_path}', flush=True)


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

    random.seed(args.manualSeed)
    np.random.seed(args.manualSeed % 2 ** 32)
    torch.manual_seed(args.manualSeed)
    if device.type == 'cuda':
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    if args.video is not None:
        run_user_video(args, device)
        return

    entries = read_filelist(args.filelist, args.data_root, vip=args.vip)
    vip_names = [e.name for e in entries if e.kind == 'vip']
    if len(set(vip_names)) < len(vip_names):
        raise CRWError(f'{args.filelist}: two VIP videos have the same folder name; their outputs '
                       '(<save>/<video>/<frame>.png) would overwrite each other')
    if any(e.kind == 'jhmdb' for e in entries) and args.cropSize <= 0:
        raise CRWError('JHMDB pose propagation needs --cropSize > 0 (the release used 320)')
    for entry in entries:   # list every video's frames now: a bad folder fails before any video is computed
        try:
            list_frames(entry.frames_dir)
        except CRWError as e:
            raise CRWError(f'{args.filelist}:{entry.line_no}: {e}') from e
    writable_folder(args.save_path, '--save-path')

    encoder = build_encoder(args, device)
    adapter = build_adapter(args, device)

    viewer = None
    if args.visdom or args.pca_vis:  # without a server: one warning, results are still written
        viewer = PropagationViewer(args.server, args.port, blend=args.visdom, pca=args.pca_vis) or None
    writer = AsyncWriter()
    try:
        for entry in entries:
            reset_peak_memory(device)
            t0 = time.time()
            run_video = {'jhmdb': run_jhmdb_video, 'vip': run_vip_video}.get(entry.kind, run_davis_video)
            video_encoder, adapted, t_adapt = encoder, '', 0.0
            with tqdm(desc=f'[{entry.index}] {entry.name}', unit='frame', leave=False, delay=1.0,
                      mininterval=1.0, file=sys.stderr) as bar:
                try:
                    if adapter is not None:   # a copy is adapted; the next video starts from `encoder` again
                        video_encoder, info = adapter.adapt(encoder, entry.frames_dir)
                        t_adapt = info['seconds']
                        adapted = ', ' + adapter.summary(info)
                    n = run_video(entry, args, video_encoder, device, writer, bar, viewer)
                except CRWError as e:
                    raise CRWError(f'{args.filelist}:{entry.line_no}: {e}') from e
                writer.wait()
            dt = time.time() - t0 - t_adapt
            print(f'video {entry.index} {entry.name}: {n} frames, {n / dt:.2f} frames/s, '
                  f'peak {"GPU" if device.type == "cuda" else "RSS"} memory '
                  f'{peak_memory_bytes(device) / 2 ** 20:.0f} MB{adapted}', flush=True)
    finally:
        writer.close()
        if viewer is not None:
            viewer.close()


if __name__ == '__main__':
    sys.exit(main())
