"""BatchNorm folding (propagation.folding): same function as the eval-mode model up to float rounding, no
BatchNorm left, and an encoder that must train (test-time adaptation) refuses a folded one."""
import pytest
import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck, ResNet

from crw.model import make_resnet
from crw.propagation import encode_frames, load_encoder
from crw.propagation.finetune import VideoAdapter, training_settings, FinetuneSettings
from crw.propagation.folding import fold_batchnorm
from crw.utils.errors import CRWError


def _randomise_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize('build', [
    lambda: make_resnet('scratch', ['layer4']),                       # reflect padding, stride-1 layer3
    lambda: make_resnet('scratch_zeropad', []),
    lambda: ResNetBottleneckTrunk(),                                    # Bottleneck blocks (conv3/bn3)
])
def test_fold_batchnorm_same_function(build):
    torch.manual_seed(0)
    net = build()
    _randomise_bn(net)
    net.eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = net(x)
        folded = fold_batchnorm(net)
        out = folded(x)
    assert folded is net and folded.bn_folded and not folded.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(m.padding_mode == p for m, p in zip(
        (m for m in net.modules() if isinstance(m, nn.Conv2d)),
        (m.padding_mode for m in build().modules() if isinstance(m, nn.Conv2d))))
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


class ResNetBottleneckTrunk(ResNet):
    def __init__(self):
        super().__init__(Bottleneck, [1, 1, 1, 1])
        self.fc = self.avgpool = None

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))


def test_fold_refuses_unfoldable_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match='could not be folded'):
        fold_batchnorm(net)


def test_load_encoder_folds_and_adaptation_needs_batchnorm(tmp_path):
    torch.manual_seed(0)
    unfolded = load_encoder(None, 'cpu', fold_bn=False)
    _randomise_bn(unfolded)
    torch.save({'model': {f'encoder.{k}': v for k, v in unfolded.state_dict().items()}}, tmp_path / 'c.pth')
    folded = load_encoder(str(tmp_path / 'c.pth'), 'cpu')
    assert folded.bn_folded and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 48, 64)
    f0, f1 = encode_frames(unfolded, x), encode_frames(folded, x)
    assert (f0 - f1).abs().max() < 1e-5
    adapter = VideoAdapter(FinetuneSettings(steps=1, clip_len=3, train=training_settings()), 'cpu')
    with pytest.raises(CRWError, match='fold_bn=False'):
        adapter.build_model(folded)
