"""What every benchmark script shares: the machine's name for the table header, and printing the table and
appending it to bench/RESULTS.md."""
import os

import torch

from crw.utils.misc import cpu_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'RESULTS.md')


def device_name(device):
    """The GPU's name, or the CPU's model and core count."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{cpu_name()}, {os.cpu_count()} cores'


def publish(table, write=True):
    """Print a markdown table and, unless ``write`` is False, append it to bench/RESULTS.md."""
    print(table)
    if write:
        with open(RESULTS, 'a') as f:
            f.write(table + '\n')
