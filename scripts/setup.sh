#!/usr/bin/env bash
# Prepares the Python environment this project runs in, one line per step:
#   1. the environment: the virtual or conda environment that is active when this runs, if any, and
#      otherwise `.venv/` in the repository, made (or reused) with `python3`. Debian's python3-venv is
#      installed first when `python3` lacks ensurepip and this runs as root or with sudo. The system Python
#      itself is never installed into (Debian and Ubuntu refuse that: PEP 668, "externally managed").
#      With an active environment, `.venv` becomes a symbolic link to it, so that `.venv/bin/python` names
#      the interpreter that has the packages in every case: the README's commands and .ci/run use it.
#   2. FFmpeg's shared libraries (TorchCodec needs them), from Debian's ffmpeg when root or sudo can.
#   3. requirements.txt, with that environment's own pip. Skipped when the installed versions already
#      satisfy requirements.txt: that check reads package metadata only (no `import torch`), so a re-run
#      on a set-up machine takes well under a few seconds.
#   4. visdom 0.2.4 (train.py --visualize, test.py --visdom, and the tests that start a visdom server).
#      Optional, and not a requirements.txt line: it is published as source only and its setup.py imports
#      pkg_resources, which setuptools 81 dropped. Every source-only package is built through pip's isolated
#      PEP 517 path (`--use-pep517`, which pip before 25.3 needs for a package without pyproject.toml;
#      without it an old pip, e.g. Debian 12's 23.0.1, runs setup.py inside the environment, whose setuptools
#      is too new) with the build constraint setuptools<81, and with `--no-cache-dir`, so that a wheel cached
#      by an earlier build can never hide a build that fails today. If it cannot be built, setup warns in one
#      line and goes on; with `--strict` or CI=true it fails instead. Skipped when visdom 0.2.4 is installed.
# Safe to re-run. Exits non-zero with one "[setup] error: ..." line when something cannot be done.
# Usage: bash scripts/setup.sh [--strict]
set -euo pipefail
cd "$(dirname "$0")/.."

STRICT=''
case "${CI:-}" in ''|0|false|False|FALSE) ;; *) STRICT="CI=$CI" ;; esac
for arg in "$@"; do
  case "$arg" in
    --strict) STRICT=--strict ;;
    -h|--help) sed -n '2,/^# Usage/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "[setup] error: unknown argument $arg (the only option is --strict)" >&2; exit 1 ;;
  esac
done

# torch 2.14.1 (pinned in requirements.txt) publishes wheels for CPython 3.10 to 3.14: `pip index versions
# torch --python-version 3.X --only-binary=:all:` lists 2.14.1 for 3.10, 3.11, 3.12, 3.13 and 3.14, and not
# for 3.9 or 3.15; torchvision 0.29.1 and the other requirements have wheels for the same range.
PY_MIN=10 PY_MAX=14  # minor versions of Python 3
PY_RANGE="3.$PY_MIN to 3.$PY_MAX"

say() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }

