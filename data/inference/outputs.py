"""What label propagation writes: the sinks that ``VideoPropagator.run`` feeds, one frame at a time.

A sink has ``write(frame)`` (a ``propagation.PropagatedFrame``: t, image, ids, soft, features), ``close()``
after the last frame and ``abort(error)`` instead when the run fails. Files are written atomically on
background threads (``utils.background.AsyncWriter``), so the device does not wait on PNG/JPEG/video encoding.

* ``DavisWriter`` (--filelist, DAVIS): ``{save}/{i}_{t}_mask.png`` (palette PNG of the ids) and
  ``{save}/{i}_{t}_blend.jpg`` (whole frame half image, half label colour), the release's layout.
* ``PartsWriter`` (--filelist, VIP): ``{save}/<video>/<frame>.png``, greyscale PNGs of the ids.
* ``PoseWriter`` (--filelist, JHMDB): ``{save}/{i}_{t}_blend.jpg`` with the skeleton, ``{save}/{i}.dat``.
* ``SequenceWriter`` (--video): ``{save}/<video>/<frame>.png`` in the DAVIS result format (the input mask's
  palette; ``--export palette``), ``{save}/<video>_overlay.mp4`` (colours over the objects, outlines in full
  colour) and optionally the overlays as ``{save}/<video>_blend/<frame>.jpg``.
* ``--export``'s other formats (``export_sinks``): ``BinaryMaskWriter`` (one 0/255 PNG per object per frame),
  ``CocoRleWriter`` (COCO run-length encoding, one JSON), ``SoftMapWriter`` (soft maps, one .npz per frame).
* ``FirstRun`` (--bidirectional): a sink fed by the backward run and then, left open, by the forward run.
* ``ViewerSink`` (--visdom, --pca-vis): each frame's picture and feature PCA, to a viewer.
"""
import json
import os
import zlib

import numpy as np
import torch
from PIL import Image

from crw.data.inference.jhmdb import draw_pose, pose_from_soft_map, pose_image
from crw.data.labels import davis_palette, resize_nearest, save_binary_png, save_grey_png, save_indexed_png
from crw.data.video_io import VideoWriter
from crw.utils.background import AsyncWriter
from crw.utils.errors import CRWError
from crw.utils.misc import atomic_write


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


def checked_write(path, fn, *args):
    """``fn(*args)``, a write of ``path`` (a file, or a prefix of files); an OSError (a full disk, a folder
    removed meanwhile) becomes a one-line CRWError naming it."""
    try:
        return fn(*args)
    except OSError as e:
        raise CRWError(f'{path}: cannot write ({e.strerror or e}); free some space or choose another '
                       '--save-path') from e


class _FileSink:
    """Writes each frame with ``_jobs(frame)`` -> [(fn, path, *args)] on background threads; a failed write
    stops the run at the next frame (CRWError naming the file)."""

    def __init__(self):
        self.jobs = AsyncWriter()

    def write(self, frame):
        for fn, path, *args in self._jobs(frame):
            self.jobs.submit(checked_write, path, fn, path, *args)

    def wait(self):
        """Wait for the writes so far (raises the first failed one's error); more frames may follow."""
        self.jobs.wait()

    def close(self):
        self.jobs.close()

    def abort(self, error=None):
        self.jobs.abort()


