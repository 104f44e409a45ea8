"""Background jobs: ``AsyncWriter`` runs write jobs (PNG/JPEG/video encoding, drawing, sending) on threads so
that the device does not wait on them; at most ``max_pending`` are queued, and with one thread the jobs run in
the order they were submitted. A job's error is raised by the next ``submit`` (the run stops at the first
failed write, not after the whole video), and by ``wait()``/``close()``; ``abort()`` drops the queued jobs."""
import concurrent.futures
import threading


class AsyncWriter:
    """``submit(fn, *args)`` a job; ``wait()`` for every job so far; ``close()`` waits and stops the threads;
    ``abort()`` cancels the jobs not started, waits for the running ones and raises nothing."""

    def __init__(self, threads=2, max_pending=16):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
        self.slots = threading.Semaphore(max_pending)
        self.futures = []
        self.error = None

    def _done(self, fut):
        self.slots.release()
        if self.error is None and not fut.cancelled() and fut.exception() is not None:
            self.error = fut.exception()

    def _raise_error(self):
        if self.error is not None:
            raise self.error

    def submit(self, fn, *a):
        self._raise_error()
        self.slots.acquire()
        try:
            self._raise_error()      # a job may have failed while this one waited for a slot
        except BaseException:
            self.slots.release()
            raise
        fut = self.pool.submit(fn, *a)
        fut.add_done_callback(self._done)
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

    def abort(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.futures = []
