"""Frames as the encoder sees them at test time, and the loader that streams them.

Images are RGB in [0, 1]; ``crop_size`` S > 0 resizes to S x S (bilinear, no antialiasing, aspect ratio not
kept, as the release), -1 keeps the native size, and ``max_side`` shrinks the longer side (aspect ratio kept;
``processing_size``). The network input is normalised with the ImageNet mean/std (``prepare_frame``).
``VideoFrames`` loads a video's frames lazily, one at a time (a map-style Dataset: a DataLoader with workers
prefetches a few while the device works); a video is never held in memory whole. ``frame_loader`` batches
any such dataset in order.
"""
import cv2
import numpy as np
import torch

from crw.data.images import image_size, read_image
from crw.utils.errors import CRWError

# Your own video is propagated at its own size, at most this many pixels on its longer side (DAVIS 480p's width,
# the scale the protocol was tuned at); test.py --video's --max-side default (utils.arguments.VIDEO_MAX_SIDE).
DEFAULT_MAX_SIDE = 854
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def normalize_image(x):
    """float [H, W, 3] in [0, 1] -> tensor [3, H, W] normalised with the ImageNet statistics."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=t.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=t.dtype).view(3, 1, 1)
    return (t - mean) / std


def prepare_frame(img, size):
    """uint8 [H, W, 3] frame -> normalised network input [3, H', W'] at ``size`` (see ``resize_image``)."""
    return normalize_image(resize_image(img, size))


def as_frame(frame):
    """A frame as uint8 [H, W, 3] numpy (RGB): from an array, a tensor or an image path."""
    if isinstance(frame, (str, bytes)) or hasattr(frame, '__fspath__'):
        return read_image(frame)
    if torch.is_tensor(frame):
        frame = frame.cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise CRWError(f'a frame must be uint8 [H, W, 3] RGB, got {frame.dtype} {list(frame.shape)}')
    return frame


def frame_size(path, crop_size=-1):
    """(H, W) a frame will have after loading with ``crop_size``."""
    if crop_size and crop_size > 0:
        return crop_size, crop_size
    return image_size(path)


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


def frame_loader(dataset, batch_size, workers, device):
    """A DataLoader over a frames dataset (items (network input, frame as written, t)), in order, with
    ``workers`` processes prefetching; a streaming (iterable) dataset gets at most one, which decodes it once."""
    workers = max(0, int(workers))
    if isinstance(dataset, torch.utils.data.IterableDataset):
        workers = min(workers, 1)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=torch.device(device).type == 'cuda', prefetch_factor=2 if workers else None,
        persistent_workers=False)