class DavisWriter(_FileSink):
    """``{prefix}_{t}_mask.png`` and ``{prefix}_{t}_blend.jpg`` of each frame (ids at the frame's size)."""

    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def write(self, frame):
        prefix = f'{self.prefix}_{frame.t}'
        self.jobs.submit(checked_write, prefix + '_mask.png/_blend.jpg', write_mask_and_blend, prefix, frame.ids,
                         frame.image)


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
    ([2, J, T] float64 in ``.npy`` format, which loads without unpickling; the release pickled it)."""

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
        checked_write(self.prefix + '.dat', self._write_dat)

    def _write_dat(self):
        with atomic_write(self.prefix + '.dat') as f:
            np.save(f, np.stack(self.coords, axis=-1).astype(np.float64), allow_pickle=False)


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
    False writes no video (a backward run) and keeps each frame's label ids in memory, zlib-compressed (a few
    KB a frame), so that ``held(t)`` gives them to the next writer's ``overlay_frame`` after ``close()``.
    ``skip``: a frame index not to write (the first annotated frame, which the forward run writes)."""

    def __init__(self, save_path, name, names, palette, fps, save_blend=False, masks=True, overlay=True,
                 skip=None):
        self.names, self.skip = names, skip
        self.palette = np.asarray(palette, np.uint8)
        self.mask_dir = os.path.join(save_path, name) if masks else None
        self.blend_dir = os.path.join(save_path, name + '_blend') if save_blend else None
        self.overlay_path = os.path.join(save_path, name + '_overlay.mp4')
        for d in (self.mask_dir, self.blend_dir):
            if d:
                os.makedirs(d, exist_ok=True)
        self.files = AsyncWriter()
        self.video_jobs = AsyncWriter(threads=1)     # frames must reach the encoder in order
        self.video = VideoWriter(self.overlay_path, fps) if overlay else None
        self.kept = None if overlay else {}    # t -> (compressed ids, shape): a backward run's label maps
        self.frames = 0

    def write(self, frame):
        """frame.ids [H, W] uint8 label ids and frame.image [H, W, 3] uint8, the frame they belong to."""
        if frame.t == self.skip:
            return
        name = self.names[frame.t]
        if self.mask_dir:
            path = os.path.join(self.mask_dir, name + '.png')
            self.files.submit(checked_write, path, save_indexed_png, path, frame.ids, self.palette)
        self.video_jobs.submit(checked_write, self.overlay_path, self._overlay, name, frame.ids, frame.image)
        if self.kept is not None:
            self.files.submit(self._keep, frame.t, frame.ids)
        self.frames += 1

    def _keep(self, t, ids):
        ids = np.ascontiguousarray(ids, np.uint8)
        self.kept[t] = zlib.compress(ids.tobytes(), 1), ids.shape

    def held(self, t):
        """Frame t's label ids [H, W] uint8 as written (``overlay=False``, after ``close()``)."""
        data, shape = self.kept[t]
        return np.frombuffer(zlib.decompress(data), np.uint8).reshape(shape)

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
            self.abort(e)
            raise
        if self.video is not None:
            checked_write(self.overlay_path, self.video.close)

    def abort(self, error=None):
        """Stop after an error: queued writes are dropped (the PNGs written are complete files), the running
        ones finish, the overlay video is dropped."""
        try:
            self.files.abort()
            self.video_jobs.abort()
        finally:
            if self.video is not None:
                self.video.abort(error)


# ---------------------------------------------------------------------------------------------- --export
class BinaryMaskWriter(_FileSink):
    """``{folder}/<id>/<names[t]>.png`` for each of ``object_ids`` (0 left out) and each frame: an 8-bit
    greyscale PNG, 255 where the frame's label map has that id, 0 elsewhere (all 0 where the object is absent)."""

    def __init__(self, folder, names, object_ids):
        super().__init__()
        self.folder, self.names = folder, names
        self.object_ids = [int(k) for k in object_ids if int(k) != 0]
        for k in self.object_ids:
            os.makedirs(os.path.join(folder, str(k)), exist_ok=True)

    def _jobs(self, frame):
        name = self.names[frame.t] + '.png'
        return [(save_binary_png, os.path.join(self.folder, str(k), name), frame.ids == k) for k in self.object_ids]


