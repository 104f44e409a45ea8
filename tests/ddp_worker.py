"""torchrun target of tests/test_multinode.py: train.py itself (``train.cli``), with two test-only hooks set by
environment variables:

* ``CRW_TEST_DUMP=<folder>``: after training, write this rank's weights (parameters and buffers) to
  ``<folder>/rank<r>.pt`` (train.py saves rank 0's only);
* ``CRW_TEST_STALL=<step>:<file>``: this process stops responding before that global step (a node that
  hangs until it is killed) after writing "<its pid> <its torchrun agent's pid>" to <file>, so that a test
  can kill that node while the others wait in a collective.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import train  # noqa: E402
from crw.utils.checkpoint import unwrap_model  # noqa: E402


def main():
    captured = {}
    wrap = train.wrap_model

    def capture(model, args, device):
        captured['model'] = model
        return wrap(model, args, device)
    train.wrap_model = capture

    stall_at, _, stall_file = os.environ.get('CRW_TEST_STALL', '-1:').partition(':')
    mix_seed = train.mix_seed

    def stalling_mix_seed(seed, step, rank):            # called once per step, before the forward
        if step == int(stall_at):
            with open(stall_file + '.tmp', 'w') as f:
                f.write(f'{os.getpid()} {os.getppid()}')
            os.replace(stall_file + '.tmp', stall_file)
            time.sleep(3600)
        return mix_seed(seed, step, rank)
    train.mix_seed = stalling_mix_seed

    rc = train.cli()
    dump = os.environ.get('CRW_TEST_DUMP')
    if rc == 0 and dump and 'model' in captured:
        rank = int(os.environ.get('RANK', 0))
        torch.save(unwrap_model(captured['model']).state_dict(), os.path.join(dump, f'rank{rank}.pt'))
    return rc


if __name__ == '__main__':
    sys.exit(main())
