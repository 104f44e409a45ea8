"""Flag values of train.py and test.py: the release's spellings accepted, values that cannot work refused with
a one-line error naming the flag (at parse time, or when the data shows it: --topk beyond the context), and
extreme but usable values clamped (--radius). Tiny synthetic data from conftest.py."""
import types

import numpy as np
import pytest
import torch
from PIL import Image

import crw.cli as cli
from conftest import one_line, prop_argv, run_test_py, train_argv
from crw.model import CRW
from crw.utils import arguments


def test_frame_aug_typo_is_one_line_error(frame_list, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        arguments.train_args(train_argv(frame_list, tmp_path, '--frame-aug', 'gird'))
    assert e.value.code == 2 and "--frame-aug 'gird'" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize('extra, needle', [
    (['--dropout', '2'], '--dropout 2'), (['--dropout', '1'], '--dropout 1'), (['--temp', '-1'], '--temp -1'),
    (['--temp', '0'], '--temp 0'), (['--lr', '-1'], '--lr -1'), (['--lr', '0'], '--lr 0'),
    (['--img-size', '8'], 'at least 9x9'), (['--frame-aug', 'grid', '--img-size', '32'], '--patch-size 64'),
    (['--frame-aug', 'grid', '--patch-size', '8', '8', '--img-size', '64'], '--patch-size 8'),
    (['--temp', 'inf'], '--temp: inf: a finite number'), (['--lr', 'inf'], '--lr: inf: a finite number'),
    (['--lr', 'nan'], '--lr: nan'), (['--momentum=-inf'], '--momentum: -inf'),
    (['--lr-gamma', 'nan'], '--lr-gamma: nan'), (['--wd', 'inf'], '--weight-decay: inf')])
def test_training_values_that_cannot_train_are_refused(frame_list, tmp_path, capsys, extra, needle):
    with pytest.raises(SystemExit) as e:
        cli.parse_train_args(train_argv(frame_list, tmp_path, *extra))
    assert e.value.code == 2 and needle in one_line(capsys.readouterr().err)


def test_test_py_accepts_visdom_server(davis):
    root, filelist, ckpt, _ = davis
    args = arguments.test_args(['--filelist', filelist, '--visdom-server', 'vis.example.org'])
    assert args.visdom_server == args.server == 'vis.example.org'


@pytest.mark.parametrize('extra, needle', [
    (['--temperature', 'inf'], '--temperature: inf'), (['--temperature', '0'], '--temperature 0'),
    (['--radius', 'nan'], '--radius: nan'), (['--radius', '0'], '--radius 0'),
    (['--finetune', '1', '--finetune-lr', 'inf'], '--finetune-lr: inf')])
def test_propagation_values_that_cannot_work_are_refused(davis, capsys, extra, needle):
    with pytest.raises(SystemExit) as e:
        cli.parse_test_args(['--filelist', davis[1], *extra])
    assert e.value.code == 2 and needle in one_line(capsys.readouterr().err)


def test_smallest_sizes_run_and_test_crop_size_is_checked(davis, capsys):
    torch.manual_seed(0)
    model = CRW(types.SimpleNamespace())
    assert model.encoder.model(torch.zeros(2, 3, 9, 9)).shape[-2:] == (2, 2)      # 9 is the smallest that runs
    with pytest.raises(RuntimeError):
        model.encoder.model(torch.zeros(2, 3, 8, 8))                             # 8: reflect padding fails
    with pytest.raises(SystemExit):
        cli.parse_test_args(['--filelist', davis[1], '--cropSize', '8'])
    assert '--cropSize 8' in one_line(capsys.readouterr().err)


def test_huge_radius_is_clamped_to_the_feature_map(davis, tmp_path):
    root, filelist, ckpt, _ = davis    # 'three' is 5x6 feature cells: radius 100 already covers it
    assert run_test_py(prop_argv(filelist, ckpt, tmp_path / 'huge', '--radius', '1e9')) == 0
    assert run_test_py(prop_argv(filelist, ckpt, tmp_path / 'map', '--radius', '100')) == 0
    names = sorted(p.name for p in (tmp_path / 'map').glob('*_mask.png'))
    assert names and names == sorted(p.name for p in (tmp_path / 'huge').glob('*_mask.png'))
    for n in names:
        assert np.array_equal(np.array(Image.open(tmp_path / 'huge' / n)), np.array(Image.open(tmp_path / 'map' / n)))


def test_dense_topk_larger_than_context(davis, tmp_path, capsys):
    root, filelist, ckpt, _ = davis
    # 'three' is 40x48: 5x6 cells; context = (1 + 2) frames x 30 = 90 nodes
    assert run_test_py(prop_argv(filelist, ckpt, tmp_path, '--dense', '--topk', '91')) == 1
    assert '--topk 91 exceeds the 90 context nodes' in one_line(capsys.readouterr().err)
    assert not list(tmp_path.glob('*_mask.png'))
