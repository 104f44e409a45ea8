"""What label propagation writes: the sinks that ``VideoPropagator.run`` feeds, one frame at a time.

A sink has ``write(frame)`` (a ``propagation.PropagatedFrame``: t, image, ids, soft, features), ``close()``
after the last frame and ``abort(error)`` instead when the run fails. Files are written atomically on
background threads (``utils.background.AsyncWriter``), so the device does not wait on PNG/JPEG/video encoding.

* ``DavisWriter`` (--filelist, DAVIS): ``{save}/{i}_{t}_mask.png`` (palette PNG of the ids) and
  ``{save}/{i}_{t}_blend.jpg`` (whole frame half image, half label colour), the release's layout.
* ``PartsWriter`` (--filelist, VIP): ``{save}/<video>/<frame>.png``, greyscale PNGs of the ids.
* ``PoseWriter`` (--filelist, JHMDB): ``{save}/{i}_{t}_blend.jpg`` with the skeleton, ``{save}/{i}.dat``.
* ``SequenceWriter`` (--video): ``{save}/<video>/<frame>.png`` in the DAVIS result format (the input mask's
  palette), ``{save}/<video>_overlay.mp4`` (colours over the objects, outlines in full colour) and optionally
  the overlays as ``{save}/<video>_blend/<frame>.jpg``.
* ``ViewerSink`` (--visdom, --pca-vis): each frame's picture and feature PCA, to a viewer.
"""
import os

import numpy as np
from PIL import Image

from data.inference.jhmdb import draw_pose, pose_from_soft_map, pose_image
from data.labels import davis_palette, resize_nearest, save_grey_png, save_indexed_png
from data.video_io import VideoWriter
from utils.background import AsyncWriter
from utils.misc import atomic_write


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


def write_mask_and_blend(prefix, ids, image):
    """The release's outputs: ids [H, W] label ids, image [H, W, 3] uint8 -> {prefix}_mask.png and
    {prefix}_blend.jpg."""
    save_indexed_png(prefix + '_mask.png', ids)
    write_jpeg(prefix + '_blend.jpg', blend_labels(image, ids))


class _FileSink:
    """Writes each frame with ``_jobs(frame)`` -> [(fn, *args)] on background threads."""

    def __init__(self):
        self.jobs = AsyncWriter()

    def write(self, frame):
        for job in self._jobs(frame):
            self.jobs.submit(*job)

    def close(self):
        self.jobs.close()

    def abort(self, error=None):
        try:
            self.jobs.close()
        except Exception:  # noqa: BLE001 - the error being handled is the one to report
            pass


class DavisWriter(_FileSink):
    """``{prefix}_{t}_mask.png`` and ``{prefix}_{t}_blend.jpg`` of each frame (ids at the frame's size)."""

    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def _jobs(self, frame):
        return [(write_mask_and_blend, f'{self.prefix}_{frame.t}', frame.ids, frame.image)]


class PartsWriter(_FileSink):
    """``{folder}/<names[t]>.png``: greyscale PNGs of each frame's ids; no blends (they would sit among the
    scored files)."""

    def __init__(self, folder, names):
        super().__init__()
        self.folder, self.names = folder, names
        os.makedirs(folder, exist_ok=True)

    def _jobs(self, frame):
        return [(save_grey_png, os.path.join(self.folder, self.names[frame.t] + '.png'), frame.ids)]


class PoseWriter(_FileSink):
    """JHMDB: each frame's joints decoded from its soft maps (``pose_from_soft_map``, feature cells), drawn as
    ``{prefix}_{t}_blend.jpg`` (pixels = cells x ``stride``); ``close()`` writes them all as ``{prefix}.dat``
    ([2, J, T], the release's format: a pickled ndarray, ``ndarray.dump``)."""

    def __init__(self, prefix, stride):
        super().__init__()
        self.prefix, self.stride = prefix, stride
        self.coords = []

    def _jobs(self, frame):
        xy = pose_from_soft_map(frame.soft).cpu().numpy()                  # [2, J] feature cells
        self.coords.append(xy)
        return [(draw_pose, f'{self.prefix}_{frame.t}_blend.jpg', frame.image, xy * self.stride)]

    def picture(self, frame):
        """The frame with its skeleton drawn (what the blend file shows)."""
        return pose_image(frame.image, pose_from_soft_map(frame.soft).cpu().numpy() * self.stride)

    def close(self):
        super().close()
        with atomic_write(self.prefix + '.dat') as f:
            np.stack(self.coords, axis=-1).dump(f)


