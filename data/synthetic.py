"""Small synthetic videos with exact ground truth: textured objects translating over a textured background.

Used by the tests (no real data on a fresh clone) and by the quick-start demo sample. Every object moves by a
known integer shift per frame, so the correct correspondence and the correct masks are known exactly.
"""
import os

import numpy as np
from PIL import Image

from crw.data.labels import save_indexed_png
from crw.data.video_io import VideoWriter


def smooth_texture(rng, h, w, cell=4, channels=3):
    """[h, w, channels] uint8 blocky-smooth random texture: distinct enough to match, smooth enough to survive
    bilinear resizing."""
    gh, gw = -(-h // cell) + 1, -(-w // cell) + 1
    coarse = rng.uniform(0, 255, size=(gh, gw, channels)).astype(np.float32)
    # bilinear upsampling of the coarse grid, done by hand to keep numpy the only dependency
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    a = coarse[y0][:, x0]
    b = coarse[y0][:, x0 + 1]
    c = coarse[y0 + 1][:, x0]
    d = coarse[y0 + 1][:, x0 + 1]
    out = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    return np.clip(out, 0, 255).astype(np.uint8)


def make_sequence(num_frames=8, height=64, width=96, num_objects=2, seed=0, max_speed=2, object_size=(16, 24),
                  shapes=('rect', 'ellipse'), cell=4):
    """A clip of ``num_objects`` textured objects moving over a static textured background.

    Returns a dict with
      frames:  [T, H, W, 3] uint8 RGB
      masks:   [T, H, W] uint8, 0 background, object k has label k (1-based, later objects drawn on top)
      shifts:  [K, 2] int per-frame (dy, dx) of each object
      starts:  [K, 2] int top-left corner of each object in frame 0
    Objects bounce off the borders so they stay fully inside the frame.
    """
    rng = np.random.default_rng(seed)
    bg = smooth_texture(rng, height, width, cell=cell)
    frames = np.repeat(bg[None], num_frames, axis=0).copy()
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    shifts, starts = [], []
    for k in range(1, num_objects + 1):
        oh, ow = (int(s) for s in rng.integers(object_size[0], object_size[1] + 1, size=2))
        oh, ow = min(oh, height - 2), min(ow, width - 2)
        tex = smooth_texture(rng, oh, ow, cell=cell)
        shape = shapes[(k - 1) % len(shapes)]
        if shape == 'ellipse':
            yy, xx = np.mgrid[:oh, :ow]
            sel = ((yy - (oh - 1) / 2) / (oh / 2)) ** 2 + ((xx - (ow - 1) / 2) / (ow / 2)) ** 2 <= 1.0
        else:
            sel = np.ones((oh, ow), dtype=bool)
        dy, dx = 0, 0
        while dy == 0 and dx == 0:
            dy, dx = (int(s) for s in rng.integers(-max_speed, max_speed + 1, size=2))
        y, x = int(rng.integers(0, height - oh)), int(rng.integers(0, width - ow))
        starts.append((y, x))
        shifts.append((dy, dx))
        for t in range(num_frames):
            region = frames[t, y:y + oh, x:x + ow]
            region[sel] = tex[sel]
            masks[t, y:y + oh, x:x + ow][sel] = k
            # bounce: reverse a component whose next step would leave the frame
            if not 0 <= y + dy <= height - oh:
                dy = -dy
            if not 0 <= x + dx <= width - ow:
                dx = -dx
            y, x = y + dy, x + dx
    return {'frames': frames, 'masks': masks, 'shifts': np.array(shifts), 'starts': np.array(starts)}


def write_frame_folder(folder, frames, ext='jpg', quality=95):
    """Write frames [T, H, W, 3] as ``00000.jpg`` ... (DAVIS naming). Returns the file paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for t, f in enumerate(frames):
        p = os.path.join(folder, f'{t:05d}.{ext}')
        kw = {'quality': quality} if ext in ('jpg', 'jpeg') else {}
        Image.fromarray(f).save(p, **kw)
        paths.append(p)
    return paths


def write_davis_layout(root, sequences, ext='jpg', resolution='480p'):
    """Lay out ``{name: make_sequence(...) output}`` like DAVIS: JPEGImages/<res>/<seq>/, Annotations/<res>/<seq>/
    (palette PNGs, every frame annotated) and ImageSets/2017/val.txt. Returns the path of a test.py filelist
    (``<frames folder> <annotations folder>`` per line, in val.txt order)."""
    os.makedirs(os.path.join(root, 'ImageSets', '2017'), exist_ok=True)
    lines = []
    for name, seq in sequences.items():
        img_dir = os.path.join(root, 'JPEGImages', resolution, name)
        ann_dir = os.path.join(root, 'Annotations', resolution, name)
        write_frame_folder(img_dir, seq['frames'], ext=ext)
        os.makedirs(ann_dir, exist_ok=True)
        for t, m in enumerate(seq['masks']):
            save_indexed_png(os.path.join(ann_dir, f'{t:05d}.png'), m)
        lines.append(f'{img_dir} {ann_dir}')
    with open(os.path.join(root, 'ImageSets', '2017', 'val.txt'), 'w') as f:
        f.write('\n'.join(sequences) + '\n')
    filelist = os.path.join(root, 'vallist.txt')
    with open(filelist, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return filelist


def write_video(path, frames, fps=24, rotation=0):
    """Encode frames [T, H, W, 3] uint8 to an H.264 (or MPEG-4) file with PyAV (``data.video_io.VideoWriter``).

    rotation: a display rotation in counter-clockwise degrees (a multiple of 90) stored in the container's
    display matrix, as phones store it: players, and both decoders here, show the frames turned by it. Needs a
    PyAV with ``VideoStream.set_display_rotation`` (NotImplementedError otherwise)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with VideoWriter(path, fps) as writer:
        if rotation:
            set_rotation = getattr(writer.stream, 'set_display_rotation', None)
            if set_rotation is None:
                raise NotImplementedError('this PyAV cannot write a display rotation (no '
                                          'VideoStream.set_display_rotation)')
            set_rotation(rotation)
        for f in frames:
            writer.write(f)
    return path
