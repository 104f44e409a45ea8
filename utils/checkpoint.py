"""Checkpoints: atomic saving, RNG state for exact resume, loading (this project's and the release's files),
key clean-up and partial loading (the pretrained encoders' weight files: ``utils.encoder_weights``).

Checkpoints of this project and of the videowalk release hold the model's state dict under ``'model'`` with
keys ``encoder.model.<torchvision ResNet keys>`` and ``selfsim_fc.<i>.*``. Nothing here downloads anything.
"""
import argparse
import collections
import os
import pickle
import re

import torch
import torch.nn as nn

from crw.utils.errors import CRWError
from crw.utils.misc import atomic_write


# ---------------------------------------------------------------------------------------------- saving
def atomic_save(obj, path):
    """torch.save ``obj`` to ``path`` all or nothing (see ``utils.misc.atomic_write``); a failed write (a full
    disk) raises CRWError naming ``path``, the previous file at ``path`` intact. Ctrl-C in the middle
    raises KeyboardInterrupt (torch's zip writer would replace it by 'RuntimeError: ... unexpected pos' while
    closing the half-written archive)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with atomic_write(path) as f:
            try:
                torch.save(obj, f)
            except Exception as e:
                if _interrupted(e):
                    raise KeyboardInterrupt from None
                raise
    except (OSError, RuntimeError) as e:    # a full disk (torch reports it as 'unexpected pos'), a lost mount
        cause = _os_error(e)
        reason = cause.strerror if cause is not None and cause.strerror else 'is the disk full?'
        raise CRWError(f'{path}: cannot write the checkpoint ({reason})') from e


def _os_error(error):
    """The first OSError in the chain of exceptions that led to ``error`` (itself included), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _interrupted(error):
    """True if a KeyboardInterrupt is in the chain of exceptions that led to ``error``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def rng_state():
    """Global RNG states (edge dropout, feature dropout draw from them) for exact resume."""
    state = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    if not state:
        return
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state['cuda'])
        except (RuntimeError, IndexError):  # resumed on a machine with a different GPU count
            pass


def unwrap_model(model):
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------------------------------------- loading
# The only non-tensor classes in the release's train.py checkpoints: its args (argparse.Namespace) and its
# MultiStepLR milestones (collections.Counter). The safe loader may rebuild these two (plain attribute/key
# containers); anything else needs full unpickling, which can run code stored in the file.
RELEASE_SAFE_GLOBALS = (argparse.Namespace, collections.Counter)
_GLOBAL = re.compile(r'GLOBAL ([\w.]+)')


def _torch_load(path, map_location, trust=False):
    """torch.load in weights_only mode (with ``RELEASE_SAFE_GLOBALS`` allowed). A file that needs more is
    refused with CRWError unless ``trust``; then it is unpickled in full, saying so in one line."""
    try:
        with torch.serialization.safe_globals(list(RELEASE_SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if 'weights only' not in str(e).lower():
            raise
        found = _GLOBAL.search(str(e))
        what = f'it stores a {found.group(1)} object' if found else 'it stores more than tensors and containers'
        if not trust:
            raise CRWError(f'checkpoint {path}: the safe loader (torch.load weights_only) refuses it: {what}; '
                           'loading it needs full unpickling, which can run code stored in the file: pass '
                           '--trust-checkpoint if you trust its source') from e
        print(f'checkpoint {path}: {what}, which the safe loader refuses; unpickling it in full (--trust-checkpoint)')
        return torch.load(path, map_location=map_location, weights_only=False)


def load_checkpoint(path, map_location='cpu', trust=False):
    """Read a checkpoint file -> dict with at least ``'model'`` (a raw state dict is wrapped as
    ``{'model': sd}``). Loaded with ``torch.load(weights_only=True)``; see ``_torch_load`` for ``trust``. A
    missing, unreadable or refused file raises CRWError."""
    if not path or not os.path.isfile(path):
        raise CRWError(f'checkpoint {path!r}: no such file')
    try:
        ckpt = _torch_load(path, map_location, trust)
    except CRWError:
        raise
    except Exception as e:  # truncated file, not a torch file, ...
        first = str(e).splitlines()[0] if str(e) else ''
        raise CRWError(f'checkpoint {path}: cannot be read ({type(e).__name__}: {first})') from e
    if isinstance(ckpt, dict) and 'model' in ckpt and isinstance(ckpt['model'], dict):
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return {'model': ckpt}
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        return dict(ckpt, model=ckpt['state_dict'])
    raise CRWError(f"checkpoint {path}: neither a state dict nor a dict with a 'model' state dict")


def checkpoint_args(ckpt):
    """The training args stored in a checkpoint as a dict: this project's files store ``vars(args)``, the
    release's an argparse.Namespace; {} when there are none."""
    args = ckpt.get('args') if isinstance(ckpt, dict) else None
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}


_WRAPPER_PARTS = ('module', '_orig_mod')          # DataParallel/DDP, torch.compile
_OLD_CONV = re.compile(r'(^|\.)(conv[12])\.1\.weight$')  # release's old padded-conv wrappers


