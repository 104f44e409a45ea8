"""Drop-in compatibility with the release and bad inputs (one test or more per item of the issue "Drop-in for
the release, and no silent failures"): release files and flags, and one-line errors instead of tracebacks or
wrong results. Everything is built in the tests: tiny synthetic videos, release-style files made the way the
release made them."""
import argparse
import datetime
import json
import os
import types

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import crw.cli as cli
import train
import crw.utils.dist as dist_utils
from conftest import load_script
from crw.data.labels import davis_palette
from crw.data.training.gpu_augment import MEAN, STD, BatchAugment, apply_color_jitter
from crw.data.synthetic import make_sequence, write_davis_layout, write_frame_folder, write_video
from crw.eval import convert_davis, evaluate_davis
from crw.model import CRW
from crw.utils import arguments
from crw.utils.checkpoint import load_checkpoint
from crw.utils.errors import CRWError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READ_ONLY = '/sys/crw-read-only-test' if os.geteuid() == 0 else None   # root ignores file modes


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope='module')
def frame_list(tmp_path_factory):
    """Four tiny frame folders (one clip each per epoch: 2 steps of 2 at --batch-size 2)."""
    d = tmp_path_factory.mktemp('frames')
    lines = []
    for v in range(4):
        seq = make_sequence(num_frames=6, height=40, width=40, num_objects=1, seed=v, object_size=(12, 16))
        write_frame_folder(str(d / f'vid{v}'), seq['frames'])
        lines.append(f'{d / f"vid{v}"} 6')
    (d / 'list.txt').write_text('\n'.join(lines) + '\n')
    return str(d / 'list.txt')


def train_argv(data, out, *extra):
    """A whole-frame run small enough for a test (32x32 frames: 16 nodes, 3 frames, batch 2; without layer4,
    which holds three quarters of the weights)."""
    return ['--data-path', data, '--frame-aug', '', '--img-size', '32', '--clip-len', '3', '--frame-skip', '1',
            '--batch-size', '2', '--workers', '0', '--temp', '0.05', '--device', 'cpu', '--output-dir', str(out),
            '--print-freq', '1', '--seed', '3', '--epochs', '1', '--remove-layers', 'layer4', *extra]


def one_line(text, marker='error:'):
    """The error message of a script's stderr: exactly one line holds ``marker`` and there is no traceback
    (progress bars and [data] warnings may share stderr)."""
    lines = [x for x in text.replace('\r', '\n').splitlines() if marker in x]
    assert len(lines) == 1 and 'Traceback' not in text, text
    return lines[0]


def run_test_py(argv):
    return load_script('test.py').main(argv)


@pytest.fixture(scope='module')
def davis(tmp_path_factory):
    """A DAVIS layout (two sequences) and a scratch checkpoint saved as train.py saves it (dict args)."""
    root = tmp_path_factory.mktemp('davis')
    seqs = {'three': make_sequence(num_frames=4, height=40, width=48, num_objects=3, seed=1),
            'two': make_sequence(num_frames=3, height=32, width=32, num_objects=2, seed=2)}
    filelist = write_davis_layout(str(root), seqs)
    torch.manual_seed(0)
    ckpt = str(root / 'scratch.pth')
    torch.save({'model': CRW(argparse.Namespace(model_type='scratch')).state_dict(),
                'args': {'model_type': 'scratch'}}, ckpt)
    return str(root), filelist, ckpt, seqs


def prop_argv(filelist, ckpt, save, *extra):
    return ['--filelist', filelist, '--resume', ckpt, '--save-path', str(save), '--cropSize', '-1', '--workers', '0',
            '--device', 'cpu', '--topk', '5', '--videoLen', '2', '--radius', '4', *extra]


# ------------------------------------------------------------------------------------------------ 1. masks
def release_mask(gt_png, out_png):
    """A mask as the release's test.py wrote an exact prediction: annotation colours read by OpenCV (BGR) and
    written by imageio as if they were RGB."""
    Image.fromarray(cv2.imread(gt_png)).save(out_png)


@pytest.fixture
def onefour(tmp_path):
    """A DAVIS layout whose objects are 1 and 4: the two ids the release's channel swap exchanges."""
    seq = make_sequence(num_frames=4, height=40, width=48, num_objects=2, seed=5)
    seq['masks'] = np.where(seq['masks'] == 2, 4, seq['masks']).astype(np.uint8)
    three = make_sequence(num_frames=3, height=32, width=40, num_objects=3, seed=6)
    davis = str(tmp_path / 'davis')
    write_davis_layout(davis, {'onefour': seq, 'three': three})
    return davis, {'onefour': seq, 'three': three}


