#!/usr/bin/env python
"""Evaluation chain over a grid of settings: DAVIS (test.py -> eval/convert_davis.py -> scorer, J&F) or
JHMDB (``--dataset jhmdb``: test.py -> eval/eval_pck.py --feat-res cropSize/8, PCK).

    python eval/run_test.py --model-path /path/to/model --L 20 --K 10 --T 0.05 --cropSize -1 --dryrun
    python eval/run_test.py --dataset jhmdb --filelist jhmdb_test_split1.txt --model-path pretrained.pth \
        --L 7 --K 10 --T 0.05 --R 12 --cropSize 320

One run of the chain per ``--model-path`` x ``--L`` x ``--K`` x ``--T`` x ``--R`` (test.py's --videoLen, --topk,
--temperature, --radius), into ``<out>/<tag>/{raw,converted}`` (JHMDB: ``<out>/jhmdb_<tag>/{raw,pck.csv}``),
skipped when its scores exist; test.py is skipped when its folder exists; ``--force`` reruns both. Model type:
``--model-type``, else the release's guess (``scratch_zeropad`` when the path mentions 'zero' or 'rel_left_drop').
Unknown flags go to test.py. Paths: ``--davis-path``/$DAVIS_ROOT, ``--out-dir``/$CRW_RESULTS, ``--scorer``/
$DAVIS_SCORER (default eval/evaluate_davis.py; the official evaluation_method.py takes the same flags).
"""
import csv
import glob
import itertools
import os
import re
import shlex
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: eval/, not the repository, is on sys.path
    sys.path.insert(0, _REPO)

from crw.model import MODEL_TYPES  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.arguments import finite_float  # noqa: E402
from crw.utils.errors import CRWError, report  # noqa: E402

DEFAULT_FILELIST = os.path.join(_REPO, 'eval', 'davis_vallist.txt')
DEFAULT_SCORER = os.path.join(_REPO, 'eval', 'evaluate_davis.py')
DAVIS_PLACEHOLDER = '<DAVIS_ROOT>'


def newest_checkpoint(folder):
    """The newest ``model_*.pth`` of a folder: highest epoch number, then latest modification time."""
    cands = [p for p in glob.glob(os.path.join(folder, 'model_*.pth')) if os.path.isfile(p)]
    if not cands:
        raise CRWError(f'{folder} holds no model_*.pth checkpoint')

    def key(p):
        m = re.fullmatch(r'model_(\d+)\.pth', os.path.basename(p))
        return (int(m.group(1)) if m else -1, os.path.getmtime(p), p)
    return max(cands, key=key)


def resolve_model(path, model_type=None, dryrun=False):
    """(checkpoint or None, model type, short name) for one ``--model-path`` entry."""
    if os.path.isdir(path):
        ckpt = newest_checkpoint(path)
    elif os.path.isfile(path):
        ckpt = path
    elif path in MODEL_TYPES:
        return None, model_type or path, path
    elif dryrun:
        print(f'run_test.py: warning: model {path} does not exist (dry run goes on)', file=sys.stderr)
        ckpt = path
    else:
        raise CRWError(f'model {path} not found (a checkpoint, a folder of model_*.pth, or one of {MODEL_TYPES})')
    if model_type is None:
        model_type = 'scratch_zeropad' if ('zero' in ckpt or 'rel_left_drop' in ckpt) else 'scratch'
    parts = os.path.normpath(os.path.abspath(ckpt)).split(os.sep)[-2:]
    parts[-1] = os.path.splitext(parts[-1])[0]
    name = re.sub(r'[^A-Za-z0-9._-]+', '_', '_'.join(p for p in parts if p))
    return ckpt, model_type, name


def _num(v):
    return f'{v:g}'


def combination_tag(name, L, K, T, R, crop, finetune=0):
    tag = f'L{L}_K{K}_T{_num(T)}_R{_num(R)}_C{crop}'
    if finetune:
        tag += f'_ft{finetune}'
    return f'{tag}_M{name}'


def _display(path):
    """Paths inside the repository relative to it (the commands run from the repository root)."""
    ap = os.path.abspath(os.path.join(_REPO, path))
    return os.path.relpath(ap, _REPO) if ap.startswith(_REPO + os.sep) else ap


