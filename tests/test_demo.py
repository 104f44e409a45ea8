"""The quick-start demo end to end on a tiny sample: propagation, scoring and pictures."""
import os

import numpy as np
import torch
from PIL import Image

import demo
from data.synthetic import make_sequence, write_davis_layout
from model import CRW
from utils.arguments import train_args


def test_demo_writes_scores_and_pictures(tmp_path, repo_root):
    sample = tmp_path / 'sample'
    write_davis_layout(str(sample), {'tiny': make_sequence(num_frames=6, height=64, width=96, num_objects=2, seed=4)})
    (sample / 'vallist.txt').write_text('JPEGImages/480p/tiny Annotations/480p/tiny\n')
    torch.manual_seed(0)
    model = CRW(train_args(['--data-path', repo_root]))
    ckpt = tmp_path / 'ck.pth'
    torch.save({'model': model.state_dict()}, ckpt)
    out = tmp_path / 'out'
    assert demo.main(['--sample', str(sample), '--resume', str(ckpt), '--out', str(out), '--device', 'cpu']) == 0
    sheet = np.asarray(Image.open(out / 'contact_sheet.png'))
    assert sheet.shape[0] >= 64 and sheet.shape[1] >= 96 * 6
    gif = Image.open(out / 'propagation.gif')
    assert gif.n_frames == 6
    header, values = (out / 'converted' / 'global_results-val.csv').read_text().splitlines()
    assert header.startswith('J&F-Mean') and 0.0 <= float(values.split(',')[0]) <= 1.0
    assert len([p for p in os.listdir(out / 'raw') if p.endswith('_mask.png')]) == 6


def test_demo_missing_checkpoint_is_one_line_error(tmp_path):
    import pytest
    with pytest.raises(SystemExit, match='checkpoint'):
        demo.main(['--resume', str(tmp_path / 'nope.pth'), '--out', str(tmp_path / 'o')])