# Run a command as root: directly, through sudo without a password prompt, or not at all (status 1).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1; fi
}
can_apt() { command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; }; }
APT_UPDATED=''
apt_install() {
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq && APT_UPDATED=1 || return 1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# "3.11" for a working interpreter, nothing (status 1) otherwise.
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
# Dies unless interpreter $1 (described by $2) is a Python that torch 2.14.1 has wheels for.
check_version() {
  local v minor
  v=$(py_version "$1") || die "$2 does not run"
  minor=${v#3.}
  if [ "${v%%.*}" != 3 ] || [ "$minor" -lt "$PY_MIN" ] || [ "$minor" -gt "$PY_MAX" ]; then
    die "Python $v found ($2); torch 2.14.1 needs Python $PY_RANGE: $3"
  fi
}
same_dir() { [ "$(cd "$1" 2>/dev/null && pwd -P)" = "$(cd "$2" 2>/dev/null && pwd -P)" ]; }

# ---- 1. the environment -------------------------------------------------------------------------------
active='' active_kind=''
if [ -n "${VIRTUAL_ENV:-}" ]; then active=$VIRTUAL_ENV active_kind="virtual environment"
elif [ -n "${CONDA_PREFIX:-}" ]; then active=$CONDA_PREFIX active_kind="conda environment"
fi

if [ -n "$active" ] && [ -d .venv ] && [ ! -L .venv ] && same_dir .venv "$active"; then
  active=''  # the active environment is this repository's own .venv (`source .venv/bin/activate`)
fi

if [ -n "$active" ]; then
  [ -x "$active/bin/python" ] || die "the active $active_kind $active has no bin/python; deactivate it or repair it, and re-run"
  check_version "$active/bin/python" "the active $active_kind $active" \
    "deactivate it (this script then makes .venv/ with python3) or activate one with Python $PY_RANGE"
  if [ -e .venv ] && [ ! -L .venv ]; then
    die "a $active_kind is active ($active) but .venv/ is this repository's own environment: run \`deactivate\` to use .venv/, or remove .venv/ to use $active"
  fi
  if [ "$(readlink .venv 2>/dev/null)" != "$active" ]; then ln -sfn "$active" .venv; fi
  where="the active $active_kind $active"
  say "using $where (.venv links to it)"
else
  if [ -L .venv ] && [ ! -x .venv/bin/python ]; then
    say "removing the link .venv: its environment $(readlink .venv) is gone"
    rm .venv
  fi
  # Reuse .venv when its python runs and has pip (a venv made without ensurepip has none: remake it).
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import pip' 2>/dev/null; then
    where=.venv
    say "using .venv ($(if [ -L .venv ]; then echo "a link to $(readlink .venv)"; else echo "this repository's"; fi))"
  else
    [ -L .venv ] && die ".venv links to $(readlink .venv), whose python has no pip: install pip there, or remove the link .venv, and re-run"
    if [ -e .venv ] && [ ! -f .venv/pyvenv.cfg ]; then
      die ".venv exists but is not a virtual environment (no pyvenv.cfg): move it away and re-run"
    fi
    command -v python3 >/dev/null \
      || die "no python3 on the PATH: install Python $PY_RANGE (Debian/Ubuntu: apt-get install python3 python3-venv) and re-run"
    check_version python3 "$(command -v python3)" \
      "put a python3 of that range first on the PATH, or activate an environment that has one, and re-run"
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
      if can_apt; then
        say "installing Debian's python3-venv (python3 cannot make virtual environments without it)"
        apt_install python3-venv || die "apt-get could not install python3-venv; install it (or python3.X-venv for your python3) and re-run"
        python3 -c 'import ensurepip' 2>/dev/null \
          || die "python3 still lacks ensurepip after installing python3-venv: install python$(py_version python3)-venv and re-run"
      else
        die "python3 cannot make virtual environments (no ensurepip): install Debian's python3-venv (sudo apt-get install python3-venv) and re-run"
      fi
    fi
    say "making .venv with $(command -v python3) (Python $(py_version python3))"
    python3 -m venv --clear .venv >/dev/null || die "python3 -m venv .venv failed (its messages are above)"
    where=.venv
  fi
  check_version .venv/bin/python ".venv/bin/python" "remove .venv and re-run with a python3 of that range first on the PATH"
fi
py=.venv/bin/python

# ---- 2. FFmpeg's shared libraries -----------------------------------------------------------------------
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
if ! "$ldconfig" -p 2>/dev/null | grep -q 'libavcodec\.so'; then
  if can_apt; then
    say "installing ffmpeg (TorchCodec needs its shared libraries)"
    apt_install ffmpeg || say "warning: could not install ffmpeg; videos will be decoded with PyAV instead"
  else
    say "note: FFmpeg libraries not found and no root; videos will be decoded with PyAV (slower)"
  fi
fi

# ---- 3. requirements.txt --------------------------------------------------------------------------------
# Exit status 0 when every requirement's installed version satisfies it (metadata only, nothing imported).
satisfied() {
  "$py" - requirements.txt <<'EOF' 2>/dev/null
import sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for line in open(sys.argv[1]):
    line = line.split('#', 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(1)
EOF
}
if satisfied; then
  say "requirements.txt already satisfied"
else
  "$py" -c 'import pip' 2>/dev/null || die "$py has no pip: install pip into that environment and re-run"
  say "installing requirements.txt into $where with pip (the first install takes minutes: torch is several GB)"
  "$py" -m pip install -q --disable-pip-version-check -r requirements.txt \
    || die "pip could not install requirements.txt into $where (its messages are above)"
  satisfied || die "requirements.txt is still not satisfied in $where after pip install"
fi
# ---- 4. optional packages published as source only ----------------------------------------------------
# pip_build_from_source SPEC: installs SPEC through pip's isolated PEP 517 build with setuptools<81 and no
# wheel cache; pip's messages go to the file named by $build_log.
pip_build_from_source() {
  local pins pep517=() status=0
  pins=$(mktemp)
  echo 'setuptools<81' >"$pins"
  # pip >= 25.3 always builds through PEP 517 (and may drop the flag); older pips need the flag.
  if "$py" -m pip install --help 2>/dev/null | grep -q -- '--use-pep517'; then pep517=(--use-pep517); fi
  # PIP_CONSTRAINT reaches the isolated build environment up to pip 25.2; PIP_BUILD_CONSTRAINT from pip 25.3.
  PIP_CONSTRAINT=$pins PIP_BUILD_CONSTRAINT=$pins "$py" -m pip install -q --disable-pip-version-check \
    --no-cache-dir ${pep517[@]+"${pep517[@]}"} "$1" >"$build_log" 2>&1 || status=$?
  rm -f "$pins"
  return "$status"
}
VISDOM=0.2.4
if [ "$("$py" -c 'from importlib.metadata import version; print(version("visdom"))' 2>/dev/null)" = "$VISDOM" ]; then
  say "visdom $VISDOM already installed"
else
  say "building visdom $VISDOM from source into $where (optional: --visualize, --visdom)"
  build_log=$(mktemp "${TMPDIR:-/tmp}/crw-visdom-build.XXXXXX")
  if pip_build_from_source "visdom==$VISDOM"; then
    rm -f "$build_log"
  elif [ -n "$STRICT" ]; then
    cat "$build_log" >&2
    die "pip could not build visdom $VISDOM into $where (its messages are above; fatal because of $STRICT)"
  else
    say "warning: visdom $VISDOM could not be built (pip's messages: $build_log); everything but --visualize/--visdom pictures works; re-run this script to retry"
  fi
fi
say "ok: .venv/bin/python is Python $(py_version "$py") with torch $("$py" -c 'from importlib.metadata import version; print(version("torch"))')"
