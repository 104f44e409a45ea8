"""Label propagation by k-nearest-neighbour voting in feature space (SPEC §5).

Two implementations of the same protocol:

* ``DensePropagator`` -- the release's algorithm, kept as the reference ("oracle", ``test.py --dense``): every
  target node is compared with every node of every context frame, the radius restriction is an additive
  -1e10 mask, then top-k, softmax and a weighted vote of the context labels.
* ``Propagator`` -- the default fast path. Same results (see "Equivalence" below), far cheaper:

  - a bank of ``videoLen`` + a few frames (features and soft labels) lives on the device; memory does not
    grow with the video's length;
  - short-term context frames are compared with a target node only inside its radius: context frames are
    stored cut into tiles of ``tile`` = th x tw nodes, the target is cut once per frame into the matching
    (th+2r) x (tw+2r) regions (r = largest offset strictly inside the radius), one batched matmul per
    context frame gives every (context node, target node) score that can lie inside a radius, and a
    precomputed index gathers, for each target node, the M scores of the offsets inside its radius (offsets
    that leave the map point at a -inf sentinel); the gathered scores of several frames form one wide row
    per target node for a single top-k (torch.topk is much faster on wide rows than on many short ones);
  - long-term memory frames (``--long-mem``, frame 0) are compared in full, as in the release;
  - a frame that occupies several context slots (the release padded the video with ``videoLen`` copies of
    frame 0) is scored once and its per-frame top-k repeated by its multiplicity, which yields the same
    joint top-k multiset as the release's duplicated frames;
  - the joint top-k is taken in two stages (top-k per unique frame or group of frames, then top-k of their
    union), which is exact: the joint top-k never holds more than k entries of one group.

Equivalence with the release (tested in tests/test_propagation.py): same top-k multisets of (frame, node)
except for exact or float-rounding ties, soft maps within 1e-4, identical argmax labels. Masked entries:
when a target node has fewer than k candidates (radius smaller than the needed neighbourhood and no long-term
memory), the release's top-k is filled with masked entries scored (s - 1e10)/tau; in float32 their softmax
weight is exactly 0, so they contribute nothing. The fast path fills the same places with -inf (weight
exactly 0); which masked node is picked is arbitrary in both and does not change the soft map.
Ties: among exactly equal scores (e.g. a static background, bit-identical in several frames) both
implementations pick arbitrary members, and float rounding differs between the dense and the windowed
matmuls (~1e-7), so where tied candidates carry different soft labels the two soft maps may differ by more
than 1e-4; the tests use features without such ties.

Long-term memory ids other than 0 are frame indices: frame m is in the context of every target t > m
(with its predicted soft labels); for targets t <= m its place is taken by frame 0. (The release's index
bank used frame m+1, and only from target m+L+1 on.)

Shapes: features [C, h, w] per frame (already L2-normalised if wanted), label maps [h, w, K].
"""
import math
from collections import Counter

import torch
import torch.nn.functional as F

MASK_VALUE = -1e10   # the release's additive radius mask


# ----------------------------------------------------------------------------------------------------------
# Protocol pieces shared by both implementations
# ----------------------------------------------------------------------------------------------------------

def check_protocol(topk, radius, temperature, video_len, long_mem):
    if topk < 1:
        raise ValueError(f'topk must be >= 1, got {topk}')
    if not radius > 0:
        raise ValueError(f'radius must be > 0, got {radius}')
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature}')
    if video_len < 0:
        raise ValueError(f'video_len must be >= 0, got {video_len}')
    if any(int(m) < 0 for m in long_mem):
        raise ValueError(f'long-term memory frames must be >= 0, got {list(long_mem)}')
    if video_len == 0 and len(long_mem) == 0:
        raise ValueError('no context: video_len is 0 and there is no long-term memory frame')


def context_frames(t, video_len, long_mem=(0,)):
    """Context of target frame t >= 1 as frame indices: (long-term ids, short-term ids oldest first).

    Short-term: t-L ... t-1, where indices below 0 are copies of frame 0 (the release's padding; duplicates
    are kept). Long-term id m: frame m once it is in the past (m < t), frame 0 before that."""
    lm = [int(m) if int(m) < t else 0 for m in long_mem]
    st = [max(0, j) for j in range(t - video_len, t)]
    return lm, st