def test_convert_release_bgr_masks_to_the_right_ids(onefour, tmp_path, capsys):
    davis, seqs = onefour
    raw, out = tmp_path / 'raw', tmp_path / 'out'
    raw.mkdir()
    for i, name in enumerate(seqs):
        for t in range(len(seqs[name]['masks'])):
            gt = os.path.join(davis, 'Annotations', '480p', name, f'{t:05d}.png')
            release_mask(gt, str(raw / f'{i}_{t}_mask.png'))
    # the release's frame 0 is the ground truth after a down/up-sampling round trip: not exact
    m0 = np.asarray(Image.open(raw / '0_0_mask.png')).copy()
    m0[::7] = 0
    Image.fromarray(m0).save(raw / '0_0_mask.png')
    assert convert_davis.main(['--in_folder', str(raw), '--out_folder', str(out), '--dataset', davis,
                               '--workers', '1', '--by-order']) == 0     # the release recorded no names
    summary = capsys.readouterr().out.splitlines()[0]
    assert 'red and blue swapped' in summary and 'all 2 sequences' in summary
    assert 'decided by frame 0 for onefour' in summary          # ids {1, 4} fit both colour orders
    for name, seq in seqs.items():
        for t in range(1, len(seq['masks'])):
            assert np.array_equal(np.asarray(Image.open(out / name / f'{t:05d}.png')), seq['masks'][t]), (name, t)
    # the same masks in RGB order are recognised as such and give the same ids
    rgb = tmp_path / 'rgb'
    rgb.mkdir()
    for t, m in enumerate(seqs['onefour']['masks']):
        Image.fromarray(davis_palette()[m]).save(rgb / f'0_{t}_mask.png')
    fmt, how = convert_davis.detect_format([str(rgb / f'0_{t}_mask.png') for t in range(4)],
                                           os.path.join(davis, 'Annotations', '480p', 'onefour', '00000.png'))
    assert fmt == 'rgb' and 'frame 0' in how
    assert np.array_equal(convert_davis.read_mask(str(rgb / '0_2_mask.png'), fmt), seqs['onefour']['masks'][2])


def test_convert_refuses_mixed_mask_formats(onefour, tmp_path):
    davis, seqs = onefour
    raw = tmp_path / 'raw'
    raw.mkdir()
    for i, name in enumerate(seqs):
        for t, m in enumerate(seqs[name]['masks']):
            Image.fromarray(m).save(raw / f'{i}_{t}_mask.png')
    Image.fromarray(davis_palette()[seqs['three']['masks'][2]]).save(raw / '1_2_mask.png')   # one colour mask
    with pytest.raises(CRWError, match='1_2_mask.png is an RGB PNG'):
        convert_davis.convert(str(raw), str(tmp_path / 'out'), davis, workers=1, by_order=True)


# ------------------------------------------------------------------------------------------------ 2. resume
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


# ------------------------------------------------------------------------------------------------ 3. --frame-aug
@pytest.mark.parametrize('spec, grid, cj, flip', [
    ('', False, False, False), ('none', False, False, False), ('grid', True, False, False),
    ('gridcj', True, True, False), ('grid+flip', True, False, True), ('grid_cj_flip', True, True, True),
    ('cj', False, True, False), ('flip', False, False, True), ('cjflip', False, True, True)])
def test_frame_aug_release_spellings(frame_list, tmp_path, spec, grid, cj, flip):
    args = arguments.train_args(train_argv(frame_list, tmp_path, '--frame-aug', spec, '--patch-size', '16', '16'))
    aug = BatchAugment(args)
    assert (aug.grid, aug.patch_cj, aug.patch_flip) == (grid, grid and cj, grid and flip)
    assert (aug.frame_aug_cj, aug.frame_aug_flip) == (cj and not grid, flip and not grid)


