"""Pictures of what the walk learned (train.py --visualize, test.py --visdom/--pca-vis), and where they go.

Views of one training clip (``training_views``; numpy in, RGB uint8 images [H, W, 3] out):

* ``pca``:        the node embeddings of frames t and t+1 projected on their 3 principal components (one fit
  for both frames, scikit-learn) as RGB, under the frames (grid input: under the patch mosaics);
* ``flow``:       on frame t, an arrow from every node to its most probable successor in frame t+1 (the arg-max
  of the transition row), coloured by that probability; frame t+1 beside it;
* ``matches``:    frames t and t+1 side by side, a line between every pair of mutual nearest neighbours;
* ``neighbours``: a few query nodes of frame t and their most similar nodes anywhere in the clip, each with its
  affinity (cosine) and frame;
* ``loss``:       one tile per start node, laid out like the nodes: where the clip's longest palindrome walk
  from that node ends (normalised to its maximum; the start cell at least grey), tinted by the node's cycle
  loss (colour map 'cool': cyan = lowest loss of the clip, magenta = highest).

Sinks: ``Visualizer`` (training) sends them to visdom when a server answers, to wandb when it is installed
(offline unless configured) and always writes PNGs under <output-dir>/vis/ (the last ``VIS_KEEP`` drawings);
the drawing and sending run on a background thread. ``PropagationViewer`` (test.py) shows each propagated
frame's blend and its features' PCA in visdom. visdom and wandb are optional: missing, or no server, is one
warning.
"""
import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from urllib.parse import urlparse

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from sklearn.decomposition import PCA
from threadpoolctl import ThreadpoolController

from data.gpu_augment import MEAN, STD, grid_positions
from utils.background import AsyncWriter
from utils.misc import atomic_write

VIS_KEEP = 20        # drawings (steps) whose PNGs stay in <output-dir>/vis/
DISPLAY = 320        # frames are enlarged to about this many pixels on their long side
NUM_QUERIES = 4      # query nodes of the neighbours view
NUM_NEIGHBOURS = 8   # neighbours shown per query
# Training views -> visdom windows: the release's names where it had one ('nn_patches' is new: the release
# spread the neighbours over one window per query and neighbour).
WINDOWS = {'pca': 'pcafeats', 'flow': 'flow_quiver', 'matches': 'kpcorr', 'neighbours': 'nn_patches',
           'loss': 'lossvis'}
TEST_ENVS = {'blend': 'main_davis_viz1', 'pca': 'main_pca'}  # test.py's visdom environments (release names)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_threadpools = None


# ------------------------------------------------------------------------------------------ image helpers
def _colours(name, values):
    """values [N] in [0, 1] -> [N, 3] uint8 RGB from a matplotlib colour map."""
    return (colormaps[name](np.clip(values, 0, 1))[:, :3] * 255).round().astype(np.uint8)


def _normalise(x):
    """x scaled to [0, 1] by its own min and max (all zeros when constant)."""
    x = np.asarray(x, dtype=np.float32)
    span = float(x.max() - x.min()) if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _scale_for(shape):
    h, w = shape[:2]
    return max(1.0, DISPLAY / max(h, w))


def _resize(img, scale):
    if scale == 1:
        return np.ascontiguousarray(img)
    h, w = img.shape[:2]
    return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)


def _stack(images, axis, gap=4):
    """Images side by side (axis=1) or one under the other (axis=0), white gaps, padded to a common size."""
    size = max(im.shape[1 - axis] for im in images)
    parts = []
    for i, im in enumerate(images):
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[1 - axis] = (0, size - im.shape[1 - axis])
        parts.append(np.pad(im, pad, constant_values=255))
        if i < len(images) - 1:
            gshape = [size, size, 3]
            gshape[axis] = gap
            parts.append(np.full(gshape, 255, np.uint8))
    return np.concatenate(parts, axis=axis)


