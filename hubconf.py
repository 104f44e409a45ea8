"""torch.hub entry points.

    encoder = torch.hub.load(REPO, 'crw', source='local')                # the bundled pretrained.pth
    encoder = torch.hub.load(REPO, 'crw', source='local', checkpoint=PATH)
    propagator = torch.hub.load(REPO, 'crw_propagator', source='local')  # the README's protocol

REPO is this repository's folder (nothing is downloaded). The modules load as ``crw.*``, so they never clash with
a project's own ``utils/``, ``data/`` or ``model.py``.
"""
import os
import sys

dependencies = ['torch', 'torchvision', 'numpy', 'PIL']

_ROOT = os.path.dirname(os.path.abspath(__file__))
PRETRAINED = os.path.join(_ROOT, 'pretrained.pth')


def _crw():
    """The ``crw`` package of this repository (torch.hub has put the repository on sys.path)."""
    pkg = sys.modules.get('crw')
    if pkg is not None and os.path.abspath(list(getattr(pkg, '__path__', ['']))[0]) != _ROOT:
        raise ImportError(f'a module named crw from {list(getattr(pkg, "__path__", [pkg.__file__]))} is already '
                          f'imported; the CRW repository at {_ROOT} needs that name')
    if _ROOT not in sys.path:
        sys.path.append(_ROOT)
    import crw
    return crw


def crw(pretrained=True, checkpoint=None, device='cpu', model_type='scratch', trust_checkpoint=False):
    """The CRW encoder ready for propagation: eval mode, layer3 features (256 channels, stride 8), on ``device``.

    pretrained: the bundled ``pretrained.pth`` (trained on the CPU, see the README's "Pretrained models");
    checkpoint: a path to another checkpoint of this project or the release (overrides ``pretrained``);
    neither: random weights. trust_checkpoint: allow a checkpoint that needs unpickling (only your own files).
    Features: ``crw.propagation.encode_frames(encoder, x)`` with x [N, 3, H, W] from
    ``crw.data.inference.frames.prepare_frame``."""
    _crw()
    from crw.propagation.encoder import load_encoder
    path = checkpoint if checkpoint is not None else (PRETRAINED if pretrained else None)
    return load_encoder(path, device=device, model_type=model_type, trust=trust_checkpoint)


def crw_propagator(pretrained=True, checkpoint=None, device='cpu', topk=10, video_len=20, radius=12.0,
                   temperature=0.05, **options):
    """A ``crw.propagation.VideoPropagator`` on the ``crw`` encoder, with the README's protocol (top-k 10,
    20 context frames, radius 12, temperature 0.05). Feed it frames with ``step(frame, mask)`` (a mask on
    the first frame, and on any later frame to correct it) or a whole video with ``crw.propagation.propagate``;
    options: those of VideoPropagator (max_side, crop_size, reference, ...)."""
    _crw()
    from crw.propagation import Protocol, VideoPropagator
    encoder = crw(pretrained=pretrained, checkpoint=checkpoint, device=device)
    protocol = Protocol(topk=topk, video_len=video_len, radius=radius, temperature=temperature)
    return VideoPropagator(encoder, protocol, device, **options)
