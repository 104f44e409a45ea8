"""Test-time adaptation (test.py --finetune N): a copy of the encoder is trained on the video's own clips, the
features change, the original weights are untouched for the next video, and runs are deterministic."""
import argparse
import datetime
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script
from crw.data.synthetic import make_sequence, write_davis_layout, write_frame_folder
from crw.model import CRW
from crw.propagation import encode_frames, load_encoder
from crw.propagation.finetune import FinetuneSettings, VideoAdapter, training_settings
from crw.utils import arguments
from crw.utils.errors import CRWError


def _settings(steps=2, **train):
    tr = training_settings(None, temperature=0.05, head_depth=0)
    tr.update(img_size=64, **train)
    return FinetuneSettings(steps=steps, lr=1e-3, clip_len=3, batch=1, seed=5, train=tr)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp('ft')
    seq = make_sequence(num_frames=6, height=64, width=80, num_objects=2, seed=3)
    folder = str(root / 'frames')
    write_frame_folder(folder, seq['frames'])
    x = torch.from_numpy(seq['frames'][:2]).permute(0, 3, 1, 2).float() / 255
    return folder, (x - 0.45) / 0.225


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('frame_aug', ['', 'grid'])
def test_adapt_changes_features_leaves_original_and_rng(clip, frame_aug):
    folder, imgs = clip
    torch.manual_seed(0)
    encoder = load_encoder(None, 'cpu', fold_bn=False)
    before = _state(encoder)
    rng_before = torch.get_rng_state()
    extra = {'patch_size': [32, 32, 3]} if frame_aug == 'grid' else {}
    adapter = VideoAdapter(_settings(frame_aug=frame_aug, **extra), 'cpu')
    adapted, info = adapter.adapt(encoder, folder)
    assert info['losses'].shape == (2,) and np.isfinite(info['losses']).all() and info['head'] == 'fresh'
    assert _same(_state(encoder), before)                                  # the original is never touched
    assert torch.equal(torch.get_rng_state(), rng_before)                  # nor the global RNG
    assert not adapted.training and adapted is not encoder
    f0, f1 = encode_frames(encoder, imgs), encode_frames(adapted, imgs)
    assert f0.shape == f1.shape and (f0 - f1).abs().max() > 1e-4          # the features changed
    if frame_aug == '':   # deterministic: same seed, same adapted weights
        again, info2 = VideoAdapter(_settings(frame_aug=frame_aug, **extra), 'cpu').adapt(encoder, folder)
        assert _same(_state(again), _state(adapted)) and np.array_equal(info2['losses'], info['losses'])


def test_checkpoint_head_and_training_args_are_used(tmp_path):
    torch.manual_seed(1)
    model = CRW(argparse.Namespace(model_type='scratch', head_depth=0, remove_layers=['layer4']))
    ckpt = str(tmp_path / 'ckpt.pth')
    train_args = argparse.Namespace(img_size=64, frame_aug='', temp=0.1, dropout=0.2, frame_skip=2, head_depth=0)
    torch.save({'model': model.state_dict(), 'args': train_args}, ckpt)
    args = arguments.test_args(['--filelist', __file__, '--resume', ckpt, '--finetune', '1', '--finetune-batch', '1',
                      '--finetune-clip-len', '3'])
    adapter = VideoAdapter.from_args(args, 'cpu')
    tr = adapter.settings.train
    assert (tr['img_size'], tr['temp'], tr['dropout'], tr['frame_skip']) == (64, 0.1, 0.2, 2)
    crw, head = adapter.build_model(load_encoder(ckpt, 'cpu', fold_bn=False))
    assert head == 'checkpoint'
    assert torch.equal(crw.selfsim_fc[0].weight, model.selfsim_fc[0].weight)
    assert torch.equal(crw.encoder.model.conv1.weight, model.encoder.model.conv1.weight)


def test_finetune_flags():
    args = arguments.test_args(['--filelist', __file__, '--finetune', '3'])
    assert (args.finetune, args.finetune_lr, args.finetune_clip_len, args.finetune_batch) == (3, 1e-5, 4, 4)
    for bad in (['--finetune', '-1'], ['--finetune', '2', '--finetune-clip-len', '2']):
        with pytest.raises(SystemExit):
            arguments.test_args(['--filelist', __file__] + bad)
    with pytest.raises(CRWError, match='at least 3 frames'):
        VideoAdapter(FinetuneSettings(steps=1, clip_len=2, train=training_settings()), 'cpu')


