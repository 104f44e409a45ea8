"""Training datasets: clips of videos, or clips of frame folders.

``build_train_dataset(args)`` decides the branch from the layout of ``--data-path`` (not from its name):

* ``kinetics``      – ``X/train_256/<class>/<video>.{mp4,mkv,webm,avi}`` (videos found recursively under train_256)
* ``class_folders`` – ``X/<class>/<video>.<ext>`` (``X`` itself holds class folders of videos)
* ``video_folder``  – ``X/<video>.<ext>`` (a flat folder of videos)
* ``frame_list``    – ``X`` is a text file, one video a line: ``<frames folder> <number of frames>``
* ``frame_folders`` – ``X/<video>/<frame images>`` (a folder of frame folders)

Items are indexed by ``(clip_index, sample_seed)`` tuples (see ``data.training.sampler``); every random choice of
an item (frame-folder start, per-frame crops and flips, the replacement of an undecodable clip) is drawn from
``numpy.random.default_rng(sample_seed)``, so an item is a pure function of its index tuple. An item is a uint8
clip [T, 3, S, S]; the walk's nodes are made from it on the device (``data/training/nodes.py``).
"""
import os

import numpy as np
import torch

from crw.data.images import IMAGE_EXTENSIONS, list_frames, read_image
from crw.data.training.scan import list_files, list_subfolders, log, scan
from crw.data.training.transforms import FrameTransform
from crw.data.video_io import (VIDEO_EXTENSIONS, decode_frames, num_resampled_frames, probe_video,
                           resampled_frame_indices, warn)
from crw.utils.errors import CRWError, DecodeError

VIDEO_BRANCHES = ('kinetics', 'class_folders', 'video_folder')
FRAME_BRANCHES = ('frame_list', 'frame_folders')
_MAX_REPLACEMENTS = 50


# ---------------------------------------------------------------------------------------------- layout
def _folder_kind(folder, max_entries=10000):
    """'images' if ``folder`` directly holds images (a frame folder), 'videos' if it or a folder below it holds
    video files (a class folder), else None. Looks at no more than ``max_entries`` entries."""
    pending, depth0, seen = [folder], True, 0
    while pending and seen < max_entries:
        d = pending.pop(0)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            seen += 1
            if e.name.startswith('.'):
                continue
            low = e.name.lower()
            if low.endswith(VIDEO_EXTENSIONS) and e.is_file():
                return 'videos'
            if depth0 and low.endswith(IMAGE_EXTENSIONS) and e.is_file():
                return 'images'
            if e.is_dir():
                pending.append(e.path)
        depth0 = False
    return None


def detect_layout(data_path):
    """``(branch, root)`` for ``--data-path`` (see the module docstring). Raises ``CRWError``."""
    if os.path.isfile(data_path):
        return 'frame_list', data_path
    if not os.path.isdir(data_path):
        raise CRWError(f'--data-path {data_path}: no such file or folder')
    train = os.path.join(data_path, 'train_256')
    if os.path.isdir(train):
        return 'kinetics', train
    with os.scandir(data_path) as it:
        entries = sorted(it, key=lambda e: e.name)
    if any(e.is_file() and e.name.lower().endswith(VIDEO_EXTENSIONS) for e in entries):
        return 'video_folder', data_path
    for e in entries:
        if e.name.startswith('.') or not e.is_dir():
            continue
        kind = _folder_kind(e.path)
        if kind == 'videos':
            return 'class_folders', data_path
        if kind == 'images':
            return 'frame_folders', data_path
    exts = '/'.join(VIDEO_EXTENSIONS)
    raise CRWError(f'--data-path {data_path}: found no videos ({exts}) in train_256/<class>/, <class>/ or the '
                       f'folder itself, and no frame folders')


# ---------------------------------------------------------------------------------------------- datasets
def _split_index(index):
    if isinstance(index, (tuple, list)):
        ci, seed = index
        return int(ci), int(seed)
    return int(index), int(index)


