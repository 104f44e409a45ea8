"""The encoder for propagation and the features it computes.

    from crw.propagation import encode_frames, load_encoder
    encoder = load_encoder('pretrained.pth', device)          # eval mode, layer4 removed (stride 8)
    feats = encode_frames(encoder, batch)                      # [B, 3, H, W] normalised -> [B, C, h, w]

A feature cell is STRIDE x STRIDE pixels: h, w = ceil(H / 8), ceil(W / 8).
"""
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from crw.model import CRW
from crw.propagation.folding import fold_batchnorm
from crw.utils.checkpoint import checkpoint_args, load_checkpoint, partial_load
from crw.utils.errors import CRWError

STRIDE = 8   # encoder output stride: a feature cell is 8x8 pixels


def load_encoder(checkpoint=None, device='cpu', model_type='scratch', remove_layers=('layer4',),
                 imagenet_weights='', allow_partial=False, trust=False, fold_bn=True):
    """The CRW encoder for propagation, in eval mode on ``device`` (channels_last: faster convolutions, same
    results). ``checkpoint``: a path of this project's or the release's checkpoint, a loaded checkpoint dict
    or state dict, or None (random init for scratch types; a pretrained type's weights from
    ``imagenet_weights``, its local file). The training head (``selfsim_fc``) is not used; ``remove_layers``
    defaults to the release's test setting (layer3 features: 256 channels for ResNet-18, 1024 for ResNet-50;
    stride 8).

    Every encoder weight must come from the checkpoint: a file that fills only part of it (another
    architecture, a plain torchvision state dict) raises CRWError unless ``allow_partial``, since the rest
    would silently stay random. A checkpoint whose stored training args name another ``model_type`` raises
    CRWError too (``scratch`` and ``scratch_zeropad`` share their weights but give other masks). ``trust``: see
    ``utils.checkpoint.load_checkpoint``. ``fold_bn``: BatchNorm folded into the convolutions
    (``propagation.folding``: same features up to float rounding, faster; such an encoder cannot be trained:
    pass False for test-time adaptation)."""
    model = CRW(SimpleNamespace(model_type=model_type, remove_layers=list(remove_layers), head_depth=-1,
                                imagenet_weights=imagenet_weights, trust_checkpoint=trust))
    if checkpoint is not None:
        name = checkpoint if isinstance(checkpoint, str) else 'the checkpoint'
        if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, '__fspath__'):
            name = os.fspath(checkpoint)
            checkpoint = load_checkpoint(checkpoint, map_location='cpu', trust=trust)
        trained = checkpoint_args(checkpoint).get('model_type')
        if trained is not None and trained != model_type:   # scratch / scratch_zeropad: same weights, other masks
            raise CRWError(f'--resume {name} was trained with --model-type {trained}, this run has --model-type '
                           f'{model_type}: pass --model-type {trained}')
        state = checkpoint['model'] if isinstance(checkpoint.get('model'), dict) else checkpoint
        _, missing, _ = partial_load(model, state, skip_keys=('selfsim_fc',))
        missing = [k for k in missing if not k.endswith('num_batches_tracked')]  # counters, unused in eval
        if missing and not allow_partial:
            total = sum(1 for k in model.state_dict() if not k.endswith('num_batches_tracked'))
            raise CRWError(
                f'--resume {name}: {len(missing)} of the {model_type} encoder\'s {total} weights are not in it '
                f'(e.g. {missing[0]}), they would stay random: it is not a CRW checkpoint of this architecture '
                '(a torchvision ResNet state dict goes to --model-type imagenet18 --imagenet-weights); '
                '--allow-partial runs anyway')
    model.eval().to(device).to(memory_format=torch.channels_last)
    return fold_batchnorm(model.encoder) if fold_bn else model.encoder


@torch.inference_mode()
def encode_frames(encoder, imgs, l2=True):
    """imgs [B, 3, H, W] (normalised) -> features [B, C, h, w] float32, L2-normalised over C unless l2 is
    False."""
    feats = encoder.frames(imgs).float()
    return F.normalize(feats, dim=1) if l2 else feats
