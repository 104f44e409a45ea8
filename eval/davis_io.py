"""Reading a DAVIS-layout folder, shared by convert_davis.py and evaluate_davis.py.

    <davis>/ImageSets/2017/<set>.txt          sequence names, one a line
    <davis>/JPEGImages/<res>/<seq>/NNNNN.jpg  frames
    <davis>/Annotations/<res>/<seq>/NNNNN.png ground truth (palette PNGs, value = object id, 255 = void)
"""
import os


from crw.data.images import list_frames
from crw.data.labels import read_ids
from crw.utils.errors import CRWError


def read_split(davis_path, set_name):
    """(sequence names, tag) for ``--set``: a split name read from ImageSets/2017/<set>.txt, or a text file
    listing sequences. The tag names the CSV files (``global_results-<tag>.csv``): the split name, or the
    file's stem. Duplicates are dropped, the order is kept."""
    split_file = os.path.join(davis_path, 'ImageSets', '2017', f'{set_name}.txt')
    if os.path.isfile(split_file):
        path, tag = split_file, set_name
    elif os.path.isfile(set_name):
        path, tag = set_name, os.path.splitext(os.path.basename(set_name))[0]
    else:
        raise CRWError(f"--set {set_name!r}: neither {split_file} nor a file listing sequences exists "
                       '(the DAVIS folder needs ImageSets/2017/<set>.txt)')
    with open(path) as f:
        names = [line.strip() for line in f]
    names = [n for n in names if n]
    if not names:
        raise CRWError(f'{path} lists no sequences')
    return list(dict.fromkeys(names)), tag


def sequence_frames(davis_path, sequence, resolution='480p'):
    """Frame image paths of a sequence (JPEGImages/<res>/<seq>), in frame order."""
    folder = os.path.join(davis_path, 'JPEGImages', resolution, sequence)
    if not os.path.isdir(folder):
        raise CRWError(f'{folder} not found (frames of sequence {sequence})')
    frames = list_frames(folder)
    if not frames:
        raise CRWError(f'{folder} holds no frames')
    return frames


def annotation_frames(davis_path, sequence, resolution='480p'):
    """[(frame id, path)] of a sequence's annotation PNGs in frame order (frame id = file name without
    extension, the name the results must have)."""
    folder = os.path.join(davis_path, 'Annotations', resolution, sequence)
    paths = list_frames(folder, extensions=('.png',)) if os.path.isdir(folder) else []
    if not paths:
        raise CRWError(f'{sequence}: no ground-truth annotations (*.png) in {folder}')
    return [(os.path.splitext(os.path.basename(p))[0], p) for p in paths]


def read_label_png(path):
    """[H, W] int64 label map of an indexed or greyscale PNG as stored (palette indices, not colours; 255 stays
    void)."""
    return read_ids(path, 'label maps must be indexed (palette) or greyscale PNGs')