def test_command(ckpt, model_type, L, K, T, R, crop, raw, filelist, data_root, python, finetune=0, gpu=0,
                 workers=None, extra=(), test_script='test.py'):
    """test.py's argument list for one combination (``data_root`` '' or None: no --data-root)."""
    test = [python, _display(test_script), '--filelist', filelist]
    if data_root:
        test += ['--data-root', data_root]
    test += ['--model-type', model_type]
    if ckpt is not None:
        test += ['--resume', ckpt]
    test += ['--save-path', raw, '--topk', str(K), '--videoLen', str(L), '--radius', _num(R),
             '--temperature', _num(T), '--cropSize', str(crop)]
    if finetune > 0:
        test += ['--head-depth', '0', '--finetune', str(finetune)]
    else:
        test += ['--head-depth', '-1']
    test += ['--gpu-id', str(gpu)]
    if workers is not None:
        test += ['--workers', str(workers)]
    return test + list(extra)


def build_commands(ckpt, model_type, L, K, T, R, crop, raw, converted, davis, filelist, scorer, python,
                   finetune=0, gpu=0, workers=None, extra=(), force=False, test_script='test.py', by_order=False):
    """The three argument lists (test, convert, score) of one DAVIS combination; they run from the repository
    root."""
    test = test_command(ckpt, model_type, L, K, T, R, crop, raw, filelist, davis, python, finetune, gpu, workers,
                        extra, test_script)
    if force and test_script == 'test.py':
        test.append('--overwrite')
    convert = [python, os.path.join('eval', 'convert_davis.py'), '--in_folder', raw, '--out_folder', converted,
               '--dataset', davis, '--overwrite'] + (['--by-order'] if by_order else [])
    score = [python, _display(scorer), '--task', 'semi-supervised', '--results_path', converted, '--set', 'val',
             '--davis_path', davis]
    if force and os.path.abspath(scorer) == DEFAULT_SCORER:
        score.append('--force')
    return test, convert, score


def build_jhmdb_commands(ckpt, model_type, L, K, T, R, crop, raw, pck_csv, filelist, data_root, python,
                         finetune=0, gpu=0, workers=None, extra=(), test_script='test.py', force=False):
    """The two argument lists (test, PCK) of one JHMDB combination; feat-res = cropSize / 8."""
    test = test_command(ckpt, model_type, L, K, T, R, crop, raw, filelist, data_root, python, finetune, gpu,
                        workers, extra, test_script)
    if force and test_script == 'test.py':
        test.append('--overwrite')
    pck = [python, os.path.join('eval', 'eval_pck.py'), '--filelist', filelist, '--results', raw,
           '--feat-res', _num(crop / 8), '--csv', pck_csv]
    if data_root:
        pck += ['--data-root', data_root]
    return test, pck


