"""Tests of model.py (CRW) and checkpoint loading (utils/checkpoint.py) on CPU with tiny inputs."""
import argparse
import math
import os
import types
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crw.model import CRW
from reference_walk import release_walks
from crw.utils.checkpoint import clean_state_dict, load_checkpoint, partial_load
from crw.utils.encoder_weights import SOURCES, find_weights
from crw.utils.errors import CRWError

IMAGENET18_FILE = SOURCES['imagenet18'].files[0]

def make(**kw):
    torch.manual_seed(kw.pop('seed', 0))
    return CRW(NS(**kw))


def rand_q(B, C, T, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, C, T, N, generator=g), dim=1)


# ---------------------------------------------------------------- transitions
@pytest.mark.parametrize('p', [0.0, 0.3, 0.999999])
def test_transition_rows_sum_to_one(p):
    m = make(dropout=p, temp=0.1).train()
    P, Pb = m.transitions(rand_q(2, 16, 4, 7))
    assert P.shape == Pb.shape == (2, 3, 7, 7)
    for X in (P, Pb):
        assert torch.allclose(X.sum(-1), torch.ones(2, 3, 7), atol=1e-5)
        assert (X >= 0).all()


def test_transitions_are_softmax_of_affinity_and_transpose():
    m = make(temp=0.2)
    q = rand_q(2, 8, 3, 5)
    P, Pb = m.transitions(q)
    A = torch.einsum('bctn,bctm->btnm', q[:, :, :-1], q[:, :, 1:])
    assert torch.allclose(P, torch.softmax(A / 0.2, -1), atol=1e-6)
    assert torch.allclose(Pb, torch.softmax(A.transpose(-1, -2) / 0.2, -1), atol=1e-6)


def test_zero_diagonal():
    m = make(temp=0.5, zero_diagonal=True)
    q = rand_q(1, 8, 3, 4)
    A = torch.einsum('bctn,bctm->btnm', q[:, :, :-1], q[:, :, 1:])
    A = A * (1 - torch.eye(4))
    P, Pb = m.transitions(q)
    assert torch.allclose(P, torch.softmax(A / 0.5, -1), atol=1e-6)
    assert torch.allclose(Pb, torch.softmax(A.transpose(-1, -2) / 0.5, -1), atol=1e-6)


# ---------------------------------------------------------------- walks
def test_walk_count_names_and_short_clips():
    m = make(temp=0.1)
    loss, d = m.walk_loss(rand_q(1, 8, 5, 4), size=64)
    assert sorted(d) == sorted([f'64 {k} cyc r{i}' for k in ('xent', 'acc') for i in (1, 2, 3)])
    assert '64 xent cyc r0' not in d and '64 xent cyc r4' not in d
    _, d = make(temp=0.1, flip=True).walk_loss(rand_q(1, 8, 4, 4), size=256)
    assert sorted(d) == sorted([f'256 {k} cyc l{i}' for k in ('xent', 'acc') for i in (1, 2)])
    for T in (1, 2):
        with pytest.raises(ValueError, match='at least 3 frames'):
            m.walk_loss(rand_q(1, 8, T, 4))
    with pytest.raises(ValueError, match='at least 3 frames'):
        m(torch.randn(1, 2, 3, 16, 16))
    # the walks really are the palindromes 0 -> i+1 -> 0, the first one being 0->1->2->1->0, not 0->1->0
    q = rand_q(1, 8, 4, 3)
    P, Pb = m.transitions(q)
    W, names = m.walks(P, Pb)
    assert names == ['r1', 'r2']
    assert torch.allclose(W[0], P[:, 0] @ P[:, 1] @ Pb[:, 1] @ Pb[:, 0], atol=1e-6)
    assert not torch.allclose(W[0], P[:, 0] @ Pb[:, 0], atol=1e-3)


@pytest.mark.parametrize('flip', [False, True])
@pytest.mark.parametrize('B', [1, 3])
def test_prefix_products_equal_release_loop_same_seed(flip, B):
    """Same seed -> same dropout masks -> same walks and loss as the release's loop (CPU RNG)."""
    q = rand_q(B, 16, 6, 7, seed=1)
    m = make(temp=0.1, dropout=0.3, flip=flip).train()
    torch.manual_seed(123)
    P, Pb = m.transitions(q)
    W, _ = m.walks(P, Pb)
    torch.manual_seed(123)
    loss, d = m.walk_loss(q)
    torch.manual_seed(123)
    W_ref, loss_ref = release_walks(q, 0.1, 0.3, flip=flip)
    assert W.shape == W_ref.shape == (4, B, 7, 7)
    assert torch.allclose(W, W_ref, atol=1e-6, rtol=1e-4)
    assert torch.allclose(loss, loss_ref, atol=1e-5, rtol=1e-5)
    assert math.isclose(sum(d[f'xent cyc {"l" if flip else "r"}{i}'] for i in range(1, 5)) / 4, loss.item(),
                        rel_tol=1e-6)


