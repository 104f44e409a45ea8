"""Test-time data (data/inference/): filelists, frame sizes, a VOS video's first mask, JHMDB heat maps and poses,
hidden and duplicate frame files, a corrupt frame read by a worker. Tiny hand-made inputs."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line, prop_argv, run_test_py
from crw.data.images import list_frames
from crw.data.inference.filelists import VideoEntry, read_filelist
from crw.data.inference.frames import processing_size
from crw.data.inference.jhmdb import joint_heatmaps, pose_from_soft_map
from crw.data.inference.vos import VOSVideo
from crw.data.labels import save_indexed_png
from crw.eval import convert_davis
from crw.utils.errors import CRWError


def test_filelist_resolution_and_frame_order(tmp_path, monkeypatch):
    vid = tmp_path / 'root' / 'JPEGImages' / 'v'
    ann = tmp_path / 'root' / 'Annotations' / 'v'
    vid.mkdir(parents=True)
    ann.mkdir(parents=True)
    for n in (10, 9, 100, 0):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(vid / f'{n}.jpg')
    save_indexed_png(str(ann / '0.png'), np.zeros((8, 8), np.uint8))
    fl = tmp_path / 'root' / 'list.txt'
    fl.write_text('JPEGImages/v Annotations/v\n')
    monkeypatch.chdir(tmp_path)
    (e,) = read_filelist(str(fl))                                # relative to the filelist's folder
    assert e.frames_dir == str(vid) and e.kind == 'davis'
    (e,) = read_filelist(str(fl), data_root=str(tmp_path / 'root'))
    assert [os.path.basename(p) for p in list_frames(e.frames_dir)] == ['0.jpg', '9.jpg', '10.jpg', '100.jpg']
    fl.write_text('JPEGImages/v\n')
    with pytest.raises(CRWError, match=':1:'):
        read_filelist(str(fl))


def test_vip_filelist_detection(tmp_path):
    for d in ('Images/v', 'Annotations/Category_ids/v', 'JPEGImages/v', 'Annotations/480p/v'):
        (tmp_path / d).mkdir(parents=True)
    fl = tmp_path / 'list.txt'
    fl.write_text(f'{tmp_path}/Images/v {tmp_path}/Annotations/Category_ids/v\n'
                  f'{tmp_path}/JPEGImages/v {tmp_path}/Annotations/480p/v\n')
    assert [e.kind for e in read_filelist(str(fl))] == ['vip', 'davis']
    assert [e.kind for e in read_filelist(str(fl), vip=True)] == ['vip', 'vip']


def test_vos_video_first_mask_and_sizes(tmp_path):
    vid, ann = tmp_path / 'v', tmp_path / 'a'
    vid.mkdir()
    ann.mkdir()
    for t in range(3):
        Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(vid / f'{t:05d}.jpg')
    mask = np.zeros((24, 40), np.uint8)
    mask[2:9, 3:11] = 5
    save_indexed_png(str(ann / '00000.png'), mask)
    save_indexed_png(str(ann / '00002.png'), mask * 0)
    video = VOSVideo(VideoEntry(0, str(vid), str(ann), 'davis', 1), crop_size=16)
    assert len(video) == 3 and video.size == (16, 16) and video.frame_names == ['00000', '00001', '00002']
    assert np.array_equal(video.mask, mask)                          # at the annotation's own size
    x, disp, t = video.frames[1]
    assert x.shape == (3, 16, 16) and disp.shape == (16, 16, 3) and t == 1
    assert VOSVideo(VideoEntry(0, str(vid), str(ann), 'davis', 1)).size == (12, 20)
    os.remove(ann / '00000.png')
    with pytest.raises(CRWError, match='no annotation of the first frame 00000.jpg'):
        VOSVideo(VideoEntry(0, str(vid), str(ann), 'davis', 1))


def test_processing_size():
    assert processing_size((480, 854), -1, 480) == (270, 480)
    assert processing_size((480, 854), 320, None) == (320, 320)
    assert processing_size((48, 80), -1, None) == (48, 80)


def test_pose_helpers():
    coords = np.array([[3.0, 10.2, 0.4], [5.0, 2.0, 7.0]])
    maps = joint_heatmaps(coords, (12, 16))
    assert maps.shape == (12, 16, 4)
    xy = pose_from_soft_map(maps)
    assert torch.allclose(xy[:, 0], torch.tensor([3.0, 5.0], dtype=xy.dtype), atol=0.3)
    assert torch.allclose(xy[:, 1], torch.tensor([10.0, 2.0], dtype=xy.dtype), atol=0.3)
    empty = maps.clone()
    empty[..., 2] = 0
    assert pose_from_soft_map(empty)[:, 1].tolist() == [-1.0, -1.0]


class _Viewer:
    def __init__(self):
        self.calls = []

    def blend(self, video, name, t, img):
        self.calls.append(('blend', video, name, t, img.shape))

    def features(self, video, name, t, feat, size):
        self.calls.append(('pca', video, name, t, tuple(size)))


def test_viewer_sink_shows_ids_of_another_size_at_the_frame_size():
    # VIP writes ids at the annotation's size while the frames are shown at --cropSize: the picture is drawn at
    # the frame's size
    from crw.data.inference.outputs import ViewerSink
    from crw.propagation import PropagatedFrame
    viewer = _Viewer()
    ids = np.zeros((30, 40), np.uint8)
    ids[5:20, 10:30] = 3
    frame = PropagatedFrame(2, np.zeros((16, 16, 3), np.uint8), ids, torch.zeros(2, 2, 2), torch.zeros(4, 2, 2))
    ViewerSink(viewer, 7, 'v').write(frame)
    assert viewer.calls == [('blend', 7, 'v', 2, (16, 16, 3)), ('pca', 7, 'v', 2, (16, 16))]


def test_hidden_files_and_duplicate_frames(davis, tmp_path, capsys):
    root, filelist, ckpt, seqs = davis
    raw = tmp_path / 'raw'
    assert run_test_py(prop_argv(filelist, ckpt, raw)) == 0
    capsys.readouterr()
    frames = os.path.join(root, 'JPEGImages', '480p', 'two')
    hidden = os.path.join(frames, '._00001.jpg')               # macOS metadata file
    with open(hidden, 'wb') as f:
        f.write(b'\x00\x05\x16\x07 AppleDouble')
    try:
        assert convert_davis.main(['--in_folder', str(raw), '--out_folder', str(tmp_path / 'out'), '--dataset', root,
                                   '--workers', '1']) == 0
        assert sorted(os.listdir(tmp_path / 'out' / 'two')) == ['00000.png', '00001.png', '00002.png']
    finally:
        os.remove(hidden)
    dup = os.path.join(frames, '00001.png')                    # frame 1 twice: 00001.jpg and 00001.png
    Image.fromarray(seqs['two']['frames'][1]).save(dup)
    capsys.readouterr()
    try:
        assert run_test_py(prop_argv(filelist, ckpt, tmp_path / 'again')) == 1
        msg = one_line(capsys.readouterr().err)
        assert '00001.jpg and 00001.png are both frame 1' in msg
        assert convert_davis.main(['--in_folder', str(raw), '--out_folder', str(tmp_path / 'out2'), '--dataset',
                                   root, '--workers', '1']) == 1
        assert '00001.jpg and 00001.png are both frame 1' in one_line(capsys.readouterr().err)
    finally:
        os.remove(dup)


def test_corrupt_frame_with_workers(davis, tmp_path, capsys):
    root, filelist, ckpt, seqs = davis
    bad = os.path.join(root, 'JPEGImages', '480p', 'three', '00002.jpg')
    good = open(bad, 'rb').read()
    open(bad, 'wb').write(b'not a jpeg')
    try:
        argv = prop_argv(filelist, ckpt, tmp_path)
        argv[argv.index('--workers') + 1] = '1'
        assert run_test_py(argv) == 1
        assert '00002.jpg: cannot read the image' in one_line(capsys.readouterr().err)
    finally:
        open(bad, 'wb').write(good)
