"""Shared test set-up: the repository root, entry scripts loaded by path, training data and argv for train.py,
a DAVIS layout with a scratch checkpoint and argv for test.py, and the one-line error of a script's stderr.

pytest.ini puts the repository root on sys.path (``pythonpath = .``, as ``python train.py`` has it) and
registers the ``slow`` marker: ``pytest -m "not slow" tests`` leaves out the tests that start Python
subprocesses (entry scripts, torchrun) or run the whole demo. test_propagation.py has its own ``davis``.
"""
import argparse
import errno
import importlib.util
import io
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from crw.data.synthetic import make_sequence, write_davis_layout, write_frame_folder
from crw.model import CRW
from crw.utils.arguments import train_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two cores: keep intra-op threads modest so parallel test processes don't thrash.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def repo_root():
    return ROOT


def load_script(name):
    """Import a top-level entry script (e.g. 'test.py') by path, under a name that cannot shadow the standard
    library (``import test`` would name Python's own test package)."""
    mod_name = 'crw_script_' + os.path.splitext(os.path.basename(name))[0]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, os.path.join(ROOT, name))
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def train_frame_list(tmp_path_factory):
    """A --data-path for train.py: eight frame folders of 12 frames (72x88; one clip each per epoch: 4 steps
    of 2), listed one "<folder> 12" a line."""
    d = tmp_path_factory.mktemp('frames')
    lines = []
    for v in range(8):
        seq = make_sequence(num_frames=12, height=72, width=88, num_objects=2, seed=v)
        folder = d / f'vid{v}'
        write_frame_folder(str(folder), seq['frames'])
        lines.append(f'{folder} 12')
    path = d / 'list.txt'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def small_train_args(frame_list, out, *extra):
    """train.py's namespace for a run small enough for a test: a 2x2 grid of 32x32 patches on 64x64 frames,
    3 frames, batch 2, CPU, without layer4 (which only slows the tests)."""
    return train_args(['--data-path', frame_list, '--frame-aug', 'grid', '--img-size', '64', '--patch-size', '32', '32',
                       '--clip-len', '3', '--frame-skip', '1', '--batch-size', '2', '--workers', '0', '--temp', '0.05',
                       '--dropout', '0.1', '--device', 'cpu', '--output-dir', str(out), '--print-freq', '1',
                       '--seed', '3', '--remove-layers', 'layer4', *extra])


@pytest.fixture(scope='module')
def frame_list(tmp_path_factory):
    """Four tiny frame folders (one clip each per epoch: 2 steps of 2 at --batch-size 2)."""
    d = tmp_path_factory.mktemp('frames')
    lines = []
    for v in range(4):
        seq = make_sequence(num_frames=6, height=40, width=40, num_objects=1, seed=v, object_size=(12, 16))
        write_frame_folder(str(d / f'vid{v}'), seq['frames'])
        lines.append(f'{d / f"vid{v}"} 6')
    (d / 'list.txt').write_text('\n'.join(lines) + '\n')
    return str(d / 'list.txt')


def train_argv(data, out, *extra):
    """A whole-frame run small enough for a test (32x32 frames: 16 nodes, 3 frames, batch 2; without layer4,
    which holds three quarters of the weights)."""
    return ['--data-path', data, '--frame-aug', '', '--img-size', '32', '--clip-len', '3', '--frame-skip', '1',
            '--batch-size', '2', '--workers', '0', '--temp', '0.05', '--device', 'cpu', '--output-dir', str(out),
            '--print-freq', '1', '--seed', '3', '--epochs', '1', '--remove-layers', 'layer4', *extra]


def one_line(text, marker='error:'):
    """The error message of a script's stderr: exactly one line holds ``marker`` and there is no traceback
    (progress bars and [data] warnings may share stderr)."""
    lines = [x for x in text.replace('\r', '\n').splitlines() if marker in x]
    assert len(lines) == 1 and 'Traceback' not in text, text
    return lines[0]


def run_test_py(argv):
    return load_script('test.py').main(argv)


def only_line(capsys):
    """stderr since the last read holds exactly one line: return it (a script's one-line error)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def ids_of(path):
    """The label ids of a written palette PNG."""
    return np.asarray(Image.open(path))


@pytest.fixture(scope='module')
def davis(tmp_path_factory):
    """A DAVIS layout (two sequences) and a scratch checkpoint saved as train.py saves it (dict args)."""
    root = tmp_path_factory.mktemp('davis')
    seqs = {'three': make_sequence(num_frames=4, height=40, width=48, num_objects=3, seed=1),
            'two': make_sequence(num_frames=3, height=32, width=32, num_objects=2, seed=2)}
    filelist = write_davis_layout(str(root), seqs)
    torch.manual_seed(0)
    ckpt = str(root / 'scratch.pth')
    torch.save({'model': CRW(argparse.Namespace(model_type='scratch')).state_dict(),
                'args': {'model_type': 'scratch'}}, ckpt)
    return str(root), filelist, ckpt, seqs


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    """A scratch CRW checkpoint with no saved args (test.py --video's tests)."""
    path = str(tmp_path_factory.mktemp('ck') / 'scratch.pth')
    torch.manual_seed(0)
    m = CRW(argparse.Namespace(model_type='scratch', head_depth=0, remove_layers=[]))
    torch.save({'model': m.state_dict()}, path)
    return path


def prop_argv(filelist, ckpt, save, *extra):
    return ['--filelist', filelist, '--resume', ckpt, '--save-path', str(save), '--cropSize', '-1', '--workers', '0',
            '--device', 'cpu', '--topk', '5', '--videoLen', '2', '--radius', '4', *extra]


class FullDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes free: a write beyond them raises ENOSPC, as the OS does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()
