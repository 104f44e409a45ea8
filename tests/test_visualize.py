"""--visualize pictures (vis/draw.py, vis/sinks.py): known answers for the PCA and flow views, CRW.walk_details, the
PNG files, and a real visdom server receiving train.py's and test.py's pictures."""
import base64
import io
import json
import os
import sys
import warnings
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from PIL import Image

import train
from conftest import load_script, small_train_args
from crw.data.synthetic import make_sequence, smooth_texture, write_davis_layout, write_frame_folder
from crw.data.training.gpu_augment import BatchAugment
from crw.model import CRW
from crw.vis.draw import DISPLAY, PCAColours, batch_views, draw_pca, flow_field, mutual_matches, node_layout
from crw.vis.sinks import TEST_ENVS, WINDOWS, connect_visdom, prune_pngs
from visdom_server import free_port, local_visdom_server

VIEWS = ('pca', 'flow', 'matches', 'neighbours', 'loss')


def embed(frames, seed=0):
    """frames [T, H, W, 3] uint8 -> (model, q [1, C, T, N]) from a random-init encoder without layer4, dense."""
    torch.manual_seed(seed)
    model = CRW(NS(remove_layers=['layer4'])).eval()
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None]
    video = BatchAugment(frame_aug='', frame_transforms='crop', img_size=frames.shape[1])(clip, 0)
    with torch.no_grad():
        q, _, _ = model(video)
    return model, q


# ---------------------------------------------------------------------------------------- known answers
def test_pca_of_two_textures_shows_two_colours():
    H, W = 64, 128
    yy, xx = np.mgrid[0:H, 0:W]
    a, b = np.array([220, 180, 40]), np.array([30, 60, 200])
    vertical = np.where(((xx // 4) % 2)[..., None] == 1, a, b)      # left half: vertical stripes
    horizontal = np.where(((yy // 4) % 2)[..., None] == 1, a, b)    # right half: horizontal stripes, same colours
    frame = np.where((xx < W // 2)[..., None], vertical, horizontal).astype(np.uint8)
    model, q = embed(np.stack([frame] * 3))
    nodes = q[0].permute(1, 2, 0).numpy()                           # [T, N, C]
    shape, centres = node_layout(H, W, nodes.shape[1], stride=model.map_scale)
    assert shape == (8, 16)
    pca = PCAColours(np.concatenate([nodes[0], nodes[1]]))
    img = draw_pca([frame, frame], np.stack([pca(nodes[0]), pca(nodes[1])]), shape)
    # the bottom-left panel is frame 0's PCA picture, enlarged like the frame above it
    s = DISPLAY / W
    panel = img[round(H * s) + 4:, :round(W * s)]
    xy = np.round(centres * s).astype(int)
    colours = panel[xy[:, 1], xy[:, 0]].reshape(*shape, 3).astype(float)
    left, right = colours[:, :6].reshape(-1, 3), colours[:, 10:].reshape(-1, 3)  # 2 cells off the seam
    cl, cr = left.mean(0), right.mean(0)
    assert np.linalg.norm(cl - cr) > 150                             # two clearly different colours ...
    for own, other, cells in ((cl, cr, left), (cr, cl, right)):      # ... and every cell has its half's
        assert (np.linalg.norm(cells - own, axis=1) < np.linalg.norm(cells - other, axis=1)).all()


def test_flow_and_matches_follow_a_known_shift():
    tex = smooth_texture(np.random.default_rng(1), 64, 160, cell=4)
    f0, f1 = tex[:, 16:144], tex[:, :128]                           # frame 1 = frame 0 moved 16 px right
    model, q = embed(np.stack([f0, f1, f1]))
    walk = model.walk_details(q)
    shape, centres = node_layout(64, 128, q.shape[-1], stride=model.map_scale)
    disp, prob = flow_field(walk['P'][0, 0].numpy(), centres)
    assert np.median(disp, axis=0).tolist() == [16.0, 0.0]
    assert (disp == [16, 0]).all(1).mean() > 0.7                   # the border cells may differ
    assert prob.shape == (shape[0] * shape[1],) and (prob > 0).all() and (prob <= 1).all()
    i, j, _ = mutual_matches(walk['A'][0, 0].numpy())
    assert len(i) > 50 and (j - i == 2).mean() > 0.9                # two cells to the right, same row


def test_walk_details_draw_nothing_and_match_the_loss():
    model = CRW(NS(dropout=0.3, temp=0.1)).train()
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 16, 5, 9, generator=g), dim=1)
    before = torch.get_rng_state()
    walk = model.walk_details(q)
    assert torch.equal(torch.get_rng_state(), before)               # no edge-dropout masks drawn
    assert walk['A'].shape == walk['P'].shape == (2, 4, 9, 9)
    assert walk['W'].shape == (3, 2, 9, 9) and walk['xent'].shape == (3, 2, 9)
    assert walk['names'] == ['r1', 'r2', 'r3']
    assert torch.allclose(walk['W'].sum(-1), torch.ones(3, 2, 9), atol=1e-5)
    assert torch.allclose(walk['xent'], -torch.log(walk['W'].diagonal(dim1=-2, dim2=-1) + 1e-20), atol=1e-5)
    _, diags = model.eval().walk_loss(q)                            # eval: no dropout, the same walks
    for k, name in enumerate(walk['names']):
        assert torch.allclose(walk['xent'][k].mean(), diags[f'xent cyc {name}'], atol=1e-6)


@pytest.mark.parametrize('grid', [False, True])
def test_batch_views_of_both_input_kinds(grid):
    seq = make_sequence(num_frames=4, height=64, width=64, num_objects=2, seed=3)
    clips = torch.from_numpy(seq['frames']).permute(0, 3, 1, 2)[None]
    aug = BatchAugment(frame_aug='grid' if grid else '', frame_transforms='crop', patch_size=[32, 32, 3],
                       img_size=64)
    video = aug(clips, 0)
    torch.manual_seed(0)
    model = CRW(NS()).train()
    q, _, _ = model(video)
    views = batch_views(model, clips, video, q, seed=1)
    assert tuple(views) == VIEWS
    for img in views.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) > 32
        assert img.std() > 5                                        # something is drawn


def test_prune_keeps_the_latest_steps(tmp_path):
    for step in range(1, 26):
        for v in VIEWS:
            (tmp_path / f'{step:08d}_{v}.png').write_bytes(b'x')
    (tmp_path / 'notes.txt').write_text('kept')
    prune_pngs(str(tmp_path), 20)
    left = sorted(os.listdir(tmp_path))
    assert 'notes.txt' in left and len(left) == 20 * len(VIEWS) + 1
    assert left[0] == f'{6:08d}_flow.png'


# ------------------------------------------------------------------------------------- a real visdom server
@pytest.fixture(scope='module')
def visdom_port(tmp_path_factory):
    with local_visdom_server(str(tmp_path_factory.mktemp('visdom'))) as port:
        yield port


def windows(port, env):
    """{window name: window record} of a visdom environment, read back from the server."""
    import visdom
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)          # visdom 0.2.4 calls logger.warn
        client = visdom.Visdom(server='http://localhost', port=port, env=env, raise_exceptions=True,
                               use_incoming_socket=False)
    return json.loads(client.get_window_data(env=env))


def window_image(record):
    assert record['type'] == 'image'
    src = record['content']['src']
    assert src.startswith('data:image/png;base64,')
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1]))).convert('RGB'))


