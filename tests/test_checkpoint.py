"""Checkpoints the entry scripts load: the release's training checkpoint resumed by train.py (Adam, MultiStepLR,
Namespace args), weights-only loading and --trust-checkpoint, foreign or partial weights (--allow-partial,
--partial-reload), --model-type and architecture mismatches as one-line errors. Release-style files are built
here the way the release built them; tiny synthetic data from conftest.py."""
import argparse
import datetime
import os
import types

import pytest
import torch

import train
from conftest import ROOT, one_line, prop_argv, run_test_py, train_argv
from crw.model import CRW
from crw.utils.checkpoint import load_checkpoint


def make_release_checkpoint(path, remove_layers=()):
    """The training checkpoint of the release's train.py, built its way: CRW state dict, Adam, MultiStepLR
    with milestones len(loader) x epoch (2 iterations an epoch here), stepped per iteration, and the
    argparse Namespace. Saved after 3 iterations (one into epoch 1, a random-time save)."""
    rel_args = argparse.Namespace(model_type='scratch', head_depth=0, remove_layers=list(remove_layers), lr=1e-4,
                                  lr_milestones=[1, 2], lr_gamma=0.3, clip_len=3, temp=0.05, device='cuda')
    torch.manual_seed(1)
    model = CRW(rel_args)
    opt = torch.optim.Adam(model.parameters(), lr=rel_args.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2 * m for m in rel_args.lr_milestones],
                                                 gamma=rel_args.lr_gamma)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
    torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'lr_scheduler': sched.state_dict(),
                'epoch': 1, 'args': rel_args}, path)
    return model.state_dict()


def test_resume_release_training_checkpoint(frame_list, tmp_path, capsys):
    path, out = str(tmp_path / 'release.pth'), tmp_path / 'run'
    make_release_checkpoint(path)
    argv = train_argv(frame_list, out, '--resume', path, '--epochs', '2', '--remove-layers')   # all of ResNet-18
    assert train.cli(argv) == 0
    text = capsys.readouterr().out
    line = [x for x in text.splitlines() if "the release's checkpoint" in x]
    assert len(line) == 1 and 'milestones at iterations [2, 4], gamma 0.3, 3 steps done, epoch 1' in line[0]
    assert 'continuing at epoch 1, iteration 1, lr 3e-05' in line[0]
    ckpt = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert ckpt['epoch'] == 1 and ckpt['global_step'] == 4
    assert all(s['step'].item() == 4 for s in ckpt['optimizer']['state'].values())   # Adam went on counting
    assert ckpt['lr_scheduler']['lr_lambdas'][0]['milestones'] == [2, 4]
    assert ckpt['optimizer']['param_groups'][0]['lr'] == pytest.approx(1e-4 * 0.3 ** 2)
    # a later resume keeps the release's milestones (not --lr-milestones 20 30 40 of this command line)
    assert train.cli(train_argv(frame_list, out, '--epochs', '3', '--steps-per-epoch', '1', '--remove-layers')) == 0
    ckpt = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert ckpt['global_step'] == 5 and ckpt['optimizer']['param_groups'][0]['lr'] == pytest.approx(9e-6)


def test_pretrained_and_new_checkpoints_load_weights_only(frame_list, tmp_path):
    shipped = torch.load(os.path.join(ROOT, 'pretrained.pth'), map_location='cpu', weights_only=True)
    assert isinstance(shipped['args'], dict) and 'encoder.model.layer3.0.conv1.weight' in shipped['model']
    assert os.path.getsize(os.path.join(ROOT, 'pretrained.pth')) <= 50 * 2 ** 20
    out = tmp_path / 'run'
    assert train.cli(train_argv(frame_list, out, '--steps-per-epoch', '1')) == 0
    for name in ('checkpoint.pth', 'model_0.pth'):
        ckpt = torch.load(out / name, map_location='cpu', weights_only=True)
        assert isinstance(ckpt['args'], dict) and ckpt['args']['clip_len'] == 3