def label_picture(frame):
    """The frame with its label colours blended in (the ids brought to the frame's size)."""
    return blend_labels(frame.image, resize_nearest(frame.ids, frame.image.shape[:2]))


class ViewerSink:
    """Shows each frame in a ``vis.sinks.PropagationViewer``: ``draw(frame)`` as the blend, and the PCA
    of its features, under video number ``index`` named ``name``."""

    def __init__(self, viewer, index, name, draw=label_picture):
        self.viewer, self.index, self.name, self.draw = viewer, index, name, draw

    def write(self, frame):
        self.viewer.blend(self.index, self.name, frame.t, self.draw(frame))
        self.viewer.features(self.index, self.name, frame.t, frame.features, frame.image.shape[:2])

    def close(self):
        pass

    def abort(self, error=None):
        pass


class SequenceWriter:
    """The outputs of one video of ``test.py --video``, frame t named ``names[t]``; ``close()`` (or
    ``abort()`` on error: the overlay video is dropped; the PNGs written are complete files). ``overlay``:
    False writes the PNGs only (a backward run; ``overlay_frame`` puts its frames into the next writer's video).
    ``skip``: a frame index not to write (the first annotated frame, which the forward run writes)."""

    def __init__(self, save_path, name, names, palette, fps, save_blend=False, overlay=True, skip=None):
        self.names, self.skip = names, skip
        self.palette = np.asarray(palette, np.uint8)
        self.mask_dir = os.path.join(save_path, name)
        self.blend_dir = os.path.join(save_path, name + '_blend') if save_blend else None
        self.overlay_path = os.path.join(save_path, name + '_overlay.mp4')
        for d in (self.mask_dir, self.blend_dir):
            if d:
                os.makedirs(d, exist_ok=True)
        self.files = AsyncWriter()
        self.video_jobs = AsyncWriter(threads=1)     # frames must reach the encoder in order
        self.video = VideoWriter(self.overlay_path, fps) if overlay else None
        self.frames = 0

    def write(self, frame):
        """frame.ids [H, W] uint8 label ids and frame.image [H, W, 3] uint8, the frame they belong to."""
        if frame.t == self.skip:
            return
        name = self.names[frame.t]
        self.files.submit(save_indexed_png, os.path.join(self.mask_dir, name + '.png'), frame.ids, self.palette)
        self.video_jobs.submit(self._overlay, name, frame.ids, frame.image)
        self.frames += 1

    def overlay_frame(self, ids, image):
        """Add a frame written earlier (label ids [H, W], the frame [H, W, 3]) to the overlay video only."""
        self.video_jobs.submit(self._overlay, None, ids, image)

    def _overlay(self, name, ids, image):
        overlay = blend_labels(image, ids, self.palette, overlay=True)
        if self.video is not None:
            self.video.write(overlay)
        if self.blend_dir and name is not None:
            write_jpeg(os.path.join(self.blend_dir, name + '.jpg'), overlay)

    def close(self):
        """Wait for every write; the overlay video appears only if all of them succeeded."""
        try:
            self.files.close()
            self.video_jobs.close()
        except BaseException as e:
            if self.video is not None:
                self.video.abort(e)
            raise
        if self.video is not None:
            self.video.close()

    def abort(self, error=None):
        """Stop after an error: pending writes finish, the overlay video is dropped."""
        try:
            self.files.close()
            self.video_jobs.close()
        except Exception:  # noqa: BLE001 - the error being handled is the one to report
            pass
        finally:
            if self.video is not None:
                self.video.abort(error)
