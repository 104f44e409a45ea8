"""Frames and label images on disk: the one frame lister, image reader, nearest-neighbour label resize and
the DAVIS palette, shared by training, propagation and evaluation.

Frame order: by the integer before the first dot of the file name (``00012.jpg`` -> 12), as the release
sorted; names whose stem is not a number use their last run of digits (``frame_12.jpg``). Hidden files
(``.DS_Store``, macOS ``._00001.jpg``) are ignored; a name without any number, or two files with the same
frame number (``00005.jpg`` and ``00005.png``), is an error rather than a silently shifted video.
"""
import contextlib
import os
import re

import cv2
import numpy as np
from PIL import Image

from utils.errors import CRWError, DecodeError
from utils.misc import atomic_write

cv2.setNumThreads(1)  # callers parallelise over frames or sequences themselves

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
_DIGITS = re.compile(r'\d+')


# ---------------------------------------------------------------------------------------------- frames
def frame_number(name):
    """The frame number in a file name: the part before the first dot if it is a number, else the last run of
    digits of the name without its extension; None if there is none."""
    stem = os.path.basename(name).split('.')[0]
    if stem.isdigit():
        return int(stem)
    runs = _DIGITS.findall(os.path.splitext(os.path.basename(name))[0])
    return int(runs[-1]) if runs else None


def list_frames(folder, extensions=IMAGE_EXTENSIONS):
    """Paths of the image files of ``folder`` in frame order. Raises CRWError for a file without a frame
    number or two files with the same number."""
    try:
        names = [n for n in os.listdir(folder) if n.lower().endswith(extensions) and not n.startswith('.')]
    except OSError as e:
        raise CRWError(f'{folder}: cannot list the frames ({e.strerror or type(e).__name__})') from e
    numbered = []
    for n in names:
        k = frame_number(n)
        if k is None:
            raise CRWError(f'{os.path.join(folder, n)}: no frame number in the file name (frames are ordered '
                           'by the number in their names, e.g. 00012.jpg)')
        numbered.append((k, n))
    numbered.sort()
    for (k1, n1), (k2, n2) in zip(numbered, numbered[1:]):
        if k1 == k2:
            raise CRWError(f'{folder}: {n1} and {n2} are both frame {k1}; keep one of them')
    return [os.path.join(folder, n) for _, n in numbered]


@contextlib.contextmanager
def open_image(path, what='image'):
    """``PIL.Image.open`` whose failures (missing, truncated or not an image) are one DecodeError naming the
    file."""
    try:
        with Image.open(path) as im:
            yield im
    except Exception as e:
        raise DecodeError(f'{path}: cannot read the {what} ({type(e).__name__})') from e


def read_image(path):
    """RGB uint8 [H, W, 3] image (OpenCV, PIL as the fallback). Raises DecodeError naming the file."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is not None:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    with open_image(path) as im:
        return np.asarray(im.convert('RGB'))


def image_size(path):
    """(H, W) of an image file, from its header."""
    with open_image(path) as im:
        return im.size[1], im.size[0]


# ---------------------------------------------------------------------------------------------- label maps
def resize_nearest(labels, size):
    """Nearest-neighbour resize of an integer label map [H, W] to ``size`` (H', W') with pixel centres aligned
    (OpenCV's INTER_NEAREST_EXACT, the rule of PIL and scikit-image), so only values of the input appear and
    nothing shifts. The release's cv2 INTER_NEAREST maps corners instead, shifting by up to half a pixel."""
    labels = np.asarray(labels)
    if labels.shape[:2] == tuple(size):
        return labels
    small = labels.astype(np.int32) if labels.dtype not in (np.uint8, np.uint16, np.int16, np.int32) else labels
    out = cv2.resize(small, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(labels.dtype, copy=False)


def davis_palette(n=256):
    """[n, 3] uint8: the bit-interleaved PASCAL VOC palette that DAVIS annotations use (1 = dark red, ...)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def colour_codes(rgb):
    """[H, W, 3] uint8 -> [H, W] int64 codes 0xRRGGBB."""
    rgb = np.asarray(rgb).astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_PALETTE_ID = None


def palette_ids(codes):
    """Palette index of each colour code (first index for a colour listed twice), or None where some colour
    is not in the DAVIS palette. ``codes``: int array of 0xRRGGBB values, any shape."""
    global _PALETTE_ID
    if _PALETTE_ID is None:
        pal = colour_codes(davis_palette())
        _PALETTE_ID = {int(c): i for i, c in reversed(list(enumerate(pal)))}
    codes = np.asarray(codes)
    uniq, inv = np.unique(codes, return_inverse=True)
    ids = [_PALETTE_ID.get(int(c)) for c in uniq]
    if any(i is None for i in ids):
        return None
    return np.asarray(ids, dtype=np.int64)[inv.reshape(codes.shape)]


SINGLE_CHANNEL_MODES = ('P', 'L', 'I', 'I;16', '1')


def read_label_image(path):
    """A label image as stored: [H, W] int64 values for single-channel PNGs (palette indices of a P-mode
    DAVIS annotation, grey levels), or [H, W, 3] uint8 colours for RGB(A) ones. Raises DecodeError."""
    with open_image(path, 'label image') as im:
        if im.mode in SINGLE_CHANNEL_MODES:
            return np.asarray(im).astype(np.int64)
        return np.asarray(im.convert('RGB'))


def read_label_palette(path):
    """[256, 3] uint8 palette of a P-mode (palette) PNG, None for other images."""
    with open_image(path, 'label image') as im:
        if im.mode != 'P':
            return None
        pal = np.asarray(im.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
    out = davis_palette()
    out[:len(pal)] = pal
    return out


def as_uint8_ids(labels, path):
    """A label map as uint8 ids; CRWError naming ``path`` for values outside 0..255 (an 8-bit PNG holds no more)."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise CRWError(f'{path}: label ids must lie in 0..255 to be written as an 8-bit PNG')
    return labels.astype(np.uint8)


def save_indexed_png(path, labels, palette=None):
    """Write a [H, W] integer label map as a palette PNG (what DAVIS scorers read), atomically. ``palette``:
    [n, 3] uint8 colours (default: the DAVIS palette)."""
    im = Image.fromarray(as_uint8_ids(labels, path), mode='P')
    im.putpalette((davis_palette() if palette is None else np.asarray(palette, np.uint8)).reshape(-1).tolist())
    with atomic_write(path) as f:
        im.save(f, format='PNG')


def save_grey_png(path, labels):
    """Write a [H, W] integer label map as an 8-bit greyscale PNG whose grey levels are the ids (what VIP's
    scorers read: any reader, OpenCV's colour conversion included, sees the ids), atomically."""
    im = Image.fromarray(as_uint8_ids(labels, path), mode='L')
    with atomic_write(path) as f:
        im.save(f, format='PNG')
