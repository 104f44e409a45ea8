"""The project's error types.

Library code raises ``CRWError`` (or its subclass ``DecodeError``) with a one-line message that names the
file or flag at fault and says what to do. Each entry script catches it in its ``main`` and prints
``<script>: error: <message>`` with exit status 1 (``report``); nothing below an entry script exits.
"""
import sys


class CRWError(Exception):
    """Bad input (a file, a flag, the data), described in one line."""


class DecodeError(CRWError):
    """A video or image could not be read by any backend."""


def report(prog, error, stream=None):
    """Print ``error`` as the one-line message of entry script ``prog``; returns the exit status (1)."""
    text = ' '.join(str(error).split('\n')) or type(error).__name__
    print(f'{prog}: error: {text}', file=stream or sys.stderr, flush=True)
    return 1
