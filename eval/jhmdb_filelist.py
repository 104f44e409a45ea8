#!/usr/bin/env python
"""Write the JHMDB test filelist for test.py and eval/eval_pck.py from a JHMDB download.

    python eval/jhmdb_filelist.py --jhmdb /path/to/JHMDB --split 1 --out jhmdb_test_split1.txt

Expected layout (JHMDB's frames, joint positions and split files unpacked into one folder):

    <jhmdb>/Rename_Images/<action>/<video>/00001.png ...         frames
    <jhmdb>/joint_positions/<action>/<video>/joint_positions.mat  pos_img [2, 15, T], 1-based pixels
    <jhmdb>/splits/<action>_test_split<k>.txt                     split files (--splits if elsewhere)

Each split file has lines ``<video>.avi <1|2>`` (1 = training, 2 = testing). The release evaluated the test
videos (2) of split 1. One output line per video: ``<frames folder> <joint_positions.mat>`` (absolute
paths), actions in alphabetical order, videos in their split file's order.
"""
import glob
import os
import re
import sys

if __name__ == '__main__' and not __package__:  # run by path: eval/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crw.data.inference.filelists import write_filelist  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.errors import CRWError, report  # noqa: E402

SETS = {'train': '1', 'test': '2'}


def read_split(path):
    """[(video name without extension, '1' | '2')] of one split file."""
    out = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ('1', '2'):
                raise CRWError(f'{path}:{line_no}: expected "<video>.avi <1|2>", got {line.strip()!r}')
            out.append((os.path.splitext(parts[0])[0], parts[1]))
    return out


def build(jhmdb, split=1, subset='test', splits_dir=None):
    """Filelist lines for ``subset`` ('test', 'train' or 'all') of ``split``. Raises CRWError when a listed
    video has no frames folder or joint file."""
    jhmdb = os.path.abspath(jhmdb)
    splits_dir = os.path.abspath(splits_dir or os.path.join(jhmdb, 'splits'))
    files = sorted(glob.glob(os.path.join(splits_dir, f'*_test_split{split}.txt')))
    if not files:
        raise CRWError(f'no *_test_split{split}.txt in {splits_dir} (put JHMDB\'s split files there, or pass --splits)')
    lines = []
    for path in files:
        action = re.sub(rf'_test_split{split}\.txt$', '', os.path.basename(path))
        for video, which in read_split(path):
            if subset != 'all' and which != SETS[subset]:
                continue
            frames = os.path.join(jhmdb, 'Rename_Images', action, video)
            joints = os.path.join(jhmdb, 'joint_positions', action, video, 'joint_positions.mat')
            if not os.path.isdir(frames):
                raise CRWError(f'{path}: {video}: no frames folder {frames}')
            if not os.path.isfile(joints):
                raise CRWError(f'{path}: {video}: no joint file {joints}')
            lines.append(f'{frames} {joints}')
    if not lines:
        raise CRWError(f'{splits_dir}: split {split} lists no {subset} videos')
    return lines


def get_args_parser():
    p = OneLineParser(description='JHMDB filelist ("<frames folder> <joint_positions.mat>" lines)')
    p.add_argument('--jhmdb', required=True, help='folder holding Rename_Images/, joint_positions/ and splits/')
    p.add_argument('--split', type=int, default=1, choices=(1, 2, 3), help='JHMDB split (the release used 1)')
    p.add_argument('--set', dest='subset', default='test', choices=('test', 'train', 'all'),
                   help='which videos of the split (the release evaluated test)')
    p.add_argument('--splits', default=None, help='folder of the split files (default: <jhmdb>/splits)')
    p.add_argument('--out', required=True, help='filelist to write')
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        lines = build(args.jhmdb, args.split, args.subset, args.splits)
        write_filelist(args.out, lines)
    except CRWError as e:
        return report('jhmdb_filelist.py', e)
    print(f'{len(lines)} videos written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
