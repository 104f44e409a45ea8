"""Small helpers: atomic file writing, git revision, run header, peak memory, formatted times, CPU name."""
import contextlib
import datetime
import glob
import os
import platform
import resource
import subprocess
import sys
import tempfile

import torch

from crw.utils.errors import CRWError

TMP_SUFFIX = '.tmp'


def temp_name_prefix(path):
    """Prefix of the temporary files ``atomic_write`` makes beside ``path`` (``.<name>.``)."""
    return '.' + os.path.basename(path) + '.'


@contextlib.contextmanager
def atomic_write(path, mode='wb', **open_kwargs):
    """Write ``path`` all or nothing: yields a file object on a temporary file in the same folder
    (``.<name>.<random>.tmp``), which is flushed, synced and renamed over ``path`` when the block ends
    without error, and removed otherwise. A crash or Ctrl-C mid-write leaves the previous file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=temp_name_prefix(path), suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def writable_folder(path, flag):
    """Make sure ``path`` is (or can be made) a folder this process can write into; raises CRWError naming
    ``flag`` otherwise (a file in the way, a read-only place). Call it before the long work that fills it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CRWError(f'{flag} {path}: is a file, not a folder; pass a folder path')
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix='.write-test.', suffix=TMP_SUFFIX, dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CRWError(f'{flag} {path}: cannot write there ({e.strerror or type(e).__name__}); '
                       'pick a writable folder') from e
    return path


def remove_stale_temp_files(folder, names):
    """Remove the temporary files that an ``atomic_write`` of ``folder/<name>`` killed mid-write left behind
    (``names`` may hold glob patterns such as ``model_*.pth``); returns their paths."""
    removed = []
    for name in names:
        for p in sorted(glob.glob(os.path.join(glob.escape(folder), temp_name_prefix(name) + '*' + TMP_SUFFIX))):
            with contextlib.suppress(OSError):
                os.remove(p)
                removed.append(p)
    return removed


def git_revision():
    """Short git hash of the repository (plus '-dirty' with local changes), or 'unknown'."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.check_output(['git', 'rev-parse', '--short', 'HEAD'], cwd=root,
                                      stderr=subprocess.DEVNULL).decode().strip()
        dirty = subprocess.call(['git', 'diff', '--quiet', 'HEAD'], cwd=root, stderr=subprocess.DEVNULL)
        return sha + ('-dirty' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def print_run_header(args, title):
    print(f'{title} | git {git_revision()} | torch {torch.__version__} | python {sys.version.split()[0]}')
    print('\n'.join(f'  {k}: {v}' for k, v in sorted(vars(args).items())))


def reset_peak_memory(device):
    """Start a new peak-memory window: the CUDA allocator's peak, or the process's peak RSS (Linux clear_refs)."""
    if torch.device(device).type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def peak_memory_bytes(device):
    """CUDA max allocated on ``device``, or the process's peak RSS since the last reset (VmHWM; ru_maxrss
    where /proc is absent)."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_memory_mb(device):
    return peak_memory_bytes(device) / 2 ** 20


def format_seconds(s):
    return str(datetime.timedelta(seconds=int(s)))


def cpu_name():
    """The CPU's model name (for benchmark tables)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'cpu'


def default_workers(limit=8):
    """Processes for per-sequence work: the CPUs this process may use, at most ``limit``."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(limit, n))
