"""Helper scripts: training-curve figure, bundled sample regeneration."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from crw.scripts import make_sample, plot_curves


def test_plot_curves_from_train_log(tmp_path):
    log = tmp_path / 'train_log.jsonl'
    with open(log, 'w') as f:
        for s in range(1, 41):
            f.write(json.dumps({'global_step': s * 5, 'loss': 5.0 / s, '64 xent cyc r1': 4.0 / s,
                                '64 acc cyc r1': 1 - 1.0 / s, '64 xent cyc r2': 6.0 / s,
                                '64 acc cyc r2': 1 - 2.0 / (s + 1)}) + '\n')
    plot_curves.main([str(tmp_path)])
    im = np.asarray(Image.open(tmp_path / 'curves.png'))
    assert im.shape[0] > 300 and im.shape[1] > 800 and im.std() > 0


def test_plot_curves_rejects_missing_or_bad_log(tmp_path):
    with pytest.raises(SystemExit, match='train_log.jsonl'):
        plot_curves.main([str(tmp_path)])
    (tmp_path / 'train_log.jsonl').write_text('not json\n')
    with pytest.raises(SystemExit, match='not a JSON line'):
        plot_curves.main([str(tmp_path)])


def test_make_sample_is_reproducible_and_matches_shipped(tmp_path, repo_root):
    make_sample.main(['--out', str(tmp_path / 's')])
    ann = sorted(os.listdir(tmp_path / 's' / 'Annotations' / '480p' / 'shapes'))
    assert len(ann) == 30
    first = np.asarray(Image.open(tmp_path / 's' / 'Annotations' / '480p' / 'shapes' / ann[0]))
    assert set(np.unique(first)) == {0, 1, 2, 3}
    shipped = os.path.join(repo_root, 'assets', 'sample', 'Annotations', '480p', 'shapes', ann[0])
    assert np.array_equal(first, np.asarray(Image.open(shipped)))


def test_export_checkpoint_keeps_model_and_args(tmp_path):
    import argparse

    import torch

    from crw.scripts import export_checkpoint
    sd = {'module.encoder.model.conv1.weight': torch.randn(4, 3, 7, 7)}
    torch.save({'model': sd, 'optimizer': {'state': {}}, 'args': argparse.Namespace(temp=0.05), 'epoch': 3},
               tmp_path / 'ck.pth')
    export_checkpoint.main([str(tmp_path / 'ck.pth'), str(tmp_path / 'out.pth')])
    out = torch.load(tmp_path / 'out.pth', map_location='cpu', weights_only=True)  # plain dict args
    assert set(out) == {'model', 'args', 'epoch'} and out['args'] == {'temp': 0.05}
    assert torch.equal(out['model']['encoder.model.conv1.weight'], sd['module.encoder.model.conv1.weight'])
