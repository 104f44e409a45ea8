"""Frames on disk: the one frame lister and image reader, shared by training, propagation and evaluation (label
images: ``data.labels``).

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

from crw.utils.errors import CRWError, DecodeError

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
