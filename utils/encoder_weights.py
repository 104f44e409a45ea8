"""Local weight files of the pretrained encoders ``--model-type`` takes, read in their published layouts.

    imagenet18  torchvision ResNet-18 ImageNet state dict         resnet18-f37072fd.pth (or -5c106cde)
    imagenet50  torchvision ResNet-50 ImageNet state dict         resnet50-0676ba61.pth (or -19c8e357)
    moco50      MoCo v2 checkpoint, ``module.encoder_q.*``       moco_v2_800ep_pretrain.pth.tar
    timecycle   TimeCycle checkpoint, ``module.encoderVideo.*``   tc_checkpoint.pth.tar (3-D convs, time size 1)
    uvc         UVC checkpoint, ``module.gray_encoder.*``        uvc_checkpoint.pth.tar

``encoder_state_dict(model_type, path, expected)`` returns the file's trunk as torchvision ResNet keys
(``conv1.weight`` ... ``layer4.*``; no ``fc``), checked against ``expected`` (key -> shape of the model being
built): every weight must be there with its shape, so nothing silently stays random. Without ``path`` the
file is looked for by its name in the torch hub cache (``<hub>/checkpoints``) and, for the three checkpoints
the release read from the current folder, there first. Nothing is downloaded: a missing file raises
CRWError naming where to get it. Files are read with the safe loader (``utils.checkpoint._torch_load``).
"""
import os
from collections import namedtuple

import torch

from crw.utils.checkpoint import _torch_load
from crw.utils.errors import CRWError

Source = namedtuple('Source', 'arch files url prefix what in_cwd')

SOURCES = {
    'imagenet18': Source('resnet18', ('resnet18-f37072fd.pth', 'resnet18-5c106cde.pth'),
                         'https://download.pytorch.org/models/resnet18-f37072fd.pth', '',
                         "torchvision's ImageNet ResNet-18 weights", False),
    'imagenet50': Source('resnet50', ('resnet50-0676ba61.pth', 'resnet50-19c8e357.pth'),
                         'https://download.pytorch.org/models/resnet50-0676ba61.pth', '',
                         "torchvision's ImageNet ResNet-50 weights (IMAGENET1K_V1)", False),
    'moco50': Source('resnet50', ('moco_v2_800ep_pretrain.pth.tar',),
                     'https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar',
                     'encoder_q.', 'the MoCo v2 (800 epochs) checkpoint', True),
    'timecycle': Source('resnet50', ('tc_checkpoint.pth.tar',),
                        'the trained model linked in the README of github.com/xiaolonw/TimeCycle '
                        '(checkpoint_14.pth.tar)', 'encoderVideo.', "TimeCycle's checkpoint", True),
    'uvc': Source('resnet18', ('uvc_checkpoint.pth.tar',),
                  'weights/checkpoint_latest.pth.tar of github.com/Liusifei/UVC', 'gray_encoder.',
                  "UVC's checkpoint", True),
}
PRETRAINED_TYPES = tuple(SOURCES)
WEIGHTS_FLAG = '--encoder-weights'


def hub_folder():
    """Where torchvision keeps its downloads (and this project looks for weight files)."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def default_paths(model_type):
    """The places looked in, in order, when no path is given."""
    src = SOURCES[model_type]
    folders = (['.'] if src.in_cwd else []) + [hub_folder()]
    return [os.path.join(d, f) for d in folders for f in src.files]


def find_weights(model_type, path=''):
    """The weight file for ``model_type``: ``path`` if given, else the first existing default place; raises
    CRWError (one line: what is needed, where to get it, where to put it) when there is none."""
    src = SOURCES[model_type]
    if path:
        if os.path.isfile(path):
            return path
        where = f'{WEIGHTS_FLAG} {path}: no such file'
    else:
        found = next((p for p in default_paths(model_type) if os.path.isfile(p)), None)
        if found:
            return found
        where = f'{src.files[0]} not found in ' + ' or '.join(
            dict.fromkeys(os.path.dirname(p) for p in default_paths(model_type)))
    raise CRWError(f'{where}; --model-type {model_type} needs {src.what} ({src.files[0]}, from {src.url}) and '
                   f'nothing is downloaded: put it at {os.path.join(hub_folder(), src.files[0])} or pass '
                   f'{WEIGHTS_FLAG} PATH')


def _state_dict(obj):
    """The state dict inside a loaded file: the file itself, or its 'state_dict' / 'model' entry."""
    for key in ('state_dict', 'model'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _select(sd, prefix):
    """Keys under ``prefix`` (with or without the ``module.`` of DataParallel), prefix removed; all keys when
    ``prefix`` is '' (``module.`` removed)."""
    out = {}
    for k, v in sd.items():
        k2 = k[len('module.'):] if k.startswith('module.') else k
        if not prefix:
            out[k2] = v
        elif k2.startswith(prefix):
            out[k2[len(prefix):]] = v
    return out


def _to_2d(key, v, model_type, path):
    """TimeCycle's inflated convolutions [O, I, 1, kh, kw] -> [O, I, kh, kw] (time size 1 only)."""
    if torch.is_tensor(v) and v.dim() == 5:
        if v.shape[2] != 1:
            raise CRWError(f'{path}: {key} is a 3-D convolution with time size {v.shape[2]}; --model-type '
                           f'{model_type} converts time size 1 only (the published layout)')
        return v[:, :, 0]
    return v


def convert(model_type, sd, path='the file'):
    """A published state dict -> torchvision ResNet trunk keys (no ``fc``) for ``model_type``."""
    src = SOURCES[model_type]
    out = _select(sd, src.prefix)
    if not out and src.prefix:
        raise CRWError(f'{path}: no module.{src.prefix}* keys, not {src.what} (--model-type {model_type})')
    return {k: _to_2d(k, v, model_type, path) for k, v in out.items() if not k.startswith('fc.')}


def check(sd, expected, model_type, path):
    """Raise CRWError unless ``sd`` holds every key of ``expected`` (key -> shape; BatchNorm counters may be
    missing) with that shape."""
    missing = [k for k in expected if k not in sd and not k.endswith('num_batches_tracked')]
    shapes = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    if missing or shapes:
        what = (f'{len(missing)} of the {len(expected)} {SOURCES[model_type].arch} weights missing (e.g. {missing[0]})'
                if missing else f'{shapes[0]} is {list(sd[shapes[0]].shape)}, expected {list(expected[shapes[0]])}')
        raise CRWError(f'{path}: {what}: not {SOURCES[model_type].what} in its published layout '
                       f'(--model-type {model_type})')


def encoder_state_dict(model_type, path, expected, trust=False):
    """The trunk weights of ``model_type`` from ``path`` (or the default places) as torchvision keys,
    checked against ``expected`` (key -> shape). ``trust``: see ``utils.checkpoint.load_checkpoint``."""
    found = find_weights(model_type, path)
    try:
        obj = _torch_load(found, 'cpu', trust)
    except CRWError:
        raise
    except Exception as e:
        raise CRWError(f'{found}: cannot be read as {SOURCES[model_type].what} ({type(e).__name__})') from e
    sd = convert(model_type, _state_dict(obj) if isinstance(obj, dict) else {}, found)
    check(sd, expected, model_type, found)
    print(f'encoder weights: {SOURCES[model_type].what} from {found}')
    return {k: v for k, v in sd.items() if k in expected}
