"""Windowed label propagation: the default path of test.py; same protocol and results as the reference.

Where the reference compares every target node with every node of every context frame and then masks the
nodes outside the radius, this path computes only the scores that can lie inside the radius:

* a bank of ``videoLen`` + a few frames (features and soft labels) lives on the device; memory does not
  grow with the video's length;
* the feature map is cut into tiles of th x tw nodes (``TileLayout``). Context frames are stored tile by
  tile; the target frame is cut once per step into *regions*, each a tile grown by a halo of r nodes on
  every side (r = largest offset strictly inside the radius), so a region holds every target node that can
  see some node of its tile. One batched matmul per context frame scores every region against its tile;
  a precomputed *window index* then gathers, for each target node, the M scores of the offsets inside its
  radius (offsets that leave the map point at a -inf sentinel). The gathered scores of several frames
  form one wide row per target node for a single top-k (torch.topk is much faster on wide rows than on
  many short ones);
* long-term memory frames (``--long-mem``, frame 0) are compared in full, as in the release;
* a frame that occupies several context slots (the release padded the video with ``videoLen`` copies of
  frame 0) is scored once and its per-frame top-k repeated by its multiplicity, which yields the same
  joint top-k multiset as the release's duplicated frames;
* the joint top-k is taken in two stages (top-k per frame or group of frames, then top-k of their union),
  which is exact: the joint top-k never holds more than k entries of one group.

Equivalence with the reference (tested in tests/test_propagation.py): same top-k multisets of (frame, node)
except for exact or float-rounding ties, soft maps within 1e-4, identical argmax labels. Masked entries:
when a target node has fewer than k candidates (radius smaller than the needed neighbourhood and no
long-term memory), the release's top-k is filled with masked entries scored (s - 1e10)/tau; in float32 their
softmax weight is exactly 0, so they contribute nothing. This path fills the same places with -inf (weight
exactly 0); which masked node is picked is arbitrary in both and does not change the soft map.
Ties: among exactly equal scores (e.g. a static background, bit-identical in several frames) both
implementations pick arbitrary members, and float rounding differs between the full and the windowed
matmuls (~1e-7), so where tied candidates carry different soft labels the two soft maps may differ by more
than 1e-4; the tests use features without such ties.

Shapes: features [C, h, w] per frame (already L2-normalised if wanted), label maps [h, w, K].
"""
from collections import Counter

import torch
import torch.nn.functional as F

from propagation.protocol import check_first_frame, context_frames, default_budget, radius_mask, radius_offsets