def clean_state_dict(sd):
    """Return a new state dict with wrapper prefixes (``module.``, ``_orig_mod.``) removed from the keys and the
    release's old wrapped-conv keys renamed (``...conv1.1.weight`` -> ``...conv1.weight``, same for conv2)."""
    out = {}
    for k, v in sd.items():
        parts = [p for p in k.split('.') if p not in _WRAPPER_PARTS]
        k2 = _OLD_CONV.sub(r'\1\2.weight', '.'.join(parts))
        out[k2] = v
    return out


def _abbrev(keys, n=6):
    keys = list(keys)
    return '[' + ', '.join(keys[:n]) + (f', ... +{len(keys) - n} more' if len(keys) > n else '') + ']'


def partial_load(model, state_dict, skip_keys=(), verbose=True):
    """Load the entries of ``state_dict`` that the model has with the same shape; leave the rest as is.

    Keys containing any string of ``skip_keys`` are not loaded (propagation passes ('selfsim_fc',)). The
    state dict is cleaned first (``clean_state_dict``) and a wrapped model is unwrapped.
    Returns (loaded, missing, unexpected): lists of key names; missing = model keys left untouched;
    unexpected = checkpoint keys not loaded (absent from the model, other shape, or skipped).
    Prints a one-line summary.
    """
    net = unwrap_model(model)
    sd = clean_state_dict(state_dict)
    own = net.state_dict()
    skip_keys = tuple(skip_keys or ())
    loaded, skipped, mismatched, absent = [], [], [], []
    for k, v in sd.items():
        if any(s in k for s in skip_keys):
            skipped.append(k)
        elif k not in own:
            absent.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            mismatched.append(k)
        else:
            loaded.append(k)
    own.update({k: sd[k] for k in loaded})
    net.load_state_dict(own)
    loaded_set = set(loaded)
    missing = [k for k in own if k not in loaded_set]
    unexpected = skipped + mismatched + absent
    if verbose:
        msg = f'partial_load: loaded {len(loaded)}/{len(own)} model keys'
        if missing:
            msg += f'; missing {len(missing)} {_abbrev(missing)}'
        if skipped:
            msg += f'; skipped {len(skipped)} {_abbrev(skipped)}'
        if mismatched:
            msg += f'; shape mismatch {len(mismatched)} {_abbrev(mismatched)}'
        if absent:
            msg += f'; unexpected {len(absent)} {_abbrev(absent)}'
        print(msg)
    return loaded, missing, unexpected


ARCH_FLAGS = ('model_type', 'head_depth', 'remove_layers')   # flags that change the model's weights


def check_architecture(ckpt, args, path):
    """Raise CRWError (one line) when the checkpoint's stored training args name another architecture
    (``ARCH_FLAGS``) than ``args``; files without args pass (their state dict is checked on loading)."""
    saved = checkpoint_args(ckpt)
    diffs = []
    for k in ARCH_FLAGS:
        if k in saved and hasattr(args, k):
            a, b = saved[k], getattr(args, k)
            if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
                flag = '--' + k.replace('_', '-')
                diffs.append(f'{flag} {_flag_value(a)} (this run: {_flag_value(b)})')
    if diffs:
        raise CRWError(f'checkpoint {path} was trained with {", ".join(diffs)}: resume with its flags, or use '
                       'another --output-dir for a new run')


def _flag_value(v):
    return ' '.join(map(str, v)) if isinstance(v, (list, tuple)) and v else ("''" if v in ([], ()) else str(v))


def load_state_strict(model, state_dict, path):
    """``load_state_dict`` of a cleaned state dict that must fit ``model`` exactly; a file of another
    architecture raises CRWError with one line (counts and a few key names) instead of torch's key list."""
    net = unwrap_model(model)
    sd = clean_state_dict(state_dict)
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f'{k} {list(sd[k].shape)} in the file, {list(own[k].shape)} here' for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f'{len(missing)} of the model\'s {len(own)} weights missing {_abbrev(missing, 3)}')
        if unexpected:
            parts.append(f'{len(unexpected)} unknown {_abbrev(unexpected, 3)}')
        if shapes:
            parts.append(f'{len(shapes)} of another shape ({shapes[0]})')
        raise CRWError(f'checkpoint {path} does not fit this model ({"; ".join(parts)}): it was trained with other '
                       '--model-type/--head-depth/--remove-layers flags, or is not a CRW checkpoint')
    net.load_state_dict(sd)


def is_release_scheduler(state):
    """True for the state dict of the release's MultiStepLR (milestones in iterations, a Counter)."""
    return isinstance(state, dict) and 'milestones' in state and 'lr_lambdas' not in state


def release_scheduler_state(state):
    """The release's MultiStepLR state dict -> the state dict of this project's per-iteration schedule
    (LambdaLR over ``StepSchedule``): same milestones (iterations), gamma, base lrs and step count."""
    milestones = sorted(int(m) for m in collections.Counter(state['milestones']).elements())
    last = int(state['last_epoch'])
    return {'lr_lambdas': [{'warmup': 0, 'milestones': milestones, 'gamma': float(state['gamma'])}
                           for _ in state['base_lrs']],
            'base_lrs': list(state['base_lrs']), 'last_epoch': last,
            '_step_count': int(state.get('_step_count', last + 1)),
            '_last_lr': list(state.get('_last_lr', state['base_lrs']))}