@pytest.mark.parametrize('flip', [False, True])
def test_prefix_products_equal_release_loop_injected_masks(flip):
    B, T, N = 2, 5, 6
    q = rand_q(B, 16, T, N, seed=2)
    g = torch.Generator().manual_seed(5)
    masks = (torch.rand(B, T - 1, N, N, generator=g) < 0.4, torch.rand(B, T - 1, N, N, generator=g) < 0.4)
    m = make(temp=0.2, dropout=0.4, flip=flip).train()
    loss, _ = m.walk_loss(q, masks=masks)
    W, _ = m.walks(*m.transitions(q, masks))
    W_ref, loss_ref = release_walks(q, 0.2, 0.0, flip=flip, masks=masks)
    assert torch.allclose(W, W_ref, atol=1e-6, rtol=1e-4)
    assert torch.allclose(loss, loss_ref, atol=1e-5, rtol=1e-5)


def test_flip_reverses_the_product():
    q = rand_q(2, 8, 4, 5, seed=3)
    a, b = make(temp=0.3), make(temp=0.3, flip=True)
    P, Pb = a.transitions(q)
    Wr, _ = a.walks(P, Pb)
    Wl, _ = b.walks(P, Pb)
    assert torch.allclose(Wl[1], Pb[:, 0] @ Pb[:, 1] @ Pb[:, 2] @ P[:, 2] @ P[:, 1] @ P[:, 0], atol=1e-6)
    assert not torch.allclose(Wl, Wr, atol=1e-3)


# ---------------------------------------------------------------- loss values
def test_loss_zero_for_identical_frames_small_tau():
    N = 6
    base = F.normalize(torch.randn(1, 32, 1, N, generator=torch.Generator().manual_seed(0)), dim=1)
    q = base.expand(2, 32, 5, N).contiguous()
    loss, d = make(temp=0.01).walk_loss(q)
    assert loss.item() < 1e-3
    assert all(d[f'acc cyc r{i}'].item() == 1.0 for i in (1, 2, 3))


def test_loss_log_n_for_random_features_large_tau():
    N = 9
    loss, d = make(temp=1e6).walk_loss(rand_q(2, 16, 4, N))
    assert abs(loss.item() - math.log(N)) < 1e-4
    loss_small, _ = make(temp=0.05).walk_loss(rand_q(2, 16, 4, N))
    assert abs(loss_small.item() - math.log(N)) > 1e-2  # not trivially log N


def test_loss_matches_numpy_by_hand():
    # B=1, C=2, T=3, N=2: unit vectors at fixed angles
    ang = np.array([[0.0, 1.2], [0.3, 1.0], [0.5, 1.9]])  # [T, N]
    qn = np.stack([np.cos(ang), np.sin(ang)], 0)  # [C, T, N]
    tau = 0.5

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    A0, A1 = qn[:, 0].T @ qn[:, 1], qn[:, 1].T @ qn[:, 2]
    P0, P1, Pb0, Pb1 = softmax(A0 / tau), softmax(A1 / tau), softmax(A0.T / tau), softmax(A1.T / tau)
    W = P0 @ P1 @ Pb1 @ Pb0
    L = np.log(W + 1e-20)
    xent = np.mean([np.log(np.exp(L[n]).sum()) - L[n, n] for n in range(2)])
    acc = np.mean(L.argmax(1) == np.arange(2))
    loss, d = make(temp=tau).walk_loss(torch.tensor(qn, dtype=torch.float32)[None], size=64)
    assert loss.item() == pytest.approx(xent, abs=1e-6)
    assert d['64 xent cyc r1'].item() == pytest.approx(xent, abs=1e-6)
    assert d['64 acc cyc r1'].item() == pytest.approx(acc)
    assert not d['64 xent cyc r1'].requires_grad


