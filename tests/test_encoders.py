"""The release's pretrained encoder types (imagenet18, imagenet50, moco50, timecycle, uvc): each reads a local
file in its published layout (built here with random weights and the real key names and shapes), gives the
same features as a torchvision ResNet holding those weights (strides modified as the release), propagates a
tiny clip through test.py, and trains (ResNet-50: 2048 channels into the head). Missing or wrong files are
one-line errors."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import train
from conftest import load_script
from crw.data.synthetic import make_sequence, write_davis_layout, write_frame_folder
from crw.model import MODEL_TYPES, PRETRAINED_TYPES
from crw.propagation import Protocol, encode_frames, load_encoder, make_propagator
from crw.utils.arguments import train_args
from crw.utils.encoder_weights import SOURCES, find_weights
from crw.utils.errors import CRWError

ARCH = {t: SOURCES[t].arch for t in PRETRAINED_TYPES}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _trunk(sd):
    return {k: v for k, v in sd.items() if not k.startswith('fc.')}


def published(model_type, sd):
    """``sd`` (torchvision keys) saved the way ``model_type``'s file is published (plus the keys such files
    hold besides the encoder, a few of each)."""
    if model_type in ('imagenet18', 'imagenet50'):
        return dict(sd)                                             # torchvision state dict, fc included
    if model_type == 'moco50':                                      # MoCo v2: query encoder with an MLP fc
        state = {'module.encoder_q.' + k: v for k, v in _trunk(sd).items()}
        state.update({'module.encoder_q.fc.0.weight': torch.zeros(2048, 2048), 'module.encoder_q.fc.0.bias':
                      torch.zeros(2048), 'module.encoder_q.fc.2.weight': torch.zeros(128, 2048),
                      'module.encoder_q.fc.2.bias': torch.zeros(128), 'module.encoder_k.conv1.weight':
                      torch.zeros(64, 3, 7, 7), 'module.queue': torch.zeros(128, 8),
                      'module.queue_ptr': torch.zeros(1, dtype=torch.long)})
        return {'epoch': 800, 'arch': 'resnet50', 'state_dict': state}
    if model_type == 'timecycle':                                   # inflated 3-D convs, time size 1
        state = {'module.encoderVideo.' + k: (v[:, :, None] if v.dim() == 4 else v) for k, v in _trunk(sd).items()
                 if not k.endswith('num_batches_tracked')}         # trained on PyTorch 0.4: no BN counters
        state['module.afterconv1.weight'] = torch.zeros(512, 1024, 1, 1, 1)
        return {'epoch': 14, 'state_dict': state}
    if model_type == 'uvc':                                         # UVC: the grey-frame ResNet-18 encoder
        state = {'module.gray_encoder.' + k: v for k, v in _trunk(sd).items()}
        state['module.rgb_encoder.conv1.weight'] = torch.zeros(3, 3, 1, 1)
        return {'epoch': 30, 'best_loss': 0.5, 'state_dict': state}
    raise ValueError(model_type)


@pytest.fixture(scope='module')
def nets():
    """Random torchvision ResNet-18 / ResNet-50 (BatchNorm statistics made non-trivial), in eval mode, with
    stride 1 in layer3 (the release's change; layer4 is not used here): the references."""
    out = {}
    for arch, seed in (('resnet18', 1), ('resnet50', 2)):
        torch.manual_seed(seed)
        net = getattr(torchvision.models, arch)(weights=None).eval()
        g = torch.Generator().manual_seed(seed)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
        for m in net.layer3.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.stride = (1, 1)
        out[arch] = net
    return out


@pytest.fixture(scope='module')
def sources(nets):
    """Their state dicts (torchvision keys)."""
    return {arch: net.state_dict() for arch, net in nets.items()}


@pytest.fixture(scope='module')
def files(sources, tmp_path_factory):
    d = tmp_path_factory.mktemp('weights')
    paths = {}
    for t in PRETRAINED_TYPES:
        paths[t] = str(d / SOURCES[t].files[0])
        torch.save(published(t, sources[ARCH[t]]), paths[t])
    return paths


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp('clip')
    seq = make_sequence(num_frames=3, height=32, width=32, num_objects=2, seed=3, object_size=(10, 14))
    return write_davis_layout(str(root), {'clip': seq}, ext='png'), seq


@torch.no_grad()
def reference_features(net, x):
    """layer3 features of a reference network."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer3(net.layer2(net.layer1(x)))


def test_all_seven_types_are_known():
    assert set(MODEL_TYPES) == {'scratch', 'scratch_zeropad', 'imagenet18', 'imagenet50', 'moco50', 'timecycle',
                                'uvc'}


@pytest.mark.parametrize('model_type', PRETRAINED_TYPES)
def test_published_layout_loads_and_propagates(model_type, nets, sources, files, clip):
    arch = ARCH[model_type]
    enc = load_encoder(None, 'cpu', model_type, imagenet_weights=files[model_type],
                       fold_bn=False)   # the file's own weights; folding is tests/test_folding.py's
    # the file's weights, the release's modifications: stride 1 in layer3, zero padding, no fc
    assert torch.equal(enc.model.layer3[0].conv2.weight, sources[arch]['layer3.0.conv2.weight'])
    assert torch.equal(enc.model.bn1.running_var, sources[arch]['bn1.running_var'])
    assert enc.model.layer3[0].downsample[0].stride == (1, 1) and enc.model.layer4 is None and enc.model.fc is None
    assert all(c.padding_mode == 'zeros' for c in enc.modules() if isinstance(c, torch.nn.Conv2d))
    # propagation: layer3 features (1024 channels for ResNet-50), first-frame labels carried to later frames
    filelist, seq = clip
    frames = torch.from_numpy(seq['frames']).permute(0, 3, 1, 2).float() / 255
    frames = (frames - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    feats = encode_frames(enc, frames, l2=False)
    assert feats.shape == (len(frames), 1024 if arch == 'resnet50' else 256, 4, 4)
    ref = reference_features(nets[arch], frames)                 # equal up to float32 rounding
    torch.testing.assert_close(feats / ref.abs().max(), ref / ref.abs().max(), rtol=0, atol=1e-5)
    first = torch.nn.functional.one_hot(torch.from_numpy(seq['masks'][0][4::8, 4::8]).long(), 3).float()
    feats = F.normalize(feats, dim=1)
    prop = make_propagator(feats[0], first, Protocol(topk=5, radius=3, temperature=0.05))
    for f in feats[1:]:
        soft = prop.step(f)
        assert soft.shape == (4, 4, 3) and torch.allclose(soft.sum(-1), torch.ones(4, 4), atol=1e-5)


def test_test_py_propagates_with_resnet50(files, clip, tmp_path, capsys):
    """test.py end to end with a ResNet-50 type (1024 channels at layer3) from its published file."""
    filelist, seq = clip
    out = tmp_path / 'out'
    rc = load_script('test.py').main(['--filelist', filelist, '--model-type', 'timecycle', '--encoder-weights',
                                      files['timecycle'], '--save-path', str(out), '--topk', '5', '--videoLen', '2',
                                      '--radius', '3', '--temperature', '0.05', '--cropSize', '-1', '--workers', '0',
                                      '--device', 'cpu'])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert 'random weights' not in err
    masks = [np.asarray(Image.open(out / f'0_{t}_mask.png')) for t in range(len(seq['frames']))]
    assert np.array_equal(masks[0], seq['masks'][0])
    assert all(m.shape == seq['masks'][0].shape and set(np.unique(m)) <= {0, 1, 2} for m in masks)


def test_default_places_and_the_old_flag(tmp_path, monkeypatch):
    hub = tmp_path / 'hub' / 'checkpoints'
    os.makedirs(hub)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.chdir(tmp_path)
    (hub / 'resnet50-19c8e357.pth').write_bytes(b'')                 # the release's name for the same weights
    assert find_weights('imagenet50') == str(hub / 'resnet50-19c8e357.pth')
    (hub / 'uvc_checkpoint.pth.tar').write_bytes(b'')
    assert find_weights('uvc') == str(hub / 'uvc_checkpoint.pth.tar')
    (tmp_path / 'uvc_checkpoint.pth.tar').write_bytes(b'')          # the release read it from the current folder
    assert find_weights('uvc') == os.path.join('.', 'uvc_checkpoint.pth.tar')
    args = train_args(['--data-path', str(tmp_path), '--model-type', 'moco50', '--imagenet-weights', 'x.pth'])
    assert args.imagenet_weights == 'x.pth'


@pytest.mark.parametrize('model_type', PRETRAINED_TYPES)
def test_missing_file_is_one_line_naming_where_to_get_it(model_type, clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.chdir(tmp_path)
    rc = load_script('test.py').main(['--filelist', clip[0], '--model-type', model_type, '--save-path',
                                      str(tmp_path / 'out'), '--workers', '0', '--device', 'cpu'])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    src = SOURCES[model_type]
    assert src.files[0] in err[0] and src.url in err[0] and '--encoder-weights' in err[0]
    assert not os.path.exists(tmp_path / 'out' / '0_0_mask.png')


def test_wrong_layouts_are_refused(sources, tmp_path):
    r50 = sources['resnet50']
    bad = {
        # a MoCo file without its query encoder
        'moco50': ({'state_dict': {'module.encoder_k.conv1.weight': r50['conv1.weight']}}, 'encoder_q'),
        # a ResNet-18 where ResNet-50 is expected
        'imagenet50': (sources['resnet18'], 'resnet50 weights missing'),
        # UVC with its layer4 missing
        'uvc': ({'state_dict': {'module.gray_encoder.' + k: v for k, v in _trunk(sources['resnet18']).items()
                                if not k.startswith('layer4')}}, 'layer4'),
        # a TimeCycle conv with a real time extent
        'timecycle': ({'state_dict': {'module.encoderVideo.conv1.weight': torch.zeros(64, 3, 3, 7, 7)}},
                      'time size 3'),
    }
    for model_type, (obj, needle) in bad.items():
        path = tmp_path / f'{model_type}.pth'
        torch.save(obj, path)
        with pytest.raises(CRWError, match=needle) as e:
            load_encoder(None, 'cpu', model_type, imagenet_weights=str(path))
        assert '\n' not in str(e.value) and str(path) in str(e.value)


def test_weights_flag_needs_a_pretrained_type(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_args(['--data-path', str(tmp_path), '--model-type', 'scratch', '--encoder-weights', 'x.pth'])
    assert 'pretrained --model-type' in capsys.readouterr().err


def test_resnet50_trains_with_a_2048_wide_head(sources, files, tmp_path):
    """Training keeps layer4: ResNet-50's 2048 channels feed the head (one step)."""
    folder = tmp_path / 'frames'
    lines = []
    for v in range(2):
        write_frame_folder(str(folder / f'v{v}'), make_sequence(num_frames=4, height=40, width=40, seed=v)['frames'])
        lines.append(f'{folder / f"v{v}"} 4')
    (tmp_path / 'list.txt').write_text('\n'.join(lines) + '\n')
    out = tmp_path / 'run'
    argv = ['--data-path', str(tmp_path / 'list.txt'), '--frame-aug', 'grid', '--img-size', '32', '--patch-size',
            '16', '16', '--clip-len', '3', '--frame-skip', '1', '--batch-size', '2', '--workers', '0', '--device',
            'cpu', '--model-type', 'imagenet50', '--encoder-weights', files['imagenet50'], '--output-dir', str(out),
            '--steps-per-epoch', '1', '--print-freq', '1', '--temp', '0.05', '--epochs', '1',
            '--optim', 'sgd', '--momentum', '0', '--lr', '0.1']    # no optimizer state: smaller checkpoints
    train.main(train_args(argv))
    ckpt = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    sd = ckpt['model']
    assert sd['selfsim_fc.0.weight'].shape == (128, 2048) and 'encoder.model.layer4.2.conv3.weight' in sd
    assert ckpt['global_step'] == 1 and ckpt['args']['model_type'] == 'imagenet50'
    # the step moved the pretrained weights
    assert not torch.equal(sd['encoder.model.layer4.2.conv3.weight'], sources['resnet50']['layer4.2.conv3.weight'])
