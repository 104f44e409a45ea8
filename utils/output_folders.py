"""Output folders: no output lands on an input, no folder is left with two runs' outputs mixed, one writer at a time.

``claim_outputs(plan, inputs)`` runs before anything is written (test.py, eval/convert_davis.py):

* **Inputs.** Paths are compared as real paths (symlinks, ``..`` and trailing slashes resolved). A folder the
  run writes files into that is an input folder (frames, masks, annotations, ground truth, the dataset
  root), or an output file that is an input file, is refused.
* **Manifest.** ``<folder>/.crw_outputs.json`` (``MANIFEST``) records every run that wrote into the folder:
  its tool and command, its *unit* (``'*'``: the whole folder; else one video's outputs, for ``test.py
  --video``), its status (``running`` until it finished) and its files (paths relative to the folder).
* **Mixed folders.** A run whose unit overlaps a recorded run's (``'*'`` overlaps everything), or that finds
  files of its own output names without a record, is refused unless ``overwrite``: then exactly the files the
  old records list and the files of the run's own output names (``Plan.patterns``) are removed, never others;
  a unit folder that still holds other files is refused.

``FolderLock`` holds an advisory lock (``fcntl.flock``) on a file in a folder; the OS releases it when the
process ends, however it ends.
"""
import contextlib
import datetime
import errno
import json
import os
import re
from dataclasses import dataclass, field

from crw.utils.errors import CRWError
from crw.utils.misc import TMP_SUFFIX, atomic_write, writable_folder

MANIFEST = '.crw_outputs.json'


def real(path):
    """The canonical absolute path (user folder expanded, symlinks, ``..`` and trailing slashes resolved)."""
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


@dataclass
class Inputs:
    """What a run reads: ``folders`` {path: what it holds} and ``files`` {path: what it is}."""
    folders: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def folder(self, path, what):
        if path:
            self.folders.setdefault(real(path), what)
        return self

    def file(self, path, what, with_folder=False):
        """An input file; ``with_folder``: its folder holds inputs of the same kind (a mask among masks)."""
        if path:
            self.files.setdefault(real(path), what)
            if with_folder:
                self.folder(os.path.dirname(real(path)), f'the folder of {what}')
        return self


@dataclass
class Plan:
    """What a run will write into ``folder`` (given as ``flag``): ``files`` (relative paths), the sub-folders it
    writes into (``dirs``, '' = the folder itself), its ``unit`` ('*' or a name), ``patterns`` (regular
    expressions over relative paths: the names of its kind of outputs, removed by ``overwrite`` even when
    no record lists them), ``unit_dirs`` (sub-folders that must hold nothing but this run's files) and
    ``info`` (kept in the record: e.g. the videos and their names)."""
    folder: str
    flag: str
    tool: str
    command: str = ''
    unit: str = '*'
    files: list = field(default_factory=list)
    dirs: list = field(default_factory=lambda: [''])
    patterns: list = field(default_factory=list)
    unit_dirs: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


def check_not_inputs(plan, inputs):
    """Raise CRWError when a folder ``plan`` writes into is an input folder or one of its files is an input
    file (real paths)."""
    for d in plan.dirs:
        path = real(os.path.join(plan.folder, d))
        if path in inputs.folders:
            where = plan.folder if not d else os.path.join(plan.folder, d)
            raise CRWError(f'{plan.flag} {plan.folder}: outputs would be written into {where}, which is '
                           f'{inputs.folders[path]} (an input); choose an output folder outside the inputs')
    out_files = {real(os.path.join(plan.folder, f)): f for f in plan.files}
    for path, what in inputs.files.items():
        if path in out_files:
            raise CRWError(f'{plan.flag} {plan.folder}: output {out_files[path]} would overwrite {what} ({path}); '
                           'choose an output folder outside the inputs')


# ---------------------------------------------------------------------------------------------- the manifest
def read_manifest(folder):
    """The records of ``folder``'s manifest: a list of dicts (tool, command, unit, status, files, info); []
    without a manifest; None when it cannot be read (its runs are then unknown)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            data = json.load(f)
        runs = data['runs']
        if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get('files'), list)
                                                   for r in runs):
            return None
        return runs
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(folder, runs):
    with atomic_write(os.path.join(folder, MANIFEST), 'w') as f:
        json.dump({'format': 'crw-outputs/1', 'runs': runs}, f, indent=1)


def find_run(folder, tool=None, unit=None):
    """The record of ``folder`` by ``tool`` (and ``unit``), or None (no manifest, no such record)."""
    for run in read_manifest(folder) or []:
        if (tool is None or run.get('tool') == tool) and (unit is None or run.get('unit') == unit):
            return run
    return None


def _overlaps(a, b):
    return a == '*' or b == '*' or a == b


def _describe(run):
    status = '' if run.get('status') == 'complete' else ', unfinished'
    what = run.get('command') or run.get('tool', 'another run')
    return f'{what} ({len(run.get("files", []))} files{status})'


def _inside(folder, rel):
    """``folder``/``rel`` if it stays inside ``folder`` (a record cannot make us remove anything else)."""
    path = os.path.normpath(os.path.join(folder, rel))
    return path if not os.path.isabs(rel) and path.startswith(os.path.normpath(folder) + os.sep) else None


def _matching_files(folder, plan):
    """Existing files of ``plan``'s output names: its planned files and those matching its patterns."""
    found = {f for f in plan.files if os.path.isfile(os.path.join(folder, f))}
    if plan.patterns:
        pats = [re.compile(p) for p in plan.patterns]
        for d in plan.dirs:
            sub = os.path.join(folder, d)
            if not os.path.isdir(sub):
                continue
            for name in os.listdir(sub):
                rel = os.path.join(d, name) if d else name
                if any(p.fullmatch(rel) for p in pats) and os.path.isfile(os.path.join(sub, name)):
                    found.add(rel)
    return found


