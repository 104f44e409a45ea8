"""Strip a train.py checkpoint to what propagation needs: the model state dict (release key layout) and the
training args, e.g. to publish it as pretrained.pth.

    python scripts/export_checkpoint.py checkpoints/<run>/model_7.pth pretrained.pth

The args are written as a plain dict (a release checkpoint's argparse.Namespace is converted), so the output
loads with ``torch.load(weights_only=True)``.
"""
import argparse
import os
import sys

if __name__ == '__main__' and not __package__:  # run by path: scripts/, not the repository, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crw.utils.arguments import OneLineParser  # noqa: E402
from crw.utils.checkpoint import atomic_save, checkpoint_args, clean_state_dict, load_checkpoint  # noqa: E402
from crw.utils.errors import CRWError, report  # noqa: E402


def main(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint')
    p.add_argument('out')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='allow full unpickling of an input that the safe loader refuses (only for trusted files)')
    a = p.parse_args(argv)
    try:
        ckpt = load_checkpoint(a.checkpoint, map_location='cpu', trust=a.trust_checkpoint)
    except CRWError as e:
        return report('export_checkpoint.py', e)
    state = {'model': {k: v.contiguous() for k, v in clean_state_dict(ckpt['model']).items()}}
    if 'args' in ckpt:
        state['args'] = checkpoint_args(ckpt)
    for key in ('epoch', 'global_step'):
        if key in ckpt:
            state[key] = ckpt[key]
    atomic_save(state, a.out)
    print(f'{a.out}: {len(state["model"])} tensors, {os.path.getsize(a.out) / 2 ** 20:.1f} MB')
    return 0


if __name__ == '__main__':
    sys.exit(main())
