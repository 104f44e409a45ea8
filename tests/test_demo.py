"""The quick-start demo end to end on a tiny sample laid out like assets/hockey/: an mp4 through test.py --video,
scoring against the ground truth, pictures."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import demo
from crw.data.labels import save_indexed_png
from crw.data.synthetic import make_sequence, write_video
from crw.model import CRW
from crw.utils.arguments import train_args


@pytest.mark.slow
def test_demo_writes_scores_and_pictures(tmp_path, repo_root, capsys):
    sample = tmp_path / 'sample'
    seq = make_sequence(num_frames=6, height=64, width=96, num_objects=2, seed=4)
    write_video(str(sample / 'tiny.mp4'), seq['frames'])
    ann = sample / 'Annotations' / '480p' / 'tiny'
    ann.mkdir(parents=True)
    for t, m in enumerate(seq['masks']):
        save_indexed_png(str(ann / f'{t:05d}.png'), m)
    (sample / 'ImageSets' / '2017').mkdir(parents=True)
    (sample / 'ImageSets' / '2017' / 'val.txt').write_text('tiny\n')
    torch.manual_seed(0)
    model = CRW(train_args(['--data-path', repo_root]))
    ckpt = tmp_path / 'ck.pth'
    torch.save({'model': model.state_dict()}, ckpt)
    out = tmp_path / 'out'
    assert demo.main(['--sample', str(sample), '--resume', str(ckpt), '--out', str(out), '--device', 'cpu',
                      '--max-side', '48']) == 0
    printed = capsys.readouterr().out
    assert 'test.py --video' in printed and '--max-side 48' in printed and 'J&F-Mean' in printed
    sheet = np.asarray(Image.open(out / 'contact_sheet.png'))
    assert sheet.shape[0] >= 64 and sheet.shape[1] >= 96 * 6
    assert Image.open(out / 'propagation.gif').n_frames == 6
    header, values = (out / 'global_results-val.csv').read_text().splitlines()
    assert header.startswith('J&F-Mean') and 0.0 <= float(values.split(',')[0]) <= 1.0
    masks = sorted(os.listdir(out / 'tiny'))
    assert masks == [f'{t:05d}.png' for t in range(6)]
    assert np.asarray(Image.open(out / 'tiny' / '00003.png')).shape == (64, 96)   # the video's size
    assert (out / 'tiny_overlay.mp4').stat().st_size > 0


def test_demo_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match='checkpoint'):
        demo.main(['--resume', str(tmp_path / 'nope.pth'), '--out', str(tmp_path / 'o')])


def test_shipped_clip_is_complete(repo_root):
    clip = os.path.join(repo_root, 'assets', 'hockey')
    assert os.path.getsize(os.path.join(clip, 'hockey.mp4')) < 4 * 2 ** 20
    assert len(os.listdir(os.path.join(clip, 'Annotations', '480p', 'hockey'))) == 40
    assert 'CC BY-NC 4.0' in open(os.path.join(repo_root, 'assets', 'README')).read()


def test_make_demo_clip_builds_a_scoreable_folder(tmp_path):
    from crw.data.synthetic import write_davis_layout
    from crw.data.video_io import probe_video
    from crw.scripts import make_demo_clip
    write_davis_layout(str(tmp_path / 'davis'), {'seq': make_sequence(num_frames=5, height=32, width=48, seed=1)})
    make_demo_clip.main(['--davis', str(tmp_path / 'davis'), '--seq', 'seq', '--frames', '4', '--out',
                         str(tmp_path / 'clip')])
    assert probe_video(str(tmp_path / 'clip' / 'seq.mp4'))[0] == 4
    assert sorted(os.listdir(tmp_path / 'clip' / 'Annotations' / '480p' / 'seq')) == [f'{t:05d}.png' for t in range(4)]
    assert (tmp_path / 'clip' / 'ImageSets' / '2017' / 'val.txt').read_text() == 'seq\n'
