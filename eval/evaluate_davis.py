#!/usr/bin/env python
"""DAVIS-2017 semi-supervised scorer, a stand-in for davis2017-evaluation's evaluation_method.py (same flags).

    python eval/evaluate_davis.py --task semi-supervised --results_path /converted/path --set val \
        --davis_path /path/to/davis/

Ground truth ``{davis}/Annotations/480p/<seq>/*.png`` for the sequences of ``ImageSets/2017/<set>.txt`` (or of
the list file ``--set``); results ``{results}/<seq>/<frame>.png`` of object ids (palette or greyscale). For each
object id 1..max of the first annotation, J and F (eval/davis_metrics.py) on every frame but the first and the
last, summarised per object (Mean, Recall, Decay) and averaged over the objects. Writes
``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv`` (the official columns, 3 decimals) and prints
them; they are reused only when ``.scores-<set>.json`` holds the SHA-256 of the same inputs and settings.
Python: ``evaluate(davis_path, results_path, sequences=None, set_name='val')`` -> (global_dict, rows).
"""
import concurrent.futures
import csv
import hashlib
import json
import os
import sys
import time

if __name__ == '__main__' and not __package__:  # run by path: eval/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from crw.eval import davis_metrics as dm  # noqa: E402
from crw.data.images import frame_number, list_frames  # noqa: E402
from crw.eval.davis_io import annotation_frames, read_label_png, read_split  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.errors import CRWError, report  # noqa: E402
from crw.utils.misc import atomic_write, default_workers  # noqa: E402

GLOBAL_COLUMNS = ['J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay']
SEQUENCE_COLUMNS = ['Sequence', 'J-Mean', 'F-Mean']
VOID_MODES = ('ignore', 'background')


# ------------------------------------------------------------------------------------------------- evaluation

def evaluate_sequence(davis_path, results_path, sequence, resolution='480p', void='ignore',
                      bound_th=dm.BOUND_TH):
    """Per-frame J and F of every object of one sequence.

    Returns {'sequence', 'num_objects', 'frames': [frame ids scored], 'J': [K, n], 'F': [K, n]}.
    Raises CRWError for a missing or malformed result frame or an object id the ground truth does not have.
    """
    if void not in VOID_MODES:
        raise ValueError(f'void must be one of {VOID_MODES}, got {void!r}')
    frames = annotation_frames(davis_path, sequence, resolution)
    check_first_annotation(davis_path, results_path, sequence, frames[0], resolution)
    if len(frames) < 3:
        raise CRWError(f'{sequence}: {len(frames)} annotated frame(s); at least 3 are needed '
                        '(the first and the last are not scored)')
    first = read_label_png(frames[0][1])
    first[first == dm.VOID_LABEL] = 0
    num_objects = int(first.max())
    scored = frames[1:-1]
    j = np.zeros((num_objects, len(scored)))
    f = np.zeros((num_objects, len(scored)))
    for n, (frame_id, gt_path) in enumerate(scored):
        gt = read_label_png(gt_path)
        void_mask = gt == dm.VOID_LABEL
        gt[void_mask] = 0
        res_path = os.path.join(results_path, sequence, f'{frame_id}.png')
        if not os.path.isfile(res_path):
            raise CRWError(f'{sequence}: result frame {frame_id} is missing ({res_path})')
        pred = read_label_png(res_path)
        if pred.shape != gt.shape:
            raise CRWError(f'{sequence}: result frame {frame_id} is {pred.shape[1]}x{pred.shape[0]} but the '
                            f'ground truth is {gt.shape[1]}x{gt.shape[0]} ({res_path})')
        top = int(pred.max(initial=0))
        if top > num_objects:
            bad = sorted(int(v) for v in np.unique(pred[pred > num_objects]))
            raise CRWError(f'{sequence}: result frame {frame_id} has object id(s) {bad} but the first '
                            f'ground-truth frame has {num_objects} object(s) ({res_path})')
        j[:, n], f[:, n] = dm.frame_scores(gt, pred, num_objects,
                                           void=void_mask if void == 'ignore' and void_mask.any() else None,
                                           bound_th=bound_th)
    return {'sequence': sequence, 'num_objects': num_objects, 'frames': [fid for fid, _ in scored], 'J': j, 'F': f}