def test_frame_aug_cj_and_flip_on_whole_frames():
    clips = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    plain = BatchAugment(frame_aug='none', frame_transforms='crop', img_size=32)(clips, 5)
    assert torch.equal(plain, BatchAugment(frame_aug='', frame_transforms='crop', img_size=32)(clips, 5))
    flip = BatchAugment(frame_aug='flip', frame_transforms='crop', img_size=32)
    flipped = flip.sample_params(2, 3, 32, 32, 5)['frame_aug_flip']
    assert 0 < int(flipped.sum()) < 6
    out = flip(clips, 5).flatten(0, 1)
    ref = plain.flatten(0, 1)
    assert torch.equal(out[flipped], ref[flipped].flip(-1)) and torch.equal(out[~flipped], ref[~flipped])
    cj = BatchAugment(frame_aug='cj', frame_transforms='crop', img_size=32)
    f, o = cj.sample_params(2, 3, 32, 32, 5)['frame_aug_cj']
    expect = apply_color_jitter(clips.flatten(0, 1).float() / 255, f, o)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(cj(clips, 5).flatten(0, 1), (expect - mean) / std, atol=1e-5)


def test_frame_aug_typo_is_one_line_error(frame_list, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        arguments.train_args(train_argv(frame_list, tmp_path, '--frame-aug', 'gird'))
    assert e.value.code == 2 and "--frame-aug 'gird'" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------ 4. --visdom-server
def test_test_py_accepts_visdom_server(davis):
    root, filelist, ckpt, _ = davis
    args = arguments.test_args(['--filelist', filelist, '--visdom-server', 'vis.example.org'])
    assert args.visdom_server == args.server == 'vis.example.org'


# ------------------------------------------------------------------------------------------------ 5. amp, BatchNorm
def test_node_embedding_is_float32_under_autocast():
    torch.manual_seed(0)
    model = CRW(types.SimpleNamespace(temp=0.05)).eval()
    x = torch.randn(1, 3, 2, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        q, _ = model.embed(x)
        maps = model.encoder.frames(x.flatten(0, 2))
        bf16_head = F.normalize(model.selfsim_fc(maps.mean((-2, -1))), dim=-1)
    assert maps.dtype == torch.bfloat16 and q.dtype == torch.float32
    fp32_head = F.normalize(model.selfsim_fc(maps.float().mean((-2, -1))), dim=-1)   # [B*T*N, 128]
    nodes = q.permute(0, 2, 3, 1).reshape(-1, 128)
    assert torch.allclose(nodes, fp32_head, atol=1e-6)
    assert (bf16_head.float() - fp32_head).abs().max() > 1e-4     # what a bf16 head would have changed


def test_sync_bn_only_for_distributed_gpus(capsys):
    model = CRW(types.SimpleNamespace())
    args = types.SimpleNamespace(sync_bn=True, distributed=False)
    assert dist_utils.sync_batchnorm(model, args, 'cpu') is model
    assert 'single process' in capsys.readouterr().out
    args.distributed = True
    with pytest.raises(CRWError, match='GPUs only'):
        dist_utils.sync_batchnorm(model, args, 'cpu')
    synced = dist_utils.sync_batchnorm(model, args, torch.device('cuda', 0))   # conversion needs no GPU
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert synced.state_dict().keys() == CRW(types.SimpleNamespace()).state_dict().keys()


# ------------------------------------------------------------------------------------------------ 6. weights_only
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


# ------------------------------------------------------------------------------------------------ 7. partial --resume
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


# ------------------------------------------------------------------------------------------------ 8. values
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


@pytest.mark.parametrize('extra, needle', [
    (['--temperature', 'inf'], '--temperature: inf'), (['--temperature', '0'], '--temperature 0'),
    (['--radius', 'nan'], '--radius: nan'), (['--radius', '0'], '--radius 0'),
    (['--finetune', '1', '--finetune-lr', 'inf'], '--finetune-lr: inf')])
def test_propagation_values_that_cannot_work_are_refused(davis, capsys, extra, needle):
    with pytest.raises(SystemExit) as e:
        cli.parse_test_args(['--filelist', davis[1], *extra])
    assert e.value.code == 2 and needle in one_line(capsys.readouterr().err)


def test_huge_radius_is_clamped_to_the_feature_map(davis, tmp_path):
    root, filelist, ckpt, _ = davis    # 'three' is 5x6 feature cells: radius 100 already covers it
    assert run_test_py(prop_argv(filelist, ckpt, tmp_path / 'huge', '--radius', '1e9')) == 0
    assert run_test_py(prop_argv(filelist, ckpt, tmp_path / 'map', '--radius', '100')) == 0
    names = sorted(p.name for p in (tmp_path / 'map').glob('*_mask.png'))
    assert names and names == sorted(p.name for p in (tmp_path / 'huge').glob('*_mask.png'))
    for n in names:
        assert np.array_equal(np.array(Image.open(tmp_path / 'huge' / n)), np.array(Image.open(tmp_path / 'map' / n)))


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


def test_smallest_sizes_run_and_test_crop_size_is_checked(davis, capsys):
    torch.manual_seed(0)
    model = CRW(types.SimpleNamespace())
    assert model.encoder.model(torch.zeros(2, 3, 9, 9)).shape[-2:] == (2, 2)      # 9 is the smallest that runs
    with pytest.raises(RuntimeError):
        model.encoder.model(torch.zeros(2, 3, 8, 8))                             # 8: reflect padding fails
    with pytest.raises(SystemExit):
        cli.parse_test_args(['--filelist', davis[1], '--cropSize', '8'])
    assert '--cropSize 8' in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------ 10. frame lists
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


# ------------------------------------------------------------------------------------------------ 12. one-line errors
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


def test_missing_frame_folders_and_undecodable_videos(frame_list, tmp_path, capsys):
    lst = tmp_path / 'list.txt'
    lst.write_text(f'{tmp_path}/gone1 6\n{tmp_path}/gone2 6\n')
    assert train.cli(train_argv(str(lst), tmp_path / 'a')) == 1
    assert 'none of the 2 folders it lists exists' in one_line(capsys.readouterr().err)
    # videos whose index is fine but whose frames do not decode
    videos = tmp_path / 'videos'
    for name in ('a', 'b'):
        path = str(videos / f'{name}.mp4')
        write_video(path, make_sequence(num_frames=24, height=48, width=64, seed=0)['frames'], fps=8)
        data = bytearray(open(path, 'rb').read())
        start, index = data.find(b'mdat'), data.find(b'moov')
        cut = start + (index - start) * 15 // 100
        data[cut:index - 8] = bytes(index - 8 - cut)
        open(path, 'wb').write(data)
    assert train.cli(train_argv(str(videos), tmp_path / 'b', '--frame-skip', '8')) == 1
    msg = one_line(capsys.readouterr().err)
    assert 'a.mp4' in msg and 'b.mp4' in msg


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


def test_dense_topk_larger_than_context(davis, tmp_path, capsys):
    root, filelist, ckpt, _ = davis
    # 'three' is 40x48: 5x6 cells; context = (1 + 2) frames x 30 = 90 nodes
    assert run_test_py(prop_argv(filelist, ckpt, tmp_path, '--dense', '--topk', '91')) == 1
    assert '--topk 91 exceeds the 90 context nodes' in one_line(capsys.readouterr().err)
    assert not list(tmp_path.glob('*_mask.png'))


@pytest.mark.parametrize('kind', ['file', 'read-only'])
def test_unwritable_output_paths(frame_list, davis, tmp_path, capsys, kind):
    if kind == 'file':
        target = tmp_path / 'taken'
        target.write_text('a file')
    elif READ_ONLY:
        target = READ_ONLY
    else:
        (tmp_path / 'ro').mkdir(mode=0o555)
        target = tmp_path / 'ro' / 'out'
    target = str(target)
    assert train.cli(train_argv(frame_list, target)) == 1
    captured = capsys.readouterr()
    assert f'--output-dir {target}' in one_line(captured.err) and '[data]' not in captured.out
    root, filelist, ckpt, _ = davis
    assert run_test_py(prop_argv(filelist, ckpt, target)) == 1
    assert f'--save-path {target}' in one_line(capsys.readouterr().err)
    raw = tmp_path / 'raw'
    assert run_test_py(prop_argv(filelist, ckpt, raw)) == 0
    assert convert_davis.main(['--in_folder', str(raw), '--out_folder', target, '--dataset', root]) == 1
    assert f'--out_folder {target}' in one_line(capsys.readouterr().err)


def test_scores_are_printed_when_the_csv_cannot_be_written(davis, tmp_path, capsys):
    root, filelist, ckpt, _ = davis
    raw, res = tmp_path / 'raw', tmp_path / 'res'
    assert run_test_py(prop_argv(filelist, ckpt, raw)) == 0
    assert convert_davis.main(['--in_folder', str(raw), '--out_folder', str(res), '--dataset', root]) == 0
    (res / 'global_results-val.csv').mkdir()                  # something that is not a file is in the way
    capsys.readouterr()
    assert evaluate_davis.main(['--davis_path', root, '--results_path', str(res), '--workers', '1']) == 1
    captured = capsys.readouterr()
    assert 'J&F-Mean' in captured.out and 'Per sequence results' in captured.out
    assert 'the scores above were not saved' in one_line(captured.err)


# ------------------------------------------------------------------------------------------------ 13. interruptions
class _InterruptingFile:
    """A file object whose third write stores half its bytes and then raises KeyboardInterrupt (Ctrl-C in the
    middle of torch.save)."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, b):
        self.n += 1
        if self.n == 3:
            self.f.write(bytes(b)[:len(b) // 2])
            raise KeyboardInterrupt
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def test_ctrl_c_during_checkpoint_write(frame_list, tmp_path, capsys, monkeypatch):
    real = torch.serialization._open_zipfile_writer
    monkeypatch.setattr(torch.serialization, '_open_zipfile_writer', lambda f: real(_InterruptingFile(f)))
    out = tmp_path / 'run'
    assert train.cli(train_argv(frame_list, out, '--steps-per-epoch', '1')) == 130
    msg = one_line(capsys.readouterr().err, 'interrupted')
    assert msg.startswith('train.py: interrupted') and 'no checkpoint was written yet' in msg
    assert sorted(os.listdir(out)) == ['.crw.lock', 'train_log.jsonl']    # no partial file left
    monkeypatch.setattr(torch.serialization, '_open_zipfile_writer', real)
    assert train.cli(train_argv(frame_list, out, '--steps-per-epoch', '1')) == 0
    monkeypatch.setattr(torch.serialization, '_open_zipfile_writer', lambda f: real(_InterruptingFile(f)))
    assert train.cli(train_argv(frame_list, out, '--steps-per-epoch', '1', '--epochs', '2')) == 130
    msg = one_line(capsys.readouterr().err, 'interrupted')
    assert f'{out / "checkpoint.pth"} is intact' in msg
    assert torch.load(out / 'checkpoint.pth', weights_only=True)['epoch'] == 0


def test_sigterm_in_training_is_one_line(frame_list, tmp_path, capsys, monkeypatch):
    import signal
    monkeypatch.setattr(train, 'save_state', lambda *a, **kw: os.kill(os.getpid(), signal.SIGTERM))
    assert train.cli(train_argv(frame_list, tmp_path / 'run', '--steps-per-epoch', '1')) == 143
    text = capsys.readouterr().err
    assert one_line(text, 'interrupted').startswith('train.py: interrupted (SIGTERM)') and 'Traceback' not in text


def test_non_finite_loss_message_names_no_missing_checkpoint(frame_list, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(CRW, 'walk_loss', lambda self, q, size=None, masks=None: (q.sum() * float('nan'), {}))
    assert train.cli(train_argv(frame_list, tmp_path / 'run')) == 1
    msg = one_line(capsys.readouterr().err)
    assert 'non-finite loss at iteration 0' in msg and 'no checkpoint was written yet' in msg


def test_resume_housekeeping(frame_list, tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    stale = [out / '.checkpoint.pth.x1y2.tmp', out / '.model_3.pth.abcd.tmp']
    for p in stale:
        p.write_bytes(b'partial')
    assert train.cli(train_argv(frame_list, out)) == 0
    assert 'removed 2 partial file(s)' in capsys.readouterr().out
    assert not any(p.exists() for p in stale)
    # steps logged after the last checkpoint (a kill) are logged again by the resumed run: no duplicates
    log = out / 'train_log.jsonl'
    with open(log, 'a') as f:
        f.write(json.dumps({'epoch': 1, 'iteration': 1, 'global_step': 3, 'loss': 9.0}) + '\n')
    assert train.cli(train_argv(frame_list, out, '--epochs', '2')) == 0
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r['global_step'] for r in records] == [1, 2, 3, 4] and records[2]['loss'] != 9.0
    assert [json.loads(x)['epoch'] for x in (out / 'log.txt').read_text().splitlines()] == [0, 1]
    # a missing --resume file is reported before the data scan
    capsys.readouterr()
    assert train.cli(train_argv(frame_list, out, '--resume', str(tmp_path / 'nope.pth'))) == 1
    captured = capsys.readouterr()
    assert 'nope.pth: no such file' in one_line(captured.err) and '[data]' not in captured.out


def test_frame_list_summary_counts_existing_folders(frame_list, tmp_path, capsys):
    lst = tmp_path / 'list.txt'
    lst.write_text(open(frame_list).read() + f'{tmp_path}/gone 6\n')
    args = arguments.train_args(train_argv(str(lst), tmp_path / 'out'))
    from crw.data.training.video_dataset import build_train_dataset
    ds = build_train_dataset(args)
    captured = capsys.readouterr()
    assert len(ds) == 4 and '4 videos' in captured.out
    assert 'skipping 1 missing folder(s)' in captured.err and 'gone' in captured.err
