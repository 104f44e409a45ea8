"""Label images, the one module that says what a mask is: reading, checking, resizing and writing them.

A mask is an [H, W] integer map of label ids in 0..255 (0 is background). ``MaskReader`` reads the masks of
one video: palette PNGs give their palette indices, greyscale PNGs their grey levels, RGB images their
colours (DAVIS-palette colours -> palette indices, other colours numbered 0, 1, ... black first); transparent
pixels (alpha < 128, or a palette's transparent index) are background, and in an image with an alpha channel
and transparent pixels every opaque colour, black included, is an object; a 0/255 mask's 255 is object 1;
more than MAX_MASK_COLOURS grey levels or colours is refused (anti-aliased edges), and so is a JPEG file.
``load_label_image`` is the one place a label file is opened (values as stored, for the scorers).
Sizes: ``resize_nearest`` aligns pixel centres; ``fit_mask`` brings a mask to its frame. For the
propagator: ``soft_labels`` (one-hot, ``downsample_labels`` bilinearly to the feature map). Written with
``save_indexed_png`` (palette PNG, the DAVIS result format), ``save_grey_png`` or, one object at a time,
``save_binary_png`` (``object_masks``); ids outside 0..255 are refused once, by ``check_label_range``.
"""
import sys
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from crw.data.images import open_image
from crw.utils.errors import CRWError
from crw.utils.misc import atomic_write

MAX_MASK_COLOURS = 32   # more distinct values in a greyscale/RGB mask: anti-aliased edges, not objects
SINGLE_CHANNEL_MODES = ('P', 'L', 'I', 'I;16', '1')
JPEG_FORMATS = ('JPEG', 'MPO')   # lossy: a mask saved so has stray colours along every edge
OPAQUE = 128            # alpha below this is a transparent (background) pixel
TRANSPARENT = -1        # the colour code of a transparent pixel (colour codes are 0xRRGGBB >= 0)


# ---------------------------------------------------------------------------------------------- colours
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
    """[..., 3] uint8 -> [...] int64 codes 0xRRGGBB."""
    rgb = np.asarray(rgb).astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_PALETTE_ID = None


def palette_ids(codes):
    """DAVIS-palette index of each colour code (the first index of a colour listed twice), or None where some
    colour is not in the palette. ``codes``: int array of 0xRRGGBB values, any shape."""
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


def _davis_colour_ids(code):
    """DAVIS-palette ids of colour codes [H, W] with TRANSPARENT pixels as background, or None: where some
    pixels are transparent, opaque black is an object (not palette colour 0), so the palette does not apply."""
    transparent = code == TRANSPARENT
    if not transparent.any():
        return palette_ids(code)
    if (code == 0).any():
        return None
    return palette_ids(np.where(transparent, 0, code))


def decode_colours(rgb, encoding):
    """[..., 3] uint8 colours -> int64 ids, or None if some colour has no id. ``encoding``: 'rgb' (DAVIS-palette
    colours), 'bgr' (the same with red and blue swapped, what the release's test.py wrote) or 'grey'
    (R = G = B = id)."""
    rgb = np.asarray(rgb)
    if encoding == 'grey':
        same = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        return rgb[..., 0].astype(np.int64) if same.all() else None
    return palette_ids(colour_codes(rgb[..., ::-1] if encoding == 'bgr' else rgb))


# ---------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class StoredLabels:
    """A label image as stored in its file: ``values`` [H, W] int64 for single-channel images (palette
    indices, grey levels) or [H, W, 3] uint8 colours; ``palette`` [256, 3] uint8 of a palette PNG, else None;
    ``transparent`` [H, W] bool where a pixel is transparent (alpha < 128 or a transparent palette index /
    grey level), None when every pixel is opaque. An alpha channel that is opaque everywhere is dropped."""
    path: str
    values: np.ndarray
    palette: Optional[np.ndarray] = None
    transparent: Optional[np.ndarray] = None

    @property
    def is_colour(self):
        return self.values.ndim == 3


def transparent_pixels(im):
    """[H, W] bool: the transparent pixels of a PIL image (alpha channel, or a PNG's tRNS transparency), or None
    when it has none."""
    if 'A' in im.getbands():
        alpha = np.asarray(im.getchannel('A'))
    elif 'transparency' in im.info:
        alpha = np.asarray(im.convert('RGBA').getchannel('A'))
    else:
        return None
    transparent = alpha < OPAQUE
    return transparent if transparent.any() else None


def load_label_image(path):
    """Open one label image -> StoredLabels (no mapping: 255 stays 255). Raises DecodeError naming the file, and
    CRWError for a JPEG file (by its content, whatever its name)."""
    with open_image(path, 'label image') as im:
        fmt = im.format
        if fmt not in JPEG_FORMATS:
            stored = _stored_labels(str(path), im)
    if fmt in JPEG_FORMATS:
        raise CRWError(f'{path}: a JPEG file; JPEG compression gives every object stray colours along its edges, '
                       'so it cannot be a mask: save the mask as PNG in the program that drew it (File > Export '
                       'As... > .png); converting this file would keep the stray colours')
    return stored


