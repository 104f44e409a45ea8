"""BatchNorm folding for inference: an eval-mode ``conv -> BatchNorm`` pair computes an affine function of the
conv's output per channel, so it can be merged into the conv's weight and bias and the BatchNorm dropped.
The result is the same function up to float rounding, with one pass over each activation less.

    encoder = fold_batchnorm(encoder)      # in place; encoder.bn_folded is True afterwards

Folded: the torchvision ResNet stem (conv1, bn1), the blocks' (convN, bnN) pairs and (Conv2d, BatchNorm2d)
pairs inside ``nn.Sequential`` (the downsample shortcuts). A folded model must not be trained (its BatchNorm
layers are gone): fold only what is used for inference.
"""
import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


def _fold_pair(conv, bn):
    """conv's weight and bias absorb bn (running statistics); computed in float64, stored in conv's dtype."""
    w = conv.weight.detach().double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    dtype = conv.weight.dtype
    memory_format = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) and \
        not conv.weight.is_contiguous() else torch.contiguous_format
    with torch.no_grad():
        conv.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(dtype).contiguous(memory_format=memory_format))
        conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype))


def _foldable(conv, bn):
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
            and conv.out_channels == bn.num_features)


def fold_batchnorm(module):
    """Fold every eval-time ``conv -> BatchNorm2d`` pair of a torchvision-style ResNet in ``module`` into the conv
    (BatchNorm replaced by ``nn.Identity``), in place; returns ``module`` in eval mode with ``bn_folded = True``.
    Raises ValueError if a BatchNorm2d is left that could not be folded (the model would still need it)."""
    module.eval()
    for m in list(module.modules()):
        if isinstance(m, (ResNet, BasicBlock, Bottleneck)):
            for i in ('1', '2', '3'):
                conv, bn = getattr(m, 'conv' + i, None), getattr(m, 'bn' + i, None)
                if _foldable(conv, bn):
                    _fold_pair(conv, bn)
                    setattr(m, 'bn' + i, nn.Identity())
        if isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if _foldable(m[i], m[i + 1]):
                    _fold_pair(m[i], m[i + 1])
                    m[i + 1] = nn.Identity()
    left = [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f'fold_batchnorm: {len(left)} BatchNorm layers could not be folded (e.g. {left[0]})')
    module.bn_folded = True
    return module