class _ClipDataset(torch.utils.data.Dataset):
    """Shared part: ``clip_counts`` (clips per video), the seeded ``__getitem__`` and the replacement of clips
    that cannot be read (one warning per file and process, then another clip drawn from the sample seed)."""

    branch = ''

    def __init__(self, transform):
        self.transform = transform
        self.clip_counts = np.zeros(0, dtype=np.int64)
        self._bad = set()

    def _setup_offsets(self):
        self.clip_counts = np.asarray(self.clip_counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.clip_counts)]).astype(np.int64)

    def __len__(self):
        return int(self.offsets[-1])

    def locate(self, clip_index):
        """``(video number, clip number within the video)``."""
        if not 0 <= clip_index < len(self):
            raise IndexError(f'clip index {clip_index} out of range [0, {len(self)})')
        v = int(np.searchsorted(self.offsets, clip_index, side='right') - 1)
        return v, int(clip_index - self.offsets[v])

    def _load(self, video, clip, rng):  # -> uint8 frames [T, H, W, 3] (tensor/array or list of arrays)
        raise NotImplementedError

    def _name(self, video):
        raise NotImplementedError

    def __getitem__(self, index):
        """``dataset[(clip_index, sample_seed)]`` → uint8 tensor [T, 3, S, S]. A plain int is its own seed."""
        ci, seed = _split_index(index)
        for attempt in range(_MAX_REPLACEMENTS):
            v, k = self.locate(ci)
            # fresh generators per attempt: the result does not depend on how much randomness a failed
            # attempt consumed, nor on whether this process already knew the file was bad
            rng = np.random.default_rng(seed if attempt == 0 else [seed, attempt])
            if v not in self._bad:
                try:
                    frames = self._load(v, k, rng)
                except (CRWError, OSError, ValueError, RuntimeError, IndexError) as e:
                    self._bad.add(v)
                    msg = str(e).strip().splitlines()
                    warn(f'cannot read {self._name(v)} ({msg[0][:200] if msg else type(e).__name__}); '
                         'using other clips instead')
                else:
                    return self.transform(frames, rng)
            ci = int(np.random.default_rng([seed, attempt, 0x5EED]).integers(0, len(self)))
        bad = sorted(self._name(b) for b in self._bad)
        raise DecodeError(f'{_MAX_REPLACEMENTS} clips in a row could not be read; {len(bad)} of the '
                          f'{len(self.clip_counts)} videos failed: {_summary(bad, 5)} (see the warnings above for '
                          'why); check or remove those files')


class VideoClipDataset(_ClipDataset):
    """Clips of ``clip_len`` frames of videos resampled to ``frame_rate`` fps; every start (step 1 on the
    resampled frames) is a clip, numbered video after video."""

    def __init__(self, paths, num_frames, fps, clip_len, frame_rate, transform, branch='kinetics', root=''):
        super().__init__(transform)
        self.branch, self.root = branch, root
        self.paths = list(paths)
        self.num_frames = np.asarray(num_frames, dtype=np.int64).reshape(-1)
        self.fps = np.asarray(fps, dtype=np.float64).reshape(-1)
        self.clip_len, self.frame_rate = int(clip_len), frame_rate
        n = num_resampled_frames(self.num_frames, self.fps, frame_rate) if len(self.paths) else np.zeros(0, np.int64)
        self.clip_counts = np.maximum(n - self.clip_len + 1, 0)
        self._setup_offsets()

    def _name(self, video):
        return self.paths[video]

    def _frame_indices(self, v, k):
        idx = resampled_frame_indices(int(self.num_frames[v]), float(self.fps[v]), self.frame_rate)
        return idx[k:k + self.clip_len]

    def _load(self, video, clip, rng):
        return decode_frames(self.paths[video], self._frame_indices(video, clip))


class FrameFolderDataset(_ClipDataset):
    """One clip per frame folder per epoch (as the release): frames ``s + i·g`` (i < T) of the folder's
    frames sorted by the integer before the first dot, with g = ``frame_gap`` lowered while T·g exceeds the
    number of frames n and s uniform in [0, n − T·g] (the release's rule). Folders with fewer than T frames
    are skipped (with a warning) at build time when their count is known, else replaced at load time."""

    def __init__(self, folders, counts, clip_len, frame_gap, transform, branch='frame_list', root=''):
        super().__init__(transform)
        self.branch, self.root = branch, root
        self.folders = list(folders)
        self.counts = [None if c is None else int(c) for c in counts]
        self.clip_len, self.frame_gap = int(clip_len), int(frame_gap)
        self.clip_counts = np.ones(len(self.folders), dtype=np.int64)
        self._setup_offsets()

    def _name(self, video):
        return self.folders[video]

    def frame_positions(self, n, rng):
        """Positions (in the sorted frame list) of a clip from a folder of ``n`` frames."""
        T = self.clip_len
        if n < T:
            raise DecodeError(f'{n} frames, fewer than --clip-len {T}')
        g = self.frame_gap
        while n - T * g < 0:
            g -= 1
        s = int(rng.integers(0, n - T * g + 1))
        return s + g * np.arange(T)

    def _load(self, video, clip, rng):
        folder = self.folders[video]
        paths = list_frames(folder)
        n = len(paths) if self.counts[video] is None else min(len(paths), self.counts[video])
        pos = self.frame_positions(n, rng)
        frames = [read_image(paths[p]) for p in pos]
        if any(f.shape != frames[0].shape for f in frames):
            return frames
        return np.stack(frames)


