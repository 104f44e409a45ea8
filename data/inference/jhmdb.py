"""JHMDB pose propagation data: a video's frames and joints, joints -> heat maps for frame 0, soft maps ->
joints, drawing.

Coordinates are (x, y) in feature cells (pixels after resizing / the encoder's stride), as the release saved
them for PCK. The 15 joints of frame 0 start the propagation as heat maps (one channel per joint plus
background); every frame's joints are decoded from its propagated soft maps (``pose_from_soft_map``).
"""
import numpy as np
import torch
from PIL import Image, ImageDraw

from crw.data.images import list_frames
from crw.data.inference.frames import VideoFrames, frame_size
from crw.utils.errors import CRWError

SIGMA = 0.5   # Gaussian width in feature cells
# parent of each of the 15 JHMDB joints, for drawing (the release's skeleton)
PARENTS = (1, 0, 0, 0, 0, 1, 1, 3, 4, 5, 6, 7, 8, 9, 10)
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255))


def load_joints(mat_path):
    """joint_positions.mat -> pos_img [2, J, T] float64 (x, y) in pixels, 0-based (the file is 1-based)."""
    from scipy.io import loadmat   # only JHMDB needs scipy (its import costs test.py 0.3 s otherwise)
    try:
        m = loadmat(mat_path)
    except Exception as e:
        raise CRWError(f'{mat_path}: cannot read the joint file ({type(e).__name__})') from e
    if 'pos_img' not in m:
        raise CRWError(f"{mat_path}: no 'pos_img' array (expected a JHMDB joint_positions.mat)")
    return np.asarray(m['pos_img'], dtype=np.float64) - 1


class JhmdbVideo:
    """One JHMDB video of a filelist: ``paths``, ``frames`` (VideoFrames at ``crop_size``), ``joints``
    [2, J, T] pixels (0-based) of its joint_positions.mat, ``native_size`` and ``size`` (H, W) of its frames
    on disk and as loaded."""

    def __init__(self, entry, crop_size):
        self.paths = list_frames(entry.frames_dir)
        if not self.paths:
            raise CRWError(f'{entry.frames_dir}: no frames')
        self.native_size = frame_size(self.paths[0], -1)
        self.size = frame_size(self.paths[0], crop_size)
        self.joints = load_joints(entry.target)
        self.frames = VideoFrames(self.paths, crop_size)

    def __len__(self):
        return len(self.paths)

    def first_heatmaps(self, map_size, stride):
        """Frame 0's joints as labels [h, w, J+1] at the feature map ``map_size``: pixels -> feature cells as the
        release, x * (W / W0) / stride and y * (H / H0) / stride."""
        (H0, W0), (H, W) = self.native_size, self.size
        scale = np.array([W / W0 / stride, H / H0 / stride])[:, None]
        return joint_heatmaps(self.joints[:, :, 0] * scale, map_size)


def _draw_gaussian(img, x, y, sigma=SIGMA):
    """Write (not add) a Gaussian of size 6*sigma+1 centred on the rounded point, clipped to the map: the
    release's discretisation (a 4x4 patch for sigma 0.5)."""
    h, w = img.shape
    ul = (int(x - 3 * sigma), int(y - 3 * sigma))
    br = (int(x + 3 * sigma + 1), int(y + 3 * sigma + 1))
    if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
        return
    size = 6 * sigma + 1
    g1 = np.arange(0, size, 1, dtype=np.float64)
    c = size // 2
    g = np.exp(-((g1[None, :] - c) ** 2 + (g1[:, None] - c) ** 2) / (2 * sigma ** 2))
    gx = max(0, -ul[0]), min(br[0], w) - ul[0]
    gy = max(0, -ul[1]), min(br[1], h) - ul[1]
    ix = max(0, ul[0]), min(br[0], w)
    iy = max(0, ul[1]), min(br[1], h)
    img[iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]


def joint_heatmaps(coords, size, sigma=SIGMA):
    """coords [2, J] (x, y) in feature cells -> labels [h, w, J+1] float32: channel 0 background (1 where no
    joint has mass), channel j+1 the Gaussian of joint j."""
    h, w = size
    J = coords.shape[1]
    maps = np.zeros((J, h, w), dtype=np.float64)
    for j in range(J):
        _draw_gaussian(maps[j], float(coords[0, j]), float(coords[1, j]), sigma)
    bg = (maps.sum(0) == 0).astype(np.float64)
    return torch.from_numpy(np.concatenate([bg[None], maps]).transpose(1, 2, 0).astype(np.float32))


def pose_from_soft_map(soft, topk=3):
    """Soft labels [h, w, J+1] -> joints [2, J] (x, y) in feature cells: per joint, the mass-weighted mean
    of its ``topk`` strongest cells; a joint with no mass at all -> (-1, -1)."""
    h, w, K = soft.shape
    flat = soft[..., 1:].reshape(h * w, K - 1).to(torch.float64)
    k = min(topk, flat.shape[0])
    vals, ids = torch.topk(flat, k, dim=0)                      # [k, J]
    wts = vals / vals.sum(0, keepdim=True)
    xs, ys = (ids % w).to(flat.dtype), (ids // w).to(flat.dtype)
    xy = torch.stack([(xs * wts).sum(0), (ys * wts).sum(0)])
    xy[:, flat.sum(0) == 0] = -1
    return xy


def pose_image(img, xy):
    """img [H, W, 3] uint8 with the skeleton of joints xy [2, J] (pixels; negative = missing) drawn on a copy."""
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    for j, p in enumerate(PARENTS[:xy.shape[1]]):
        x1, y1, x2, y2 = xy[0, p], xy[1, p], xy[0, j], xy[1, j]
        if min(x1, y1, x2, y2) >= 0:
            d.line([(float(x1), float(y1)), (float(x2), float(y2))], fill=COLOURS[j % len(COLOURS)], width=4)
    return np.asarray(im)


def draw_pose(path, img, xy):
    """Save ``pose_image(img, xy)`` to path (JPEG quality 90)."""
    Image.fromarray(pose_image(img, xy)).save(path, quality=90)
