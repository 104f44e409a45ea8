"""Test-time data for label propagation: filelists, frames, first-frame label maps.

A filelist has one video per line: ``<frames folder> <annotations folder>`` (DAVIS; VIP when the annotations
folder lies in a folder named ``Category_ids``, VIP's layout, or when asked for) or
``<frames folder> <joint_positions.mat>`` (JHMDB). Relative paths are resolved against ``data_root`` when
given, else the current folder, else the filelist's folder. Frames are sorted by the integer in their
names. Only frame 0's annotation is read.

Frames are loaded lazily, one at a time (``VideoFrames`` is a map-style Dataset, so a DataLoader with
workers prefetches a few while the device works); a video is never held in memory whole.

Images: RGB in [0, 1]; ``crop_size`` S > 0 resizes to S x S (bilinear, aspect ratio not kept, as the
release), -1 keeps the native size; the network input is normalised with the ImageNet mean/std.
Labels: the distinct values of frame 0's annotation (palette indices of a P-mode PNG, grey values, or
colours of an RGB PNG), sorted, so background 0 comes first; K of them. The label map is resized with
nearest neighbour (the release meant to and, through an argument slip, blended labels bilinearly), turned
into one-hot [H, W, K] and brought to the feature map size with bilinear interpolation (no antialiasing).
"""
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from data.images import (colour_codes, frame_number, image_size, list_frames, palette_ids, read_image,
                         read_label_image, resize_nearest)
from utils.errors import CRWError
from utils.misc import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------------
# Filelists
# ----------------------------------------------------------------------------------------------------------

@dataclass
class VideoEntry:
    index: int          # 0-based line number among the videos (output prefix {index}_{t})
    frames_dir: str
    target: str         # annotations folder (DAVIS) or joint_positions.mat (JHMDB)
    kind: str           # 'davis' | 'vip' | 'jhmdb'
    line_no: int        # 1-based line in the filelist file

    @property
    def name(self):
        return os.path.basename(os.path.normpath(self.frames_dir))