# ---------------------------------------------------------------------------------------------- building
def _read_frame_list(list_path):
    base = os.path.dirname(os.path.abspath(list_path))
    folders, counts = [], []
    with open(list_path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            parts = line.rsplit(None, 1)
            count = None
            if len(parts) == 2:
                try:
                    count = int(parts[1])
                    line = parts[0]
                except ValueError:
                    count = None
            folder = line
            if not os.path.isabs(folder) and not os.path.isdir(folder) and os.path.isdir(os.path.join(base, folder)):
                folder = os.path.join(base, folder)
            folders.append(folder)
            counts.append(count)
    return folders, counts


def _count_frames(folder):
    return len(list_frames(folder))


def _summary(names, limit=3):
    s = ', '.join(os.path.basename(n) for n in names[:limit])
    return s + (f' and {len(names) - limit} more' if len(names) > limit else '')


def build_train_dataset(args):
    """The training dataset for ``args`` (``utils.arguments.train_args``). Prints one line naming the branch
    taken and the number of videos and clips (plus cache lines with ``--cache-dataset``)."""
    data_path = args.data_path
    branch, root = detect_layout(data_path)
    transform = FrameTransform.from_args(args)
    T, rate = int(args.clip_len), int(args.frame_skip)
    workers = max(1, int(getattr(args, 'workers', 1) or 1))
    use_cache = bool(getattr(args, 'cache_dataset', False))

    if branch in VIDEO_BRANCHES:
        items = list_files(root, VIDEO_EXTENSIONS)
        if not items:
            raise CRWError(f'--data-path {data_path}: no video files under {root}')
        results, info = scan('videos', root, items, probe_video, workers=workers, use_cache=use_cache,
                             clip_len=T, frame_skip=rate, what='videos')
        paths, nf, fps, unreadable = [], [], [], []
        base = os.path.join(root, '')
        for (rel, _, _), (value, err) in zip(items, results):
            full = base + rel
            if err is not None:
                warn(f'skipping unreadable video {full} ({err})')
                unreadable.append(full)
                continue
            paths.append(full)
            nf.append(value[0])
            fps.append(value[1])
        ds = VideoClipDataset(paths, nf, fps, T, rate, transform, branch=branch, root=root)
        short = [p for p, c in zip(ds.paths, ds.clip_counts) if c == 0]
        if short:
            warn(f'{len(short)} video(s) have fewer than {T} frames at {rate} fps and give no clip: {_summary(short)}')
        if len(ds) == 0:
            raise CRWError(f'--data-path {data_path}: no usable video clips under {root} '
                           f'({len(items)} files, {len(unreadable)} unreadable, {len(short)} too short: '
                           f'{_summary(unreadable + short)})')
        layout = {'kinetics': f'Kinetics layout ({root}/<class>/<video>)',
                  'class_folders': f'class folders of videos ({root}/<class>/<video>)',
                  'video_folder': f'folder of videos ({root}/<video>)'}[branch]
        bad = len(items) - len(paths)
        log(f'training data: {layout}: {int((ds.clip_counts > 0).sum())} videos, {len(ds)} clips of {T} frames '
            f'at {rate} fps' + (f'; skipped {bad} unreadable' if bad else '')
            + (f', {len(short)} too short' if short else ''))
    else:
        if branch == 'frame_list':
            folders, counts = _read_frame_list(root)
            missing = [f for f in folders if not os.path.isdir(f)]
            if missing and len(missing) == len(folders):
                raise CRWError(f'--data-path {data_path}: none of the {len(folders)} folders it lists exists '
                               f'(e.g. {missing[0]}); relative paths are read from the current folder or the '
                               'file\'s folder')
            if missing:
                warn(f'skipping {len(missing)} missing folder(s) listed in {data_path}: {_summary(missing)}')
                kept = [k for k, f in enumerate(folders) if os.path.isdir(f)]
                folders, counts = [folders[k] for k in kept], [counts[k] for k in kept]
            info = {'cache': 'off', 'scanned': 0}
            layout = f'frame list file ({root})'
        else:
            items = list_subfolders(root)
            results, info = scan('frames', root, items, _count_frames, workers=workers, use_cache=use_cache,
                                 clip_len=T, frame_skip=rate, what='frame folders')
            folders, counts = [], []
            for (rel, _, _), (value, err) in zip(items, results):
                full = os.path.join(root, rel)
                if err is not None:
                    warn(f'skipping unreadable frame folder {full} ({err})')
                    continue
                if value == 0:
                    continue  # not a frame folder
                folders.append(full)
                counts.append(value)
            layout = f'folder of frame folders ({root}/<video>/<frames>)'
        keep = [k for k, c in enumerate(counts) if c is None or c >= T]
        for k in range(len(folders)):
            if counts[k] is not None and counts[k] < T:
                warn(f'skipping {folders[k]}: {counts[k]} frames, fewer than --clip-len {T}')
        ds = FrameFolderDataset([folders[k] for k in keep], [counts[k] for k in keep], T, rate, transform,
                                branch=branch, root=root)
        if len(ds) == 0:
            raise CRWError(f'--data-path {data_path}: no frame folder with at least {T} frames')
        log(f'training data: {layout}: {len(ds)} videos, one clip of {T} frames (gap <= {rate}) per video '
            f'per epoch')
    ds.scan_info = info
    return ds
