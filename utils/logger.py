"""A small metric logger: smoothed scalars, iteration and data time, clips/s, memory and ETA per log line."""
import json
import os
import time
from collections import defaultdict, deque

import torch

from crw.utils.misc import atomic_write, format_seconds, peak_memory_mb


class SmoothedValue:
    """Window median/average plus the global average of a scalar stream."""

    def __init__(self, window=20, fmt='{median:.4f} ({global_avg:.4f})'):
        self.deque = deque(maxlen=window)
        self.total, self.count, self.fmt = 0.0, 0, fmt

    def update(self, value, n=1):
        self.deque.append(value)
        self.count += n
        self.total += value * n

    @property
    def median(self):
        return float(torch.tensor(list(self.deque)).median()) if self.deque else 0.0

    @property
    def avg(self):
        return sum(self.deque) / max(len(self.deque), 1)

    @property
    def global_avg(self):
        return self.total / max(self.count, 1)

    @property
    def value(self):
        return self.deque[-1] if self.deque else 0.0

    def __str__(self):
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    """Collects scalars and prints one line every ``print_freq`` iterations:
    ``header [it/total] eta lr loss ... clips/s time data mem``."""

    def __init__(self, device, batch_size, delimiter='  '):
        self.meters = defaultdict(SmoothedValue)
        self.device, self.batch_size, self.delimiter = device, batch_size, delimiter

    def update(self, **kwargs):
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(float(v))

    def __str__(self):
        return self.delimiter.join(f'{k}: {m}' for k, m in self.meters.items())

    def state_dict(self):
        """{name: {'total', 'count'}}: what the meters' global averages are made of (kept in a mid-epoch
        checkpoint so that a resumed epoch averages over all of its iterations)."""
        return {k: {'total': m.total, 'count': m.count} for k, m in self.meters.items()}

    def load_state_dict(self, state):
        for k, v in (state or {}).items():
            self.meters[k].total, self.meters[k].count = float(v['total']), int(v['count'])

    def log_every(self, iterable, print_freq, header='', total=None, start=0):
        """Yield from ``iterable`` (``total`` items, counting from ``start``), timing data loading and steps."""
        total = len(iterable) if total is None else total
        it_time, data_time = SmoothedValue(fmt='{avg:.3f}'), SmoothedValue(fmt='{avg:.3f}')
        width = len(str(total))
        t_start = end = time.time()
        i = start
        for obj in iterable:
            data_time.update(time.time() - end)
            yield obj
            it_time.update(time.time() - end)
            i += 1
            if i % print_freq == 0 or i == total:
                eta = it_time.global_avg * (total - i)
                print(self.delimiter.join([
                    f'{header} [{i:{width}d}/{total}]', f'eta: {format_seconds(eta)}', str(self),
                    f'clips/s: {self.batch_size / max(it_time.avg, 1e-9):.1f}',
                    f'time: {it_time}', f'data: {data_time}',
                    f'mem: {peak_memory_mb(self.device):.0f}MB']), flush=True)
            end = time.time()
            if i >= total:
                break
        elapsed = time.time() - t_start
        n = max(i - start, 1)
        print(f'{header} total time: {format_seconds(elapsed)} ({elapsed / n:.3f} s/it, '
              f'{self.batch_size * n / max(elapsed, 1e-9):.1f} clips/s)', flush=True)


def append_json_line(path, record):
    """Append one JSON record as a line (the per-epoch and per-interval logs)."""
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
        f.flush()
        os.fsync(f.fileno())


def truncate_json_lines(path, key, last):
    """Drop the records of a JSON-lines log whose ``key`` exceeds ``last`` (what a resumed run will write
    again), rewriting the file atomically; returns how many were dropped. Unparsable lines are kept."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            value = json.loads(line).get(key)
        except (ValueError, AttributeError):
            value = None
        if value is None or value <= last:
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        with atomic_write(path, 'w') as f:
            f.writelines(keep)
    return dropped
