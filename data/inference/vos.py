"""One DAVIS or VIP video of a filelist: its frames, loaded lazily, and its first frame's mask.

Frames are the frames folder's images in frame order (``data.images.list_frames``). Only frame 0's
annotation is read (``data.labels.MaskReader``), and it must exist: the PNG with frame 0's number in the
annotations folder; another frame's annotation is never taken as frame 0's.
"""
import os

from crw.data.images import frame_number, list_frames
from crw.data.inference.frames import VideoFrames, frame_size
from crw.data.labels import MaskReader
from crw.utils.errors import CRWError


def first_annotation(ann_dir, frame0_path):
    """The annotation of frame 0: the PNG with frame 0's number; CRWError when there is none."""
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


class VOSVideo:
    """``paths`` of the frames, ``frames`` (VideoFrames at ``crop_size``), ``size`` (H, W) of a loaded frame,
    ``mask``: frame 0's label ids [H0, W0] int64 at the annotation's own size."""

    def __init__(self, entry, crop_size=-1):
        self.entry = entry
        self.paths = list_frames(entry.frames_dir)
        if not self.paths:
            raise CRWError(f'line {entry.line_no}: no frames in {entry.frames_dir}')
        self.size = frame_size(self.paths[0], crop_size)
        self.frames = VideoFrames(self.paths, crop_size)
        self.mask = MaskReader().read(first_annotation(entry.target, self.paths[0]))

    def __len__(self):
        return len(self.paths)

    @property
    def frame_names(self):
        """Each frame's file name without its extension."""
        return [os.path.splitext(os.path.basename(p))[0] for p in self.paths]
