"""Your own video for ``test.py --video/--mask``: frames from a video file or a folder of frames, masks from one
label image or a folder of them. Checked up front, so that bad input is one line before anything is written.

Video file: anything TorchCodec or PyAV decodes (``data.video_io.VIDEO_EXTENSIONS`` and more), streamed frame
by frame; frame t is named ``{t:05d}``. Folder: the image files in frame order (``data.images.list_frames``),
each named by its file name without the extension; all frames must have the first one's size.

Masks: one label image is frame 0's annotation; a folder holds annotations named like the frames they belong
to (matched by the frame number in the names: ``00012.png`` or ``frame_12.png`` is frame 12 of a video file,
or the frame whose file name carries the number 12 in a folder). Label images are read by
``data.labels.MaskReader`` (palette PNG, greyscale or RGB with a few flat colours); ``VideoMasks`` reads
every one of them once up front, then again as their frames come.
"""
import os

import torch

from crw.data.images import IMAGE_EXTENSIONS, frame_number, image_size, list_frames, read_image
from crw.data.inference.frames import prepare_frame
from crw.data.labels import MaskReader
from crw.data.video_io import VIDEO_EXTENSIONS, iter_frames, iter_frames_reversed, probe_video, warn
from crw.utils.errors import CRWError, DecodeError

FOLDER_FPS = 24   # frame rate of the overlay video for a folder of frames (DAVIS's)


class UserVideo:
    """One video of the user's: ``name``, ``size`` (H, W), ``fps``, ``frame_names`` [T] (``file_names``: a
    folder's file names, a video file's frame names) and the frame number each name carries (``numbers``);
    ``dataset(proc_size, start)`` streams its frames."""

    def __init__(self, path):
        self.path = path
        self.name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        if os.path.isdir(path):
            self.paths = list_frames(path)
            if not self.paths:
                raise CRWError(f'--video {path}: no frames ({", ".join(IMAGE_EXTENSIONS)}) in the folder')
            self.file_names = [os.path.basename(p) for p in self.paths]
            self.frame_names = [os.path.splitext(n)[0] for n in self.file_names]
            self.numbers = [frame_number(p) for p in self.paths]
            self.size = image_size(self.paths[0])
            self.fps = FOLDER_FPS
        elif os.path.isfile(path):
            self.paths = None
            try:
                n, self.fps = probe_video(path)
                _, first = next(iter_frames(path))
            except (DecodeError, StopIteration) as e:
                raise CRWError(f'--video {path}: cannot decode it as a video ({e}); give a video file '
                               f'({" ".join(VIDEO_EXTENSIONS)}) or a folder of frames') from e
            self.size = first.shape[:2]
            self.frame_names = [f'{t:05d}' for t in range(n)]
            self.file_names = self.frame_names
            self.numbers = list(range(n))
        else:
            raise CRWError(f'--video {path}: no such file or folder')

    def __len__(self):
        return len(self.frame_names)

    def dataset(self, proc_size, start=0, reverse=False):
        """Frames t >= start (``reverse``: t = start, start-1, ..., 0) as (prepared network input [3, H', W'] at
        ``proc_size``, the frame uint8 [H, W, 3], t): a map-style Dataset for a folder, a streaming
        IterableDataset for a video file (reversed: decoded by chunks, ``data.video_io.iter_frames_reversed``)."""
        order = range(start, -1, -1) if reverse else range(start, len(self))
        if self.paths is not None:
            return _FolderFrames(self.paths, order, self.size, proc_size)
        return _DecodedFrames(self.path, self.size, proc_size, start, reverse)

    def images(self, stop):
        """Frames 0 ... stop-1 as uint8 [H, W, 3] arrays, in order."""
        if self.paths is not None:
            yield from (read_image(p) for p in self.paths[:stop])
            return
        for t, img in iter_frames(self.path):
            if t >= stop:
                return
            yield img


def _check_size(frame, size, where):
    if frame.shape[:2] != tuple(size):
        raise CRWError(f'{where}: frame of {frame.shape[1]}x{frame.shape[0]}, the first frame is '
                       f'{size[1]}x{size[0]}; all frames of a video must have one size')


class _FolderFrames(torch.utils.data.Dataset):
    def __init__(self, paths, order, size, proc_size):
        self.paths, self.order, self.size, self.proc_size = paths, list(order), size, proc_size

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        t = self.order[i]
        img = read_image(self.paths[t])
        _check_size(img, self.size, self.paths[t])
        return prepare_frame(img, self.proc_size), torch.from_numpy(img), t


class _DecodedFrames(torch.utils.data.IterableDataset):
    def __init__(self, path, size, proc_size, start, reverse=False):
        self.path, self.size, self.proc_size, self.start, self.reverse = path, size, proc_size, start, reverse

    def __iter__(self):
        frames = iter_frames_reversed(self.path, self.start) if self.reverse else iter_frames(self.path, self.start)
        for t, img in frames:
            _check_size(img, self.size, f'{self.path} frame {t}')
            yield prepare_frame(img, self.proc_size), torch.from_numpy(img), t


def mask_files(mask, video):
    """{frame index t: label image path} for ``--mask`` (one image: frame 0; a folder: matched by frame number).
    Raises CRWError when nothing matches; warns (one line) about files that match no frame."""
    if os.path.isfile(mask):
        return {0: mask}
    if not os.path.isdir(mask):
        raise CRWError(f'--mask {mask}: no such file or folder')
    files = list_frames(mask)
    if not files:
        raise CRWError(f'--mask {mask}: no label images ({", ".join(IMAGE_EXTENSIONS)}) in the folder')
    index = {n: t for t, n in enumerate(video.numbers)}
    found, unmatched = {}, []
    for p in files:
        t = index.get(frame_number(p))
        if t is None:
            unmatched.append(os.path.basename(p))
        else:
            found[t] = p
    if not found:
        raise CRWError(f'--mask {mask}: no mask is named like a frame of {video.path} (masks '
                       f'{files and os.path.basename(files[0])}..., frames {video.frame_names[0]} to '
                       f'{video.frame_names[-1]}); name each mask like its frame, e.g. {video.frame_names[0]}.png')
    if unmatched:
        warn(f'--mask {mask}: {len(unmatched)} file(s) match no frame of {video.path} and are ignored '
             f'({", ".join(unmatched[:3])}{", ..." if len(unmatched) > 3 else ""})')
    return dict(sorted(found.items()))


class VideoMasks:
    """``--mask`` for a UserVideo: ``files`` {frame index t: label image path} (see ``mask_files``), ``start``
    (the first annotated frame), ``palette`` (the colours outputs are written with) and ``object_ids`` (every
    object id of the masks, ascending, 0 left out). Every file is read once when this is made, so that bad
    input stops the run before anything is written. ``get(t)``: frame t's label ids fitted to the video's
    size (read again; notes and the size warning once, to ``note``), or None."""

    def __init__(self, mask, video, note=None):
        self.files = mask_files(mask, video)
        self.start = min(self.files)
        self.size = video.size
        reader = MaskReader(note=lambda msg: None)
        self.palette = reader.check_all(self.files.values(), video.size)
        self.object_ids = [k for k in reader.seen_ids if k != 0]
        self.reader = MaskReader(note)

    def get(self, t, default=None):
        path = self.files.get(t)
        return default if path is None else self.reader.ids(path, self.size)

    def first_only(self):
        """These masks without the later ones (a backward run starts from the first and has no other)."""
        return {self.start: self.get(self.start)}
