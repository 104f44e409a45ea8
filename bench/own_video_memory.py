"""Peak memory and speed of the Python generator API (``propagation.propagate``) on a long 480p video.

    OMP_NUM_THREADS=2 python bench/own_video_memory.py --data ../shared/data/davis-dev [--frames 300]

A davis-dev sequence (854x480) is played forwards and backwards up to --frames frames and encoded to an
H.264 file in a temporary folder; the frames are then decoded one by one (``data.video_io.iter_frames``) and
fed to ``propagate(encoder, frames, first_mask, protocol)``, which yields each frame's label ids; nothing
is kept. README protocol (k 10, L 20, R 12, tau 0.05, native size). Peak memory: the process's peak RSS
(VmHWM) from just before the encoder is loaded; on CUDA, the allocator's peak too. Prints a markdown table
and appends it to bench/RESULTS.md.
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from crw.bench.results import device_name, publish  # noqa: E402
from crw.data.images import list_frames, read_image  # noqa: E402
from crw.data.video_io import VideoWriter, iter_frames  # noqa: E402
from crw.propagation import Protocol, load_encoder, propagate  # noqa: E402
from crw.utils.misc import git_revision, peak_memory_bytes, reset_peak_memory  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'davis-dev'),
                   help='DAVIS-layout folder (480p frames and annotations)')
    p.add_argument('--seq', default='hockey', help='sequence played forwards and backwards')
    p.add_argument('--frames', default=300, type=int, help='length of the video')
    p.add_argument('--resume', default=os.path.join(ROOT, 'pretrained.pth'), help='encoder checkpoint')
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-write', action='store_true', help='print the table without appending it to RESULTS.md')
    return p


def main(argv=None):
    a = get_args_parser().parse_args(argv)
    device = torch.device(a.device)
    paths = list_frames(os.path.join(a.data, 'JPEGImages', '480p', a.seq))
    mask = os.path.join(a.data, 'Annotations', '480p', a.seq, '00000.png')
    order = paths + paths[-2:0:-1]                                   # forwards, then backwards
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, f'{a.seq}_loop.mp4')
        with VideoWriter(video, 24) as w:
            for t in range(a.frames):
                w.write(read_image(order[t % len(order)]))
        reset_peak_memory(device)
        base = peak_memory_bytes('cpu')
        encoder = load_encoder(a.resume, device)
        protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
        frames = (f for _, f in iter_frames(video))
        n, size, t0 = 0, None, time.time()
        for t, ids in propagate(encoder, frames, mask, protocol, device):
            n += 1
            size = ids.shape
        dt = time.time() - t0
    rss = peak_memory_bytes('cpu') / 2 ** 30
    gpu = f'{peak_memory_bytes(device) / 2 ** 30:.2f}' if device.type == 'cuda' else '-'
    load = os.getloadavg()[0]
    table = '\n'.join([
        f'\n### own_video_memory — {time.strftime("%Y-%m-%d %H:%M")} — {device_name(device)}, torch threads '
        f'{torch.get_num_threads()}, torch {torch.__version__}, git {git_revision()}',
        f'`python bench/own_video_memory.py --seq {a.seq} --frames {a.frames}` — the generator API on a '
        f'{size[1]}x{size[0]} H.264 video decoded frame by frame, README protocol, native size; load average '
        f'{load:.1f} at the end (shared machine)\n',
        '| frames | seconds | frames/s | peak RSS (GB) | RSS before the encoder (GB) | peak GPU (GB) |',
        '|---:|---:|---:|---:|---:|---:|',
        f'| {n} | {dt:.0f} | {n / dt:.2f} | {rss:.2f} | {base / 2 ** 30:.2f} | {gpu} |',
    ])
    publish(table, write=not a.no_write)
    return 0


if __name__ == '__main__':
    sys.exit(main())
