"""Test filelists: one video a line, ``<frames folder> <annotations folder>`` (DAVIS; VIP when the annotations
folder lies in a folder named ``Category_ids``, VIP's layout, or when asked for) or ``<frames folder>
<joint_positions.mat>`` (JHMDB). Blank lines and ``#`` comments are skipped. Relative paths are resolved
against ``data_root`` when given, else the current folder, else the filelist's folder. A malformed line or a
missing folder or file is a CRWError naming the line.
"""
import os
from dataclasses import dataclass

from crw.utils.errors import CRWError
from crw.utils.misc import atomic_write

VIP_ANNOTATIONS = 'Category_ids'   # VIP_Fine/Annotations/Category_ids/<video>/<frame>.png


@dataclass
class VideoEntry:
    index: int          # 0-based line number among the videos (output prefix {index}_{t})
    frames_dir: str
    target: str         # annotations folder (DAVIS, VIP) or joint_positions.mat (JHMDB)
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


def read_filelist(filelist, data_root='', vip=False):
    """Parse a test filelist -> [VideoEntry]; the video index counts video lines only. Annotation folders are
    VIP videos when ``vip`` is set or their parent folder is named ``Category_ids``."""
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
