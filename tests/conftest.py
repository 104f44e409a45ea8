import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Two cores: keep intra-op threads modest so parallel test processes don't thrash.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def repo_root():
    return ROOT


def load_script(name):
    """Import a top-level entry script (e.g. 'test.py') by path, under a name that cannot shadow the standard
    library (``import test`` would name Python's own test package)."""
    import importlib.util
    mod_name = 'crw_script_' + os.path.splitext(os.path.basename(name))[0]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, os.path.join(ROOT, name))
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: subprocess tests that take tens of seconds')