def get_args_parser():
    p = OneLineParser(
        description='Evaluation chain over a grid of settings: DAVIS (test.py -> eval/convert_davis.py -> scorer) '
                    'or JHMDB (test.py -> eval/eval_pck.py). Unknown flags are passed to test.py.',
        allow_abbrev=False)
    p.add_argument('--model-path', nargs='+', required=True,
                   help='checkpoints, folders (newest model_*.pth) or a pretrained model type (imagenet18, moco50, ...)')
    p.add_argument('--model-type', default=None, choices=MODEL_TYPES,
                   help="encoder type for test.py (default: release heuristic, 'scratch_zeropad' when the "
                        "path mentions 'zero', else 'scratch')")
    p.add_argument('--dataset', default='davis', choices=('davis', 'jhmdb'),
                   help='davis: test -> convert -> J&F; jhmdb: test -> eval/eval_pck.py (PCK), with --filelist '
                        'a JHMDB filelist (eval/jhmdb_filelist.py)')
    p.add_argument('--L', nargs='+', type=int, default=None,
                   help='--videoLen values (default: 20 for davis, 7 for jhmdb, the release settings)')
    p.add_argument('--K', nargs='+', type=int, default=[10], help='--topk values')
    p.add_argument('--T', nargs='+', type=finite_float, default=[0.07], help='--temperature values')
    p.add_argument('--R', nargs='+', type=finite_float, default=[12], help='--radius values')
    p.add_argument('--cropSize', type=int, default=None,
                   help='test.py --cropSize (default: -1, the native size, for davis; 320 for jhmdb)')
    p.add_argument('--finetune', type=int, default=0,
                   help='test-time adaptation steps (test.py --finetune N, passed with --head-depth 0: a linear '
                        'walk head)')
    p.add_argument('--gpu', type=int, default=0, help='test.py --gpu-id')
    p.add_argument('--workers', type=int, default=None, help='test.py --workers (default: test.py\'s)')
    p.add_argument('--davis-path', '--davis_path', dest='davis_path', default=os.environ.get('DAVIS_ROOT'),
                   help='DAVIS-2017 root (default: $DAVIS_ROOT)')
    p.add_argument('--filelist', default=None,
                   help='test.py filelist (davis default: eval/davis_vallist.txt, paths relative to the DAVIS '
                        'root; jhmdb: required)')
    p.add_argument('--data-root', default='',
                   help='jhmdb: folder relative filelist paths are resolved against (test.py --data-root)')
    p.add_argument('--out-dir', default=os.environ.get('CRW_RESULTS', os.path.join('.', 'results', 'run_test')),
                   help='output root, one folder per combination (default: $CRW_RESULTS or ./results/run_test)')
    p.add_argument('--scorer', default=os.environ.get('DAVIS_SCORER', DEFAULT_SCORER),
                   help='scoring script taking evaluation_method.py\'s flags (default: eval/evaluate_davis.py; '
                        'or $DAVIS_SCORER)')
    p.add_argument('--test-script', default='test.py',
                   help='label propagation script (default: the repository\'s test.py)')
    p.add_argument('--force', action='store_true',
                   help='rerun everything, even where results exist (test.py with --overwrite)')
    p.add_argument('--by-order', action='store_true',
                   help="convert_davis.py --by-order: video i is line i of the split (for a --test-script that "
                        "records no sequence names, e.g. the release's test.py)")
    p.add_argument('--dryrun', action='store_true', help='print the commands, run nothing')
    p.add_argument('--slurm', action='store_true', help='release flag (the authors\' cluster); not supported')
    return p


def _print_cmd(cmd):
    print('  ' + shlex.join(cmd), flush=True)


def _run(cmd):
    return subprocess.run(cmd, cwd=_REPO).returncode


def _read_global(path):
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    return dict(zip(rows[0], rows[1])) if len(rows) >= 2 else {}


def main(argv=None):
    args, extra = get_args_parser().parse_known_args(argv)
    try:
        return _main(args, extra)
    except CRWError as e:
        return report('run_test.py', e)


DATASET_DEFAULTS = {'davis': {'L': [20], 'cropSize': -1}, 'jhmdb': {'L': [7], 'cropSize': 320}}


def _read_pck(path):
    """{'PCK@0.1': ..., 'PCK@0.2': ...} of the mean row of eval_pck.py's CSV."""
    with open(path, newline='') as f:
        rows = {r['joint']: r for r in csv.DictReader(f)}
    return rows.get('mean', {})


