#!/usr/bin/env python
"""Turn test.py's label maps into DAVIS result PNGs (the release's eval/convert_davis.py).

    python eval/convert_davis.py --in_folder /save/path/ --out_folder /converted/path --dataset /davis/path/

Each sequence of ``{dataset}/ImageSets/2017/val.txt`` is matched by name with its test.py video i through
test.py's record ``{in}/.crw_outputs.json`` (``--by-order``: sequence i is video i, the release's rule). For
every frame t of ``JPEGImages/480p/<seq>``, ``{in}/{i}_{t}_mask.png`` is resized with nearest neighbour to the
size of the sequence's first annotation and written atomically to ``{out}/<seq>/{t:05d}.png`` (DAVIS palette),
as evaluate_davis.py and the official scorer read them. Mask formats, told apart per sequence
(``detect_format``) or forced by ``--mask-format``: ``ids`` (single-channel), ``bgr`` (DAVIS colours with red
and blue swapped: the release's test.py), ``rgb`` (DAVIS colours), ``grey`` (R = G = B = id). Every input is
checked before anything is written; ``--out_folder`` is claimed like test.py's ``--save-path``.
"""
import concurrent.futures
import os
import shlex
import sys

import numpy as np

if __name__ == '__main__' and not __package__:  # run by path: eval/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crw.data.images import image_size  # noqa: E402
from crw.data.labels import (MaskReader, as_uint8_ids, colour_codes, decode_colours, load_label_image,  # noqa: E402
                         resize_nearest, save_indexed_png)
from crw.eval.davis_io import annotation_frames, read_split, sequence_frames  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.errors import CRWError, report  # noqa: E402
from crw.utils.misc import default_workers  # noqa: E402
from crw.utils.output_folders import MANIFEST, Inputs, OutputClaim, Plan, find_run  # noqa: E402

SCORE_FILES = (r'global_results-.*\.csv', r'per-sequence_results-.*\.csv', r'\.scores-.*\.json')  # evaluate_davis.py

MASK_FORMATS = {
    'ids': "single-channel label ids (this project's test.py)",
    'bgr': "RGB DAVIS colours with red and blue swapped (the release's test.py)",
    'rgb': 'RGB DAVIS colours',
    'grey': "RGB grey levels R = G = B = id (the release's test.py, greyscale annotations)",
}
RGB_FORMATS = ('bgr', 'rgb', 'grey')   # data.labels.decode_colours' encodings, in the order of preference when
                                       # candidates give the same ids


def read_mask(path, fmt='ids'):
    """[H, W] uint8 object ids of one test.py mask in format ``fmt`` (see ``MASK_FORMATS``)."""
    stored = load_label_image(path)
    if stored.is_colour == (fmt == 'ids'):
        kind = 'an RGB' if stored.is_colour else 'a single-channel'
        raise CRWError(f'{path} is {kind} PNG, unlike the {MASK_FORMATS[fmt]} of the other masks of its sequence')
    ids = stored.values
    if stored.is_colour:
        ids = decode_colours(ids, fmt)
        if ids is None:
            raise CRWError(f'{path}: colours that are not {MASK_FORMATS[fmt]}, the format of its sequence')
    return as_uint8_ids(ids, path)


def _colour_examples(colours, n=3):
    return ', '.join('#%02x%02x%02x' % tuple(int(v) for v in c) for c in colours[:n])