def check_first_annotation(davis_path, results_path, sequence, first_gt, resolution='480p'):
    """Raise CRWError when the ground truth's first annotation ``first_gt`` (frame id, path) is not of the
    sequence's first frame: the first of JPEGImages/<res>/<seq>, or without that folder the first result."""
    frames_dir = os.path.join(davis_path, 'JPEGImages', resolution, sequence)
    if os.path.isdir(frames_dir):
        firsts, where = list_frames(frames_dir)[:1], frames_dir
    else:
        res_dir = os.path.join(results_path, sequence)
        firsts = list_frames(res_dir, extensions=('.png',))[:1] if os.path.isdir(res_dir) else []
        where = res_dir
    if firsts and frame_number(firsts[0]) < frame_number(first_gt[1]):
        raise CRWError(f'{sequence}: the ground truth has no annotation of the first frame '
                       f'{os.path.basename(firsts[0])} of {where} (its first is {os.path.basename(first_gt[1])}); '
                       "the first frame's annotation defines the objects scored: restore it")


def evaluate(davis_path, results_path, sequences=None, set_name='val', resolution='480p', void='ignore',
             workers=None, bound_th=dm.BOUND_TH):
    """Score a results folder against DAVIS ground truth.

    sequences: list of sequence names, or None for those of ``set_name`` (split name or list file).
    workers: processes over sequences (None: up to 8, by available cores; 1: in this process).
    Returns (global_dict, rows): global_dict maps GLOBAL_COLUMNS to floats; rows has one dict per object, in
    sequence order, with 'Sequence' ('<seq>_<id>'), 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall',
    'F-Decay'.
    """
    if not os.path.isdir(davis_path):
        raise CRWError(f'DAVIS folder {davis_path} does not exist')
    if not os.path.isdir(results_path):
        raise CRWError(f'results folder {results_path} does not exist')
    if sequences is None:
        sequences, _ = read_split(davis_path, set_name)
    sequences = list(dict.fromkeys(sequences))
    workers = default_workers() if workers is None else max(1, int(workers))
    args = [(davis_path, results_path, s, resolution, void, bound_th) for s in sequences]
    if workers == 1 or len(sequences) == 1:
        per_seq = [evaluate_sequence(*a) for a in args]
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(sequences))) as ex:
            futures = [ex.submit(evaluate_sequence, *a) for a in args]
            try:
                per_seq = [fu.result() for fu in futures]
            except BaseException:
                for fu in futures:
                    fu.cancel()
                raise
    rows = []
    for res in per_seq:
        for k in range(res['num_objects']):
            jm, jr, jd = dm.statistics(res['J'][k])
            fm, fr, fd = dm.statistics(res['F'][k])
            rows.append({'Sequence': f"{res['sequence']}_{k + 1}", 'J-Mean': jm, 'F-Mean': fm, 'J-Recall': jr,
                         'J-Decay': jd, 'F-Recall': fr, 'F-Decay': fd})
    if not rows:
        raise CRWError('no objects to score: every first ground-truth frame is empty')
    g = {c: float(np.mean([r[c] for r in rows])) for c in GLOBAL_COLUMNS[1:]}
    g['J&F-Mean'] = (g['J-Mean'] + g['F-Mean']) / 2.0
    return {c: g[c] for c in GLOBAL_COLUMNS}, rows


# ---------------------------------------------------------------------------------------------------- output

def scores_record_path(results_path, tag):
    return os.path.join(results_path, f'.scores-{tag}.json')