def resolve_path(path, data_root='', filelist_dir=''):
    """Absolute paths as they are; relative ones against data_root if given, else the current folder,
    else the filelist's folder (first that exists; data_root is used as is)."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    if data_root:
        return os.path.join(data_root, path)
    if os.path.exists(path) or not filelist_dir:
        return os.path.abspath(path)
    return os.path.join(filelist_dir, path)


VIP_ANNOTATIONS = 'Category_ids'   # VIP_Fine/Annotations/Category_ids/<video>/<frame>.png


def read_filelist(filelist, data_root='', vip=False):
    """Parse a test filelist -> [VideoEntry]. Blank lines and '#' comments are skipped; the video index
    counts video lines only. A malformed line or a missing folder/file raises CRWError. Annotation folders
    are VIP videos when ``vip`` is set or their parent folder is named ``Category_ids``."""
    fdir = os.path.dirname(os.path.abspath(filelist))
    entries = []
    with open(filelist) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            parts = line.split()
            if len(parts) < 2:
                raise CRWError(f"{filelist}:{line_no}: expected '<frames folder> <annotations folder>' "
                               f"(or '<frames folder> <joint_positions.mat>'), got {line!r}")
            frames_dir = resolve_path(parts[0], data_root, fdir)
            target = resolve_path(parts[1], data_root, fdir)
            kind = 'jhmdb' if target.lower().endswith('.mat') else 'davis'
            if kind == 'davis' and (vip or os.path.basename(os.path.dirname(os.path.normpath(target)))
                                    == VIP_ANNOTATIONS):
                kind = 'vip'
            if not os.path.isdir(frames_dir):
                raise CRWError(f'{filelist}:{line_no}: frames folder {frames_dir} not found')
            if kind in ('davis', 'vip') and not os.path.isdir(target):
                raise CRWError(f'{filelist}:{line_no}: annotations folder {target} not found')
            if kind == 'jhmdb' and not os.path.isfile(target):
                raise CRWError(f'{filelist}:{line_no}: joint file {target} not found')
            entries.append(VideoEntry(len(entries), frames_dir, target, kind, line_no))
    if not entries:
        raise CRWError(f'{filelist}: no videos listed')
    return entries


def write_filelist(path, lines):
    """Write filelist lines (``<frames folder> <target>``) to ``path`` atomically; returns their number."""
    with atomic_write(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return len(lines)


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------

def resize_image(img, crop_size):
    """uint8 [H, W, 3] -> float32 [H', W', 3] in [0, 1]; S > 0: bilinear to S x S (no antialiasing, the
    release's cv2.resize of the float image); -1: native."""
    x = img.astype(np.float32) / 255.0
    if crop_size is None or crop_size <= 0 or x.shape[:2] == (crop_size, crop_size):
        return x
    return cv2.resize(x, (crop_size, crop_size), interpolation=cv2.INTER_LINEAR)


def normalize_image(x):
    """float [H, W, 3] in [0, 1] -> tensor [3, H, W] normalised with the ImageNet statistics."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=t.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=t.dtype).view(3, 1, 1)
    return (t - mean) / std


class VideoFrames(torch.utils.data.Dataset):
    """The frames of one video, loaded lazily. Item t -> (normalised image [3, H, W] float32,
    display image [H, W, 3] uint8 at the same size, t)."""

    def __init__(self, paths, crop_size=-1):
        self.paths = list(paths)
        self.crop_size = crop_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, t):
        x = resize_image(read_image(self.paths[t]), self.crop_size)
        disp = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        return normalize_image(x), torch.from_numpy(disp), t


def frame_size(path, crop_size=-1):
    """(H, W) a frame will have after loading with ``crop_size``."""
    if crop_size and crop_size > 0:
        return crop_size, crop_size
    return image_size(path)


# ----------------------------------------------------------------------------------------------------------
# Label maps
# ----------------------------------------------------------------------------------------------------------

@dataclass
class LabelSet:
    values: np.ndarray      # [K] label ids written to the output masks, ascending (background 0 first)
    label_map: np.ndarray   # [H, W] int64 index into values (0..K-1), at the image size

    @property
    def K(self):
        return len(self.values)


def read_annotation(path):
    """Read an annotation PNG -> (ids [H, W] int64, values [K] sorted ascending).

    P-mode (DAVIS) and greyscale images: ids are the pixel values (palette indices). RGB(A): the distinct
    colours; when they all belong to the DAVIS palette, ids are their palette indices (so the output masks
    carry the same object ids), else 0..K-1 in colour order (black first)."""
    arr = read_label_image(path)
    if arr.ndim == 2:
        return arr, np.unique(arr)
    code = colour_codes(arr)
    ids = palette_ids(code)
    if ids is None:   # colours outside the palette: number them in colour order, black (code 0) first
        _, inv = np.unique(code, return_inverse=True)
        ids = inv.reshape(code.shape).astype(np.int64)
    return ids, np.unique(ids)


def first_annotation(ann_dir, frame0_path):
    """The annotation of frame 0: the PNG with frame 0's number if present, else the first by number."""
    pngs = list_frames(ann_dir, extensions=('.png',))
    if not pngs:
        raise CRWError(f'{ann_dir}: no annotation PNG (frame 0 needs one)')
    n0 = frame_number(frame0_path)
    same = [p for p in pngs if frame_number(p) == n0]
    return same[0] if same else pngs[0]


def load_label_set(ann_path, size):
    """First-frame labels at the image size (H, W) -> LabelSet."""
    ids, values = read_annotation(ann_path)
    ids = resize_nearest(ids, size)
    return LabelSet(values=values, label_map=np.searchsorted(values, ids))


def one_hot(index_map, K):
    """[H, W] int -> [H, W, K] float32 tensor."""
    t = torch.as_tensor(np.asarray(index_map), dtype=torch.long)
    return F.one_hot(t, K).to(torch.float32)


def downsample_labels(onehot, size):
    """[H, W, K] -> [h, w, K]: bilinear, no antialiasing (the release's cv2.resize INTER_LINEAR)."""
    x = onehot.permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False, antialias=False)
    return x[0].permute(1, 2, 0).contiguous()


# ----------------------------------------------------------------------------------------------------------
# A whole DAVIS-style video
# ----------------------------------------------------------------------------------------------------------

class VOSVideo:
    """One video of a DAVIS filelist: lazily loaded frames plus the first frame's label set."""

    def __init__(self, entry, crop_size=-1):
        self.entry = entry
        self.paths = list_frames(entry.frames_dir)
        if not self.paths:
            raise CRWError(f'line {entry.line_no}: no frames in {entry.frames_dir}')
        self.size = frame_size(self.paths[0], crop_size)
        self.frames = VideoFrames(self.paths, crop_size)
        self.labels = load_label_set(first_annotation(entry.target, self.paths[0]), self.size)

    def __len__(self):
        return len(self.paths)

    def first_labels(self, map_size):
        """One-hot first-frame labels brought to the feature map size -> [h, w, K]."""
        return downsample_labels(one_hot(self.labels.label_map, self.labels.K), map_size)