def _foreign_files(folder, plan, own):
    """Files in ``plan``'s unit folders that are not in ``own`` (relative paths)."""
    out = []
    for d in plan.unit_dirs:
        sub = os.path.join(folder, d)
        if os.path.isdir(sub):
            out += [os.path.join(d, n) for n in sorted(os.listdir(sub))
                    if os.path.join(d, n) not in own and not n.endswith(TMP_SUFFIX)]
    return out


def _remove(folder, rels):
    for rel in rels:
        path = _inside(folder, rel)
        if path and os.path.isfile(path):
            os.remove(path)


def remove_stale_temps(folder, files):
    """Remove the hidden temporary files (``.<name>.<random>.tmp``, ``utils.misc.atomic_write``) that writes
    of ``files`` (relative paths) left behind when a run was killed."""
    by_dir = {}
    for rel in list(files) + [MANIFEST]:
        d, name = os.path.split(rel)
        by_dir.setdefault(d, set()).add(name)
    for d, names in by_dir.items():
        sub = os.path.join(folder, d)
        if not os.path.isdir(sub):
            continue
        for n in os.listdir(sub):
            if n.startswith('.') and n.endswith(TMP_SUFFIX) and n[1:-len(TMP_SUFFIX)].rsplit('.', 1)[0] in names:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(sub, n))


def _now():
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


class OutputClaim:
    """A run's hold on its output folder. Making one checks ``plan`` against ``inputs`` and the folder's earlier
    outputs and raises CRWError, writing nothing, for an output on an input, a file where the folder should be,
    or another run's outputs (unless ``overwrite``; see the module docstring). ``take()`` then makes the
    folder, removes what ``overwrite`` replaces and records the run (status running) in the manifest;
    ``finish(**info)`` marks it complete."""

    def __init__(self, plan, inputs, overwrite=False):
        folder, flag = plan.folder, plan.flag
        self.plan, self.overwrite = plan, overwrite
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise CRWError(f'{flag} {folder}: is a file, not a folder; pass a folder path')
        if any(f.split('/')[0] == MANIFEST for f in plan.files):
            raise CRWError(f'{flag} {folder}: an output would be named {MANIFEST}, the name of the record of the '
                           'folder\'s outputs; rename the video')
        check_not_inputs(plan, inputs)
        runs = read_manifest(folder) if os.path.isdir(folder) else []
        unreadable = runs is None
        runs = runs or []
        old = [r for r in runs if _overlaps(r.get('unit', '*'), plan.unit)]
        self.kept = [r for r in runs if r not in old]
        kept_files = {f for r in self.kept for f in r['files']}
        existing = sorted(_matching_files(folder, plan) - kept_files) if os.path.isdir(folder) else []
        if (old or existing or unreadable) and not overwrite:
            if unreadable:
                what = f'a record of its outputs ({MANIFEST}) that cannot be read'
            elif old:
                what = 'the outputs of ' + '; '.join(_describe(r) for r in old[:2])
            else:
                what = f'{len(existing)} output file(s) of another run ({existing[0]}, ...)'
            raise CRWError(f'{flag} {folder}: holds {what}; pass --overwrite to replace them (only those files '
                           'are removed), or choose another folder')
        self.remove = [f for r in old for f in r['files']] + existing
        foreign = _foreign_files(folder, plan, set(plan.files) | set(self.remove))
        if foreign:
            raise CRWError(f'{flag} {folder}: {os.path.dirname(foreign[0])} holds {len(foreign)} file(s) this run '
                           f'does not write ({", ".join(foreign[:3])}) and no record says which run wrote them; '
                           'move them away or choose another folder')
        self.runs, self.record = None, None

    def take(self):
        """Make the folder (CRWError if it cannot be written), remove the outputs ``overwrite`` replaces and
        the temporary files of killed writes, and record this run."""
        plan = self.plan
        writable_folder(plan.folder, plan.flag)
        _remove(plan.folder, self.remove)
        remove_stale_temps(plan.folder, plan.files)
        self.record = {'tool': plan.tool, 'command': plan.command, 'unit': plan.unit, 'status': 'running',
                       'started': _now(), 'files': list(plan.files), 'info': dict(plan.info)}
        self.runs = self.kept + [self.record]
        write_manifest(plan.folder, self.runs)
        return self

    def finish(self, **info):
        self.record['info'].update(info)
        self.record['status'] = 'complete'
        self.record['finished'] = _now()
        write_manifest(self.plan.folder, self.runs)


def claim_outputs(plan, inputs, overwrite=False):
    """``OutputClaim(plan, inputs, overwrite).take()``: check, then record; nothing is written if a check fails."""
    return OutputClaim(plan, inputs, overwrite).take()


# ---------------------------------------------------------------------------------------------- one writer
class FolderLock:
    """An exclusive advisory lock on ``folder``/``name`` (``fcntl.flock``), held until ``release()`` or the end
    of the process (the OS drops it when the process dies, so a killed run leaves nothing stuck). ``acquire``
    raises CRWError naming the process that holds it. The file keeps the holder's pid for that message."""

    def __init__(self, folder, name='.crw.lock'):
        self.path = os.path.join(folder, name)
        self.fd = None

    def acquire(self, flag, what='another run'):
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 64).decode(errors='replace').strip() or '?'
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CRWError(f'{flag} {os.path.dirname(self.path)}: cannot lock {self.path} ({e.strerror})') from e
            raise CRWError(f'{flag} {os.path.dirname(self.path)}: {what} (pid {holder}) is using it (lock '
                           f'{self.path}); wait for it to end, or choose another {flag}') from None
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
