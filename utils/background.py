"""Background jobs: ``AsyncWriter`` runs write jobs (PNG/JPEG/video encoding, drawing, sending) on threads so
that the device does not wait on them; at most ``max_pending`` are queued, errors are re-raised by
``wait()``/``close()``, and with one thread the jobs run in the order they were submitted."""
import concurrent.futures
import threading


class AsyncWriter:
    """``submit(fn, *args)`` a job; ``wait()`` for every job so far; ``close()`` waits and stops the threads."""

    def __init__(self, threads=2, max_pending=16):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
        self.slots = threading.Semaphore(max_pending)
        self.futures = []

    def submit(self, fn, *a):
        self.slots.acquire()
        fut = self.pool.submit(fn, *a)
        fut.add_done_callback(lambda _: self.slots.release())
        self.futures.append(fut)
        if len(self.futures) > 256:
            self.futures = [f for f in self.futures if not f.done() or f.exception()]

    def wait(self):
        for f in self.futures:
            f.result()
        self.futures = []

    def close(self):
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)
