"""Start-up settings of the entry scripts (train.py, test.py). Import this module before anything else, and
call ``imports_done()`` after the script's last import:

    import crw.utils.startup  # noqa: I001  (first: before torch loads)
    ...                       # the script's imports
    crw.utils.startup.imports_done()

Threads: OMP_WAIT_POLICY=PASSIVE, set before torch is first imported (OpenMP reads it once, when it loads).
Between parallel regions OpenMP threads then sleep instead of spinning. On a machine whose cores are shared
with other jobs, spinning threads burn the time slices the working thread needs, and every small parallel
region waits for a descheduled partner (slower frames and training steps); ``bench/threads.py`` compares the
policies. A value the user set (OMP_WAIT_POLICY, or GOMP_SPINCOUNT) is kept.

Garbage collection: importing torch and torchvision creates about half a million objects that live until the
process ends. The cyclic collector is paused from this import until ``imports_done()``, which then moves every
object alive to the permanent generation (``gc.freeze``): later collections, and the ones at interpreter exit,
no longer walk them. Each module's import-time cycles are kept instead of collected (a few MB).
"""
import gc
import os

if 'OMP_WAIT_POLICY' not in os.environ and 'GOMP_SPINCOUNT' not in os.environ:
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'

_collecting = gc.isenabled()
gc.disable()


def imports_done():
    """Freeze the objects created so far (``gc.freeze``) and resume collection if it was on at import."""
    gc.freeze()
    if _collecting:
        gc.enable()
