"""The layout's rules (README "Layout"): utils/ is a leaf, nothing imports test.py by name, files run by path
find the repository without importing modules that edit sys.path, the entry points load no drawing library and
freeze their imports' objects (crw.utils.startup)."""
import ast
import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT, load_script

ABOVE_UTILS = {'data', 'model', 'propagation', 'vis', 'cli', 'train', 'test', 'demo', 'eval', 'bench', 'scripts',
               'tests'}
RUN_BY_PATH = sorted(p for folder in ('eval', 'scripts', 'bench') for p in glob.glob(os.path.join(ROOT, folder, '*.py'))
                     if not p.endswith('__init__.py'))


def repo_files():
    skip = {'.venv', '.git', 'assets'}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith('.')]
        yield from (os.path.join(folder, f) for f in files if f.endswith('.py'))


def imported_modules(path):
    """Top-level names of every module ``path`` imports (absolute imports, anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def test_utils_imports_nothing_above_it():
    for path in glob.glob(os.path.join(ROOT, 'utils', '*.py')):
        assert not imported_modules(path) & ABOVE_UTILS, path


def test_nothing_imports_test_py_by_name():
    # `import test` would find the standard library's test package, or test.py, depending on sys.path
    offenders = [p for p in repo_files() if 'test' in imported_modules(p)]
    assert not offenders


def test_importing_a_runnable_file_leaves_sys_path_alone():
    before = list(sys.path)
    for path in RUN_BY_PATH:
        name = 'crw_layout_' + os.path.relpath(path, ROOT).replace(os.sep, '_')[:-3]
        spec = importlib.util.spec_from_file_location(name, path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        assert sys.path == before, path


@pytest.mark.slow
def test_files_run_by_path_from_another_folder(tmp_path):
    # the release's form of command (python eval/convert_davis.py ...), from a folder outside the repository
    for rel in ('eval/convert_davis.py', 'scripts/export_checkpoint.py', 'bench/vis_overhead.py'):
        r = subprocess.run([sys.executable, os.path.join(ROOT, rel), '--help'], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and 'usage:' in r.stdout, (rel, r.stderr[-2000:])


@pytest.mark.slow
def test_entry_points_do_not_load_matplotlib_sklearn_or_scipy():
    code = ('import importlib.util, sys, train\n'
            'spec = importlib.util.spec_from_file_location("crw_test_py", "test.py")\n'
            'spec.loader.exec_module(importlib.util.module_from_spec(spec))\n'
            'print(sorted(m for m in ("matplotlib", "sklearn", "scipy") if m in sys.modules))\n')
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == '[]'


def test_startup_pauses_the_collector_until_imports_done():
    # a fresh interpreter: the collector is off from the import to imports_done(), then on, the objects frozen;
    # a collector the caller had turned off stays off
    code = ('import gc, os\n'
            'if os.environ["CASE"] == "off": gc.disable()\n'
            'import crw.utils.startup as startup\n'
            'paused = not gc.isenabled()\n'
            'startup.imports_done()\n'
            'print(paused, gc.isenabled(), gc.get_freeze_count() > 0, os.environ["OMP_WAIT_POLICY"])\n')
    for case, enabled in (('on', True), ('off', False)):
        env = {k: v for k, v in os.environ.items() if k not in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}
        r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env={**env, 'CASE': case}, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split() == ['True', str(enabled), 'True', 'PASSIVE'], case


@pytest.mark.slow
def test_entry_points_freeze_their_imports_and_collect_afterwards():
    # train.py and test.py import crw.utils.startup first and call imports_done() after their imports
    for script in ('train.py', 'test.py'):
        code = ('import gc, importlib.util\n'
                f'spec = importlib.util.spec_from_file_location("crw_entry", "{script}")\n'
                'spec.loader.exec_module(importlib.util.module_from_spec(spec))\n'
                'print(gc.isenabled(), gc.get_freeze_count())\n')
        r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        enabled, frozen = r.stdout.split()
        assert enabled == 'True' and int(frozen) > 100_000, (script, r.stdout)   # torch alone: ~300k objects


def test_user_entry_points_parse_with_one_line_errors(capsys):
    """demo.py, scripts/ and eval/ build their parsers as utils.arguments.OneLineParser (a bad flag is one line,
    not argparse's usage block); checked in the source, and once by running a script's main."""
    entry = [os.path.join(ROOT, 'demo.py')] + [p for p in RUN_BY_PATH if '/bench/' not in p]
    plain = [os.path.relpath(p, ROOT) for p in entry if 'argparse.ArgumentParser(' in open(p).read()]
    assert plain == []
    with pytest.raises(SystemExit) as e:
        load_script('eval/eval_pck.py').main(['--no-such-flag'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and 'error:' in err[0], err