def test_checkpoint_needing_full_unpickling_asks_for_trust(davis, tmp_path, capsys):
    root, filelist, ckpt, _ = davis
    odd = str(tmp_path / 'odd.pth')
    sd = torch.load(ckpt, weights_only=True)['model']
    torch.save({'model': sd, 'args': {'when': datetime.date(2020, 1, 1)}}, odd)
    assert run_test_py(prop_argv(filelist, odd, tmp_path / 'a')) == 1
    msg = one_line(capsys.readouterr().err)
    assert odd in msg and 'datetime.date' in msg and '--trust-checkpoint' in msg
    assert not (tmp_path / 'a' / '0_1_mask.png').exists()
    assert run_test_py(prop_argv(filelist, odd, tmp_path / 'b', '--trust-checkpoint')) == 0
    assert 'unpickling it in full (--trust-checkpoint)' in capsys.readouterr().out
    # the release's own checkpoint classes (args Namespace, MultiStepLR Counter) load safely without the flag
    rel = str(tmp_path / 'release.pth')
    make_release_checkpoint(rel, remove_layers=['layer4'])
    assert isinstance(load_checkpoint(rel)['args'], argparse.Namespace)


def test_resume_with_foreign_weights_is_refused(davis, tmp_path, capsys):
    import torchvision
    root, filelist, _, _ = davis
    tv = str(tmp_path / 'resnet18.pth')
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tv)   # keys conv1.weight, layer1..., fc
    assert run_test_py(prop_argv(filelist, tv, tmp_path / 'a')) == 1
    msg = one_line(capsys.readouterr().err)
    assert tv in msg and 'would stay random' in msg and '--allow-partial' in msg
    assert not (tmp_path / 'a' / '0_1_mask.png').exists()
    assert run_test_py(prop_argv(filelist, tv, tmp_path / 'b', '--allow-partial')) == 0
    assert (tmp_path / 'b' / '1_2_mask.png').exists()


def test_checkpoint_of_another_model_type_is_refused(davis, tmp_path, capsys):
    root, filelist, ckpt, _ = davis    # trained as scratch; scratch_zeropad has the same weights
    assert run_test_py(prop_argv(filelist, ckpt, tmp_path / 'z', '--model-type', 'scratch_zeropad')) == 1
    msg = one_line(capsys.readouterr().err)
    assert f'--resume {ckpt} was trained with --model-type scratch' in msg and 'scratch_zeropad' in msg
    assert not (tmp_path / 'z').exists() or not list((tmp_path / 'z').glob('*_mask.png'))
    # a release checkpoint (args an argparse Namespace) is compared too
    rel = str(tmp_path / 'release.pth')
    torch.save({'model': torch.load(ckpt, weights_only=True)['model'],
                'args': argparse.Namespace(model_type='scratch_zeropad')}, rel)
    assert run_test_py(prop_argv(filelist, rel, tmp_path / 'r')) == 1
    assert 'was trained with --model-type scratch_zeropad' in one_line(capsys.readouterr().err)
    assert run_test_py(prop_argv(filelist, rel, tmp_path / 'r', '--model-type', 'scratch_zeropad')) == 0


def test_partial_reload_that_loads_nothing_is_refused(frame_list, tmp_path, capsys):
    import torchvision
    other = str(tmp_path / 'torchvision.pth')
    torch.save({'model': torchvision.models.resnet18(weights=None).state_dict()}, other)  # no key matches CRW
    out = tmp_path / 'run'
    assert train.cli(train_argv(frame_list, out, '--partial-reload', other)) == 1
    msg = one_line(capsys.readouterr().err)
    assert f'--partial-reload {other}: no weight matches' in msg
    assert not (out / 'checkpoint.pth').exists()


def test_resume_of_another_architecture(frame_list, tmp_path, capsys):
    other = str(tmp_path / 'other.pth')
    torch.save({'model': CRW(types.SimpleNamespace(head_depth=2, remove_layers=['layer4'])).state_dict()},
               other)   # no args stored
    assert train.cli(train_argv(frame_list, tmp_path / 'a', '--resume', other)) == 1
    msg = one_line(capsys.readouterr().err)
    assert 'does not fit this model' in msg and 'selfsim_fc' in msg and len(msg) < 600
    # re-running in an output dir whose checkpoint has another --head-depth: the flags are named, no scan
    out = tmp_path / 'b'
    assert train.cli(train_argv(frame_list, out, '--steps-per-epoch', '1')) == 0
    capsys.readouterr()
    assert train.cli(train_argv(frame_list, out, '--head-depth', '1', '--epochs', '2')) == 1
    captured = capsys.readouterr()
    assert '--head-depth 0 (this run: 1)' in one_line(captured.err) and '[data]' not in captured.out
