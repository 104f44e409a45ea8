"""Small helpers: git revision, peak memory, formatted times."""
import datetime
import os
import resource
import subprocess
import sys

import torch


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


def peak_memory_mb(device):
    """Peak CUDA memory allocated on ``device`` or, on CPU, the process's peak resident set size (MB)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def format_seconds(s):
    return str(datetime.timedelta(seconds=int(s)))