def inputs_digest(davis_path, results_path, sequences, **settings):
    """SHA-256 (hex) of the scorer's settings and of every ground-truth PNG of ``sequences`` and the result PNG
    of the same name (the bytes; a missing result counts as missing): what the CSV files are computed from."""
    h = hashlib.sha256(json.dumps({'scorer': 'crw-evaluate_davis/1', 'sequences': list(sequences), **settings},
                                  sort_keys=True).encode())
    for seq in sequences:
        for frame_id, gt_path in annotation_frames(davis_path, seq, settings.get('resolution', '480p')):
            for path in (gt_path, os.path.join(results_path, seq, f'{frame_id}.png')):
                h.update(f'\0{seq}/{frame_id}:'.encode())
                try:
                    with open(path, 'rb') as f:
                        h.update(hashlib.sha256(f.read()).digest())
                except FileNotFoundError:
                    h.update(b'missing')
    return h.hexdigest()


def stored_digest(results_path, tag):
    try:
        with open(scores_record_path(results_path, tag)) as f:
            return json.load(f).get('inputs')
    except (OSError, ValueError, AttributeError):
        return None


def write_scores_record(results_path, tag, digest):
    with atomic_write(scores_record_path(results_path, tag), 'w') as f:
        json.dump({'inputs': digest, 'csv': [os.path.basename(p) for p in csv_paths(results_path, tag)]}, f)


def csv_paths(results_path, tag):
    return (os.path.join(results_path, f'global_results-{tag}.csv'),
            os.path.join(results_path, f'per-sequence_results-{tag}.csv'))


def _write_csv_atomic(path, header, rows):
    with atomic_write(path, 'w', newline='') as f:
        w = csv.writer(f, lineterminator='\n')
        w.writerow(header)
        w.writerows(rows)


def write_csvs(results_path, tag, global_dict, rows):
    """Write the two CSV files as the official scorer does (pandas to_csv, float_format '%.3f')."""
    g_path, s_path = csv_paths(results_path, tag)
    _write_csv_atomic(g_path, GLOBAL_COLUMNS, [[f'{global_dict[c]:.3f}' for c in GLOBAL_COLUMNS]])
    _write_csv_atomic(s_path, SEQUENCE_COLUMNS,
                      [[r['Sequence'], f"{r['J-Mean']:.3f}", f"{r['F-Mean']:.3f}"] for r in rows])
    return g_path, s_path


def read_csv(path):
    """(header, rows) of a CSV as strings."""
    with open(path, newline='') as f:
        table = list(csv.reader(f))
    if not table:
        raise CRWError(f'{path} is empty')
    return table[0], table[1:]


def _fmt(v):
    """Up to 6 decimals, trailing zeros trimmed (how pandas shows a freshly computed table)."""
    s = f'{v:.6f}'
    if '.' in s:
        s = s.rstrip('0')
        if s.endswith('.'):
            s += '0'
    return s


