"""Strip a train.py checkpoint to what propagation needs: the model state dict (release key layout) and the
training args, e.g. to publish it as pretrained.pth.

    python scripts/export_checkpoint.py checkpoints/<run>/model_7.pth pretrained.pth
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.checkpoint import atomic_save, clean_state_dict, load_checkpoint  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint')
    p.add_argument('out')
    a = p.parse_args(argv)
    ckpt = load_checkpoint(a.checkpoint, map_location='cpu')
    state = {'model': {k: v.contiguous() for k, v in clean_state_dict(ckpt['model']).items()}}
    for key in ('args', 'epoch', 'global_step'):
        if key in ckpt:
            state[key] = ckpt[key]
    atomic_save(state, a.out)
    print(f'{a.out}: {len(state["model"])} tensors, {os.path.getsize(a.out) / 2 ** 20:.1f} MB')


if __name__ == '__main__':
    main()