def _titled(img, *lines):
    """img under a dark band with one text line per argument."""
    w = max([img.shape[1]] + [8 + cv2.getTextSize(s, _FONT, 0.42, 1)[0][0] for s in lines])
    band = np.full((8 + 16 * len(lines), w, 3), 32, np.uint8)
    for i, s in enumerate(lines):
        cv2.putText(band, s, (4, 17 + 16 * i), _FONT, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    img = np.pad(img, [(0, 0), (0, w - img.shape[1]), (0, 0)], constant_values=255)
    return np.concatenate([band, img], 0)


def mosaic(tiles, rows, cols, gap=1):
    """tiles [K, h, w, 3] uint8 -> one image of rows x cols tiles (row-major), ``gap`` white pixels between."""
    k, h, w = tiles.shape[:3]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(min(k, rows * cols)):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[i]
    return out


def _pt(xy):
    return int(round(float(xy[0]))), int(round(float(xy[1])))


# ---------------------------------------------------------------------------------------------- geometry
def node_layout(height, width, num_nodes, patch=None, stride=8):
    """Where the N nodes of a height x width frame sit: (grid shape (gh, gw), centres [N, 2] float (x, y) px).

    Grid input (``patch`` = P): the row-major P x P windows at stride P/2 that data.gpu_augment cuts. Dense
    input: every cell of the feature map of output stride ``stride``, row-major.
    """
    if patch:
        pos = np.array(grid_positions(height, width, patch), dtype=np.float32)  # (y, x) corners
        shape = (len(np.unique(pos[:, 0])), len(np.unique(pos[:, 1])))
        centres = pos[:, ::-1] + patch / 2
    else:
        shape = (-(-height // stride), -(-width // stride))
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        centres = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32) * stride + stride / 2
        centres = np.minimum(centres, [width - 1, height - 1])
    if shape[0] * shape[1] != num_nodes:
        raise ValueError(f'{num_nodes} nodes do not fit a {height}x{width} frame '
                         f"({'patch ' + str(patch) if patch else 'stride ' + str(stride)}: {shape[0]}x{shape[1]})")
    return shape, centres


def node_crops(frames, centres, size):
    """frames [T, H, W, 3] uint8, centres [N, 2] (x, y) -> [T, N, size, size, 3]: the frame around each node."""
    r = size // 2
    padded = np.pad(frames, [(0, 0), (r, r), (r, r), (0, 0)], mode='edge')
    out = np.empty((frames.shape[0], len(centres), size, size, 3), np.uint8)
    for n, (x, y) in enumerate(np.round(centres).astype(int)):
        out[:, n] = padded[:, y:y + size, x:x + size]
    return out


def clip_frames(clip):
    """A clip [T, 3, H, W] (tensor, any device; uint8, or float in [0, 1]) -> uint8 numpy [T, H, W, 3]."""
    clip = clip.detach()
    if clip.is_floating_point():
        clip = (clip.clamp(0, 1) * 255).round()
    return clip.permute(0, 2, 3, 1).to('cpu', torch.uint8).numpy()


def clip_patches(video, num_nodes):
    """One augmented grid clip [T, N*3, P, P] (normalised as data.gpu_augment does) -> uint8 [T, N, P, P, 3]."""
    T, _, P, _ = video.shape
    x = video.detach().float().cpu().view(T, num_nodes, 3, P, P)
    x = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 1, 3, 4, 2).numpy()


# ---------------------------------------------------------------------------------------------------- PCA
def _one_blas_thread():
    """Context: BLAS on one thread (the thread-pool scan runs once, not at every call)."""
    global _threadpools
    if _threadpools is None:
        _threadpools = ThreadpoolController()
    return _threadpools.limit(limits=1, user_api='blas')


class PCAColours:
    """RGB colours from the first 3 principal components of features. Not whitened, and one scale for the
    three (their joint range over the fitted features, to [0, 1]; later features are clipped to it), so that
    colour differences follow the variance (the release whitened, which blows minor components up to full
    colour).

    ``PCAColours(feats [M, C])(feats2 [M2, C]) -> [M2, 3] float in [0, 1]``. Exact (eigenvectors of the
    C x C covariance). BLAS runs on one thread: right after a training step, PyTorch's OpenMP workers still
    spin, and a multi-threaded OpenBLAS beside them made a 100 x 128 fit take a second instead of 10 ms.
    """

    def __init__(self, feats):
        feats = np.asarray(feats, dtype=np.float64)
        k = min(3, feats.shape[0] - 1, feats.shape[1])
        self.pca = None
        if k > 0:
            with _one_blas_thread():
                self.pca = PCA(n_components=k, svd_solver='covariance_eigh').fit(feats)
        z = self._project(feats)
        self.lo, self.hi = z.min(), z.max()

    def _project(self, feats):
        z = np.zeros((len(feats), 3))
        if self.pca is not None:
            with _one_blas_thread():
                z[:, :self.pca.n_components_] = self.pca.transform(np.asarray(feats, dtype=np.float64))
        return z

    def __call__(self, feats):
        span = self.hi - self.lo if self.hi > self.lo else 1.0
        return np.clip((self._project(feats) - self.lo) / span, 0, 1)


def draw_pca(images, colours, grid_shape, patch_grid=False):
    """images: two frames [H, W, 3] (dense) or two patch sets [N, p, p, 3] (grid); colours [2, N, 3] in [0, 1].

    -> the two frames (or patch mosaics) on top, the nodes painted in their PCA colours below, same layout.
    """
    gh, gw = grid_shape
    top, bottom = [], []
    for img, col in zip(images, colours):
        rgb = (col * 255).round().astype(np.uint8)
        if patch_grid:
            scale = _scale_for((gh * img.shape[1], gw * img.shape[2]))
            p = round(img.shape[1] * scale)
            tiles = np.stack([_resize(t, p / t.shape[0]) for t in img])
            top.append(mosaic(tiles, gh, gw))
            bottom.append(mosaic(np.broadcast_to(rgb[:, None, None], tiles.shape).copy(), gh, gw))
        else:
            scale = _scale_for(img.shape)
            frame = _resize(img, scale)
            top.append(frame)
            bottom.append(cv2.resize(rgb.reshape(gh, gw, 3), (frame.shape[1], frame.shape[0]),
                                     interpolation=cv2.INTER_NEAREST))
    return _stack([_stack(top, 1), _stack(bottom, 1)], 0)


# --------------------------------------------------------------------------------------- correspondences
def flow_field(P, centres):
    """P [N, M] transition (or affinity) from frame t to t+1, centres [N, 2] (x, y) ->
    (displacement [N, 2] (dx, dy) px to each node's arg-max successor, that successor's probability [N])."""
    P = np.asarray(P)
    nn = P.argmax(1)
    return centres[nn] - centres, P[np.arange(len(P)), nn]


def draw_flow(frame1, frame2, P, centres):
    """Arrows on frame1 from every node to its arg-max successor in frame2 (colour map 'jet' of its
    probability: blue uncertain, red certain; a dot where it stays), frame2 beside it."""
    disp, conf = flow_field(P, centres)
    s = _scale_for(frame1.shape)
    canvas = (_resize(frame1, s).astype(np.float32) * 0.6).astype(np.uint8)  # darker: arrows stand out
    for c0, d, col in zip(centres * s, disp * s, _colours('jet', conf)):
        col = tuple(int(v) for v in col)
        if np.hypot(*d) < 0.5:
            cv2.circle(canvas, _pt(c0), 2, col, -1, cv2.LINE_AA)
        else:
            cv2.arrowedLine(canvas, _pt(c0), _pt(c0 + d), col, 1, cv2.LINE_AA, tipLength=min(0.3, 6 / np.hypot(*d)))
    return _stack([canvas, _resize(frame2, s)], 1)


def mutual_matches(A):
    """A [N, M] affinities -> (i [K], j [K], A[i, j] [K]): pairs that are each other's nearest neighbour."""
    A = np.asarray(A)
    fwd, bwd = A.argmax(1), A.argmax(0)
    i = np.nonzero(bwd[fwd] == np.arange(len(A)))[0]
    return i, fwd[i], A[i, fwd[i]]


def draw_matches(frame1, frame2, A, centres):
    """frame1 and frame2 side by side, a line between mutual nearest neighbours (colour map 'viridis' of the
    affinity over the drawn pairs: yellow = most similar; drawn last)."""
    i, j, a = mutual_matches(A)
    s = _scale_for(frame1.shape)
    left, right = _resize(frame1, s), _resize(frame2, s)
    canvas = _stack([left, right], 1)
    offset = np.array([left.shape[1] + 4, 0])
    order = np.argsort(a)
    for ii, jj, col in zip(i[order], j[order], _colours('viridis', _normalise(a[order]))):
        col = tuple(int(v) for v in col)
        p0, p1 = _pt(centres[ii] * s), _pt(centres[jj] * s + offset)
        cv2.line(canvas, p0, p1, col, 1, cv2.LINE_AA)
        cv2.circle(canvas, p0, 2, col, -1, cv2.LINE_AA)
        cv2.circle(canvas, p1, 2, col, -1, cv2.LINE_AA)
    return canvas


def draw_neighbours(patches, feats, queries, frame_of, k=NUM_NEIGHBOURS, tile=56):
    """patches [M, p, p, 3] uint8 and unit features [M, C] of every node of a clip; queries: node indices.

    One row per query: its patch (red frame), then its k most similar other nodes, each captioned with the
    affinity and the frame (``frame_of`` [M]) it comes from.
    """
    feats = np.asarray(feats, dtype=np.float32)
    A = feats[queries] @ feats.T
    A[np.arange(len(queries)), queries] = -np.inf
    nbrs = np.argsort(-A, axis=1)[:, :k]
    rows = []
    for r, q in enumerate(queries):
        cells = []
        for c, m in enumerate([q, *nbrs[r]]):
            t = np.ascontiguousarray(cv2.resize(patches[m], (tile, tile), interpolation=cv2.INTER_LINEAR))
            if c == 0:
                cv2.rectangle(t, (0, 0), (tile - 1, tile - 1), (255, 0, 0), 3)
            cap = np.full((14, tile, 3), 255, np.uint8)
            text = f'query t{frame_of[m]}' if c == 0 else f'{A[r, m]:.2f} t{frame_of[m]}'
            cv2.putText(cap, text, (1, 11), _FONT, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
            cells.append(np.concatenate([t, cap], 0))
        rows.append(_stack(cells, 1, gap=2))
    return _stack(rows, 0, gap=4)


LOSS_CMAP = 'cool'  # cyan (lowest loss of the clip) to magenta (highest): both bright on black


def draw_loss_grid(W, xent, grid_shape):
    """W [N, N] walk end probabilities (row n: where the walk from node n ends), xent [N] per-node cycle loss
    -> one tile per start node (laid out like the nodes): its row as a gh x gw map normalised to its maximum,
    tinted by the node's loss (``LOSS_CMAP`` over the clip's loss range); the start cell is grey where the
    walk does not bring much back to it."""
    gh, gw = grid_shape
    N = gh * gw
    maps = np.asarray(W, dtype=np.float32).reshape(N, gh, gw)
    maps = maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)
    tint = _colours(LOSS_CMAP, _normalise(xent)).astype(np.float32)
    tiles = (maps[..., None] * tint[:, None, None, :]).round().astype(np.uint8)
    flat, n = tiles.reshape(N, N, 3), np.arange(N)                    # flat[n, n]: tile n's start cell
    flat[n, n] = np.maximum(flat[n, n], 96)
    cell = max(1, min(8, 48 // max(gh, gw)))
    tiles = np.stack([cv2.resize(t, (gw * cell, gh * cell), interpolation=cv2.INTER_NEAREST) for t in tiles])
    return mosaic(tiles, gh, gw)


# ------------------------------------------------------------------------------------------ training views
def training_views(frames, q, walk, grid_shape, centres, patches=None, t=0, seed=0, stride=8):
    """The five views of one clip, as {name: RGB uint8 image}.

    frames [T, H, W, 3] uint8 (the clip before patch augmentation); q [C, T, N] unit node embeddings; walk:
    ``CRW.walk_details`` of this clip with the batch dimension removed ('A', 'P' [T-1, N, N], 'W' [T-2, N, N],
    'xent' [T-2, N], 'names'); grid_shape, centres: ``node_layout``; patches [T, N, p, p, 3] uint8 for grid
    input (what the encoder saw), None for dense input (the neighbours view then shows 4 x ``stride`` pixel
    crops of the frames around the nodes); t: the frame pair is (t, t+1); seed picks the neighbours' queries.
    """
    C, T, N = q.shape
    q = np.asarray(q, dtype=np.float32)
    t2 = t + 1
    grid = patches is not None
    nodes = q.transpose(1, 2, 0)                                            # [T, N, C]
    views = {}

    pca = PCAColours(np.concatenate([nodes[t], nodes[t2]]))
    cols = np.stack([pca(nodes[t]), pca(nodes[t2])])
    pair = [patches[t], patches[t2]] if grid else [frames[t], frames[t2]]
    views['pca'] = _titled(draw_pca(pair, cols, grid_shape, patch_grid=grid),
                           f'PCA of the node embeddings, frames {t} and {t2} (one fit; 3 components as RGB)')

    P = np.asarray(walk['P'][t])
    views['flow'] = _titled(draw_flow(frames[t], frames[t2], P, centres),
                            f'flow {t} -> {t2}: arrow to each node\'s arg-max transition',
                            'colour = its probability (jet: blue low, red high)')
    A = np.asarray(walk['A'][t])
    n_mutual = len(mutual_matches(A)[0])
    views['matches'] = _titled(draw_matches(frames[t], frames[t2], A, centres),
                               f'mutual nearest neighbours {t} <-> {t2}: {n_mutual} of {N} nodes',
                               'colour = affinity (viridis: yellow highest)')

    crops = patches if grid else node_crops(frames, centres, 4 * stride)
    rng = np.random.default_rng(seed)
    queries = t * N + np.sort(rng.choice(N, size=min(NUM_QUERIES, N), replace=False))
    views['neighbours'] = _titled(
        draw_neighbours(crops.reshape(T * N, *crops.shape[2:]), nodes.reshape(T * N, C), queries,
                        np.repeat(np.arange(T), N)),
        f'nearest nodes in the clip (all {T} frames) of {len(queries)} nodes of frame {t}', 'caption: affinity, frame')

    k = len(walk['names']) - 1                                              # the longest palindrome
    xent = np.asarray(walk['xent'][k])
    views['loss'] = _titled(draw_loss_grid(np.asarray(walk['W'][k]), xent, grid_shape),
                            f"cycle loss per start node, walk {walk['names'][k]} (0..{T - 1}..0, no edge dropout)",
                            f'tile = where the walk ends (grey: its start); tint = loss, cyan {xent.min():.2f} .. '
                            f'magenta {xent.max():.2f}')
    return views


def batch_inputs(model, clips, video, q):
    """What ``training_views`` needs from a training batch's first clip, as numpy arrays (a few small copies
    from the device; the drawing itself can then run on another thread).

    model: the CRW (unwrapped); clips: uint8 [B, T, 3, H, W] as loaded; video: the augmented model input
    [B, T, N*3, P, P] (grid) or [B, T, 3, H, W]; q [B, C, T, N]: the embeddings the step computed.
    """
    q0 = q[:1].detach().float()
    d = model.walk_details(q0)
    walk = {'A': d['A'][0], 'P': d['P'][0], 'W': d['W'][:, 0], 'xent': d['xent'][:, 0]}
    walk = {k: v.cpu().numpy() for k, v in walk.items()}
    walk['names'] = d['names']
    frames = clip_frames(clips[0])
    num_nodes = q.shape[-1]
    grid = video.shape[2] > 3
    shape, centres = node_layout(frames.shape[1], frames.shape[2], num_nodes,
                                 patch=video.shape[-1] if grid else None, stride=model.map_scale)
    return {'frames': frames, 'q': q0[0].cpu().numpy(), 'walk': walk, 'grid_shape': shape, 'centres': centres,
            'patches': clip_patches(video[0], num_nodes) if grid else None, 'stride': model.map_scale}


def batch_views(model, clips, video, q, seed=0):
    """``training_views`` of the first clip of a training batch (arguments: see ``batch_inputs``)."""
    return training_views(**batch_inputs(model, clips, video, q), seed=seed)


# ----------------------------------------------------------------------------------------------- sinks
def connect_visdom(server, port, env, flag):
    """A visdom client for ``server:port`` (environment ``env``), or None after one warning naming ``flag``
    (visdom not installed, or no server answering within 2 s)."""
    url = server if '://' in server else f'http://{server}'
    try:
        import visdom
    except ImportError:
        warnings.warn(f'{flag}: visdom is not installed, so nothing is sent there; install it with '
                      '`bash scripts/setup.sh` (it builds visdom 0.2.4, which needs setuptools<81 to build)',
                      stacklevel=3)
        return None
    try:
        logging.getLogger('visdom').setLevel(logging.ERROR)  # its per-session chatter
        with socket.create_connection((urlparse(url).hostname, port), timeout=2):
            pass
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)  # visdom 0.2.4 calls logger.warn
            return visdom.Visdom(server=url, port=port, env=env, raise_exceptions=True, use_incoming_socket=False)
    except Exception as e:  # noqa: BLE001 - no visdom is a warning, never a crash
        warnings.warn(f'{flag}: visdom unavailable ({type(e).__name__}: {e}); nothing is sent there. Start a '
                      f'server with: python -m visdom.server -port {port}', stacklevel=3)
        return None


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_visdom_server(folder, timeout=60):
    """``with local_visdom_server(folder) as port:`` a visdom server on a free localhost port (tests, benchmarks).

    Started through ``visdom.server.run_server.main`` with -bind_local, which, unlike ``python -m
    visdom.server``, downloads nothing (the API works; a browser page would lack its scripts). Its log and
    saved environments go to ``folder``. Stopped on exit.
    """
    port = free_port()
    log_path = os.path.join(folder, 'server.log')
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([sys.executable, '-c', 'from visdom.server.run_server import main; main()',
                                 '-port', str(port), '-bind_local', '-env_path', os.path.join(folder, '')],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    socket.create_connection(('localhost', port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        with open(log_path) as f:
                            raise RuntimeError(f'the visdom server did not start: {f.read()[-2000:]}') from None
                    time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=30)


class Visualizer:
    """train.py --visualize: scalars to wandb; pictures to PNG files, visdom and wandb.

    ``pictures`` copies what it needs from the step's tensors (tens of milliseconds) and leaves the drawing,
    PNG encoding and sending to a background thread; one drawing is in flight at most, and scalars wait for
    it so that wandb's steps never go back.
    """

    def __init__(self, args):
        self.wandb = self._wandb_module = self.vis = None
        self.png_dir = os.path.join(args.output_dir, 'vis')
        self.env = args.name or os.path.basename(os.path.normpath(args.output_dir)) or 'main'
        try:
            import wandb
            os.environ.setdefault('WANDB_MODE', 'offline')
            self.wandb = wandb.init(project='crw', name=os.path.basename(os.path.normpath(args.output_dir)),
                                    dir=args.output_dir, config=vars(args), resume='allow')
            self._wandb_module = wandb
        except Exception as e:  # noqa: BLE001 - any wandb failure must not stop training
            warnings.warn(f'--visualize: wandb unavailable ({type(e).__name__}: {e}); nothing is logged there')
        self.vis = connect_visdom(args.server, args.port, self.env, '--visualize')
        self.background = AsyncWriter(threads=1, max_pending=1)
        print(f"| --visualize: pictures every {args.vis_every} iterations to {self.png_dir}"
              + (f', visdom {args.server}:{args.port} env {self.env!r}' if self.vis else '')
              + (', wandb' if self.wandb else ''))

    def log(self, scalars, step):
        if self.wandb is not None:
            self.background.wait()
            self.wandb.log(scalars, step=step)

    def pictures(self, model, clips, video, q, step):
        """Draw the views of the batch's first clip and send them (see ``batch_inputs`` for the arguments); a
        failure is a warning, never the end of the run."""
        try:
            inputs = batch_inputs(model, clips, video, q)
        except Exception as e:  # noqa: BLE001 - a picture must not end a training run
            warnings.warn(f'--visualize: drawing failed at step {step} ({type(e).__name__}: {e})')
            return
        self.background.submit(self._draw_and_show, inputs, step)

    def _draw_and_show(self, inputs, step):
        try:
            self.show(training_views(**inputs, seed=step), step)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f'--visualize: drawing failed at step {step} ({type(e).__name__}: {e})')

    def show(self, views, step):
        """views {name: RGB uint8 image} -> PNGs (always), visdom windows and wandb images (when on)."""
        os.makedirs(self.png_dir, exist_ok=True)
        for name, img in views.items():
            with atomic_write(os.path.join(self.png_dir, f'{step:08d}_{name}.png')) as f:
                Image.fromarray(img).save(f, format='PNG', compress_level=1)  # 4x faster than the default 6
        prune_pngs(self.png_dir, VIS_KEEP)
        if self.vis is not None:
            try:
                for name, img in views.items():
                    self.vis.image(img.transpose(2, 0, 1), win=WINDOWS.get(name, name), env=self.env,
                                   opts={'title': f'{name} (step {step})'})
            except Exception as e:  # noqa: BLE001 - the server went away: keep training, stop sending
                warnings.warn(f'--visualize: visdom stopped answering ({type(e).__name__}: {e}); '
                              'pictures go to the PNG files only from now on')
                self.vis = None
        if self.wandb is not None:
            self.wandb.log({f'vis/{name}': self._wandb_module.Image(img) for name, img in views.items()}, step=step)

    def close(self):
        self.background.close()
        if self.wandb is not None:
            self.wandb.finish()


_PNG = re.compile(r'^(\d+)_\w+\.png$')


def prune_pngs(folder, keep):
    """Delete the PNGs of all but the ``keep`` latest steps (files named <step>_<view>.png)."""
    steps = {}
    for name in os.listdir(folder):
        m = _PNG.match(name)
        if m:
            steps.setdefault(int(m.group(1)), []).append(name)
    for s in sorted(steps)[:-keep] if keep > 0 else sorted(steps):
        for name in steps[s]:
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                pass


class PropagationViewer:
    """test.py --visdom / --pca-vis: every propagated frame's blend (window ``blend_<video>``, environment
    main_davis_viz1) and the PCA of its features (window ``pca_<video>``, environment main_pca; the colours are
    fitted on the video's first frame, so they are comparable across frames). Sends happen in order on a
    background thread; ``close()`` waits for them."""

    def __init__(self, server, port, blend=True, pca=False):
        self.vis = connect_visdom(server, port, TEST_ENVS['blend'], '--visdom' if blend else '--pca-vis')
        self.show_blend, self.show_pca = blend, pca
        self._pca = None
        self.background = AsyncWriter(threads=1, max_pending=8)

    def __bool__(self):
        return self.vis is not None

    def _send(self, img, win, env, title):
        if self.vis is None:
            return
        try:
            self.vis.image(img.transpose(2, 0, 1), win=win, env=env, opts={'title': title})
        except Exception as e:  # noqa: BLE001 - the server went away: results are still written
            warnings.warn(f'--visdom: visdom stopped answering ({type(e).__name__}: {e}); nothing more is sent')
            self.vis = None

    def blend(self, video, name, t, img):
        """img [H, W, 3] uint8: frame t of video number ``video`` with its propagated labels."""
        if self.vis is not None and self.show_blend:
            self.background.submit(self._send, img, f'blend_{video}', TEST_ENVS['blend'], f'{video} {name}: frame {t}')

    def features(self, video, name, t, feat, size):
        """feat [C, h, w] (tensor) of frame t; the PCA picture is shown at ``size`` (H, W)."""
        if self.vis is None or not self.show_pca:
            return
        C, h, w = feat.shape
        x = feat.detach().float().reshape(C, h * w).t().cpu().numpy()
        if t == 0 or self._pca is None:
            self._pca = PCAColours(x)
        rgb = (self._pca(x).reshape(h, w, 3) * 255).round().astype(np.uint8)
        img = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        self.background.submit(self._send, img, f'pca_{video}', TEST_ENVS['pca'],
                               f'{video} {name}: PCA of frame {t} features')

    def close(self):
        self.background.close()