def _inside_radius(d2, radius):
    """The release's test: Euclidean distance (float32 sqrt of the squared integer distance) strictly < R."""
    return d2.to(torch.float32) ** 0.5 < radius


def radius_offsets(radius):
    """[M, 2] long (dy, dx): the grid offsets strictly inside ``radius``, row-major."""
    r = int(math.ceil(radius))
    d = torch.arange(-r, r + 1)
    dy, dx = torch.meshgrid(d, d, indexing='ij')
    keep = _inside_radius(dy ** 2 + dx ** 2, radius)
    return torch.stack([dy[keep], dx[keep]], dim=1)


def radius_mask(h, w, radius):
    """[N, N] bool (context node, target node): True where the nodes are strictly closer than radius."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    d2 = (yy[:, None] - yy[None]) ** 2 + (xx[:, None] - xx[None]) ** 2
    return _inside_radius(d2, radius)


def min_max_normalize(pred, eps=1e-12):
    """``--norm_mask``: per node, rescale the K label scores to [0, 1] (min -> 0, max -> 1). A node whose
    scores are all equal becomes all 0 (the release divided by zero there)."""
    lo = pred.amin(dim=-1, keepdim=True)
    hi = pred.amax(dim=-1, keepdim=True)
    return (pred - lo) / (hi - lo).clamp_min(eps)


def _default_budget(device):
    return (1024 if torch.device(device).type == 'cuda' else 256) * 2 ** 20


# ----------------------------------------------------------------------------------------------------------
# Oracle: the release's dense algorithm
# ----------------------------------------------------------------------------------------------------------

class DensePropagator:
    """The release's dense label propagation (the oracle behind ``--dense``).

    Keeps every frame's features and soft labels (as the release did); for target t it stacks the context
    frames (long-term first, then the L short-term ones, duplicates included), computes all affinities, adds
    -1e10 outside the radius on the short-term part, divides by tau, takes the top-k over all context nodes
    jointly, softmaxes them and votes. Target nodes are processed in chunks to bound memory.
    """

    def __init__(self, first_feat, first_labels, *, topk, radius, temperature, video_len, long_mem=(0,),
                 budget_bytes=None):
        check_protocol(topk, radius, temperature, video_len, long_mem)
        C, h, w = first_feat.shape
        if tuple(first_labels.shape[:2]) != (h, w):
            raise ValueError(f'labels {tuple(first_labels.shape)} do not match the feature map {h}x{w}')
        self.topk, self.temperature, self.video_len = int(topk), float(temperature), int(video_len)
        self.long_mem = [int(m) for m in long_mem]
        self.h, self.w, self.N, self.K = h, w, h * w, first_labels.shape[-1]
        dev = first_feat.device
        self.budget = budget_bytes or _default_budget(dev)
        self.feats = [first_feat.reshape(C, self.N)]
        self.labels = [first_labels.reshape(self.N, self.K).to(first_feat.dtype)]
        # additive mask [context node, target node]: 0 inside the radius, -1e10 outside
        self.mask = torch.zeros(self.N, self.N, dtype=first_feat.dtype, device=dev)
        self.mask.masked_fill_(~radius_mask(h, w, radius).to(dev), MASK_VALUE)

    @property
    def t(self):
        return len(self.feats) - 1

    def step(self, feat, return_topk=False):
        """Predict the next frame from its features [C, h, w] -> soft labels [h, w, K]
        (and, with return_topk, (frame ids [N, k], node ids [N, k], logits [N, k]) of the chosen context)."""
        t = len(self.feats)
        lm, st = context_frames(t, self.video_len, self.long_mem)
        ids = lm + st
        n_ctx, N, k = len(ids), self.N, self.topk
        if k > n_ctx * N:
            raise ValueError(f'topk {k} exceeds the {n_ctx * N} context nodes')
        keys = torch.cat([self.feats[j] for j in ids], dim=1)            # [C, n*N]
        ctx_lbls = torch.cat([self.labels[j] for j in ids])              # [n*N, K]
        q = feat.reshape(feat.shape[0], N)
        pred = torch.empty(N, self.K, dtype=feat.dtype, device=feat.device)
        sel = []
        chunk = max(1, self.budget // (n_ctx * N * feat.element_size() * 2))
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            # [target, context frame, context node]: the release's affinity, target-major so that the
            # top-k runs along contiguous rows (same values, much faster than along dim 0)
            A = (q[:, a:b].t() @ keys).view(b - a, n_ctx, N)
            A[:, len(lm):] += self.mask[:, a:b].t()[:, None]
            A /= self.temperature
            A = A.view(b - a, n_ctx * N)
            vals, idx = torch.topk(A, k, dim=1)                          # [nb, k]
            wts = F.softmax(vals, dim=1)
            pred[a:b] = (ctx_lbls[idx] * wts[..., None]).sum(1)
            if return_topk:
                sel.append((idx, vals))
        self.feats.append(q)
        self.labels.append(pred)
        pred = pred.view(self.h, self.w, self.K)
        if not return_topk:
            return pred
        idx = torch.cat([s[0] for s in sel])
        vals = torch.cat([s[1] for s in sel])
        frame_of_slot = torch.tensor(ids, device=idx.device)
        return pred, (frame_of_slot[idx // N], idx % N, vals)


# ----------------------------------------------------------------------------------------------------------
# Fast path
# ----------------------------------------------------------------------------------------------------------

class Propagator:
    """Streaming fast label propagation (default of test.py); same protocol and results as DensePropagator.

    ``Propagator(first_feat, first_labels, ...)`` then ``step(feat)`` for frames 1, 2, ... in order; each
    returns the soft label map [h, w, K] of that frame. Everything stays on ``first_feat``'s device and dtype.

    Internals: the bank holds features in a tile-major ("blocked") node order [slots, Np, C], Np = padded map
    size, and labels in the same order [slots, Np, K]; slot 0 is frame 0, then one slot per long-term frame
    m > 0, then a ring of ``video_len`` slots for the most recent frames.

    tile: (th, tw) tile size of the windowed affinity (cost per node ~ (th+2r)(tw+2r) dot products).
    mode: 'window' (local windows), 'dense' (full affinity per unique frame with a boolean radius mask;
    chosen by 'auto' when a window region would not be smaller than the whole map, e.g. tiny maps).
    budget_bytes: cap on the size of one affinity chunk (target nodes are processed in chunks).
    """

    def __init__(self, first_feat, first_labels, *, topk, radius, temperature, video_len, long_mem=(0,),
                 tile=(8, 8), mode='auto', budget_bytes=None):
        check_protocol(topk, radius, temperature, video_len, long_mem)
        C, h, w = first_feat.shape
        if tuple(first_labels.shape[:2]) != (h, w):
            raise ValueError(f'labels {tuple(first_labels.shape)} do not match the feature map {h}x{w}')
        dev, dt = first_feat.device, first_feat.dtype
        self.device, self.dtype = dev, dt
        self.topk, self.radius, self.temperature = int(topk), float(radius), float(temperature)
        self.video_len, self.long_mem = int(video_len), [int(m) for m in long_mem]
        self.C, self.h, self.w, self.N, self.K = C, h, w, h * w, first_labels.shape[-1]
        self.budget = budget_bytes or _default_budget(dev)
        self._t = 0

        # --- tiling and node orders ---
        th, tw = (int(s) for s in tile)
        self.th, self.tw = th, tw
        self.nTy, self.nTx = -(-h // th), -(-w // tw)
        self.Hp, self.Wp = self.nTy * th, self.nTx * tw
        self.nT, self.a = self.nTy * self.nTx, th * tw
        self.Np = self.nT * self.a
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
        yy, xx = yy.reshape(-1), xx.reshape(-1)
        # compact (row-major) node -> blocked node
        self.to_blk = (((yy // th) * self.nTx + xx // tw) * self.a + (yy % th) * tw + xx % tw).to(dev)
        blk_to_compact = torch.full((self.Np,), -1, dtype=torch.long)
        blk_to_compact[self.to_blk.cpu()] = torch.arange(self.N)
        self.blk_to_compact = blk_to_compact.to(dev)             # -1 on the padding

        # --- radius neighbourhood ---
        offs = radius_offsets(self.radius)
        self.M = offs.shape[0]
        self.r = int(offs.abs().max())
        self.RR = (th + 2 * self.r) * (tw + 2 * self.r)
        if mode == 'auto':
            mode = 'window' if self.RR < self.N else 'dense'
        if mode not in ('window', 'dense'):
            raise ValueError(f"mode must be 'auto', 'window' or 'dense', got {mode!r}")
        self.mode = mode
        if mode == 'window':
            dy, dx = offs[:, 0][None], offs[:, 1][None]             # [1, M]
            qy, qx = yy[:, None] + dy, xx[:, None] + dx               # context node of (target, offset)
            valid = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
            qy, qx = qy.clamp(0, h - 1), qx.clamp(0, w - 1)
            tile_i = (qy // th) * self.nTx + qx // tw
            a_loc = (qy % th) * tw + qx % tw
            # the target's place in the region of that context tile
            by = self.r + (qy % th) - dy.expand_as(qy)
            bx = self.r + (qx % tw) - dx.expand_as(qx)
            b_loc = by * (tw + 2 * self.r) + bx
            # score block of one context frame: [nT, RR, a] then a -inf sentinel
            self._blk = self.nT * self.RR * self.a + 1
            if self.video_len * self._blk >= 2 ** 31:
                raise ValueError('feature map too large for the windowed path (int32 gather index); use mode=dense')
            local = (tile_i * self.RR + b_loc) * self.a + a_loc
            local[~valid] = self._blk - 1
            self.win_local = local.to(torch.int32).to(dev)                          # [N, M]
            self.win_node = (tile_i * self.a + a_loc).to(dev)                        # [N, M] blocked ctx node
            self._blk_offsets = (torch.arange(max(1, self.video_len)) * self._blk).to(torch.int32).to(dev)
            self._sbuf = self._gbuf = self._ibuf = self._regbuf = None
        else:
            self.dense_invalid = (~radius_mask(h, w, self.radius).t()).to(dev)   # [target, context]

        # --- bank ---
        self.extra_lm = sorted({m for m in self.long_mem if m > 0})
        self.lm_slot = {m: 1 + i for i, m in enumerate(self.extra_lm)}
        self.ring0 = 1 + len(self.extra_lm)
        S = self.ring0 + self.video_len
        self.bank_f = torch.zeros(S, self.Np, C, dtype=dt, device=dev)
        self.bank_l = torch.zeros(S, self.Np, self.K, dtype=dt, device=dev)
        self.slot_frame = [-1] * S
        self.compact_f = {}      # slot -> [N, C] row-major copy, for frames compared in full (long-term)
        self._store(0, 0, first_feat, first_labels.reshape(self.N, self.K).to(dt))

    # -- bank -------------------------------------------------------------------------------------------
    def _blocked(self, feat):
        """[C, h, w] -> [Np, C] in blocked node order (zeros on the padding)."""
        C, h, w = feat.shape
        f = F.pad(feat, (0, self.Wp - w, 0, self.Hp - h))
        f = f.view(C, self.nTy, self.th, self.nTx, self.tw).permute(1, 3, 2, 4, 0)
        return f.reshape(self.Np, C)

    def _store(self, slot, frame, feat, labels):
        if slot < self.ring0:
            self.compact_f[slot] = feat.reshape(self.C, self.N).t().contiguous()
        self.bank_f[slot] = self._blocked(feat)
        self.bank_l[slot].zero_()
        self.bank_l[slot, self.to_blk] = labels
        self.slot_frame[slot] = frame

    def _slot(self, frame, t, long_term):
        if frame == 0:
            return 0
        if long_term:
            return self.lm_slot[frame]
        return self.ring0 + (frame - 1) % self.video_len

    # -- scores -----------------------------------------------------------------------------------------
    def _regions(self, feat):
        """Target regions [nT, RR, C]: around each tile, the (th+2r) x (tw+2r) target nodes (zero padded).
        Written into a persistent buffer (no fresh allocation per frame)."""
        C, h, w = feat.shape
        r, th, tw = self.r, self.th, self.tw
        f = F.pad(feat, (r, self.Wp - w + r, r, self.Hp - h + r)).permute(1, 2, 0)   # [Hp+2r, Wp+2r, C]
        f = f.unfold(0, th + 2 * r, th).unfold(1, tw + 2 * r, tw)                     # [nTy, nTx, C, ., .]
        if self._regbuf is None:
            self._regbuf = torch.empty(self.nT, self.RR, C, dtype=self.dtype, device=self.device)
        self._regbuf.view(self.nTy, self.nTx, th + 2 * r, tw + 2 * r, C).copy_(f.permute(0, 1, 3, 4, 2))
        return self._regbuf

    def _node_chunks(self, per_node_bytes):
        n = max(1, int(self.budget // max(1, per_node_bytes)))
        return [(a, min(self.N, a + n)) for a in range(0, self.N, n)]

    def _compact(self, slot):
        """Features of a bank slot in row-major node order [N, C] (kept for long-term frames)."""
        if slot in self.compact_f:
            return self.compact_f[slot]
        return self.bank_f[slot][self.to_blk]

    def _topk_full(self, q, slot, invalid=None):
        """Top-k of target nodes q [N, C] against all nodes of bank slot (``invalid`` [N, N] -> -inf).
        Returns values [N, k'] and bank rows [N, k']."""
        k = min(self.topk, self.N)
        keys = self._compact(slot)
        vals = torch.empty(self.N, k, dtype=self.dtype, device=self.device)
        rows = torch.empty(self.N, k, dtype=torch.long, device=self.device)
        for a, b in self._node_chunks(self.N * q.element_size() * 2):
            s = q[a:b] @ keys.t()
            if invalid is not None:
                s.masked_fill_(invalid[a:b], float('-inf'))
            v, i = torch.topk(s, k, dim=1)
            vals[a:b], rows[a:b] = v, self.to_blk[i] + slot * self.Np
        return vals, rows

    def _topk_window(self, regions, slots):
        """Joint top-k of every target node over the radius windows of the bank slots ``slots`` (each once).

        Per slot, one batched matmul (target regions x context tiles) fills a block of the score buffer
        [nT, RR, a] followed by a -inf sentinel; one gather with the precomputed window index (out-of-map
        offsets point at the sentinel) then lays out [N, len(slots) * M] for a single wide top-k.
        Returns values [N, k'] and bank rows [N, k']."""
        G, blk = len(slots), self._blk
        if self._sbuf is None or self._sbuf.numel() < G * blk:
            self._sbuf = torch.empty(G * blk, dtype=self.dtype, device=self.device)
            self._gbuf = torch.empty(self.N * G * self.M, dtype=self.dtype, device=self.device)
            self._ibuf = torch.empty(self.N * G * self.M, dtype=torch.int32, device=self.device)
        for j, slot in enumerate(slots):
            tiles = self.bank_f[slot].view(self.nT, self.a, self.C)
            out = self._sbuf[j * blk:j * blk + blk - 1].view(self.nT, self.RR, self.a)
            torch.bmm(regions, tiles.transpose(1, 2), out=out)
            self._sbuf[j * blk + blk - 1] = float('-inf')
        n = self.N * G * self.M
        idx = self._ibuf[:n].view(self.N, G, self.M)
        torch.add(self.win_local[:, None, :], self._blk_offsets[:G].view(1, G, 1), out=idx)
        g = self._gbuf[:n]
        torch.index_select(self._sbuf, 0, idx.view(-1), out=g)
        v, i = torch.topk(g.view(self.N, G * self.M), min(self.topk, G * self.M), dim=1)
        slot_of = torch.tensor(slots, device=self.device)[i // self.M]
        return v, self.win_node.gather(1, i % self.M) + slot_of * self.Np

    # -- one frame --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, feat, return_topk=False):
        """Predict the next frame from its features [C, h, w] -> soft labels [h, w, K]
        (and, with return_topk, (frame ids [N, k], node ids [N, k], logits [N, k]); entries with logit -inf
        carry weight 0 and stand for the release's masked fill-ins)."""
        t = self._t + 1
        feat = feat.to(self.device, self.dtype)
        if tuple(feat.shape) != (self.C, self.h, self.w):
            raise ValueError(f'frame {t}: features {tuple(feat.shape)}, expected {(self.C, self.h, self.w)}')
        lm, st = context_frames(t, self.video_len, self.long_mem)
        full = Counter(self._slot(m, t, True) for m in lm)
        win = Counter(self._slot(j, t, False) for j in st)
        q = feat.reshape(self.C, self.N).t()                             # [N, C] (a view)

        cand_v, cand_r = [], []

        def add(v, r, c):
            if c > 1:
                v = v[:, None].expand(-1, c, -1).reshape(self.N, -1)
                r = r[:, None].expand(-1, c, -1).reshape(self.N, -1)
            cand_v.append(v)
            cand_r.append(r)

        for slot, c in full.items():
            add(*self._topk_full(q, slot), c)
        if win:
            if self.mode == 'window':
                regions = self._regions(feat)
                # frames repeated in the context (frame 0 while t <= L) get their own top-k, repeated;
                # the others are concatenated in groups (one top-k over a wide row is much faster than
                # many over short rows) sized to the memory budget
                single = [s for s, c in win.items() if c == 1]
                for slot, c in win.items():
                    if c > 1:
                        add(*self._topk_window(regions, [slot]), c)
                if single:
                    per_slot = self._blk * self.dtype.itemsize + self.N * self.M * (self.dtype.itemsize + 4)
                    gmax = max(1, int(self.budget // per_slot))
                    n_groups = -(-len(single) // gmax)
                    g = -(-len(single) // n_groups)
                    for i in range(0, len(single), g):
                        add(*self._topk_window(regions, single[i:i + g]), 1)
                del regions
            else:
                for slot, c in win.items():
                    add(*self._topk_full(q, slot, self.dense_invalid), c)

        vals, rows = torch.cat(cand_v, 1), torch.cat(cand_r, 1)
        k = self.topk
        if vals.shape[1] < k:   # fewer candidates than k: the release's masked fill-ins, weight 0
            pad = k - vals.shape[1]
            vals = torch.cat([vals, vals.new_full((self.N, pad), float('-inf'))], 1)
            rows = torch.cat([rows, rows.new_zeros((self.N, pad))], 1)
        if vals.shape[1] > k:
            vals, j = torch.topk(vals, k, dim=1)
            rows = rows.gather(1, j)
        wts = F.softmax(vals / self.temperature, dim=1)                  # [N, k]
        lbl = self.bank_l.view(-1, self.K)[rows]                         # [N, k, K]
        pred = torch.bmm(wts[:, None], lbl)[:, 0]                        # [N, K]

        if return_topk:
            slot_frame = torch.tensor(self.slot_frame, device=self.device)
            frames = slot_frame[rows // self.Np]
            nodes = self.blk_to_compact[rows % self.Np]
            info = (frames, nodes, vals / self.temperature)

        # the new frame enters the bank (after its context was used: its ring slot held frame t-L)
        if self.video_len > 0:
            self._store(self._slot(t, t, False), t, feat, pred)
        if t in self.lm_slot:
            self._store(self.lm_slot[t], t, feat, pred)
        self._t = t
        pred = pred.view(self.h, self.w, self.K)
        return (pred, info) if return_topk else pred


# ----------------------------------------------------------------------------------------------------------
# Whole videos
# ----------------------------------------------------------------------------------------------------------

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


def make_propagator(first_feat, first_labels, *, topk, radius, temperature, video_len, long_mem=(0,),
                    dense=False, **fast_opts):
    """The oracle (dense=True) or the fast path, on first_feat's device and dtype."""
    first_labels = first_labels.to(first_feat.device, first_feat.dtype)
    kw = dict(topk=topk, radius=radius, temperature=temperature, video_len=video_len, long_mem=long_mem)
    if dense:
        return DensePropagator(first_feat, first_labels, **kw, budget_bytes=fast_opts.get('budget_bytes'))
    return Propagator(first_feat, first_labels, **kw, **fast_opts)


def propagate_video(feats, first_labels, *, topk, radius, temperature, video_len, long_mem=(0,), device=None,
                    dense=False, return_topk=False, **fast_opts):
    """Propagate ``first_labels`` [h, w, K] through a video, streaming.

    feats: iterable of per-frame features [C, h, w] (or batches [B, C, h, w], or one [T, C, h, w] tensor),
    frame 0 first, already L2-normalised if wanted; consumed lazily, so a generator that computes features
    batch by batch keeps memory bounded. device: where to compute (default: the features' device).
    Yields (t, soft map [h, w, K]) for t = 0, 1, ... (frame 0: first_labels itself); with return_topk,
    (t, soft map, topk info or None) -- see ``Propagator.step``.
    """
    it = _iter_frames(feats)
    try:
        f0 = next(it)
    except StopIteration:
        return
    if device is not None:
        f0 = f0.to(device)
    prop = make_propagator(f0, first_labels, topk=topk, radius=radius, temperature=temperature,
                           video_len=video_len, long_mem=long_mem, dense=dense, **fast_opts)
    lab0 = first_labels.to(f0.device, f0.dtype)
    yield (0, lab0, None) if return_topk else (0, lab0)
    with torch.no_grad():
        for t, f in enumerate(it, 1):
            out = prop.step(f.to(f0.device), return_topk=return_topk)
            yield (t, *out) if return_topk else (t, out)
