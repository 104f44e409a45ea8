"""Test-time data for label propagation: filelists, frames, first-frame label maps.

A filelist has one video per line: ``<frames folder> <annotations folder>`` (DAVIS; VIP when the annotations
folder lies in a folder named ``Category_ids``, VIP's layout, or when asked for) or
``<frames folder> <joint_positions.mat>`` (JHMDB). Relative paths are resolved against ``data_root`` when
given, else the current folder, else the filelist's folder. Frames are sorted by the integer in their
names. Only frame 0's annotation is read, and it must exist (the PNG with frame 0's number).

Frames are loaded lazily, one at a time (``VideoFrames`` is a map-style Dataset, so a DataLoader with
workers prefetches a few while the device works); a video is never held in memory whole.

Images: RGB in [0, 1]; ``crop_size`` S > 0 resizes to S x S (bilinear, aspect ratio not kept, as the
release), -1 keeps the native size; the network input is normalised with the ImageNet mean/std.
Labels: the distinct values of frame 0's annotation (palette indices of a P-mode PNG, grey values, or
colours of an RGB PNG; ``AnnotationReader``, which also refuses anti-aliased masks and takes a 0/255 mask's
255 as object 1), sorted, so background 0 comes first; K of them. The label map is resized with
nearest neighbour (the release meant to and, through an argument slip, blended labels bilinearly), turned
into one-hot [H, W, K] and brought to the feature map size with bilinear interpolation (no antialiasing).
"""
import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from data.images import (colour_codes, davis_palette, frame_number, image_size, list_frames, palette_ids,
                         read_image, read_label_image, read_label_palette, resize_nearest)
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
    release's cv2.resize of the float image); (H', W'): bilinear to that size; -1: native."""
    x = img.astype(np.float32) / 255.0
    if crop_size is None or np.isscalar(crop_size) and crop_size <= 0:
        return x
    size = (crop_size, crop_size) if np.isscalar(crop_size) else tuple(int(s) for s in crop_size)
    if x.shape[:2] == size:
        return x
    return cv2.resize(x, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def processing_size(size, crop_size=-1, max_side=None):
    """(H', W') frames of native ``size`` (H, W) are propagated at: S x S for ``crop_size`` S > 0 (the
    release), else the native size; then, if ``max_side`` is set and the longer side exceeds it, scaled down
    (aspect ratio kept, sides rounded) so that the longer side is ``max_side``."""
    h, w = (crop_size, crop_size) if crop_size and crop_size > 0 else (int(size[0]), int(size[1]))
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        h, w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return h, w


def prepare_frame(img, size):
    """uint8 [H, W, 3] frame -> normalised network input [3, H', W'] at ``size`` (see ``resize_image``)."""
    return normalize_image(resize_image(img, size))


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


MAX_MASK_COLOURS = 32   # more distinct values in a greyscale/RGB mask: anti-aliased edges, not objects


class AnnotationReader:
    """Reads the label images of one video into label ids, with one colour -> id mapping for all of them.

    P-mode (DAVIS) and greyscale images: ids are the pixel values (palette indices). RGB(A): when every colour
    belongs to the DAVIS palette, ids are the palette indices (so output masks carry the same object ids);
    otherwise colours are numbered 0, 1, ... in colour order (black first), and a later image's new colours
    continue the numbering. ``palette`` [256, 3] uint8 is what output masks should be written with: the
    first P-mode image's own palette, the numbered colours, or the DAVIS palette.

    Refused (CRWError, one line): a greyscale or non-palette RGB image with more than MAX_MASK_COLOURS
    distinct values, i.e. anti-aliased edges or a JPEG-compressed mask, which would become hundreds of
    labels. A mask whose values are exactly {0, 255} (a binary mask) has 255 mapped to object 1, with a
    one-line note on stderr (``note``), once.
    """

    def __init__(self, note=None):
        self.colour_ids = None        # {0xRRGGBB: id} for RGB masks outside the DAVIS palette
        self.palette = None
        self._noted_binary = False
        self.note = note or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def read(self, path):
        """ids [H, W] int64 of one label image."""
        arr = read_label_image(path)
        if arr.ndim == 2:
            ids = arr
            pal = read_label_palette(path)
            if pal is None:
                self._check_count(path, np.unique(ids).size, 'grey levels')
            if self.palette is None:
                self.palette = pal if pal is not None else davis_palette()
        else:
            ids = self._colour_ids(path, colour_codes(arr))
        values = np.unique(ids)
        if values.size and values.max() == 255 and set(values.tolist()) <= {0, 255}:
            if not self._noted_binary:    # once per video
                self.note(f'{path}: note: a 0/255 mask; object 255 is taken as object 1 (in every such mask)')
                self._noted_binary = True
            ids = np.where(ids == 255, 1, ids)
        return ids

    def _check_count(self, path, n, what):
        if n > MAX_MASK_COLOURS:
            raise CRWError(f'{path}: {n} distinct {what}, not a label image (anti-aliased edges or JPEG '
                           'compression?); save the mask as a palette PNG with one index per object (PIL: '
                           "Image.fromarray(ids.astype('uint8'), mode='P') with putpalette) or a greyscale PNG of "
                           'ids 0, 1, 2, ...')

    def _colour_ids(self, path, code):
        if self.colour_ids is None:
            ids = palette_ids(code)
            if ids is not None:
                if self.palette is None:
                    self.palette = davis_palette()
                return ids
        uniq = np.unique(code)
        known = self.colour_ids or {}
        new = [int(c) for c in uniq if int(c) not in known]
        self._check_count(path, len(uniq), 'colours')
        if self.colour_ids is None:
            if self.palette is not None:
                raise CRWError(f'{path}: colours outside the DAVIS palette, unlike the video\'s earlier masks; '
                               'draw every mask with the same colours')
            self.colour_ids, self.palette = {}, davis_palette()
        for c in new:
            k = len(self.colour_ids)
            if k > 255:
                raise CRWError(f'{path}: more than 256 colours over the video\'s masks')
            self.colour_ids[c] = k
            self.palette[k] = ((c >> 16) & 255, (c >> 8) & 255, c & 255)
        lut = np.array([self.colour_ids[int(c)] for c in uniq], np.int64)
        return lut[np.searchsorted(uniq, code)]


def fit_mask(ids, size, what='the mask', warn=None):
    """Label ids [h, w] brought to the frame size (H, W): unchanged when equal; resized with nearest neighbour
    (``warn`` told once per call) when the aspect ratios agree within 1 %; else CRWError."""
    h, w = ids.shape[:2]
    H, W = size
    if (h, w) == (H, W):
        return ids
    if abs((w / h) / (W / H) - 1) > 0.01:
        raise CRWError(f'{what} is {w}x{h} but the frames are {W}x{H} (another aspect ratio); draw the mask on a '
                       'frame of the video')
    if warn is not None:
        warn(f'{what} is {w}x{h}, the frames {W}x{H}: resized with nearest neighbour')
    return resize_nearest(ids, (H, W))


def read_annotation(path):
    """One annotation PNG -> (ids [H, W] int64, values [K] sorted ascending); see ``AnnotationReader``."""
    ids = AnnotationReader().read(path)
    return ids, np.unique(ids)


def first_annotation(ann_dir, frame0_path):
    """The annotation of frame 0: the PNG with frame 0's number. Propagation starts from frame 0's labels, so
    a missing one is an error rather than another frame's annotation used as frame 0's."""
    pngs = list_frames(ann_dir, extensions=('.png',))
    if not pngs:
        raise CRWError(f'{ann_dir}: no annotation PNG (frame 0 needs one)')
    n0 = frame_number(frame0_path)
    same = [p for p in pngs if frame_number(p) == n0]
    if not same:
        raise CRWError(f'{ann_dir}: no annotation of the first frame {os.path.basename(frame0_path)} (the first '
                       f'is {os.path.basename(pngs[0])}); --filelist propagates from the first frame\'s labels '
                       '(test.py --video/--mask starts at the first annotated frame)')
    return same[0]


def label_set(ids, size):
    """First-frame label ids [H0, W0] -> LabelSet at the image size (H, W) (values: those of the full-size ids)."""
    values = np.unique(ids)
    return LabelSet(values=values, label_map=np.searchsorted(values, resize_nearest(ids, size)))


def load_label_set(ann_path, size):
    """First-frame labels at the image size (H, W) -> LabelSet."""
    return label_set(read_annotation(ann_path)[0], size)


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
    """One video of a DAVIS filelist: lazily loaded frames plus the first frame's annotation (``mask``: label
    ids at the annotation's size; ``labels``: its label set at the frame size)."""

    def __init__(self, entry, crop_size=-1):
        self.entry = entry
        self.paths = list_frames(entry.frames_dir)
        if not self.paths:
            raise CRWError(f'line {entry.line_no}: no frames in {entry.frames_dir}')
        self.size = frame_size(self.paths[0], crop_size)
        self.frames = VideoFrames(self.paths, crop_size)
        self.mask = AnnotationReader().read(first_annotation(entry.target, self.paths[0]))
        self.labels = label_set(self.mask, self.size)

    def __len__(self):
        return len(self.paths)

    def first_labels(self, map_size):
        """One-hot first-frame labels brought to the feature map size -> [h, w, K]."""
        return downsample_labels(one_hot(self.labels.label_map, self.labels.K), map_size)