class TileLayout:
    """An h x w feature map cut into tiles of th x tw nodes, for the windowed scores.

    *Tiled order*: tile i (row-major over tiles_y x tiles_x) holds its th*tw nodes row-major; the map is
    zero-padded to padded_h x padded_w, so there are ``padded_nodes`` = num_tiles * tile_nodes slots.
    The *region* of a tile is the tile grown by ``halo`` nodes on every side: (th+2*halo) x (tw+2*halo) nodes.
    """

    def __init__(self, h, w, tile, halo, device):
        self.h, self.w = h, w
        self.th, self.tw = (int(s) for s in tile)
        self.halo = int(halo)
        self.tiles_y, self.tiles_x = -(-h // self.th), -(-w // self.tw)
        self.padded_h, self.padded_w = self.tiles_y * self.th, self.tiles_x * self.tw
        self.num_tiles, self.tile_nodes = self.tiles_y * self.tiles_x, self.th * self.tw
        self.padded_nodes = self.num_tiles * self.tile_nodes
        self.region_h, self.region_w = self.th + 2 * self.halo, self.tw + 2 * self.halo
        self.region_nodes = self.region_h * self.region_w
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
        self.node_y, self.node_x = yy.reshape(-1), xx.reshape(-1)   # row-major node -> map position (CPU)
        self.to_tiled = self.tiled_slot(self.node_y, self.node_x).to(device)   # [N] row-major node -> slot
        tiled_to_node = torch.full((self.padded_nodes,), -1, dtype=torch.long)
        tiled_to_node[self.to_tiled.cpu()] = torch.arange(h * w)
        self.tiled_to_node = tiled_to_node.to(device)               # [padded_nodes], -1 on the padding

    def tile_of(self, y, x):
        return (y // self.th) * self.tiles_x + x // self.tw

    def tiled_slot(self, y, x):
        """Slot (tiled order) of the node at map position (y, x)."""
        return self.tile_of(y, x) * self.tile_nodes + (y % self.th) * self.tw + x % self.tw

    def tiled(self, feat):
        """[C, h, w] -> [padded_nodes, C] in tiled order (zeros on the padding)."""
        C = feat.shape[0]
        f = F.pad(feat, (0, self.padded_w - self.w, 0, self.padded_h - self.h))
        f = f.view(C, self.tiles_y, self.th, self.tiles_x, self.tw).permute(1, 3, 2, 4, 0)
        return f.reshape(self.padded_nodes, C)

    def regions(self, feat, out):
        """The region of every tile of ``feat`` [C, h, w] (zero padded outside the map), written into ``out``
        [num_tiles, region_nodes, C]."""
        r = self.halo
        f = F.pad(feat, (r, self.padded_w - self.w + r, r, self.padded_h - self.h + r)).permute(1, 2, 0)
        f = f.unfold(0, self.region_h, self.th).unfold(1, self.region_w, self.tw)   # [ty, tx, C, rh, rw]
        out.view(self.tiles_y, self.tiles_x, self.region_h, self.region_w, -1).copy_(f.permute(0, 1, 3, 4, 2))
        return out


class WindowedPropagator:
    """``WindowedPropagator(first_feat, first_labels, protocol)``, then ``step(feat)`` for frames 1, 2, ...
    in order; each returns the soft label map [h, w, K] of that frame. Everything stays on ``first_feat``'s
    device and dtype.

    The bank holds features in tiled order [slots, padded_nodes, C] and labels in the same order
    [slots, padded_nodes, K]; slot 0 is frame 0, then one slot per long-term frame m > 0, then a ring of
    ``video_len`` slots for the most recent frames, then one slot per corrected frame (``correct``).

    tile: (th, tw) tile size of the windowed scores (cost per node ~ (th+2r)(tw+2r) dot products).
    mode: 'window' (scores inside the radius only), 'full' (every score of a context frame, then a boolean
    radius mask; chosen by 'auto' when a region would not be smaller than the whole map, e.g. tiny maps).
    budget_bytes: cap on the size of one score chunk (target nodes and frames are processed in chunks).
    """

    def __init__(self, first_feat, first_labels, protocol, tile=(8, 8), mode='auto', budget_bytes=None):
        check_first_frame(first_feat, first_labels)
        C, h, w = first_feat.shape
        protocol.check_context(h, w)
        dev, dt = first_feat.device, first_feat.dtype
        self.device, self.dtype = dev, dt
        self.protocol = protocol
        self.topk, self.temperature, self.video_len = protocol.topk, protocol.temperature, protocol.video_len
        self.C, self.h, self.w, self.N, self.K = C, h, w, h * w, first_labels.shape[-1]
        self.budget = budget_bytes or default_budget(dev)
        self._t = 0

        offsets = radius_offsets(protocol.radius)                        # [M, 2] (dy, dx)
        self.num_offsets = offsets.shape[0]
        self.layout = L = TileLayout(h, w, tile, int(offsets.abs().max()), dev)
        if mode == 'auto':
            mode = 'window' if L.region_nodes < self.N else 'full'
        if mode not in ('window', 'full'):
            raise ValueError(f"mode must be 'auto', 'window' or 'full', got {mode!r}")
        self.mode = mode
        if mode == 'window':
            self._build_window_index(offsets)
        else:
            self.outside_radius = (~radius_mask(h, w, protocol.radius).t()).to(dev)   # [target, context]

        # bank: frame 0, the long-term frames m > 0, then the ring of recent frames
        self.long_term_slot = {m: 1 + i for i, m in enumerate(sorted({m for m in protocol.long_mem if m > 0}))}
        self.first_ring_slot = 1 + len(self.long_term_slot)
        slots = self.first_ring_slot + self.video_len
        self.bank_feats = torch.zeros(slots, L.padded_nodes, C, dtype=dt, device=dev)
        self.bank_labels = torch.zeros(slots, L.padded_nodes, self.K, dtype=dt, device=dev)
        self.slot_frame = [-1] * slots
        self.full_feats = {}     # slot -> [N, C] row-major copy, for frames compared in full (long-term)
        self.anchor, self.correction_slots = 0, []    # see correct()
        self._store(0, 0, first_feat, first_labels.reshape(self.N, self.K).to(dt))

    def _build_window_index(self, offsets):
        """Where, in one context frame's block of scores, each (target node, offset) score lands.

        The block of a context frame is [num_tiles, region_nodes, tile_nodes] (region node = target, tile
        node = context) followed by one -inf sentinel. ``window_index`` [N, M] int32 is the position of the
        score of target n against context node n + offset m (the sentinel when that leaves the map);
        ``window_context`` [N, M] is that context node's bank slot (tiled order)."""
        L = self.layout
        dy, dx = offsets[:, 0][None], offsets[:, 1][None]                  # [1, M]
        cy, cx = L.node_y[:, None] + dy, L.node_x[:, None] + dx            # context node of (target, offset)
        inside = (cy >= 0) & (cy < self.h) & (cx >= 0) & (cx < self.w)
        cy, cx = cy.clamp(0, self.h - 1), cx.clamp(0, self.w - 1)
        tile = L.tile_of(cy, cx)
        in_tile = (cy % L.th) * L.tw + cx % L.tw
        # the target's place in the region of that context tile
        ry = L.halo + (cy % L.th) - dy.expand_as(cy)
        rx = L.halo + (cx % L.tw) - dx.expand_as(cx)
        in_region = ry * L.region_w + rx
        self.score_block = L.num_tiles * L.region_nodes * L.tile_nodes + 1
        if self.video_len * self.score_block >= 2 ** 31:
            raise ValueError("feature map too large for the windowed scores (int32 gather index); use mode='full'")
        index = (tile * L.region_nodes + in_region) * L.tile_nodes + in_tile
        index[~inside] = self.score_block - 1
        self.window_index = index.to(torch.int32).to(self.device)                      # [N, M]
        self.window_context = (tile * L.tile_nodes + in_tile).to(self.device)          # [N, M]
        self.block_starts = (torch.arange(max(1, self.video_len)) * self.score_block).to(torch.int32).to(self.device)
        self._scores = self._gathered = self._gather_index = self._regions = None   # reused buffers

    # -- bank -------------------------------------------------------------------------------------------
    def _store(self, slot, frame, feat, labels):
        if slot < self.first_ring_slot or slot in self.correction_slots:
            self.full_feats[slot] = feat.reshape(self.C, self.N).t().contiguous()
        self.bank_feats[slot] = self.layout.tiled(feat)
        self.bank_labels[slot].zero_()
        self.bank_labels[slot, self.layout.to_tiled] = labels
        self.slot_frame[slot] = frame

    def _slot(self, frame, long_term):
        if frame == 0:
            return 0
        if long_term:
            return self.long_term_slot[frame]
        return self.first_ring_slot + (frame - 1) % self.video_len

    # -- annotations on later frames ------------------------------------------------------------------
    def add_labels(self, n):
        """Append ``n`` label channels (objects that appear later), zero in every stored frame."""
        pad = self.bank_labels.new_zeros(*self.bank_labels.shape[:2], n)
        self.bank_labels = torch.cat([self.bank_labels, pad], dim=-1)
        self.K += n

    def set_labels(self, labels):
        """Replace the soft labels of the frame last stepped (or frame 0) by ``labels`` [h, w, K] (an annotated
        frame's corrected labels), for the frames after it."""
        labels = labels.reshape(self.N, self.K).to(self.device, self.dtype)
        t = self._t
        slots = [s for s, f in enumerate(self.slot_frame) if f == t]
        for slot in slots:
            self.bank_labels[slot].zero_()
            self.bank_labels[slot, self.layout.to_tiled] = labels

    def correct(self, labels):
        """The frame last stepped is corrected to ``labels`` [h, w, K] (an annotation merged with its
        prediction): it becomes a long-term frame (compared in full, like frame 0, for every later target;
        frame 0 and earlier corrections stay), and the short-term context restarts from it (frames before it
        are copies of it, as frame 0 pads the start), so no prediction it contradicts votes again. Each
        correction keeps one more frame on the device."""
        t = self._t
        if t == 0:
            raise ValueError('correct() is for a frame after the first')
        self.set_labels(labels)
        slot = self.bank_feats.shape[0]
        self.bank_feats = torch.cat([self.bank_feats, self.bank_feats.new_zeros(1, *self.bank_feats.shape[1:])])
        self.bank_labels = torch.cat([self.bank_labels, self.bank_labels.new_zeros(1, *self.bank_labels.shape[1:])])
        self.slot_frame.append(-1)
        self.correction_slots.append(slot)
        self._store(slot, t, self._last_feat, labels.reshape(self.N, self.K).to(self.device, self.dtype))
        self.anchor = t

    # -- scores -----------------------------------------------------------------------------------------
    def _node_chunks(self, per_node_bytes):
        n = max(1, int(self.budget // max(1, per_node_bytes)))
        return [(a, min(self.N, a + n)) for a in range(0, self.N, n)]

    def _full_feats(self, slot):
        """Features of a bank slot in row-major node order [N, C] (kept for long-term frames)."""
        if slot in self.full_feats:
            return self.full_feats[slot]
        return self.bank_feats[slot][self.layout.to_tiled]

    def _topk_full(self, q, slot, invalid=None):
        """Top-k of target nodes q [N, C] against all nodes of bank slot (``invalid`` [N, N] -> -inf).
        Returns values [N, k'] and bank rows [N, k'] (slot * padded_nodes + tiled slot)."""
        k = min(self.topk, self.N)
        keys = self._full_feats(slot)
        vals = torch.empty(self.N, k, dtype=self.dtype, device=self.device)
        rows = torch.empty(self.N, k, dtype=torch.long, device=self.device)
        for a, b in self._node_chunks(self.N * q.element_size() * 2):
            s = q[a:b] @ keys.t()
            if invalid is not None:
                s.masked_fill_(invalid[a:b], float('-inf'))
            v, i = torch.topk(s, k, dim=1)
            vals[a:b], rows[a:b] = v, self.layout.to_tiled[i] + slot * self.layout.padded_nodes
        return vals, rows

    def _topk_window(self, regions, slots):
        """Joint top-k of every target node over the radius windows of the bank slots ``slots`` (each once).

        Per slot, one batched matmul (target regions x context tiles) fills that slot's block of scores;
        one gather with the window index lays out [N, len(slots) * M] for a single wide top-k.
        Returns values [N, k'] and bank rows [N, k']."""
        L, G, block, M = self.layout, len(slots), self.score_block, self.num_offsets
        if self._scores is None or self._scores.numel() < G * block:
            self._scores = torch.empty(G * block, dtype=self.dtype, device=self.device)
            self._gathered = torch.empty(self.N * G * M, dtype=self.dtype, device=self.device)
            self._gather_index = torch.empty(self.N * G * M, dtype=torch.int32, device=self.device)
        for j, slot in enumerate(slots):
            tiles = self.bank_feats[slot].view(L.num_tiles, L.tile_nodes, self.C)
            out = self._scores[j * block:j * block + block - 1].view(L.num_tiles, L.region_nodes, L.tile_nodes)
            torch.bmm(regions, tiles.transpose(1, 2), out=out)
            self._scores[j * block + block - 1] = float('-inf')
        n = self.N * G * M
        idx = self._gather_index[:n].view(self.N, G, M)
        torch.add(self.window_index[:, None, :], self.block_starts[:G].view(1, G, 1), out=idx)
        g = self._gathered[:n]
        torch.index_select(self._scores, 0, idx.view(-1), out=g)
        v, i = torch.topk(g.view(self.N, G * M), min(self.topk, G * M), dim=1)
        slot_of = torch.tensor(slots, device=self.device)[i // M]
        return v, self.window_context.gather(1, i % M) + slot_of * L.padded_nodes

    def _target_regions(self, feat):
        L = self.layout
        if self._regions is None:
            self._regions = torch.empty(L.num_tiles, L.region_nodes, self.C, dtype=self.dtype, device=self.device)
        return L.regions(feat, self._regions)

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
        long_term, short_term = context_frames(t, self.video_len, self.protocol.long_mem, self.anchor)
        full = Counter(self._slot(m, True) for m in long_term) + Counter(self.correction_slots)   # slot -> copies
        windowed = Counter(self._slot(j, False) for j in short_term)
        q = feat.reshape(self.C, self.N).t()                             # [N, C] (a view)

        cand_v, cand_r = [], []

        def add(v, r, copies):
            if copies > 1:
                v = v[:, None].expand(-1, copies, -1).reshape(self.N, -1)
                r = r[:, None].expand(-1, copies, -1).reshape(self.N, -1)
            cand_v.append(v)
            cand_r.append(r)

        for slot, c in full.items():
            add(*self._topk_full(q, slot), c)
        if windowed:
            if self.mode == 'window':
                regions = self._target_regions(feat)
                # frames repeated in the context (frame 0 while t <= L) get their own top-k, repeated;
                # the others are concatenated in groups (one top-k over a wide row is much faster than
                # many over short rows) sized to the memory budget
                single = [s for s, c in windowed.items() if c == 1]
                for slot, c in windowed.items():
                    if c > 1:
                        add(*self._topk_window(regions, [slot]), c)
                if single:
                    per_slot = (self.score_block * self.dtype.itemsize
                                + self.N * self.num_offsets * (self.dtype.itemsize + 4))
                    gmax = max(1, int(self.budget // per_slot))
                    n_groups = -(-len(single) // gmax)
                    g = -(-len(single) // n_groups)
                    for i in range(0, len(single), g):
                        add(*self._topk_window(regions, single[i:i + g]), 1)
                del regions
            else:
                for slot, c in windowed.items():
                    add(*self._topk_full(q, slot, self.outside_radius), c)

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
        lbl = self.bank_labels.view(-1, self.K)[rows]                    # [N, k, K]
        pred = torch.bmm(wts[:, None], lbl)[:, 0]                        # [N, K]

        if return_topk:
            slot_frame = torch.tensor(self.slot_frame, device=self.device)
            frames = slot_frame[rows // self.layout.padded_nodes]
            nodes = self.layout.tiled_to_node[rows % self.layout.padded_nodes]
            info = (frames, nodes, vals / self.temperature)

        # the new frame enters the bank (after its context was used: its ring slot held frame t-L)
        if self.video_len > 0:
            self._store(self._slot(t, False), t, feat, pred)
        if t in self.long_term_slot:
            self._store(self.long_term_slot[t], t, feat, pred)
        self._t, self._last_feat = t, feat
        pred = pred.view(self.h, self.w, self.K)
        return (pred, info) if return_topk else pred