def test_test_py_finetune_restores_encoder_between_videos(tmp_path, monkeypatch, capsys):
    # the same video listed twice: with the encoder restored and the adaptation seeded by --manualSeed, both
    # copies must give identical masks; the encoder test.py built must end the run with its weights unchanged
    seq = make_sequence(num_frames=4, height=48, width=64, num_objects=2, seed=4)
    filelist = write_davis_layout(str(tmp_path / 'd'), {'a': seq})
    line = open(filelist).read().strip()
    with open(filelist, 'w') as f:
        f.write(f'{line}\n{line}\n')
    torch.manual_seed(2)
    model = CRW(argparse.Namespace(model_type='scratch', head_depth=0, remove_layers=['layer4']))
    ckpt = str(tmp_path / 'ckpt.pth')
    torch.save({'model': model.state_dict(), 'args': argparse.Namespace(img_size=48, frame_aug='')}, ckpt)
    test_py = load_script('test.py')
    built = {}
    original_build = test_py.build_encoder

    def build(args, device):
        built['enc'] = original_build(args, device)
        built['state'] = _state(built['enc'])
        return built['enc']
    monkeypatch.setattr(test_py, 'build_encoder', build)
    out = tmp_path / 'out'
    argv = ['--filelist', filelist, '--resume', ckpt, '--save-path', str(out), '--cropSize', '-1', '--workers', '0',
            '--temperature', '0.05', '--device', 'cpu', '--finetune', '2', '--finetune-lr', '1e-3',
            '--finetune-batch', '1', '--finetune-clip-len', '3', '--head-depth', '0']
    assert test_py.main(argv) == 0
    assert capsys.readouterr().out.count('adapted in') == 2
    assert _same(_state(built['enc']), built['state'])
    for t in range(4):
        a = np.asarray(Image.open(out / f'0_{t}_mask.png'))
        b = np.asarray(Image.open(out / f'1_{t}_mask.png'))
        assert (a == b).all()
    assert os.path.exists(out / '1_3_blend.jpg')


def test_test_py_video_folder_finetune(tmp_path, capsys):
    # --video with a frame folder adapts before propagating; a video file is refused with one line (clips are
    # sampled from a frame folder), before anything is written
    seq = make_sequence(num_frames=4, height=48, width=64, num_objects=2, seed=6)
    frames = str(tmp_path / 'clip')
    write_frame_folder(frames, seq['frames'])
    mask = str(tmp_path / 'first.png')
    Image.fromarray(seq['masks'][0].astype(np.uint8), mode='L').save(mask)
    torch.manual_seed(2)
    model = CRW(argparse.Namespace(model_type='scratch', head_depth=0, remove_layers=['layer4']))
    ckpt = str(tmp_path / 'ckpt.pth')
    torch.save({'model': model.state_dict(), 'args': argparse.Namespace(img_size=48, frame_aug='')}, ckpt)
    test_py = load_script('test.py')
    common = ['--mask', mask, '--resume', ckpt, '--cropSize', '-1', '--workers', '0', '--temperature', '0.05',
              '--device', 'cpu', '--finetune', '2', '--finetune-lr', '1e-3', '--finetune-batch', '1',
              '--finetune-clip-len', '3', '--head-depth', '0']
    out = tmp_path / 'out'
    assert test_py.main(['--video', frames, '--save-path', str(out)] + common) == 0
    assert capsys.readouterr().out.count('adapted in') == 1
    assert sorted(os.listdir(out / 'clip')) == [f'{t:05d}.png' for t in range(4)]
    mp4 = str(tmp_path / 'clip.mp4')
    open(mp4, 'wb').close()
    assert test_py.main(['--video', mp4, '--save-path', str(tmp_path / 'out2')] + common) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'extract the frames to a folder' in err[0]
    assert not os.path.exists(tmp_path / 'out2' / 'clip')


def test_training_settings_take_every_frame_aug_spelling_training_takes():
    # the checkpoint's --frame-aug goes through the training parser's rule: release spellings are accepted,
    # a typo is refused in one line
    assert training_settings({'frame_aug': 'none'})['frame_aug'] == 'none'
    assert training_settings({'frame_aug': 'grid+cj'})['frame_aug'] == 'grid+cj'
    with pytest.raises(CRWError, match="training args: --frame-aug 'gird'"):
        training_settings({'frame_aug': 'gird'})


def test_from_args_honours_trust_checkpoint(tmp_path):
    # a checkpoint the safe loader refuses is read for the adaptation too once --trust-checkpoint is given
    model = CRW(argparse.Namespace(model_type='scratch', head_depth=0, remove_layers=['layer4']))
    ckpt = str(tmp_path / 'ckpt.pth')
    torch.save({'model': model.state_dict(), 'args': {'img_size': 64, 'frame_aug': ''},
                'made': datetime.date(2020, 1, 1)}, ckpt)
    argv = ['--filelist', __file__, '--resume', ckpt, '--finetune', '1']
    with pytest.raises(CRWError, match='--trust-checkpoint'):
        VideoAdapter.from_args(arguments.test_args(argv), 'cpu')
    adapter = VideoAdapter.from_args(arguments.test_args(argv + ['--trust-checkpoint']), 'cpu')
    assert adapter.settings.train['img_size'] == 64 and adapter.head_state
