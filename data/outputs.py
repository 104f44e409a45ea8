"""What label propagation writes: label maps as palette PNGs, blends of labels over frames, overlay videos; on
background threads, so that the device does not wait on PNG/JPEG/video encoding. Every file is written
atomically (``utils.misc.atomic_write``).

--filelist (the release's format): ``{save}/{i}_{t}_mask.png`` and ``{save}/{i}_{t}_blend.jpg`` (whole frame
half image, half label colour; ``write_mask_and_blend``).
--video (``SequenceWriter``): ``{save}/<video>/<frame>.png`` in the DAVIS result format (palette PNG, the
input mask's palette), ``{save}/<video>_overlay.mp4`` (label colours blended half and half over the object
pixels, outlines in full colour, background untouched) and, optionally, the same overlays as
``{save}/<video>_blend/<frame>.jpg``.
"""
import concurrent.futures
import os
import threading

import numpy as np
from PIL import Image

from data.images import davis_palette, save_indexed_png
from data.video_io import VideoWriter
from utils.misc import atomic_write


class AsyncWriter:
    """Runs write jobs on background threads, at most ``max_pending`` queued; close() re-raises errors. With
    one thread the jobs run in the order they were submitted."""

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


def blend_labels(frame, ids, palette=None, overlay=False):
    """frame [H, W, 3] uint8, ids [H, W] label ids -> [H, W, 3] uint8: half frame, half the ids' palette colour.
    overlay: pixels of id 0 keep the frame as it is, and the objects' outlines (pixels whose right or lower
    neighbour has another id) get their colour in full."""
    colours = (davis_palette() if palette is None else np.asarray(palette))[ids.astype(np.int64) % 256]
    out = (frame.astype(np.float32) * 0.5 + colours.astype(np.float32) * 0.5).round().clip(0, 255).astype(np.uint8)
    if overlay:
        out[ids == 0] = frame[ids == 0]
        edge = np.zeros(ids.shape, bool)
        edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
        edge[:-1] |= ids[:-1] != ids[1:]
        edge &= ids != 0
        out[edge] = colours[edge]
    return out


def write_jpeg(path, rgb, quality=90):
    with atomic_write(path) as f:
        Image.fromarray(rgb).save(f, format='JPEG', quality=quality)


def write_mask_and_blend(prefix, ids, disp):
    """The release's outputs: ids [H, W] label ids, disp [H, W, 3] uint8 -> {prefix}_mask.png and
    {prefix}_blend.jpg."""
    save_indexed_png(prefix + '_mask.png', ids)
    write_jpeg(prefix + '_blend.jpg', blend_labels(disp, ids))


class SequenceWriter:
    """The outputs of one video of ``test.py --video``: ``write(frame_name, ids, frame)`` per frame in order,
    then ``close()`` (or ``abort()`` on error: the overlay video is dropped; the PNGs written are complete
    files)."""

    def __init__(self, save_path, name, palette, fps, save_blend=False):
        self.palette = np.asarray(palette, np.uint8)
        self.mask_dir = os.path.join(save_path, name)
        self.blend_dir = os.path.join(save_path, name + '_blend') if save_blend else None
        self.overlay_path = os.path.join(save_path, name + '_overlay.mp4')
        for d in (self.mask_dir, self.blend_dir):
            if d:
                os.makedirs(d, exist_ok=True)
        self.files = AsyncWriter()
        self.video_jobs = AsyncWriter(threads=1)     # frames must reach the encoder in order
        self.video = VideoWriter(self.overlay_path, fps)
        self.frames = 0

    def write(self, frame_name, ids, frame):
        """ids [H, W] uint8 label ids and the frame [H, W, 3] uint8 it belongs to."""
        self.files.submit(save_indexed_png, os.path.join(self.mask_dir, frame_name + '.png'), ids, self.palette)
        self.video_jobs.submit(self._overlay, frame_name, ids, frame)
        self.frames += 1

    def _overlay(self, frame_name, ids, frame):
        overlay = blend_labels(frame, ids, self.palette, overlay=True)
        self.video.write(overlay)
        if self.blend_dir:
            write_jpeg(os.path.join(self.blend_dir, frame_name + '.jpg'), overlay)

    def close(self):
        """Wait for every write; the overlay video appears only if all of them succeeded."""
        try:
            self.files.close()
            self.video_jobs.close()
        except BaseException as e:
            self.video.abort(e)
            raise
        self.video.close()

    def abort(self, error=None):
        """Stop after an error: pending writes finish, the overlay video is dropped."""
        try:
            self.files.close()
            self.video_jobs.close()
        except Exception:  # noqa: BLE001 - the error being handled is the one to report
            pass
        finally:
            self.video.abort(error)
