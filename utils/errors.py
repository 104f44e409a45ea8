"""The project's error types.

Library code raises ``CRWError`` (or its subclass ``DecodeError``) with a one-line message that names the
file or flag at fault and says what to do. Each entry script catches it in its ``main`` and prints
``<script>: error: <message>`` with exit status 1 (``report``); nothing below an entry script exits.
"""
import contextlib
import re
import signal
import sys
import threading


_WORKER_MESSAGE = re.compile(r'^Caught \w+ in (DataLoader worker process \d+)\.\nOriginal Traceback', re.DOTALL)


class CRWError(Exception):
    """Bad input (a file, a flag, the data), described in one line.

    A DataLoader re-raises a worker's exception as ``type(e)(text)`` whose text is the worker's whole
    traceback; for CRWError that text is cut back to the original one-line message (its last line)."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_MESSAGE.match(args[0]):
            last = args[0].rstrip().splitlines()[-1]             # "<module>.<Type>: <message>"
            args = (last.split(': ', 1)[1] if ': ' in last else last,)
        super().__init__(*args)


class DecodeError(CRWError):
    """A video or image could not be read by any backend."""


def report(prog, error, stream=None):
    """Print ``error`` as the one-line message of entry script ``prog``; returns the exit status (1)."""
    text = ' '.join(str(error).split('\n')) or type(error).__name__
    print(f'{prog}: error: {text}', file=stream or sys.stderr, flush=True)
    return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so that the same clean-up runs."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread (clean-up in ``finally`` and
    ``except BaseException`` blocks runs, as for Ctrl-C); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(prog, error, what, stream=None):
    """Print the one line of an entry script stopped by Ctrl-C or SIGTERM (``error``), then ``what`` (the state
    on disk); returns the exit status a shell reports for that signal (130 or 143)."""
    sig = 'SIGTERM' if isinstance(error, Terminated) else 'Ctrl-C'
    print(f'{prog}: interrupted ({sig}); {what}', file=stream or sys.stderr, flush=True)
    return 143 if isinstance(error, Terminated) else 130
