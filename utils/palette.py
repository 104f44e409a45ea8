"""The DAVIS/PASCAL colour palette and indexed-PNG writing shared by test.py, eval/ and the demo."""
import os

import numpy as np
from PIL import Image


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


def save_indexed_png(path, labels):
    """Write a [H, W] integer label map as a palette PNG (what the DAVIS scorer reads), atomically."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f'{path}: labels must lie in 0..255')
    im = Image.fromarray(labels.astype(np.uint8), mode='P')
    im.putpalette(davis_palette().reshape(-1).tolist())
    tmp = f'{path}.tmp{os.getpid()}.png'
    im.save(tmp)
    os.replace(tmp, path)