def test_training_pictures_reach_visdom(train_frame_list, tmp_path, visdom_port, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)                # as if not installed: tested in test_train.py
    out = tmp_path / 'run'
    with pytest.warns(UserWarning, match='wandb unavailable'):
        train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '2', '--visualize',
                              '--vis-every', '1', '--port', str(visdom_port), '--name', 'crwtest'))
    wins = windows(visdom_port, 'crwtest')
    assert set(WINDOWS.values()) <= set(wins)
    for view, win in WINDOWS.items():
        assert wins[win]['title'] == f'{view} (step 2)'            # the latest drawing replaced the first
        png = np.asarray(Image.open(out / 'vis' / f'{2:08d}_{view}.png').convert('RGB'))
        assert np.array_equal(window_image(wins[win]), png)       # the very picture written to vis/
    assert sorted(os.listdir(out / 'vis')) == sorted(f'{s:08d}_{v}.png' for s in (1, 2) for v in VIEWS)


def test_propagation_pictures_reach_visdom(tmp_path, visdom_port):
    seq = make_sequence(num_frames=4, height=40, width=48, num_objects=2, seed=2)
    filelist = write_davis_layout(str(tmp_path / 'davis'), {'clip': seq})
    argv = ['--filelist', filelist, '--save-path', str(tmp_path / 'out'), '--cropSize', '-1', '--workers', '0',
            '--device', 'cpu', '--videoLen', '2', '--radius', '4', '--topk', '3']
    test_py = load_script('test.py')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert test_py.main(argv + ['--visdom', '--pca-vis', '--port', str(visdom_port)]) == 0
    assert not [w for w in caught if 'visdom' in str(w.message)]
    blend = windows(visdom_port, TEST_ENVS['blend'])['blend_0']
    assert blend['title'] == '0 clip: frame 3'                      # every frame was sent, in order
    img = window_image(blend)
    assert img.shape == (40, 48, 3)
    # the last frame's blend: as written (JPEG), up to compression
    jpg = np.asarray(Image.open(tmp_path / 'out' / '0_3_blend.jpg').convert('RGB')).astype(int)
    assert np.abs(img.astype(int) - jpg).mean() < 6
    pca = windows(visdom_port, TEST_ENVS['pca'])['pca_0']
    assert pca['title'] == '0 clip: PCA of frame 3 features' and window_image(pca).shape == (40, 48, 3)

    # no server: one warning, the results are still written
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert test_py.main(argv + ['--visdom', '--port', str(free_port()), '--save-path',
                                    str(tmp_path / 'out2')]) == 0
    assert len([w for w in caught if '--visdom' in str(w.message)]) == 1
    assert (tmp_path / 'out2' / '0_3_blend.jpg').exists()


def test_own_video_pictures_reach_visdom(tmp_path, visdom_port):
    # --video runs the same loop, so the viewer is one more sink there too
    seq = make_sequence(num_frames=4, height=40, width=48, num_objects=2, seed=3)
    frames = tmp_path / 'mine'
    write_frame_folder(str(frames), seq['frames'], ext='png')
    Image.fromarray(seq['masks'][0], mode='L').save(tmp_path / 'first.png')
    argv = ['--video', str(frames), '--mask', str(tmp_path / 'first.png'), '--save-path', str(tmp_path / 'out'),
            '--cropSize', '-1', '--workers', '0', '--device', 'cpu', '--videoLen', '2', '--radius', '4', '--topk', '3',
            '--visdom', '--port', str(visdom_port)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert load_script('test.py').main(argv) == 0
    blend = windows(visdom_port, TEST_ENVS['blend'])['blend_0']
    assert blend['title'] == '0 mine: frame 3' and window_image(blend).shape == (40, 48, 3)


def test_visdom_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'visdom', None)               # as if it could not be built at set-up
    with pytest.warns(UserWarning, match=r'--visualize: visdom is not installed.*bash scripts/setup\.sh'):
        assert connect_visdom('localhost', free_port(), 'main', '--visualize') is None
