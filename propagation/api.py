"""Label propagation for other code: a ready encoder, frame features, and streaming propagation.

    from propagation import Protocol, encode_frames, load_encoder, propagate_video
    encoder = load_encoder('pretrained.pth', device)
    feats = (encode_frames(encoder, batch) for batch in batches)          # [B, C, h, w] each
    for t, soft in propagate_video(feats, first_labels, Protocol(temperature=0.05)):
        ...                                                                # soft [h, w, K]

test.py uses exactly these functions.
"""
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from model import CRW
from propagation.protocol import min_max_normalize
from propagation.reference import ReferencePropagator
from propagation.windowed import WindowedPropagator
from utils.checkpoint import load_checkpoint, partial_load
from utils.errors import CRWError

STRIDE = 8   # encoder output stride: a feature cell is 8x8 pixels


def load_encoder(checkpoint=None, device='cpu', model_type='scratch', remove_layers=('layer4',),
                 imagenet_weights='', allow_partial=False, trust=False):
    """The CRW encoder for propagation, in eval mode on ``device`` (channels_last: faster convolutions, same
    results). ``checkpoint``: a path of this project's or the release's checkpoint, a loaded checkpoint dict
    or state dict, or None (random init for scratch types; a pretrained type's weights from
    ``imagenet_weights``, its local file). The training head (``selfsim_fc``) is not used; ``remove_layers``
    defaults to the release's test setting (layer3 features: 256 channels for ResNet-18, 1024 for ResNet-50;
    stride 8).

    Every encoder weight must come from the checkpoint: a file that fills only part of it (another
    architecture, a plain torchvision state dict) raises CRWError unless ``allow_partial``, since the rest
    would silently stay random. ``trust``: see ``utils.checkpoint.load_checkpoint``."""
    model = CRW(SimpleNamespace(model_type=model_type, remove_layers=list(remove_layers), head_depth=-1,
                                imagenet_weights=imagenet_weights, trust_checkpoint=trust))
    if checkpoint is not None:
        name = checkpoint if isinstance(checkpoint, str) else 'the checkpoint'
        if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, '__fspath__'):
            name = os.fspath(checkpoint)
            checkpoint = load_checkpoint(checkpoint, map_location='cpu', trust=trust)
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
    return model.encoder


@torch.no_grad()
def encode_frames(encoder, imgs, l2=True):
    """imgs [B, 3, H, W] (normalised) -> features [B, C, h, w] float32, L2-normalised over C unless l2 is
    False."""
    feats = encoder.frames(imgs).float()
    return F.normalize(feats, dim=1) if l2 else feats


def soft_to_index(soft, size, norm_mask=False):
    """Soft map [h, w, K] -> label index map [H, W] (argmax after bilinear upsampling), on soft's device."""
    if norm_mask:
        soft = min_max_normalize(soft)
    x = soft.permute(2, 0, 1)[None]
    x = F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)
    return x[0].argmax(0)


def make_propagator(first_feat, first_labels, protocol, reference=False, **windowed_opts):
    """The windowed propagator (default) or the release's reference one (``reference=True``), on
    first_feat's device and dtype. ``windowed_opts``: tile, mode, budget_bytes (see WindowedPropagator)."""
    first_labels = first_labels.to(first_feat.device, first_feat.dtype)
    if reference:
        return ReferencePropagator(first_feat, first_labels, protocol, budget_bytes=windowed_opts.get('budget_bytes'))
    return WindowedPropagator(first_feat, first_labels, protocol, **windowed_opts)


def _iter_frames(feats):
    """Yield [C, h, w] tensors from an iterable of [C, h, w] or [B, C, h, w] tensors (or one [T, C, h, w])."""
    if torch.is_tensor(feats) and feats.dim() == 4:
        feats = [feats]
    for f in feats:
        if f.dim() == 4:
            yield from f
        elif f.dim() == 3:
            yield f
        else:
            raise ValueError(f'features must be [C, h, w] or [B, C, h, w], got {tuple(f.shape)}')


def propagate_video(feats, first_labels, protocol, reference=False, device=None, return_topk=False,
                    **windowed_opts):
    """Propagate ``first_labels`` [h, w, K] through a video's features, streaming.

    feats: iterable of per-frame features [C, h, w] (or batches [B, C, h, w], or one [T, C, h, w] tensor),
    frame 0 first, already L2-normalised if wanted; consumed lazily, so a generator that computes features
    batch by batch keeps memory bounded. device: where to compute (default: the features' device).
    Yields (t, soft map [h, w, K]) for t = 0, 1, ... (frame 0: first_labels itself); with return_topk,
    (t, soft map, topk info or None) -- see ``WindowedPropagator.step``.
    """
    it = _iter_frames(feats)
    try:
        f0 = next(it)
    except StopIteration:
        return
    if device is not None:
        f0 = f0.to(device)
    prop = make_propagator(f0, first_labels, protocol, reference=reference, **windowed_opts)
    lab0 = first_labels.to(f0.device, f0.dtype)
    yield (0, lab0, None) if return_topk else (0, lab0)
    with torch.no_grad():
        for t, f in enumerate(it, 1):
            out = prop.step(f.to(f0.device), return_topk=return_topk)
            yield (t, *out) if return_topk else (t, out)
