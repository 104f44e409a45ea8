"""scripts/setup.sh's refusals and its source builds, on a copy of the script with stand-in interpreters
(nothing is installed)."""
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


def fake_environment(folder, pip_help, build_status):
    """An active environment whose `python` answers setup.sh's questions: Python 3.11, requirements
    satisfied, no visdom; its `pip install` writes its arguments and build constraint to calls.log and exits
    with `build_status`."""
    bin_dir = folder / 'bin'
    bin_dir.mkdir(parents=True)
    log = folder / 'calls.log'
    exe = bin_dir / 'python'
    exe.write_text(f'''#!/bin/sh
case "$*" in
  *sys.version_info*) echo 3.11 ;;
  "-c import pip") ;;
  "- requirements.txt") cat >/dev/null ;;
  *'version("visdom")'*) exit 1 ;;
  *'version("torch")'*) echo 2.14.1 ;;
  "-m pip install --help") echo "{pip_help}" ;;
  "-m pip install "*)
    echo "args: $*" >>"{log}"
    echo "constraint: $(cat "$PIP_CONSTRAINT") build: $(cat "$PIP_BUILD_CONSTRAINT")" >>"{log}"
    echo "metadata-generation-failed" >&2
    exit {build_status} ;;
  *) echo "unexpected call: $*" >&2; exit 3 ;;
esac
''')
    exe.chmod(0o755)
    return folder, log


PIP_23_HELP = '  --use-pep517   Use PEP 517 for building source distributions'


@pytest.mark.parametrize('strict', [{}, {'CI': 'true'}, {'args': ['--strict']}])
def test_visdom_build_goes_through_pep517_without_cache_and_failure_is_fatal_only_when_strict(
        repo_copy, tmp_path, strict):
    env, log = fake_environment(tmp_path / 'env', PIP_23_HELP, build_status=1)
    extra = {k: v for k, v in strict.items() if k != 'args'}
    cmd = ['bash', str(repo_copy / 'scripts' / 'setup.sh'), *strict.get('args', [])]
    base = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX', 'CI')}
    r = subprocess.run(cmd, env={**base, 'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'VIRTUAL_ENV': str(env), **extra},
                       capture_output=True, text=True, timeout=60)
    calls = log.read_text()
    assert 'args: -m pip install' in calls and 'visdom==0.2.4' in calls
    assert '--no-cache-dir' in calls and '--use-pep517' in calls
    assert 'constraint: setuptools<81 build: setuptools<81' in calls
    if strict:
        assert r.returncode == 1
        assert 'metadata-generation-failed' in r.stderr  # pip's own messages are shown
        assert r.stderr.strip().splitlines()[-1].startswith('[setup] error: pip could not build visdom 0.2.4')
    else:
        assert r.returncode == 0, r.stderr
        warning = [line for line in r.stdout.splitlines() if 'warning' in line]
        assert len(warning) == 1 and warning[0].startswith('[setup] warning: visdom 0.2.4 could not be built')
        assert r.stdout.strip().splitlines()[-1].startswith('[setup] ok:')
        assert 'metadata-generation-failed' not in r.stdout + r.stderr  # kept in the log the warning names


def test_pip_without_the_pep517_flag_is_not_given_it(repo_copy, tmp_path):
    """pip >= 25.3 always builds through PEP 517 and may no longer know the flag."""
    env, log = fake_environment(tmp_path / 'env', '  --no-build-isolation', build_status=0)
    r = run_setup(repo_copy, '/usr/sbin:/usr/bin:/sbin:/bin', VIRTUAL_ENV=str(env))
    assert r.returncode == 0, r.stderr
    calls = log.read_text()
    assert '--no-cache-dir' in calls and '--use-pep517' not in calls


def test_unknown_argument_is_refused(repo_copy):
    r = subprocess.run(['bash', str(repo_copy / 'scripts' / 'setup.sh'), '--strictt'], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == '[setup] error: unknown argument --strictt (the only option is --strict)\n'
