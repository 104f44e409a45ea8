"""A local visdom server for tests and benchmarks (tests/test_visualize.py, bench/vis_overhead.py)."""
import contextlib
import os
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_visdom_server(folder, timeout=60):
    """``with local_visdom_server(folder) as port:`` a visdom server on a free localhost port (tests, benchmarks).

    Started through ``visdom.server.run_server.main`` with -bind_local, which, unlike ``python -m
    visdom.server``, downloads nothing (the API works; a browser page would lack its scripts). Its log and
    saved environments go to ``folder``. Stopped on exit.
    """
    port = free_port()
    log_path = os.path.join(folder, 'server.log')
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([sys.executable, '-c', 'from visdom.server.run_server import main; main()',
                                 '-port', str(port), '-bind_local', '-env_path', os.path.join(folder, '')],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    socket.create_connection(('localhost', port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        with open(log_path) as f:
                            raise RuntimeError(f'the visdom server did not start: {f.read()[-2000:]}') from None
                    time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=30)
