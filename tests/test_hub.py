"""torch.hub entry points and the collision-free ``crw`` package, loaded the way a user's own project would."""
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import torch

from crw.data.synthetic import make_sequence
from crw.model import CRW
from crw.propagation import Protocol, encode_frames, load_encoder, propagate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same(a, b):
    got, want = a.state_dict(), b.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_hub_crw_is_the_bundled_encoder():
    encoder = torch.hub.load(ROOT, 'crw', source='local', pretrained=True)
    expected = load_encoder(os.path.join(ROOT, 'pretrained.pth'))
    assert not encoder.training
    same(encoder, expected)
    with torch.no_grad():
        feats = encode_frames(encoder, torch.randn(1, 3, 64, 96))
    assert feats.shape == (1, 256, 8, 12)


def test_hub_crw_takes_a_checkpoint_path(tmp_path):
    torch.manual_seed(0)
    model = CRW(SimpleNamespace(model_type='scratch', remove_layers=['layer4'], head_depth=-1, imagenet_weights=''))
    path = tmp_path / 'mine.pth'
    torch.save({'model': model.state_dict()}, path)
    loaded = torch.hub.load(ROOT, 'crw', source='local', checkpoint=str(path))
    same(loaded, load_encoder(str(path)))
    bundled = torch.hub.load(ROOT, 'crw', source='local').state_dict()
    assert any(not torch.equal(v, bundled[k]) for k, v in loaded.state_dict().items())


def test_hub_propagator_matches_the_api():
    seq = make_sequence(num_frames=5, height=64, width=96, seed=3)
    vp = torch.hub.load(ROOT, 'crw_propagator', source='local', video_len=3)
    via_hub = [vp.step(frame, seq['masks'][0] if t == 0 else None) for t, frame in enumerate(seq['frames'])]
    encoder = load_encoder(os.path.join(ROOT, 'pretrained.pth'))
    protocol = Protocol(topk=10, video_len=3, radius=12, temperature=0.05)
    via_api = [ids for _, ids in propagate(encoder, seq['frames'], seq['masks'][0], protocol)]
    assert len(via_hub) == len(via_api) == 5
    for a, b in zip(via_hub, via_api):
        np.testing.assert_array_equal(a, b)
    # and it tracks: the last frame's objects overlap the truth
    inter = ((via_hub[-1] > 0) & (seq['masks'][-1] > 0)).sum()
    assert inter > 0.5 * (seq['masks'][-1] > 0).sum()


def test_a_project_with_its_own_utils_data_and_model_imports_crw(tmp_path):
    """A user's project has utils/, data/ and model.py of its own, imported first; the repository on sys.path
    after them, ``crw.*`` and torch.hub both still work and the user's modules stay theirs."""
    for pkg in ('utils', 'data', 'propagation'):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / '__init__.py').write_text(f'MINE = "{pkg}"\n')
    (tmp_path / 'model.py').write_text('MINE = "model"\n')
    (tmp_path / 'main.py').write_text(textwrap.dedent(f'''
        import sys
        import utils, data, model, propagation
        sys.path.append({ROOT!r})
        import torch
        import crw.propagation
        from crw.utils.errors import CRWError
        encoder = torch.hub.load({ROOT!r}, 'crw', source='local')
        assert (utils.MINE, data.MINE, model.MINE, propagation.MINE) == ('utils', 'data', 'model', 'propagation')
        assert crw.propagation.load_encoder is not None and encoder is not None
        print('ok')
    '''))
    out = subprocess.run([sys.executable, 'main.py'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith('ok')