def _stored_labels(path, im):
    transparent = transparent_pixels(im)
    if transparent is None and im.mode == 'LA':
        im = im.convert('L')          # an alpha channel that is opaque everywhere says nothing
    if im.mode not in SINGLE_CHANNEL_MODES:
        return StoredLabels(path, np.asarray(im.convert('RGB')), None, transparent)
    values = np.asarray(im).astype(np.int64)
    palette = None
    if im.mode == 'P':
        own = np.asarray(im.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
        palette = davis_palette()
        palette[:len(own)] = own
    return StoredLabels(path, values, palette, transparent)


def read_ids(path, hint):
    """[H, W] int64 values of a single-channel label image as stored (e.g. ground truth, where 255 is void);
    a colour image raises CRWError '<path> is a colour image; <hint>'."""
    stored = load_label_image(path)
    if stored.is_colour:
        raise CRWError(f'{path} is a colour image; {hint}')
    return stored.values


def check_label_range(labels, what):
    """``labels`` unchanged; CRWError naming ``what`` when an id lies outside 0..255 (an 8-bit PNG holds no
    more, and the propagator's label tables stop there)."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise CRWError(f'{what}: label ids must lie in 0..255 to be written as an 8-bit PNG')
    return labels


class MaskReader:
    """Reads the masks of one video into label ids [H, W] int64, with one colour -> id mapping for all of them.

    Single-channel images: ids are the pixel values. RGB(A): when every colour of the first colour mask is a
    DAVIS-palette colour, ids are palette indices (later masks must keep to the palette); otherwise colours
    are numbered 0, 1, ... in colour order (black first) and a later mask's new colours continue the
    numbering. Transparent pixels are background (id 0) in every kind; in an image with an alpha channel
    and transparent pixels every opaque colour is an object, black included (a mask drawn only in the alpha
    channel is object 1). ``palette`` [256, 3] uint8 is what outputs are written with: the first palette PNG's own
    palette, the numbered colours, else the DAVIS palette. A 0/255 mask's 255 becomes 1 (one note per reader,
    to ``note``, default stderr); a size other than the frame's is resized when the aspect ratio agrees (one
    warning per reader). Refused (CRWError): more than MAX_MASK_COLOURS grey levels or numbered colours, ids
    outside 0..255, another aspect ratio.
    """

    def __init__(self, note=None):
        self.colour_ids = None        # {0xRRGGBB: id} for RGB masks outside the DAVIS palette
        self._palette = None
        self._noted_binary = False
        self._warned_size = False
        self.note = note or (lambda msg: print(msg, file=sys.stderr, flush=True))

    @property
    def palette(self):
        return self._palette if self._palette is not None else davis_palette()

    def read(self, path):
        """ids [H, W] int64 of one label image file."""
        stored = load_label_image(path)
        if stored.is_colour:
            code = colour_codes(stored.values)
            if stored.transparent is not None:
                code[stored.transparent] = TRANSPARENT
            ids = self._colour_ids(path, code)
        else:
            ids = stored.values
            if stored.transparent is not None:
                ids = np.where(stored.transparent, 0, ids)
            if stored.palette is None:
                self._check_count(path, np.unique(ids).size, 'grey levels')
            if self._palette is None:
                self._palette = stored.palette if stored.palette is not None else davis_palette()
        values = np.unique(ids)
        if values.size and values.max() == 255 and set(values.tolist()) <= {0, 255}:
            if not self._noted_binary:    # once per video
                self.note(f'{path}: note: a 0/255 mask; object 255 is taken as object 1 (in every such mask)')
                self._noted_binary = True
            ids = np.where(ids == 255, 1, ids)
        return check_label_range(ids, path)

    def ids(self, mask, size=None):
        """Label ids [H, W] int64 of a mask (integer ids as an array or tensor, or a label image path), brought
        to the frame size ``size`` (H, W) if given (see ``fit_mask``)."""
        what = 'the mask'
        if isinstance(mask, (str, bytes)) or hasattr(mask, '__fspath__'):
            what = str(mask)
            mask = self.read(mask)
        elif torch.is_tensor(mask):
            mask = mask.cpu().numpy()
        ids = np.asarray(mask)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise CRWError(f'{what}: a mask must be integer label ids [H, W], got {ids.dtype} {list(ids.shape)}')
        ids = check_label_range(ids, what).astype(np.int64, copy=False)
        if size is not None:
            ids = fit_mask(ids, size, what, None if self._warned_size else self._warn_size)
        return ids

    def check_all(self, paths, size):
        """Read every mask once (colours, values, size) so that bad input stops a run before anything is
        written; returns ``palette``; ``seen_ids`` is then every id of them, ascending."""
        seen = set()
        for path in paths:
            ids = self.read(path)
            seen.update(np.unique(ids).tolist())
            fit_mask(ids, size, path)
        self.seen_ids = sorted(seen)
        return self.palette

    def _warn_size(self, message):
        self._warned_size = True
        self.note(f'warning: {message}')

    def _check_count(self, path, n, what):
        if n > MAX_MASK_COLOURS:
            raise CRWError(f'{path}: {n} distinct {what}, not a label image (anti-aliased edges or JPEG '
                           'compression?); save the mask as a palette PNG with one index per object (PIL: '
                           "Image.fromarray(ids.astype('uint8'), mode='P') with putpalette) or a greyscale PNG of "
                           'ids 0, 1, 2, ...')

    def _colour_ids(self, path, code):
        """Colour codes [H, W] (TRANSPARENT where transparent) -> ids: DAVIS-palette indices, or numbered."""
        if self.colour_ids is None:
            ids = _davis_colour_ids(code)
            if ids is not None:
                if self._palette is None:
                    self._palette = davis_palette()
                return ids
        uniq = np.unique(code)
        known = self.colour_ids or {}
        new = [int(c) for c in uniq if int(c) not in known]
        self._check_count(path, len(uniq), 'colours')
        if self.colour_ids is None:
            if self._palette is not None:
                raise CRWError(f'{path}: colours outside the DAVIS palette, unlike the video\'s earlier masks; '
                               'draw every mask with the same colours')
            self.colour_ids, self._palette = {}, davis_palette()
        for c in new:       # ascending: TRANSPARENT, then black, first
            if c == TRANSPARENT and self.colour_ids:
                self.colour_ids[c] = 0          # background, whichever colour had id 0 before
                continue
            k = max(self.colour_ids.values(), default=-1) + 1
            if k > 255:
                raise CRWError(f'{path}: more than 256 colours over the video\'s masks')
            self.colour_ids[c] = k
            if c > 0:        # black or transparent objects are drawn in the DAVIS colour of their id
                self._palette[k] = ((c >> 16) & 255, (c >> 8) & 255, c & 255)
        lut = np.array([self.colour_ids[int(c)] for c in uniq], np.int64)
        return lut[np.searchsorted(uniq, code)]


# ---------------------------------------------------------------------------------------------- sizes
def resize_nearest(labels, size):
    """Nearest-neighbour resize of an integer label map [H, W] to ``size`` (H', W') with pixel centres aligned
    (OpenCV's INTER_NEAREST_EXACT, the rule of PIL and scikit-image): only values of the input appear and
    nothing shifts."""
    labels = np.asarray(labels)
    if labels.shape[:2] == tuple(size):
        return labels
    small = labels.astype(np.int32) if labels.dtype not in (np.uint8, np.uint16, np.int16, np.int32) else labels
    out = cv2.resize(small, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(labels.dtype, copy=False)


def fit_mask(ids, size, what='the mask', warn=None):
    """Label ids [h, w] brought to the frame size (H, W): unchanged when equal; resized with nearest neighbour
    (``warn`` told) when the aspect ratios agree within 1 %; else CRWError."""
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


# ---------------------------------------------------------------------------------------------- soft labels
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


def soft_labels(ids, values, map_size):
    """Label ids [H, W] (each one of ``values``, ascending) -> soft labels at the feature map [h, w, K]: the
    one-hot over ``values`` (channel k is id values[k]) brought down bilinearly to ``map_size``."""
    return downsample_labels(one_hot(np.searchsorted(values, ids), len(values)), map_size)


# ---------------------------------------------------------------------------------------------- writing
def as_uint8_ids(labels, what):
    """A label map as uint8 ids (``check_label_range``: ``what`` names it in the error)."""
    return check_label_range(labels, what).astype(np.uint8)


def save_indexed_png(path, labels, palette=None):
    """Write a [H, W] integer label map as a palette PNG (what DAVIS scorers read), atomically. ``palette``:
    [n, 3] uint8 colours (default: the DAVIS palette)."""
    im = Image.fromarray(as_uint8_ids(labels, path), mode='P')
    im.putpalette((davis_palette() if palette is None else np.asarray(palette, np.uint8)).reshape(-1).tolist())
    with atomic_write(path) as f:
        im.save(f, format='PNG')


def object_masks(ids, object_ids):
    """{object id: bool [H, W] mask} of a label map ``ids`` for each of ``object_ids`` other than 0 (background)."""
    ids = np.asarray(ids)
    return {int(k): ids == k for k in object_ids if int(k) != 0}


def save_binary_png(path, mask):
    """Write a [H, W] bool mask as an 8-bit greyscale PNG, 255 inside and 0 outside, atomically."""
    im = Image.fromarray(np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8), mode='L')
    with atomic_write(path) as f:
        im.save(f, format='PNG')


def save_grey_png(path, labels):
    """Write a [H, W] integer label map as an 8-bit greyscale PNG whose grey levels are the ids (any reader,
    OpenCV's colour conversion included, sees the ids), atomically."""
    im = Image.fromarray(as_uint8_ids(labels, path), mode='L')
    with atomic_write(path) as f:
        im.save(f, format='PNG')
