#!/usr/bin/env python
"""Write the VIP filelist for test.py from a VIP download.

    python eval/vip_filelist.py --vip /path/to/VIP_Fine --out vip_val.txt

Expected layout (VIP_Fine of the VIP dataset, unpacked):

    <vip>/Images/<video>/<frame>.jpg
    <vip>/Annotations/Category_ids/<video>/<frame>.png     class ids 0..19
    <vip>/lists/val_videos.txt                              one video name a line (--list for another list)

One output line per listed video: ``<vip>/Images/<video> <vip>/Annotations/Category_ids/<video>`` (absolute
paths), in the list's order. test.py recognises the ``Category_ids`` folder and writes the VIP layout that
``eval/eval_vip.py --gt_dir <vip>/Annotations/Category_ids`` scores.
"""
import os
import sys

if __name__ == '__main__' and not __package__:  # run by path: eval/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crw.data.inference.filelists import VIP_ANNOTATIONS, write_filelist  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.errors import CRWError, report  # noqa: E402


def read_video_list(path):
    """Video names of a VIP list: the first field of each non-empty line, path and extension dropped."""
    names = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts:
                names.append(os.path.splitext(os.path.basename(parts[0].rstrip('/')))[0])
    return names


def build(vip, video_list=None):
    """Filelist lines for the videos of ``video_list`` (default <vip>/lists/val_videos.txt). Raises CRWError
    when the list or a video's folders are missing."""
    vip = os.path.abspath(vip)
    video_list = video_list or os.path.join(vip, 'lists', 'val_videos.txt')
    if not os.path.isfile(video_list):
        raise CRWError(f'{video_list}: no such video list (VIP_Fine/lists/val_videos.txt, or pass --list)')
    lines = []
    for name in read_video_list(video_list):
        frames = os.path.join(vip, 'Images', name)
        ann = os.path.join(vip, 'Annotations', VIP_ANNOTATIONS, name)
        for what, folder in (('frames', frames), ('annotations', ann)):
            if not os.path.isdir(folder):
                raise CRWError(f'{video_list}: {name}: no {what} folder {folder}')
        lines.append(f'{frames} {ann}')
    if not lines:
        raise CRWError(f'{video_list}: lists no videos')
    return lines


def get_args_parser():
    p = OneLineParser(description='VIP filelist ("<frames folder> <Category_ids folder>" lines)')
    p.add_argument('--vip', required=True, help='the VIP_Fine folder (Images/, Annotations/Category_ids/, lists/)')
    p.add_argument('--list', default=None, help='video list (default: <vip>/lists/val_videos.txt)')
    p.add_argument('--out', required=True, help='filelist to write')
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        lines = build(args.vip, args.list)
        write_filelist(args.out, lines)
    except CRWError as e:
        return report('vip_filelist.py', e)
    print(f'{len(lines)} videos written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
