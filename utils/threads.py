"""Thread defaults for the entry scripts, set before torch is first imported (OpenMP reads them once, when it
loads). Import this module first:

    import crw.utils.threads  # noqa: F401,I001  (before torch: OpenMP settings)

OMP_WAIT_POLICY=PASSIVE: between parallel regions OpenMP threads sleep instead of spinning. On a machine
whose cores are shared with other jobs, spinning threads burn the time slices the working thread needs, and
every small parallel region waits for a descheduled partner (slower frames and training steps);
``bench/threads.py`` compares the policies. A value the user set (OMP_WAIT_POLICY, or GOMP_SPINCOUNT) is kept.
"""
import os

if 'OMP_WAIT_POLICY' not in os.environ and 'GOMP_SPINCOUNT' not in os.environ:
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'