# ---------------------------------------------------------------- edge dropout
def test_edge_dropout_almost_one_gives_uniform_rows():
    N = 8
    m = make(dropout=0.999999, temp=0.05).train()
    torch.manual_seed(0)
    P, Pb = m.transitions(rand_q(2, 16, 4, N))
    assert torch.allclose(P, torch.full_like(P, 1 / N), atol=1e-6)
    assert torch.allclose(Pb, torch.full_like(Pb, 1 / N), atol=1e-6)
    # eval mode: no edge dropout (deliberate difference from the release)
    P, Pb = m.eval().transitions(rand_q(2, 16, 4, N))
    assert not torch.allclose(P, torch.full_like(P, 1 / N), atol=1e-3)


def test_forward_mask_is_seen_transposed_by_backward():
    B, T, N = 1, 3, 4
    q = rand_q(B, 8, T, N)
    fwd = torch.zeros(B, T - 1, N, N, dtype=torch.bool)
    fwd[0, 1, 2, 0] = True  # drop edge 2 -> 0 from frame 1 to frame 2
    m = make(temp=0.5, dropout=0.5).train()
    P, Pb = m.transitions(q, (fwd, None))
    assert P[0, 1, 2, 0] == 0 and Pb[0, 1, 0, 2] == 0
    assert (P > 0).sum() == (Pb > 0).sum() == B * (T - 1) * N * N - 1
    m.shared_edge_mask = False  # documented switch: independent masks
    P, Pb = m.transitions(q, (fwd, None))
    assert P[0, 1, 2, 0] == 0 and Pb[0, 1, 0, 2] > 0


def test_edge_dropout_effective_rates():
    p, N = 0.5, 40
    m = make(temp=1.0, dropout=p).train()
    torch.manual_seed(0)
    P, Pb = m.transitions(rand_q(4, 16, 5, N))  # 4*4*40*40 = 25600 entries each
    assert abs((P == 0).float().mean().item() - p) < 0.02
    assert abs((Pb == 0).float().mean().item() - (1 - (1 - p) ** 2)) < 0.02


# ---------------------------------------------------------------- encoder and state dict
def test_state_dict_keys_strides_padding():
    train = make(head_depth=0)
    sd = train.state_dict()
    for k in ('encoder.model.conv1.weight', 'encoder.model.layer3.0.conv1.weight',
              'encoder.model.layer4.1.bn2.running_var', 'selfsim_fc.0.weight', 'selfsim_fc.0.bias'):
        assert k in sd, k
    assert not any('fc.' in k and not k.startswith('selfsim_fc') for k in sd)
    assert not any('avgpool' in k for k in sd)
    assert sd['selfsim_fc.0.weight'].shape == (128, 512) and train.enc_hid_dim == 512 and train.map_scale == 8
    enc = train.encoder.model
    for name in ('layer3', 'layer4'):
        convs = [c for c in getattr(enc, name).modules() if isinstance(c, torch.nn.Conv2d)]
        assert len(convs) == 5 and all(c.stride == (1, 1) and c.dilation == (1, 1) for c in convs)
    assert enc.layer2[0].conv1.stride == (2, 2)
    padded = [c for c in enc.modules() if isinstance(c, torch.nn.Conv2d) and sum(c.padding) > 0]
    assert padded and all(c.padding_mode == 'reflect' for c in padded)
    assert enc.layer2[0].downsample[0].padding_mode == 'zeros'  # 1x1, unpadded
    zp = make(model_type='scratch_zeropad').encoder.model
    assert all(c.padding_mode == 'zeros' for c in zp.modules() if isinstance(c, torch.nn.Conv2d))

    test = make(temperature=0.05, head_depth=-1, remove_layers=['layer4'])
    sd = test.state_dict()
    assert 'encoder.model.layer3.1.conv2.weight' in sd and not any('layer4' in k for k in sd)
    assert not any(k.startswith('selfsim_fc') for k in sd) and test.enc_hid_dim == 256
    assert test.temperature == 0.05
    deep = make(head_depth=2)
    assert [k for k in deep.state_dict() if k.startswith('selfsim_fc')] == [
        f'selfsim_fc.{i}.{w}' for i in (0, 2, 4) for w in ('weight', 'bias')]
    assert deep.selfsim_fc[4].out_features == 128 and deep.selfsim_fc[0].out_features == 512
    with pytest.raises(CRWError, match='model-type'):
        make(model_type='resnet50')