def detect_format(paths, gt_path, forced='auto'):
    """(format, how) for the masks ``paths`` (frame 0 first) of one sequence whose first ground-truth
    annotation is ``gt_path``.

    Single-channel masks are 'ids'. For RGB masks a format is a candidate when it decodes every colour of the
    masks into ids of that annotation; one candidate, or several giving the same ids, is taken; else frame 0's
    mask (the ground truth in both implementations) picks the one agreeing with it on strictly the most pixels.
    Raises CRWError when no format fits or on a tie."""
    first = load_label_image(paths[0])
    if forced != 'auto':
        return forced, 'forced by --mask-format'
    if not first.is_colour:
        return 'ids', 'single-channel'
    first = first.values
    colours = []
    for p in paths:
        a = load_label_image(p)
        if a.is_colour:   # a single-channel one among them is refused when it is converted
            colours.append(np.unique(colour_codes(a.values)))
    codes = np.unique(np.concatenate(colours))
    colours = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], -1).astype(np.uint8)   # [n, 3]
    gt_ids = MaskReader().read(gt_path)
    gt_values = np.unique(gt_ids)
    decoded = {f: decode_colours(colours, f) for f in RGB_FORMATS}
    fits = {f: d for f, d in decoded.items() if d is not None}
    if not fits:
        raise CRWError(f'{os.path.dirname(paths[0]) or "."}: the masks of {os.path.basename(paths[0])}... hold '
                       f'colours ({_colour_examples(colours)}) that are neither DAVIS-palette colours (RGB, or the '
                       "release's swapped BGR) nor grey ids")
    cands = {f: d for f, d in fits.items() if np.isin(d, gt_values).all()}
    if not cands:
        raise CRWError(f'{paths[0]}: its colours decode to no ids of the ground truth {gt_path} in any mask format '
                       f'({", ".join(f"{f}: {sorted(set(d.tolist()))}" for f, d in fits.items())}, ground truth: '
                       f'{gt_values.tolist()}); is --dataset the DAVIS folder test.py ran on?')
    names = list(cands)
    if all(np.array_equal(cands[names[0]], cands[f]) for f in names[1:]):
        return names[0], 'colours' if len(names) == 1 else 'colours (formats agree)'
    # the candidates disagree: frame 0's mask is the ground truth in both implementations
    gt = resize_nearest(gt_ids, first.shape[:2])
    score = {f: int((decode_colours(first, f) == gt).sum()) for f in names}
    best = sorted(names, key=score.get, reverse=True)
    if score[best[0]] == score[best[1]]:
        raise CRWError(f'{paths[0]}: cannot tell the mask format ({" or ".join(names)} fit equally well); pass '
                       '--mask-format')
    return best[0], f'frame 0 vs ground truth ({", ".join(f"{f} {score[f]}" for f in best)} pixels agree)'


def mask_path(in_folder, video, frame):
    return os.path.join(in_folder, f'{video}_{frame}_mask.png')


def sequence_videos(in_folder, sequences, by_order=False):
    """{sequence: (test.py video index, its number of frames or None)}: by name from test.py's record of its run
    in ``in_folder``, or with ``by_order`` sequence i = video i. Raises CRWError when the names cannot be
    matched."""
    if by_order:
        return {seq: (i, None) for i, seq in enumerate(sequences)}
    run = find_run(in_folder, tool='test.py', unit='*')
    if run is None:
        raise CRWError(f'--in_folder {in_folder}: no record of which video is which sequence ({MANIFEST}, '
                       "written by this project's test.py --filelist); pass --by-order to take video i as line i "
                       "of the split, the release's rule (right only if test.py's filelist listed the split's "
                       'sequences in its order)')
    if run.get('status') != 'complete':
        raise CRWError(f"--in_folder {in_folder}: test.py's run into it did not finish ({run.get('command')}); "
                       'rerun it with --overwrite')
    videos = {}
    for v in run.get('info', {}).get('videos', []):
        if v.get('kind') == 'davis':
            if v['name'] in videos:
                raise CRWError(f"--in_folder {in_folder}: test.py's filelist holds two videos named {v['name']} "
                               f"(videos {videos[v['name']][0]} and {v['index']}); cannot tell which is the sequence")
            videos[v['name']] = (v['index'], v.get('num_frames'))
    missing = [seq for seq in sequences if seq not in videos]
    if missing:
        listed = run.get('info', {}).get('filelist', 'its filelist')
        raise CRWError(f'--in_folder {in_folder}: test.py propagated no video named {missing[0]} ({len(missing)} of '
                       f'the {len(sequences)} sequences missing; {listed} has {", ".join(list(videos)[:3]) or "none"}'
                       f'{", ..." if len(videos) > 3 else ""}); run test.py on the split\'s sequences')
    return {seq: videos[seq] for seq in sequences}