class CocoRleWriter:
    """``path``: every frame's masks as COCO run-length encoding (pycocotools) in one JSON, written atomically
    by ``close()`` (nothing on ``abort()``). ``images``: one per frame (id t + 1, ``frame_index`` t,
    ``file_name`` ``file_names[t]``, height, width); ``categories``: one per object id (id = the object's label
    id); ``annotations``: one per object present in a frame (``segmentation`` {size [H, W], counts: compressed
    RLE string}, area, bbox [x, y, w, h], iscrowd 0). Readable with ``pycocotools.coco.COCO(path)``."""

    def __init__(self, path, file_names, object_ids, info=None):
        try:
            from pycocotools import mask as rle
        except ImportError as e:
            raise CRWError('--export coco needs pycocotools (.venv/bin/pip install pycocotools; it is in '
                           'requirements.txt)') from e
        self.rle, self.path, self.file_names = rle, path, file_names
        self.object_ids = [int(k) for k in object_ids if int(k) != 0]
        self.data = {'info': dict(info or {}), 'images': [], 'annotations': [],
                     'categories': [{'id': k, 'name': f'object {k}'} for k in self.object_ids]}

    def write(self, frame):
        H, W = frame.ids.shape
        image_id = frame.t + 1
        self.data['images'].append({'id': image_id, 'frame_index': frame.t, 'file_name': self.file_names[frame.t],
                                    'height': H, 'width': W})
        for k in self.object_ids:
            mask = frame.ids == k
            if not mask.any():
                continue
            code = self.rle.encode(np.asfortranarray(mask.astype(np.uint8)))
            self.data['annotations'].append({
                'id': len(self.data['annotations']) + 1, 'image_id': image_id, 'category_id': k,
                'segmentation': {'size': [H, W], 'counts': code['counts'].decode('ascii')},
                'area': int(self.rle.area(code)), 'bbox': [float(v) for v in self.rle.toBbox(code)], 'iscrowd': 0})

    def wait(self):
        pass

    def close(self):
        """Write the JSON: images in frame order, annotations by frame then object (ids renumbered so), however
        the frames came (a --bidirectional run writes the frames before the annotated one backward first)."""
        self.data['images'].sort(key=lambda image: image['id'])
        self.data['annotations'].sort(key=lambda ann: (ann['image_id'], ann['category_id']))
        for i, ann in enumerate(self.data['annotations'], 1):
            ann['id'] = i
        with atomic_write(self.path, 'w') as f:
            json.dump(self.data, f)

    def abort(self, error=None):
        pass


class SoftMapWriter(_FileSink):
    """``{folder}/<names[t]>.npz`` (numpy's compressed archive) per frame: ``probs`` float32 [K, h, w], the
    soft labels at the feature map (one cell per 8x8 pixels of the propagated frame; each cell's K values sum
    to 1), as the next frames' context sees them; ``ids`` uint8 [K], the label id of each channel; ``size``
    [H, W], the size the masks are written at; ``annotated``: the frame had a mask (its written mask is that
    mask). Elsewhere the written mask is ``ids[argmax]`` of ``probs`` upsampled bilinearly to ``size``
    (``propagation.soft_to_index``)."""

    def __init__(self, folder, names):
        super().__init__()
        self.folder, self.names = folder, names
        os.makedirs(folder, exist_ok=True)

    def _jobs(self, frame):
        probs = frame.soft.detach().to('cpu', torch.float32).permute(2, 0, 1).numpy().copy()
        return [(save_soft_map, os.path.join(self.folder, self.names[frame.t] + '.npz'), probs,
                 np.asarray(frame.labels, np.uint8), frame.ids.shape, frame.annotated)]


def save_soft_map(path, probs, ids, size, annotated):
    """One frame's soft maps as a compressed .npz (see SoftMapWriter), atomically."""
    with atomic_write(path) as f:
        np.savez_compressed(f, probs=probs, ids=ids, size=np.asarray(size, np.int64),
                            annotated=np.asarray(bool(annotated)))


def export_sinks(exports, save_path, name, names, file_names, object_ids, info=None):
    """The sinks of ``--export``'s formats other than palette (``SequenceWriter`` writes those) for video
    ``name`` under ``save_path``: binary -> ``<name>_binary/``, coco -> ``<name>_coco.json``, soft ->
    ``<name>_soft/``."""
    sinks = []
    if 'binary' in exports:
        sinks.append(BinaryMaskWriter(os.path.join(save_path, name + '_binary'), names, object_ids))
    if 'coco' in exports:
        sinks.append(CocoRleWriter(os.path.join(save_path, name + '_coco.json'), file_names, object_ids, info))
    if 'soft' in exports:
        sinks.append(SoftMapWriter(os.path.join(save_path, name + '_soft'), names))
    return sinks


class FirstRun:
    """``sink`` (an ``export_sinks`` sink) fed by two runs, this the first: --bidirectional's backward run, then
    the forward run from the annotated frame ``skip``, which writes that frame. Frames other than ``skip`` pass
    on; ``close()`` waits for their writes and leaves ``sink`` open for the forward run, which closes it;
    ``abort()`` aborts it."""

    def __init__(self, sink, skip):
        self.sink, self.skip = sink, skip

    def write(self, frame):
        if frame.t != self.skip:
            self.sink.write(frame)

    def close(self):
        try:
            self.sink.wait()
        except BaseException as e:
            self.sink.abort(e)
            raise

    def abort(self, error=None):
        self.sink.abort(error)
