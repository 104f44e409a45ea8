"""scripts/setup.sh's refusals, on a copy of the script with stand-in interpreters (nothing is installed)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_copy(tmp_path):
    (tmp_path / 'repo' / 'scripts').mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, 'scripts', 'setup.sh'), tmp_path / 'repo' / 'scripts')
    shutil.copy(os.path.join(ROOT, 'requirements.txt'), tmp_path / 'repo')
    return tmp_path / 'repo'


def fake_python(folder, version):
    """A `python3` that answers every question with `version`, as the version query would print it."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / 'python3'
    exe.write_text(f'#!/bin/sh\necho {version}\n')
    exe.chmod(0o755)
    return exe


def run_setup(repo, path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX')}
    env.update(PATH=path, **extra)
    return subprocess.run(['bash', str(repo / 'scripts' / 'setup.sh')], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize('version', ['3.9', '3.15'])
def test_python_outside_torch_range_is_one_line_error_and_makes_nothing(repo_copy, tmp_path, version):
    fake_python(tmp_path / 'bin', version)
    r = run_setup(repo_copy, f'{tmp_path / "bin"}:/usr/bin:/bin')
    assert r.returncode == 1
    assert r.stderr.count('\n') == 1
    assert r.stderr.startswith(f'[setup] error: Python {version} found')
    assert 'needs Python 3.10 to 3.14' in r.stderr
    assert not (repo_copy / '.venv').exists()


def test_active_environment_outside_range_is_refused(repo_copy, tmp_path):
    env = tmp_path / 'env'
    fake_python(env / 'bin', '3.9').rename(env / 'bin' / 'python')
    r = run_setup(repo_copy, '/usr/bin:/bin', VIRTUAL_ENV=str(env))
    assert r.returncode == 1 and r.stderr.startswith('[setup] error: Python 3.9 found (the active virtual')
    assert not os.path.lexists(repo_copy / '.venv')


def test_other_active_environment_with_own_venv_is_refused(repo_copy, tmp_path):
    env = tmp_path / 'env'
    fake_python(env / 'bin', '3.11').rename(env / 'bin' / 'python')
    (repo_copy / '.venv').mkdir()
    (repo_copy / '.venv' / 'pyvenv.cfg').write_text('home = /usr/bin\n')
    r = run_setup(repo_copy, '/usr/bin:/bin', VIRTUAL_ENV=str(env))
    assert r.returncode == 1
    assert r.stderr.startswith('[setup] error: a virtual environment is active') and 'deactivate' in r.stderr
    assert not (repo_copy / '.venv').is_symlink()