def plan(in_folder, dataset, set_name='val', resolution='480p', by_order=False):
    """[(video index, sequence, number of frames)] after checking that every input mask exists and that each
    video has its sequence's number of frames."""
    jobs = []
    sequences, _ = read_split(dataset, set_name)
    videos = sequence_videos(in_folder, sequences, by_order)
    for seq in sequences:
        i, recorded = videos[seq]
        n = len(sequence_frames(dataset, seq, resolution))
        if recorded is not None and recorded != n:
            raise CRWError(f'--in_folder {in_folder}: video {i} ({seq}) has {recorded} frames, the sequence {n} in '
                           f'{dataset}; is --dataset the DAVIS folder test.py ran on?')
        for t in range(n):
            p = mask_path(in_folder, i, t)
            if not os.path.isfile(p):
                raise CRWError(f'missing {p} (video {i} = {seq}, frame {t} of {n}): '
                               'test.py output is incomplete')
        if os.path.isfile(mask_path(in_folder, i, n)):
            raise CRWError(f'{mask_path(in_folder, i, n)}: video {i} has more frames than {seq} ({n}); it is '
                           f'another video (--by-order takes video i as line i of the split)')
        jobs.append((i, seq, n))
    return jobs


def output_plan(out_folder, jobs, command=''):
    """What convert writes: ``<seq>/<frame>.png`` of every sequence; the scorer's files from these masks go
    with them (``--overwrite`` removes them too)."""
    files = [f'{seq}/{t:05d}.png' for _, seq, n in jobs for t in range(n)]
    seqs = [seq for _, seq, _ in jobs]
    return Plan(out_folder, '--out_folder', 'convert_davis.py', command, files=files, dirs=[''] + seqs,
                unit_dirs=seqs, patterns=list(SCORE_FILES), info={'sequences': seqs})


def input_folders(in_folder, dataset, jobs, set_name, resolution):
    inputs = Inputs().folder(in_folder, f"test.py's masks --in_folder {in_folder}")
    inputs.folder(dataset, f'the DAVIS folder --dataset {dataset}')
    inputs.file(os.path.join(dataset, 'ImageSets', '2017', f'{set_name}.txt'), 'the split file')
    for _, seq, _ in jobs:
        inputs.folder(os.path.join(dataset, 'JPEGImages', resolution, seq), f'the frames of {seq}')
        inputs.folder(os.path.join(dataset, 'Annotations', resolution, seq), f'the ground truth of {seq}')
    return inputs


def convert_sequence(in_folder, out_folder, dataset, video, sequence, num_frames, resolution='480p', fmt='auto'):
    """Convert one sequence; returns (frames written, mask format, how it was decided)."""
    gt_first = annotation_frames(dataset, sequence, resolution)[0][1]
    size = image_size(gt_first)
    srcs = [mask_path(in_folder, video, t) for t in range(num_frames)]
    for src in srcs:
        if not os.path.isfile(src):
            raise CRWError(f'missing {src} (video {video} = {sequence}): test.py output is incomplete')
    fmt, how = detect_format(srcs, gt_first, fmt)
    seq_out = os.path.join(out_folder, sequence)
    os.makedirs(seq_out, exist_ok=True)
    for t, src in enumerate(srcs):
        save_indexed_png(os.path.join(seq_out, f'{t:05d}.png'), resize_nearest(read_mask(src, fmt), size))
    return num_frames, fmt, how


