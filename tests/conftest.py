"""Shared test set-up: the repository root, entry scripts loaded by path, and training data for train.py.

pytest.ini puts the repository root on sys.path (``pythonpath = .``, as ``python train.py`` has it) and
registers the ``slow`` marker: ``pytest -m "not slow" tests`` leaves out the tests that start Python
subprocesses (entry scripts, torchrun) or run the whole demo.
"""
import importlib.util
import os
import sys

import pytest
import torch

from crw.data.synthetic import make_sequence, write_frame_folder
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
