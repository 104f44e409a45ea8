"""Throughput of the training input pipeline: dataset clips/s (decode + per-frame crop) and BatchAugment.

    python bench/data_pipeline.py                  # synthetic Kinetics-like videos in a temporary folder
    python bench/data_pipeline.py --data-path X --workers 8 --clips 400 --device cuda

Synthetic videos: 256x340, 30 fps, 10 s, H.264 (x264 preset medium, crf 23: CABAC and B-frames like the
usual Kinetics downloads), a texture panning across the frame.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crw.data.training.gpu_augment import BatchAugment  # noqa: E402
from crw.data.training.sampler import build_train_sampler  # noqa: E402
from crw.data.synthetic import smooth_texture  # noqa: E402
from crw.data.training.video_dataset import build_train_dataset  # noqa: E402
from crw.utils.arguments import train_args  # noqa: E402


def make_videos(root, n=8, seconds=10, fps=30, height=256, width=340):
    import av
    rng = np.random.default_rng(0)
    for v in range(n):
        path = os.path.join(root, 'train_256', f'class{v % 2}', f'video{v}.mp4')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        bg = smooth_texture(rng, height + 64, width + 256, cell=8)
        with av.open(path, mode='w') as c:
            s = c.add_stream('libx264', rate=fps)
            s.options = {'crf': '23', 'preset': 'medium'}
            s.width, s.height, s.pix_fmt = width, height, 'yuv420p'
            for t in range(seconds * fps):
                dx, dy = (t * 2) % 256, int(32 + 31 * np.sin(t / 20))
                f = np.ascontiguousarray(bg[dy:dy + height, dx:dx + width])
                for p in s.encode(av.VideoFrame.from_ndarray(f, format='rgb24')):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-path', default='')
    p.add_argument('--workers', type=int, default=0, help='DataLoader workers (0: in the main process)')
    p.add_argument('--clips', type=int, default=64)
    p.add_argument('--clip-len', type=int, default=4)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--frame-aug', default='grid')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args(argv)

    tmp = None
    data_path = a.data_path
    if not data_path:
        tmp = tempfile.TemporaryDirectory()
        t0 = time.time()
        data_path = make_videos(tmp.name)
        print(f'wrote 8 synthetic videos in {time.time() - t0:.1f} s')
    args = train_args(['--data-path', data_path, '--clip-len', str(a.clip_len), '--workers', str(max(a.workers, 1)),
                       '--frame-aug', a.frame_aug, '--batch-size', str(a.batch_size)])
    ds = build_train_dataset(args)
    sampler = build_train_sampler(ds, args)
    sampler.set_epoch(0)
    items = list(sampler)
    while len(items) < a.clips:
        items = items + items
    items = items[:a.clips]
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, sampler=items, num_workers=a.workers,
                                         pin_memory=a.device.startswith('cuda'))
    t0 = time.time()
    batches = [b for b in loader]
    dt = time.time() - t0
    print(f'dataset: {a.clips} clips of {a.clip_len} frames in {dt:.2f} s = {a.clips / dt:.1f} clips/s '
          f'with {a.workers} workers (decode + per-frame crop/resize)')
    aug = BatchAugment(args)
    dev = torch.device(a.device)
    x = batches[0].to(dev)
    for k in range(3):
        aug(x, k)
    if dev.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.time()
    reps = 20
    for k in range(reps):
        out = aug(x, k)
    if dev.type == 'cuda':
        torch.cuda.synchronize()
    dt = (time.time() - t0) / reps
    print(f'BatchAugment({a.frame_aug!r}) on {dev}: batch {tuple(x.shape)} → {tuple(out.shape)} in {dt * 1e3:.1f} ms '
          f'= {x.shape[0] / dt:.0f} clips/s')
    if tmp is not None:
        tmp.cleanup()


if __name__ == '__main__':
    main()
