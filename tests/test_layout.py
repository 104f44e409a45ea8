"""The layout's rules (README "Layout"): utils/ is a leaf, nothing imports test.py by name, files run by path
find the repository without importing modules that edit sys.path, and the entry points load no drawing library."""
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
