#!/usr/bin/env python
"""Turn test.py's label maps into DAVIS result PNGs (the release's eval/convert_davis.py).

    python eval/convert_davis.py --in_folder /save/path/ --out_folder /converted/path --dataset /davis/path/

Sequence i is line i of ``{dataset}/ImageSets/2017/val.txt`` (the order of eval/davis_vallist.txt, so video i
of test.py's filelist). For every frame t of ``{dataset}/JPEGImages/480p/<seq>``, ``{in}/{i}_{t}_mask.png``
(per-pixel object ids, at the size test.py ran at) is resized with nearest neighbour to the size of the
sequence's first annotation and written to ``{out}/<seq>/{t:05d}.png`` as a DAVIS-palette PNG (each file
written atomically). That is the layout and format the official davis2017-evaluation scorer and
eval/evaluate_davis.py read.

Input masks may be greyscale or indexed (value = object id) or, like the release's coloured masks, RGB in the
DAVIS palette. Every input is checked before anything is written: a missing frame is a one-line error that
names the file.
"""
import argparse
import concurrent.futures
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from data.images import colour_codes, image_size, palette_ids, read_label_image, resize_nearest, save_indexed_png  # noqa: E402
from eval.davis_io import annotation_frames, as_uint8_ids, read_split, sequence_frames  # noqa: E402
from utils.errors import CRWError, report  # noqa: E402
from utils.misc import default_workers  # noqa: E402


def read_mask(path):
    """[H, W] uint8 object ids of one test.py mask (greyscale/indexed values, or DAVIS-palette colours)."""
    a = read_label_image(path)
    if a.ndim == 3:
        ids = palette_ids(colour_codes(a))
        if ids is None:
            raise CRWError(f'{path}: colours outside the DAVIS palette; expected an indexed label map or '
                           'DAVIS-palette colours')
        a = ids
    return as_uint8_ids(a, path)


def mask_path(in_folder, video, frame):
    return os.path.join(in_folder, f'{video}_{frame}_mask.png')


def plan(in_folder, dataset, set_name='val', resolution='480p'):
    """[(video index, sequence, number of frames)] after checking that every input mask exists."""
    jobs = []
    sequences, _ = read_split(dataset, set_name)
    for i, seq in enumerate(sequences):
        n = len(sequence_frames(dataset, seq, resolution))
        for t in range(n):
            p = mask_path(in_folder, i, t)
            if not os.path.isfile(p):
                raise CRWError(f'missing {p} (video {i} = {seq}, frame {t} of {n}): '
                               'test.py output is incomplete')
        jobs.append((i, seq, n))
    return jobs


def convert_sequence(in_folder, out_folder, dataset, video, sequence, num_frames, resolution='480p'):
    """Convert one sequence; returns the number of frames written."""
    size = image_size(annotation_frames(dataset, sequence, resolution)[0][1])
    seq_out = os.path.join(out_folder, sequence)
    os.makedirs(seq_out, exist_ok=True)
    for t in range(num_frames):
        src = mask_path(in_folder, video, t)
        if not os.path.isfile(src):
            raise CRWError(f'missing {src} (video {video} = {sequence}, frame {t}): test.py output is incomplete')
        save_indexed_png(os.path.join(seq_out, f'{t:05d}.png'), resize_nearest(read_mask(src), size))
    return num_frames


def convert(in_folder, out_folder, dataset, set_name='val', resolution='480p', workers=None):
    """Convert every sequence of the split; returns [(sequence, frames written)]."""
    if not os.path.isdir(in_folder):
        raise CRWError(f'--in_folder {in_folder} does not exist (run test.py first)')
    if not os.path.isdir(dataset):
        raise CRWError(f'--dataset {dataset} does not exist')
    jobs = plan(in_folder, dataset, set_name, resolution)
    os.makedirs(out_folder, exist_ok=True)
    workers = default_workers() if workers is None else workers
    args = [(in_folder, out_folder, dataset, i, seq, n, resolution) for i, seq, n in jobs]
    if workers <= 1 or len(jobs) <= 1:
        counts = [convert_sequence(*a) for a in args]
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as ex:
            counts = list(ex.map(convert_sequence, *zip(*args)))
    return [(seq, c) for (_, seq, _), c in zip(jobs, counts)]


def get_args_parser():
    p = argparse.ArgumentParser(description="Convert test.py's {i}_{t}_mask.png label maps to DAVIS result PNGs.")
    p.add_argument('-i', '--in_folder', '--in-folder', dest='in_folder', required=True,
                   help='test.py --save-path (holds {i}_{t}_mask.png)')
    p.add_argument('-o', '--out_folder', '--out-folder', dest='out_folder', required=True,
                   help='where <seq>/<frame>.png are written')
    p.add_argument('-d', '--dataset', default=os.environ.get('DAVIS_ROOT'),
                   help='DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/; default: $DAVIS_ROOT)')
    p.add_argument('--set', default='val', help='split whose ImageSets/2017/<set>.txt orders the videos (val)')
    p.add_argument('--resolution', default='480p', help='resolution folder (default 480p)')
    p.add_argument('--workers', type=int, default=None, help='processes over sequences (default: cores, at most 8)')
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        if not args.dataset:
            raise CRWError('no DAVIS folder: pass --dataset or set DAVIS_ROOT')
        done = convert(args.in_folder, args.out_folder, args.dataset, args.set, args.resolution, args.workers)
    except CRWError as e:
        return report('convert_davis.py', e)
    print(f'converted {len(done)} sequences ({sum(c for _, c in done)} frames) into {args.out_folder}')
    return 0


if __name__ == '__main__':
    # run through the package module so that worker processes pickle eval.convert_davis functions
    from eval.convert_davis import main as _main
    sys.exit(_main())