def test_encoder_output_stride_8_and_reflect_matters():
    m = make(head_depth=-1, remove_layers=['layer4']).eval()
    x = torch.randn(1, 3, 2, 36, 52)
    with torch.no_grad():
        out = m.encoder(x)
        assert out.shape == (1, 256, 2, math.ceil(36 / 8), math.ceil(52 / 8))
        # frames are independent and folded into the batch
        assert torch.allclose(out[:, :, 1], m.encoder.model(x[:, :, 1]), atol=1e-3, rtol=1e-3)
        # the padding mode is really used: switching it to zeros changes the output
        for c in m.encoder.model.modules():
            if isinstance(c, torch.nn.Conv2d):
                c.padding_mode = 'zeros'
        assert not torch.allclose(out, m.encoder(x), atol=1e-3)


def test_forward_grid_and_dense():
    m = make(temp=0.05, dropout=0.1).train()
    x = torch.randn(2, 3, 2 * 3, 64, 64)
    q, loss, d = m(x)
    assert q.shape == (2, 128, 3, 2)
    assert torch.allclose(q.norm(dim=1), torch.ones(2, 3, 2), atol=1e-5)
    assert torch.isfinite(loss) and loss.dim() == 0
    assert set(d) == {'64 xent cyc r1', '64 acc cyc r1'}
    # q of patch (b, t, n) is the embedding of that patch alone (node order and folding are right)
    m.eval()
    with torch.no_grad():
        q, _, _ = m(x)
        patch = x[1, 2, 3:6][None, :, None]  # batch 1, frame 2, node 1
        ref = F.normalize(m.selfsim_fc(m.encoder(patch).mean((-2, -1)).flatten(1)), dim=1)
        assert torch.allclose(q[1, :, 2, 1], ref[0], atol=1e-5)

    m.train()
    x = torch.randn(1, 3, 3, 64, 64)
    q, loss, d = m(x)
    assert q.shape == (1, 128, 3, 64) and set(d) == {'64 xent cyc r1', '64 acc cyc r1'}
    loss.backward()
    g = m.encoder.model.conv1.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert m.selfsim_fc[0].weight.grad.abs().sum() > 0
    # dense node n = feature cell (n // 8, n % 8)
    m.eval()
    with torch.no_grad():
        q, _, _ = m(x)
        maps = m.encoder(x.transpose(1, 2))  # [1, 512, 3, 8, 8]
        ref = F.normalize(m.selfsim_fc(maps[0, :, 1, 2, 5]), dim=0)
        assert torch.allclose(q[0, :, 1, 2 * 8 + 5], ref, atol=1e-5)
        q2, qmap = m(x, just_feats=True)
        assert qmap.shape == (1, 128, 3, 8, 8) and torch.allclose(qmap[0, :, 1, 2, 5], ref, atol=1e-5)


def test_channels_last_and_bf16_autocast():
    m = make(temp=0.1, remove_layers=['layer4']).eval()
    x = torch.randn(1, 3, 3 * 3, 32, 32)
    with torch.no_grad():
        q, loss, _ = m(x)
        m.to(memory_format=torch.channels_last)
        assert m.encoder.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        q2, loss2, _ = m(x)
        assert torch.allclose(q, q2, atol=1e-4) and torch.allclose(loss, loss2, atol=1e-4)
        assert torch.allclose(m.encoder(x[:, :, :3].transpose(1, 2)),
                              m.encoder(x[:, :, :3].transpose(1, 2).contiguous()), atol=1e-5)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            q3, loss3, d3 = m(x)
    assert loss3.dtype == torch.float32 and torch.isfinite(loss3)
    assert abs(loss3.item() - loss.item()) < 0.05


def test_real_argument_namespaces(tmp_path):
    from crw.utils.arguments import test_args, train_args
    a = train_args(['--data-path', str(tmp_path), '--temp', '0.05', '--dropout', '0.1', '--flip',
                    '--zero-diagonal', '--featdrop', '0.2', '--head-depth', '1'])
    m = CRW(a)
    assert (m.temperature, m.edgedrop_rate, m.featdrop_rate, m.flip, m.zero_diagonal) == (0.05, 0.1, 0.2, True, True)
    assert 'selfsim_fc.2.weight' in m.state_dict() and 'encoder.model.layer4.0.conv1.weight' in m.state_dict()
    fl = tmp_path / 'list.txt'
    fl.write_text('')
    t = test_args(['--filelist', str(fl), '--temperature', '0.05'])
    m = CRW(t)
    assert m.temperature == 0.05 and m.enc_hid_dim == 256 and len(m.selfsim_fc) == 0


