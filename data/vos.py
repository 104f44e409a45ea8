"""Test-time data for label propagation (SPEC §5): filelists, frames, first-frame label maps, JHMDB poses.

A filelist has one video per line: ``<frames folder> <annotations folder>`` (DAVIS) or
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
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:  # OpenCV resizes like the release; PIL/torch are the fallback
    import cv2
    cv2.setNumThreads(1)
except Exception:  # pragma: no cover
    cv2 = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')


class FilelistError(ValueError):
    """A problem with the filelist or the files it names; the message is one line naming the line."""


# ----------------------------------------------------------------------------------------------------------
# Filelists
# ----------------------------------------------------------------------------------------------------------

@dataclass
class VideoEntry:
    index: int          # 0-based line number among the videos (output prefix {index}_{t})
    frames_dir: str
    target: str         # annotations folder (DAVIS) or joint_positions.mat (JHMDB)
    kind: str           # 'davis' | 'jhmdb'
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


def read_filelist(filelist, data_root=''):
    """Parse a test filelist -> [VideoEntry]. Blank lines and '#' comments are skipped; the video index
    counts video lines only. A malformed line or a missing folder/file raises FilelistError."""
    fdir = os.path.dirname(os.path.abspath(filelist))
    entries = []
    with open(filelist) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            parts = line.split()
            if len(parts) < 2:
                raise FilelistError(f"{filelist}:{line_no}: expected '<frames folder> <annotations folder>' "
                                    f"(or '<frames folder> <joint_positions.mat>'), got {line!r}")
            frames_dir = resolve_path(parts[0], data_root, fdir)
            target = resolve_path(parts[1], data_root, fdir)
            kind = 'jhmdb' if target.lower().endswith('.mat') else 'davis'
            if not os.path.isdir(frames_dir):
                raise FilelistError(f'{filelist}:{line_no}: frames folder {frames_dir} not found')
            if kind == 'davis' and not os.path.isdir(target):
                raise FilelistError(f'{filelist}:{line_no}: annotations folder {target} not found')
            if kind == 'jhmdb' and not os.path.isfile(target):
                raise FilelistError(f'{filelist}:{line_no}: joint file {target} not found')
            entries.append(VideoEntry(len(entries), frames_dir, target, kind, line_no))
    if not entries:
        raise FilelistError(f'{filelist}: no videos listed')
    return entries


_INT = re.compile(r'\d+')


def frame_number(name):
    """The integer in a frame's file name: the part before the first dot if it is a number (the release),
    else the last run of digits; None if there is none."""
    stem = name.split('.')[0]
    if stem.isdigit():
        return int(stem)
    runs = _INT.findall(os.path.splitext(name)[0])
    return int(runs[-1]) if runs else None


def list_frames(folder, exts=IMAGE_EXTS):
    """Image files of a folder sorted by the integer in their names -> list of paths."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(exts) and not n.startswith('.')]
    unnumbered = [n for n in names if frame_number(n) is None]
    if unnumbered:
        raise FilelistError(f'{folder}: frame file {unnumbered[0]!r} has no number in its name')
    names.sort(key=lambda n: (frame_number(n), n))
    return [os.path.join(folder, n) for n in names]


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------

def load_rgb(path):
    """[H, W, 3] uint8 RGB."""
    if cv2 is not None:
        im = cv2.imread(path, cv2.IMREAD_COLOR)
        if im is not None:
            return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
    with Image.open(path) as im:
        return np.asarray(im.convert('RGB'))


def resize_image(img, crop_size):
    """uint8 [H, W, 3] -> float32 [H', W', 3] in [0, 1]; S > 0: bilinear to S x S (no antialiasing, the
    release's cv2.resize of the float image); -1: native."""
    x = img.astype(np.float32) / 255.0
    if crop_size is None or crop_size <= 0 or x.shape[:2] == (crop_size, crop_size):
        return x
    if cv2 is not None:
        return cv2.resize(x, (crop_size, crop_size), interpolation=cv2.INTER_LINEAR)
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(crop_size, crop_size), mode='bilinear', align_corners=False)[0] \
        .permute(1, 2, 0).numpy()


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
        try:
            img = load_rgb(self.paths[t])
        except Exception as e:
            raise FilelistError(f'{self.paths[t]}: cannot read the frame ({type(e).__name__})')
        x = resize_image(img, self.crop_size)
        disp = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        return normalize_image(x), torch.from_numpy(disp), t


