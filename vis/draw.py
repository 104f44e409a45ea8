"""Pictures of what the walk learned (train.py --visualize, test.py --pca-vis): numpy in, RGB uint8 images out.

Views of one training clip (``training_views``, or ``batch_views`` of a training batch), frames t and t+1:
``pca`` (node embeddings on their first 3 principal components, one fit for both frames, as RGB under the
frames), ``flow`` (an arrow from each node to its arg-max successor, coloured by its probability),
``matches`` (lines between mutual nearest neighbours), ``neighbours`` (a few query nodes and their most
similar nodes anywhere in the clip, with cosine and frame) and ``loss`` (per start node, where the longest
palindrome walk ends, tinted by its cycle loss: colour map 'cool', cyan lowest, magenta highest).
matplotlib and scikit-learn are imported at the first drawing, not by train.py or test.py's imports.
Where the pictures go: ``vis/sinks.py``.
"""
import cv2
import numpy as np
import torch

from crw.data.training.gpu_augment import MEAN, STD
from crw.data.training.nodes import grid_positions

DISPLAY = 320        # frames are enlarged to about this many pixels on their long side
NUM_QUERIES = 4      # query nodes of the neighbours view
NUM_NEIGHBOURS = 8   # neighbours shown per query
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_threadpools = None


# ------------------------------------------------------------------------------------------ image helpers
def _colours(name, values):
    """values [N] in [0, 1] -> [N, 3] uint8 RGB from a matplotlib colour map."""
    from matplotlib import colormaps
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

    Grid input (``patch`` = P): the row-major P x P windows at stride P/2 of data/training/nodes.py. Dense
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
    """One augmented grid clip [T, N*3, P, P] (normalised as BatchAugment does) -> uint8 [T, N, P, P, 3]."""
    T, _, P, _ = video.shape
    x = video.detach().float().cpu().view(T, num_nodes, 3, P, P)
    x = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 1, 3, 4, 2).numpy()


# ---------------------------------------------------------------------------------------------------- PCA
def _one_blas_thread():
    """Context: BLAS on one thread (the thread-pool scan runs once, not at every call)."""
    global _threadpools
    if _threadpools is None:
        from threadpoolctl import ThreadpoolController
        _threadpools = ThreadpoolController()
    return _threadpools.limit(limits=1, user_api='blas')


class PCAColours:
    """RGB colours from the first 3 principal components of features, not whitened (release: whitened), one
    scale for the three (their joint range over the fitted features, to [0, 1]; later features are clipped).

    ``PCAColours(feats [M, C])(feats2 [M2, C]) -> [M2, 3] float in [0, 1]``. Exact (eigenvectors of the
    C x C covariance). BLAS runs on one thread: beside PyTorch's still-spinning OpenMP workers a
    multi-threaded OpenBLAS made a 100 x 128 fit take a second instead of 10 ms.
    """

    def __init__(self, feats):
        from sklearn.decomposition import PCA
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