def _main(args, extra):
    if args.slurm:
        raise CRWError('--slurm is not supported (the release submitted to its authors\' cluster); '
                       'run the printed commands with your own scheduler')
    for key, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    jhmdb = args.dataset == 'jhmdb'
    python = sys.executable
    out_dir = os.path.abspath(args.out_dir)
    if jhmdb and not args.filelist:
        raise CRWError('--dataset jhmdb needs --filelist (make one with eval/jhmdb_filelist.py)')
    filelist = os.path.abspath(args.filelist or DEFAULT_FILELIST)
    scorer = os.path.abspath(args.scorer)
    davis = None
    if jhmdb:
        if args.cropSize <= 0:
            raise CRWError(f'--cropSize {args.cropSize}: JHMDB pose propagation needs a positive crop size '
                           '(the release used 320)')
    elif args.davis_path:
        davis = os.path.abspath(args.davis_path)
    elif args.dryrun:
        davis = DAVIS_PLACEHOLDER
        print(f'run_test.py: note: no --davis-path or $DAVIS_ROOT; printing {DAVIS_PLACEHOLDER}', file=sys.stderr)
    else:
        raise CRWError('no DAVIS folder: pass --davis-path or set DAVIS_ROOT')
    if not args.dryrun:
        if davis is not None and not os.path.isfile(os.path.join(davis, 'ImageSets', '2017', 'val.txt')):
            raise CRWError(f'DAVIS-2017 not found at {davis} (no ImageSets/2017/val.txt)')
        checks = [('filelist', filelist), ('test script', os.path.join(_REPO, args.test_script))]
        for what, path in checks + ([] if jhmdb else [('scorer', scorer)]):
            if not os.path.isfile(path):
                raise CRWError(f'{what} {path} not found')

    models = [resolve_model(m, args.model_type, args.dryrun) for m in args.model_path]
    combos = list(itertools.product(models, args.L, args.K, args.T, args.R))
    failed, finished = [], []
    for n, ((ckpt, mtype, name), L, K, T, R) in enumerate(combos, 1):
        tag = combination_tag(name, L, K, T, R, args.cropSize, args.finetune)
        base = os.path.join(out_dir, ('jhmdb_' if jhmdb else '') + tag)
        raw = os.path.join(base, 'raw')
        if jhmdb:
            result = os.path.join(base, 'pck.csv')
            test, pck = build_jhmdb_commands(ckpt, mtype, L, K, T, R, args.cropSize, raw, result, filelist,
                                             args.data_root, python, args.finetune, args.gpu, args.workers, extra,
                                             args.test_script, args.force)
            scoring, stale = [('eval_pck.py', pck)], [result]
        else:
            converted = os.path.join(base, 'converted')
            result = os.path.join(converted, 'global_results-val.csv')
            test, convert, score = build_commands(ckpt, mtype, L, K, T, R, args.cropSize, raw, converted, davis,
                                                  filelist, scorer, python, args.finetune, args.gpu, args.workers,
                                                  extra, args.force, args.test_script, args.by_order)
            scoring = [('convert_davis.py', convert), ('scoring', score)]
            stale = [result, os.path.join(converted, 'per-sequence_results-val.csv')]
        head = f'# [{n}/{len(combos)}] {tag}'
        if os.path.isfile(result) and not args.force:
            print(f'{head}: skipped, scores exist in {result} (--force recomputes)', flush=True)
            finished.append((tag, result))
            continue
        run_test_step = args.force or not os.path.isdir(raw)
        print(head, flush=True)
        if run_test_step:
            _print_cmd(test)
        else:
            print(f'  (test.py output exists in {raw}; --force reruns it)', flush=True)
        for _, cmd in scoring:
            _print_cmd(cmd)
        if args.dryrun:
            continue
        if args.force:  # the scorer reuses CSV files it finds; make it recompute
            for p in stale:
                if os.path.exists(p):
                    os.remove(p)
        for step, cmd in [('test.py', test if run_test_step else None)] + scoring:
            if cmd is None:
                continue
            rc = _run(cmd)
            if rc != 0:
                print(f'run_test.py: {tag}: {step} failed (exit status {rc}); going on with the next combination',
                      file=sys.stderr, flush=True)
                failed.append(tag)
                break
        else:
            finished.append((tag, result))
    if args.dryrun:
        print(f'dry run: {len(combos)} combination(s) printed, nothing was run')
        return 0
    if finished and jhmdb:
        print('\n# PCK@0.1  PCK@0.2  combination')
        for tag, path in finished:
            g = _read_pck(path) if os.path.isfile(path) else {}
            print(f"  {g.get('PCK@0.1', '-'):>7}  {g.get('PCK@0.2', '-'):>7}  {tag}")
    elif finished:
        print('\n# J&F-Mean  J-Mean  F-Mean  combination')
        for tag, path in finished:
            g = _read_global(path) if os.path.isfile(path) else {}
            print(f"  {g.get('J&F-Mean', '-'):>8}  {g.get('J-Mean', '-'):>6}  {g.get('F-Mean', '-'):>6}  {tag}")
    if failed:
        print(f'run_test.py: {len(failed)} combination(s) failed: {", ".join(failed)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