def image_size(path, crop_size=-1):
    """(H, W) a frame will have after loading with ``crop_size``."""
    if crop_size and crop_size > 0:
        return crop_size, crop_size
    with Image.open(path) as im:
        return im.size[1], im.size[0]


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

    def ids(self, index_map):
        """Map an index map (0..K-1) to label ids."""
        return self.values[np.asarray(index_map)]


def read_annotation(path):
    """Read an annotation PNG -> (ids [H, W] int64, values [K] sorted ascending).

    P-mode (DAVIS) and greyscale images: ids are the pixel values (palette indices). RGB(A): the distinct
    colours; when they all belong to the DAVIS palette, ids are their palette indices (so the output masks
    carry the same object ids), else 0..K-1 in colour order (black first)."""
    from utils.palette import davis_palette
    with Image.open(path) as im:
        if im.mode in ('P', 'L', 'I', 'I;16', '1'):
            arr = np.asarray(im).astype(np.int64)
            return arr, np.unique(arr)
        rgb = np.asarray(im.convert('RGB')).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    ucodes, inv = np.unique(code, return_inverse=True)
    pal = davis_palette().astype(np.int64)
    pal_code = {int((r << 16) | (g << 8) | b): i for i, (r, g, b) in reversed(list(enumerate(pal)))}
    if all(int(c) in pal_code for c in ucodes):
        ids_of = np.array([pal_code[int(c)] for c in ucodes], dtype=np.int64)
    else:   # colours outside the palette: number them in colour order, black (code 0) first
        ids_of = np.arange(len(ucodes), dtype=np.int64)
    return ids_of[inv.reshape(code.shape)], np.sort(ids_of)


def first_annotation(ann_dir, frame0_path):
    """The annotation of frame 0: the PNG with frame 0's number if present, else the first by number."""
    pngs = [n for n in os.listdir(ann_dir) if n.lower().endswith('.png') and frame_number(n) is not None]
    if not pngs:
        raise FilelistError(f'{ann_dir}: no annotation PNG (frame 0 needs one)')
    n0 = frame_number(os.path.basename(frame0_path))
    same = [n for n in pngs if frame_number(n) == n0]
    name = same[0] if same else min(pngs, key=lambda n: (frame_number(n), n))
    return os.path.join(ann_dir, name)


def resize_nearest(ids, size):
    """Nearest-neighbour resize of an integer map [H, W] to size (H', W'), pixel centres aligned (the
    image is resized with aligned centres too). Only values of the input can appear."""
    H, W = ids.shape
    h2, w2 = size
    if (H, W) == (h2, w2):
        return ids
    ys = np.minimum(((np.arange(h2) + 0.5) * H / h2).astype(np.int64), H - 1)
    xs = np.minimum(((np.arange(w2) + 0.5) * W / w2).astype(np.int64), W - 1)
    return ids[ys[:, None], xs[None, :]]


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


def feature_size(H, W, stride=8):
    """The encoder's map size for an H x W input: ceil(H/8) x ceil(W/8)."""
    return math.ceil(H / stride), math.ceil(W / stride)


# ----------------------------------------------------------------------------------------------------------
# A whole DAVIS-style video
# ----------------------------------------------------------------------------------------------------------

class VOSVideo:
    """One video of a DAVIS filelist: lazily loaded frames plus the first frame's label set."""

    def __init__(self, entry, crop_size=-1):
        self.entry = entry
        self.paths = list_frames(entry.frames_dir)
        if not self.paths:
            raise FilelistError(f'line {entry.line_no}: no frames in {entry.frames_dir}')
        self.size = image_size(self.paths[0], crop_size)
        self.frames = VideoFrames(self.paths, crop_size)
        self.labels = load_label_set(first_annotation(entry.target, self.paths[0]), self.size)

    def __len__(self):
        return len(self.paths)

    def first_labels(self, map_size):
        """One-hot first-frame labels brought to the feature map size -> [h, w, K]."""
        return downsample_labels(one_hot(self.labels.label_map, self.labels.K), map_size)
