"""One distributed set-up for every case: torchrun (one node or many, NCCL on GPUs, gloo on CPU), one GPU, CPU.

A process that loses its peers (a node killed, a network cut) fails its next collective: at once when the
peer's connection closes, after ``--dist-timeout`` seconds when the peer hangs. ``peer_failure`` recognises
those errors so that train.py can report them in one line instead of a traceback.
"""
import builtins
import datetime
import os
import re

import torch
import torch.distributed as dist
from torch import nn

from crw.utils.errors import CRWError


def init_distributed_mode(args):
    """Fill ``args.distributed, args.rank, args.world_size, args.local_rank`` and initialise the process group
    when launched by torchrun (RANK/WORLD_SIZE in the environment). Returns the torch.device to use."""
    want = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if want.startswith('cuda') and not torch.cuda.is_available():
        raise CRWError(f'--device {want}: CUDA is not available on this machine; use --device cpu')
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ and int(os.environ['WORLD_SIZE']) > 1:
        args.rank = int(os.environ['RANK'])
        args.world_size = int(os.environ['WORLD_SIZE'])
        args.local_rank = int(os.environ.get('LOCAL_RANK', 0))
        args.distributed = True
        if want.startswith('cuda'):
            torch.cuda.set_device(args.local_rank)
            device = torch.device('cuda', args.local_rank)
            backend = 'nccl'
        else:
            device = torch.device('cpu')
            backend = 'gloo'
        dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=args.world_size,
                                rank=args.rank, timeout=datetime.timedelta(seconds=args.dist_timeout))
        dist.barrier()
        if args.data_parallel:
            print('| --data-parallel is ignored under torchrun: each process drives one device')
            args.data_parallel = False
    else:
        args.rank, args.world_size, args.local_rank, args.distributed = 0, 1, 0, False
        device = torch.device(want)
    _silence_non_main(args.rank == 0)
    return device


_builtin_print = None


def _silence_non_main(is_main):
    """Only rank 0 prints (pass force=True to print from every rank)."""
    global _builtin_print
    if _builtin_print is None:
        _builtin_print = builtins.print
    builtin_print = _builtin_print

    def print_(*a, **kw):
        if is_main or kw.pop('force', False):
            kw.pop('force', None)
            builtin_print(*a, **kw)
    builtins.print = print_


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def all_reduce_mean(t):
    """Mean of a tensor over all processes (identity without distributed)."""
    if not is_dist():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def cleanup():
    if is_dist():
        dist.destroy_process_group()


def sync_batchnorm(model, args, device):
    """``--sync-bn``: BatchNorm statistics over all processes of a torchrun job (SyncBatchNorm, GPUs only).
    Without it each process normalises with its own batch, as the release did per GPU under DataParallel."""
    if not getattr(args, 'sync_bn', False):
        return model
    if not args.distributed:
        print('| --sync-bn: a single process has nothing to synchronise; plain BatchNorm')
        return model
    if torch.device(device).type != 'cuda':
        raise CRWError('--sync-bn: SyncBatchNorm runs on GPUs only; drop it for --device cpu')
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


_SOURCE_LOCATION = re.compile(r'\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*')
_PEER_WORDS = ('gloo', 'nccl', 'connection closed', 'connection reset', 'broken pipe', 'timed out', 'timeout')


def peer_failure(error):
    """A one-line description when ``error`` is a failed collective of a distributed run (a peer died or
    hung), else None."""
    if not is_dist() or not isinstance(error, RuntimeError):
        return None
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not (isinstance(error, dist.DistError) or any(w in text.lower() for w in _PEER_WORDS)):
        return None
    return _SOURCE_LOCATION.sub('', text).split('. ')[0][:300]   # gloo adds advice after the first sentence


def all_rng_states(state):
    """Every process's ``state`` (an RNG state dict) as a list indexed by rank, gathered on all processes
    (a collective: call it on every rank); ``[state]`` without distributed."""
    if not is_dist():
        return [state]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def check_same(value, what):
    """Raise CRWError on every process unless all processes hold the same ``value`` (a collective; no-op
    without distributed). ``what`` names the value in the message."""
    if not is_dist():
        return
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise CRWError(f'the processes of this torchrun job disagree on {what}: '
                       + ', '.join(f'rank {r}: {v}' for r, v in enumerate(values)))