# ---------------------------------------------------------------- checkpoint loading
def test_clean_state_dict():
    v = torch.zeros(1)
    sd = {'module.encoder.model.conv1.weight': v, '_orig_mod.selfsim_fc.0.bias': v,
          'module._orig_mod.encoder.model.layer1.0.conv1.1.weight': v, 'encoder.model.layer2.1.conv2.1.weight': v,
          'encoder.model.layer2.0.downsample.1.weight': v}
    assert sorted(clean_state_dict(sd)) == sorted([
        'encoder.model.conv1.weight', 'selfsim_fc.0.bias', 'encoder.model.layer1.0.conv1.weight',
        'encoder.model.layer2.1.conv2.weight', 'encoder.model.layer2.0.downsample.1.weight'])


def test_partial_load_and_roundtrip(tmp_path, capsys):
    src = make(seed=1, temp=0.1)
    dst = make(seed=2, temperature=0.1, head_depth=-1, remove_layers=['layer4'])
    sd = {'module.' + k: v for k, v in src.state_dict().items()}
    sd['encoder.model.bn1.weight'] = torch.zeros(7)  # wrong shape: skipped, not an error
    loaded, missing, unexpected = partial_load(dst, sd, skip_keys=('selfsim_fc',))
    assert 'partial_load' in capsys.readouterr().out
    assert 'encoder.model.layer3.0.conv1.weight' in loaded and 'encoder.model.bn1.weight' in missing
    assert 'selfsim_fc.0.weight' in unexpected and 'encoder.model.layer4.0.conv1.weight' in unexpected
    assert torch.equal(dst.state_dict()['encoder.model.layer3.1.conv2.weight'],
                       src.state_dict()['encoder.model.layer3.1.conv2.weight'])
    assert not torch.equal(dst.state_dict()['encoder.model.bn1.weight'], torch.zeros(7)[:1].expand(64))

    # save from one CRW, load into a fresh one: identical outputs
    path = tmp_path / 'ck.pth'
    torch.save({'model': src.state_dict(), 'args': argparse.Namespace(temp=0.1), 'epoch': 3}, path)  # release style
    ck = load_checkpoint(str(path))
    fresh = make(seed=3, temp=0.1)
    loaded, missing, unexpected = partial_load(fresh, ck['model'])
    assert not missing and not unexpected and ck['epoch'] == 3
    x = torch.randn(1, 3, 2 * 3, 32, 32)
    src.eval(), fresh.eval()
    with torch.no_grad():
        (q1, l1, _), (q2, l2, _) = src(x), fresh(x)
    assert torch.equal(q1, q2) and torch.equal(l1, l2)
    raw = tmp_path / 'raw.pth'
    torch.save(src.state_dict(), raw)
    assert set(load_checkpoint(str(raw))) == {'model'}


def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(CRWError, match='nope.pth'):
        load_checkpoint(str(tmp_path / 'nope.pth'))
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(CRWError, match='bad.pth'):
        load_checkpoint(str(bad))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(CRWError) as e:
        find_weights('imagenet18')
    msg = str(e.value)
    assert os.path.join(str(tmp_path / 'hub'), 'checkpoints', IMAGENET18_FILE) in msg
    assert '--encoder-weights' in msg and '\n' not in msg
    with pytest.raises(CRWError, match='missing.pth'):
        make(model_type='imagenet18', imagenet_weights=str(tmp_path / 'missing.pth'))


def test_imagenet18_from_local_file(tmp_path, monkeypatch):
    import torchvision
    torch.manual_seed(7)
    ref = torchvision.models.resnet18(weights=None)
    os.makedirs(tmp_path / 'hub' / 'checkpoints')
    torch.save(ref.state_dict(), tmp_path / 'hub' / 'checkpoints' / IMAGENET18_FILE)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    m = make(model_type='imagenet18', seed=0)
    enc = m.encoder.model
    assert torch.equal(enc.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert torch.equal(enc.bn1.running_var, ref.bn1.running_var)  # building the model left BN stats alone
    assert all(c.padding_mode == 'zeros' for c in enc.modules() if isinstance(c, torch.nn.Conv2d))
    assert enc.layer3[0].downsample[0].stride == (1, 1)


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
