#!/usr/bin/env python
"""Turn test.py's label maps into DAVIS result PNGs (the release's eval/convert_davis.py, SPEC §5-6).

    python eval/convert_davis.py --in_folder /save/path/ --out_folder /converted/path --dataset /davis/path/

Sequence i is line i of ``{dataset}/ImageSets/2017/val.txt`` (the order of eval/davis_vallist.txt, so video i
of test.py's filelist). For every frame t of ``{dataset}/JPEGImages/480p/<seq>``, ``{in}/{i}_{t}_mask.png``
(per-pixel object ids, at the size test.py ran at) is resized with nearest neighbour (OpenCV, as the release)
to the size of ``{dataset}/Annotations/480p/<seq>/00000.png`` and written to ``{out}/<seq>/{t:05d}.png`` as a
DAVIS-palette PNG (each file written atomically). That is the layout and format the official
davis2017-evaluation scorer and eval/evaluate_davis.py read.

Input masks may be greyscale or indexed (value = object id) or, like the release's coloured masks, RGB in the
DAVIS palette. Every input is checked before anything is written: a missing frame is a one-line error that
names the file.
"""
import argparse
import concurrent.futures
import glob
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from utils.palette import davis_palette, save_indexed_png  # noqa: E402

IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


class ConvertError(Exception):
    """A problem with the inputs, reported as one line."""


def read_sequences(dataset, set_name='val'):
    path = os.path.join(dataset, 'ImageSets', '2017', f'{set_name}.txt')
    if not os.path.isfile(path):
        raise ConvertError(f'{path} not found: --dataset must be a DAVIS-2017 root (ImageSets/2017/{set_name}.txt)')
    with open(path) as f:
        names = [line.strip() for line in f]
    names = [n for n in names if n]
    if not names:
        raise ConvertError(f'{path} lists no sequences')
    return names


def count_frames(dataset, sequence, resolution='480p'):
    """Number of frames of a sequence: the images in JPEGImages/<res>/<seq>."""
    folder = os.path.join(dataset, 'JPEGImages', resolution, sequence)
    if not os.path.isdir(folder):
        raise ConvertError(f'{folder} not found (frames of sequence {sequence})')
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS)]
    if not names:
        raise ConvertError(f'{folder} holds no frames')
    return len(names)


def ground_truth_size(dataset, sequence, resolution='480p'):
    """(height, width) of the sequence's first annotation."""
    folder = os.path.join(dataset, 'Annotations', resolution, sequence)
    first = os.path.join(folder, '00000.png')
    if not os.path.isfile(first):
        pngs = sorted(glob.glob(os.path.join(folder, '*.png')))
        if not pngs:
            raise ConvertError(f'no ground-truth annotation in {folder}')
        first = pngs[0]
    with Image.open(first) as im:
        return im.size[1], im.size[0]


_PALETTE = davis_palette().astype(np.int64)
_COLOUR_TO_ID = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in reversed(list(enumerate(_PALETTE)))}


def read_mask(path):
    """[H, W] uint8 object ids of one test.py mask (greyscale/indexed values, or DAVIS-palette colours)."""
    with Image.open(path) as im:
        mode = im.mode
        if mode in ('RGB', 'RGBA'):
            rgb = np.asarray(im.convert('RGB')).astype(np.int64)
            codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            uniq, inv = np.unique(codes, return_inverse=True)
            ids = []
            for c in uniq:
                if int(c) not in _COLOUR_TO_ID:
                    raise ConvertError(f'{path}: colour #{int(c):06x} is not in the DAVIS palette')
                ids.append(_COLOUR_TO_ID[int(c)])
            return np.asarray(ids, dtype=np.uint8)[inv.reshape(codes.shape)]
        a = np.asarray(im.convert('L') if mode == '1' else im)
    if a.ndim != 2:
        raise ConvertError(f'{path}: expected a single-channel label map, got mode {mode}')
    if a.min(initial=0) < 0 or a.max(initial=0) > 255:
        raise ConvertError(f'{path}: label values must lie in 0..255')
    return a.astype(np.uint8)


def resize_nearest(labels, height, width):
    """Nearest-neighbour resize of a label map to height x width (OpenCV INTER_NEAREST, as the release)."""
    if labels.shape == (height, width):
        return labels
    import cv2
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def mask_path(in_folder, video, frame):
    return os.path.join(in_folder, f'{video}_{frame}_mask.png')


def plan(in_folder, dataset, set_name='val', resolution='480p'):
    """[(video index, sequence, number of frames)] after checking that every input mask exists."""
    jobs = []
    for i, seq in enumerate(read_sequences(dataset, set_name)):
        n = count_frames(dataset, seq, resolution)
        for t in range(n):
            p = mask_path(in_folder, i, t)
            if not os.path.isfile(p):
                raise ConvertError(f'missing {p} (video {i} = {seq}, frame {t} of {n}): '
                                   'test.py output is incomplete')
        jobs.append((i, seq, n))
    return jobs


def convert_sequence(in_folder, out_folder, dataset, video, sequence, num_frames, resolution='480p'):
    """Convert one sequence; returns the number of frames written."""
    height, width = ground_truth_size(dataset, sequence, resolution)
    seq_out = os.path.join(out_folder, sequence)
    os.makedirs(seq_out, exist_ok=True)
    for t in range(num_frames):
        src = mask_path(in_folder, video, t)
        if not os.path.isfile(src):
            raise ConvertError(f'missing {src} (video {video} = {sequence}, frame {t}): test.py output is incomplete')
        labels = resize_nearest(read_mask(src), height, width)
        save_indexed_png(os.path.join(seq_out, f'{t:05d}.png'), labels)
    return num_frames


def _worker_init():
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def convert(in_folder, out_folder, dataset, set_name='val', resolution='480p', workers=None):
    """Convert every sequence of the split; returns [(sequence, frames written)]."""
    if not os.path.isdir(in_folder):
        raise ConvertError(f'--in_folder {in_folder} does not exist (run test.py first)')
    if not os.path.isdir(dataset):
        raise ConvertError(f'--dataset {dataset} does not exist')
    jobs = plan(in_folder, dataset, set_name, resolution)
    os.makedirs(out_folder, exist_ok=True)
    if workers is None:
        try:
            workers = min(8, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover
            workers = min(8, os.cpu_count() or 1)
    args = [(in_folder, out_folder, dataset, i, seq, n, resolution) for i, seq, n in jobs]
    if workers <= 1 or len(jobs) <= 1:
        counts = [convert_sequence(*a) for a in args]
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                                    initializer=_worker_init) as ex:
            counts = list(ex.map(convert_sequence, *zip(*args)))
    return [(seq, c) for (_, seq, _), c in zip(jobs, counts)]


def build_parser():
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
    args = build_parser().parse_args(argv)
    try:
        if not args.dataset:
            raise ConvertError('no DAVIS folder: pass --dataset or set DAVIS_ROOT')
        done = convert(args.in_folder, args.out_folder, args.dataset, args.set, args.resolution, args.workers)
    except ConvertError as e:
        print(f'convert_davis.py: error: {e}', file=sys.stderr)
        return 1
    print(f'converted {len(done)} sequences ({sum(c for _, c in done)} frames) into {args.out_folder}')
    return 0


if __name__ == '__main__':
    # run through the package module so that worker processes pickle eval.convert_davis functions
    from eval.convert_davis import main as _main
    sys.exit(_main())
