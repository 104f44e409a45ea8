"""Build the real clip the demo runs on (assets/<seq>/) from a DAVIS-layout folder.

    python scripts/make_demo_clip.py --davis ../shared/data/davis-dev --seq hockey --frames 40

Writes ``assets/<seq>/<seq>.mp4`` (the first --frames frames, H.264 at the frames' size), the ground truth of
those frames as ``assets/<seq>/Annotations/480p/<seq>/NNNNN.png`` (palette PNGs as in DAVIS) and
``assets/<seq>/ImageSets/2017/val.txt``, so that the folder is a one-sequence DAVIS root for the scorer
(``eval/evaluate_davis.py --davis_path assets/<seq>``). DAVIS is CC BY-NC 4.0 (assets/README).
"""
import argparse
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: scripts/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

from crw.data.images import list_frames, read_image  # noqa: E402
from crw.data.video_io import VideoWriter  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402


def main(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--davis', required=True, help='DAVIS-layout folder (JPEGImages/480p, Annotations/480p)')
    p.add_argument('--seq', default='hockey')
    p.add_argument('--frames', type=int, default=40)
    p.add_argument('--fps', type=float, default=24, help='DAVIS videos are 24 frames/s')
    p.add_argument('--out', default=None, help='default: assets/<seq>')
    a = p.parse_args(argv)
    out = a.out or os.path.join(ROOT, 'assets', a.seq)
    frames = list_frames(os.path.join(a.davis, 'JPEGImages', '480p', a.seq))[:a.frames]
    masks = list_frames(os.path.join(a.davis, 'Annotations', '480p', a.seq), extensions=('.png',))[:a.frames]
    if len(frames) < a.frames or len(masks) < a.frames:
        sys.exit(f'make_demo_clip.py: error: {a.seq} has fewer than {a.frames} annotated frames')
    shutil.rmtree(out, ignore_errors=True)
    ann = os.path.join(out, 'Annotations', '480p', a.seq)
    os.makedirs(ann)
    os.makedirs(os.path.join(out, 'ImageSets', '2017'))
    with VideoWriter(os.path.join(out, a.seq + '.mp4'), a.fps) as w:
        for f in frames:
            w.write(read_image(f))
    for m in masks:
        shutil.copyfile(m, os.path.join(ann, os.path.basename(m)))
    with open(os.path.join(out, 'ImageSets', '2017', 'val.txt'), 'w') as f:
        f.write(a.seq + '\n')
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print(f'wrote {out} ({a.frames} frames, {size / 2 ** 20:.1f} MB)')


if __name__ == '__main__':
    main()