def convert(in_folder, out_folder, dataset, set_name='val', resolution='480p', workers=None, fmt='auto',
            overwrite=False, by_order=False, command=''):
    """Convert every sequence of the split; returns [(sequence, frames written, mask format, how decided)].
    Everything is checked (inputs, the output folder) before anything is written."""
    if not os.path.isdir(in_folder):
        raise CRWError(f'--in_folder {in_folder} does not exist (run test.py first)')
    if not os.path.isdir(dataset):
        raise CRWError(f'--dataset {dataset} does not exist')
    jobs = plan(in_folder, dataset, set_name, resolution, by_order)
    claim = OutputClaim(output_plan(out_folder, jobs, command), input_folders(in_folder, dataset, jobs, set_name,
                                                                               resolution), overwrite).take()
    workers = default_workers() if workers is None else workers
    args = [(in_folder, out_folder, dataset, i, seq, n, resolution, fmt) for i, seq, n in jobs]
    if workers <= 1 or len(jobs) <= 1:
        results = [convert_sequence(*a) for a in args]
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as ex:
            results = list(ex.map(convert_sequence, *zip(*args)))
    claim.finish()
    return [(seq, *r) for (_, seq, _), r in zip(jobs, results)]


def format_summary(done):
    """One line naming the mask format(s) seen, with the sequences of each when there are several."""
    by_fmt = {}
    for seq, _, fmt, how in done:
        by_fmt.setdefault(fmt, []).append(seq if 'frame 0' not in how else f'{seq} [{how}]')
    if len(by_fmt) == 1:
        fmt, seqs = next(iter(by_fmt.items()))
        decided = [s for s in seqs if '[' in s]
        return f'mask format: {MASK_FORMATS[fmt]}, all {len(seqs)} sequences' + (
            f'; decided by frame 0 for {", ".join(decided)}' if decided else '')
    return 'mask formats: ' + '; '.join(f'{MASK_FORMATS[f]}: {", ".join(s)}' for f, s in by_fmt.items())


def get_args_parser():
    p = OneLineParser(description="Convert test.py's {i}_{t}_mask.png label maps to DAVIS result PNGs.")
    p.add_argument('-i', '--in_folder', '--in-folder', dest='in_folder', required=True,
                   help='test.py --save-path (holds {i}_{t}_mask.png)')
    p.add_argument('-o', '--out_folder', '--out-folder', dest='out_folder', required=True,
                   help='where <seq>/<frame>.png are written')
    p.add_argument('-d', '--dataset', default=os.environ.get('DAVIS_ROOT'),
                   help='DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/; default: $DAVIS_ROOT)')
    p.add_argument('--set', default='val', help='split whose ImageSets/2017/<set>.txt orders the videos (val)')
    p.add_argument('--resolution', default='480p', help='resolution folder (default 480p)')
    p.add_argument('--workers', type=int, default=None, help='processes over sequences (default: cores, at most 8)')
    p.add_argument('--mask-format', default='auto', choices=['auto', *MASK_FORMATS],
                   help="format of the {i}_{t}_mask.png files: auto (recognised per sequence), ids (this project's "
                        "test.py), bgr (the release's test.py), rgb, grey; see the module docstring")
    p.add_argument('--by-order', action='store_true',
                   help="take video i of --in_folder as line i of the split (the release's rule) instead of matching "
                        "sequences by name through test.py's record of its run; for masks without that record")
    p.add_argument('--overwrite', action='store_true',
                   help='replace the outputs of an earlier conversion (and its scores) in --out_folder; by default '
                        'a folder holding them is refused')
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        if not args.dataset:
            raise CRWError('no DAVIS folder: pass --dataset or set DAVIS_ROOT')
        done = convert(args.in_folder, args.out_folder, args.dataset, args.set, args.resolution, args.workers,
                       args.mask_format, args.overwrite, args.by_order,
                       'convert_davis.py ' + shlex.join(sys.argv[1:] if argv is None else argv))
    except CRWError as e:
        return report('convert_davis.py', e)
    print(format_summary(done))
    print(f'converted {len(done)} sequences ({sum(d[1] for d in done)} frames) into {args.out_folder}')
    return 0


if __name__ == '__main__':
    # run through the package module so that worker processes pickle eval.convert_davis functions
    from crw.eval.convert_davis import main as _main
    sys.exit(_main())