def format_table(header, rows):
    """Right-aligned text table like pandas' ``DataFrame.to_string(index=False)``."""
    cells = [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) + 1 for r in cells]) for i, h in enumerate(header)]
    lines = [' '.join(h.rjust(w) for h, w in zip(header, widths))]
    lines += [' '.join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return '\n'.join(' ' + line for line in lines)


def print_tables(tag, g_header, g_rows, s_header, s_rows, out=None):
    out = out or sys.stdout
    out.write(f'--------------------------- Global results for {tag} ---------------------------\n')
    out.write(format_table(g_header, g_rows) + '\n')
    out.write(f'\n---------- Per sequence results for {tag} ----------\n')
    out.write(format_table(s_header, s_rows) + '\n')
    out.flush()


# ------------------------------------------------------------------------------------------------------- CLI

def get_args_parser():
    p = OneLineParser(
        description='DAVIS-2017 semi-supervised scorer (J and F), same flags and CSV files as '
                    'davis2017-evaluation/evaluation_method.py.')
    p.add_argument('--davis_path', '--davis-path', dest='davis_path', default=os.environ.get('DAVIS_ROOT'),
                   help='DAVIS root with Annotations/ and ImageSets/ (default: $DAVIS_ROOT)')
    p.add_argument('--results_path', '--results-path', dest='results_path', required=True,
                   help='folder with <seq>/<frame>.png results (the CSV files are written here)')
    p.add_argument('--set', default='val',
                   help='split name read from ImageSets/2017/<set>.txt, or a text file listing sequences')
    p.add_argument('--task', default='semi-supervised',
                   help="only 'semi-supervised' is implemented (the official flag; default)")
    p.add_argument('--force', action='store_true', help='recompute even when the CSV files already exist')
    p.add_argument('--workers', type=int, default=None, help='processes over sequences (default: cores, at most 8)')
    p.add_argument('--resolution', default='480p', help='annotation resolution folder (default 480p)')
    p.add_argument('--void', choices=VOID_MODES, default='ignore',
                   help="ground-truth 255 pixels: 'ignore' them (default) or treat them as "
                        "'background' (what the official semi-supervised code path does)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    t0 = time.time()
    csv_error = None
    try:
        if args.task != 'semi-supervised':
            raise CRWError(f"--task {args.task!r} is not supported: this scorer implements only "
                            "'semi-supervised' (use davis2017-evaluation for the unsupervised task)")
        if not args.davis_path:
            raise CRWError('no DAVIS folder: pass --davis_path or set DAVIS_ROOT')
        if not os.path.isdir(args.davis_path):
            raise CRWError(f'DAVIS folder {args.davis_path} does not exist')
        if not os.path.isdir(args.results_path):
            raise CRWError(f'results folder {args.results_path} does not exist')
        sequences, tag = read_split(args.davis_path, args.set)
        g_path, s_path = csv_paths(args.results_path, tag)
        settings = {'resolution': args.resolution, 'void': args.void, 'bound_th': dm.BOUND_TH}
        reuse = os.path.exists(g_path) and os.path.exists(s_path) and not args.force
        digest = None if args.force else inputs_digest(args.davis_path, args.results_path, sequences, **settings)
        if reuse and stored_digest(args.results_path, tag) == digest:
            print('Using precomputed results: the CSV files are from these masks and ground truth (--force '
                  'recomputes)')
            g_header, g_rows = read_csv(g_path)
            s_header, s_rows = read_csv(s_path)
        else:
            if reuse:
                print(f'{os.path.basename(g_path)} exists but is not provably from these masks and ground truth '
                      f'(no {os.path.basename(scores_record_path(args.results_path, tag))}, or other inputs): '
                      'recomputing', flush=True)
            print(f'Evaluating sequences for the {args.task} task...', flush=True)
            g, rows = evaluate(args.davis_path, args.results_path, sequences=sequences, resolution=args.resolution,
                               void=args.void, workers=args.workers)
            g_header, g_rows = GLOBAL_COLUMNS, [[g[c] for c in GLOBAL_COLUMNS]]
            s_header, s_rows = SEQUENCE_COLUMNS, [[r['Sequence'], r['J-Mean'], r['F-Mean']] for r in rows]
            try:
                write_csvs(args.results_path, tag, g, rows)
                write_scores_record(args.results_path, tag, digest or inputs_digest(
                    args.davis_path, args.results_path, sequences, **settings))
                print(f'Global results saved in {g_path}')
                print(f'Per-sequence results saved in {s_path}')
            except OSError as e:  # the scores are printed below all the same
                csv_error = CRWError(f'--results_path {args.results_path}: cannot write {os.path.basename(g_path)} '
                                     f'({e.strerror or type(e).__name__}); the scores above were not saved')
    except CRWError as e:
        return report('evaluate_davis.py', e)
    print_tables(tag, g_header, g_rows, s_header, s_rows)
    print(f'\nTotal time: {time.time() - t0:.1f} s')
    if csv_error is not None:
        return report('evaluate_davis.py', csv_error)
    return 0


if __name__ == '__main__':
    # run through the package module so that worker processes pickle eval.evaluate_davis functions
    from crw.eval.evaluate_davis import main as _main
    sys.exit(_main())
