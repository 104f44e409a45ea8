"""Windowed label propagation, test.py's default path: the reference's results from only the in-radius scores.

A bank of ``videoLen`` + 1 frames (features, soft labels) lives on the device; short-term features are kept
by tiles of 4 x 4 nodes (``TileLayout``). Each step cuts the target frame into regions (the nodes a tile
reaches within the radius) and one batched matmul scores every region against its tile in all short-term
frames. Top-k is exact up to ties: the k in-radius positions with the largest maximum over the frames
(``window_index``) hold the joint top-k. Long-term frames (frame 0, ``--long-mem``, corrected frames) are
compared in full (screened in bf16 where that is faster: ``propagation.screen``); while t <= L the short-term
context holds copies of frame 0 (the release's padding) or of the latest corrected frame. Against the
reference (``--dense``): same top-k multisets except ties, soft maps within 1e-4, same argmax labels
(docs/differences.md, Propagation).
Shapes: features [C, h, w] per frame (L2-normalised if wanted), label maps [h, w, K].
"""
from collections import Counter

import torch
import torch.nn.functional as F

from crw.propagation.protocol import check_first_frame, context_frames, default_budget, radius_offsets
from crw.propagation.screen import ScreenKeys, ScreenQueries, bf16_is_faster, screened_topk

TILE = (4, 4)             # tile size of the windowed scores (chosen by bench/propagation.py --tiles on 854x480)
CPU_BLOCK = 8 * 2 ** 20   # bytes of scores computed at once on the CPU: a block stays in cache until reduced
SCREEN_GIVE_UP = 0.6     # a long-term frame whose bf16 screen sent more than this share of the target nodes to
SCREEN_PAUSE = 10        # the full float32 row is compared unscreened for this many steps (then screened again)


class TileLayout:
    """An h x w feature map cut into tiles of th x tw nodes, and each tile's region of target nodes.

    *Tiled order*: tile i (row-major over tiles_y x tiles_x) holds its th*tw nodes row-major; the map is
    zero-padded to tiles_y*th x tiles_x*tw. The *region* of a tile: the nodes that some node of the tile
    reaches by one of ``offsets`` [M, 2] (the radius' disc, so a 4 x 4 tile at radius 12 has 584, not the
    26 x 26 of its bounding square), in one order for every tile (``pattern``: (dy, dx) from the tile's first
    node, row-major; region_nodes of them). Entries off the map (border tiles) point at node 0 and are never
    read. An axis on which a tile and its reach would span the whole map is one tile (small maps: one tile,
    whose region is the map, i.e. every pair is scored).
    """

    def __init__(self, h, w, tile, offsets, device):
        self.h, self.w, self.offsets = h, w, offsets
        halo = int(offsets.abs().max())
        th, tw = (int(s) for s in tile)
        self.th = h if th + 2 * halo >= h else th
        self.tw = w if tw + 2 * halo >= w else tw
        self.tiles_y, self.tiles_x = -(-h // self.th), -(-w // self.tw)
        self.num_tiles, self.tile_nodes = self.tiles_y * self.tiles_x, self.th * self.tw
        a, b = torch.meshgrid(torch.arange(self.th), torch.arange(self.tw), indexing='ij')
        reach = torch.stack([a.reshape(-1, 1) + offsets[:, 0], b.reshape(-1, 1) + offsets[:, 1]], -1)
        pattern = torch.unique(reach.reshape(-1, 2), dim=0)                        # sorted: row-major
        y0s, x0s = torch.arange(self.tiles_y) * self.th, torch.arange(self.tiles_x) * self.tw
        ys, xs = y0s[:, None] + pattern[:, 0], x0s[:, None] + pattern[:, 1]        # [tiles_y | tiles_x, P]
        on_map = ((ys >= 0) & (ys < h)).any(0) & ((xs >= 0) & (xs < w)).any(0)     # for some tile
        self.pattern, ys, xs = pattern[on_map], ys[:, on_map], xs[:, on_map]
        self.region_nodes = R = len(self.pattern)
        inside = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None]     # [tiles_y, tiles_x, R]
        nodes = (ys[:, None] * w + xs[None]).masked_fill_(~inside, 0)
        self.region_index = nodes.reshape(self.num_tiles, R).to(device)            # node ids
        # (dy, dx) -> place in the pattern
        self._lo = self.pattern.min(0).values
        size = (self.pattern.max(0).values - self._lo + 1).tolist()
        self._place = torch.full(size, -1, dtype=torch.long)
        self._place[tuple((self.pattern - self._lo).t())] = torch.arange(R)

    def tile_of(self, y, x):
        return (y // self.th) * self.tiles_x + x // self.tw

    def tiled(self, feat):
        """[C, h, w] -> [num_tiles, tile_nodes, C] (zeros on the padding)."""
        C = feat.shape[0]
        f = F.pad(feat, (0, self.tiles_x * self.tw - self.w, 0, self.tiles_y * self.th - self.h))
        f = f.view(C, self.tiles_y, self.th, self.tiles_x, self.tw).permute(1, 3, 2, 4, 0)
        return f.reshape(self.num_tiles, self.tile_nodes, C)

    def untiled(self, tiles):
        """[num_tiles, tile_nodes, C] -> the row-major nodes [h * w, C] (``tiled``'s inverse)."""
        C = tiles.shape[-1]
        f = tiles.reshape(self.tiles_y, self.tiles_x, self.th, self.tw, C).transpose(1, 2)
        return f.reshape(self.tiles_y * self.th, self.tiles_x * self.tw, C)[:self.h, :self.w].reshape(-1, C)

    def window_index(self, rows=8):
        """For target node n (row-major) and offset m of ``offsets`` (dy, dx): (``flat`` [N, M], ``node`` [N, M]),
        int32. flat: the place of the score of (n, n + offset) in an array [num_tiles, tile_nodes,
        region_nodes] (node j of tile i against target p of tile i's region), num_tiles * tile_nodes *
        region_nodes (one past the end) where n + offset leaves the map. node: the context node n + offset
        (row-major; 0 where it leaves the map). Built ``rows`` map rows at a time (bounded temporaries)."""
        h, w, offsets = self.h, self.w, self.offsets
        M = offsets.shape[0]
        flat = torch.empty(h * w, M, dtype=torch.int32)
        node = torch.empty(h * w, M, dtype=torch.int32)
        sentinel = self.num_tiles * self.tile_nodes * self.region_nodes
        for y0 in range(0, h, rows):
            yy, xx = torch.meshgrid(torch.arange(y0, min(h, y0 + rows)), torch.arange(w), indexing='ij')
            y, x = yy.reshape(-1, 1), xx.reshape(-1, 1)
            cy, cx = y + offsets[:, 0], x + offsets[:, 1]
            inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
            cy, cx = cy.clamp(0, h - 1), cx.clamp(0, w - 1)
            ty, tx = cy // self.th, cx // self.tw
            in_tile = (cy % self.th) * self.tw + cx % self.tw
            # n from the first node of the context node's tile, as a place in the pattern
            py = (y - ty * self.th - self._lo[0]).clamp(0, self._place.shape[0] - 1)
            px = (x - tx * self.tw - self._lo[1]).clamp(0, self._place.shape[1] - 1)
            in_region = self._place[py, px]
            if bool((in_region[inside] < 0).any()):
                raise AssertionError('window_index: a target outside its region (offsets not symmetric?)')
            f = ((ty * self.tiles_x + tx) * self.tile_nodes + in_tile) * self.region_nodes + in_region
            flat[y0 * w:y0 * w + len(y)] = f.masked_fill_(~inside, sentinel)
            node[y0 * w:y0 * w + len(y)] = (cy * w + cx).masked_fill_(~inside, 0)
        return flat, node


class WindowedPropagator:
    """``WindowedPropagator(first_feat, first_labels, protocol)``, then ``step(feat)`` for frames 1, 2, ...
    in order; each returns the soft label map [h, w, K] of that frame. Everything stays on ``first_feat``'s
    device and dtype.

    Bank slots: 0 is frame 0, 1..L the ring of the ``video_len`` most recent frames (frame j >= 1 in slot
    1 + (j-1) % L), then one slot per long-term frame m > 0. ``ring`` [num_tiles, 1 + L, tile_nodes, C] holds
    the features of slots 0..L by tile; ``full_feats`` the row-major features [N, C] of the frames compared
    in full (frame 0, the long-term frames, the corrected frames); ``labels`` [slots, N, K] the soft labels
    (row-major nodes). A corrected frame (``correct``) takes one more slot, compared in full.

    tile: (th, tw) tile size of the windowed scores (cost per node ~ (th+2r)(tw+2r) dot products per frame).
    mode: 'window' or 'auto' (tiles of ``tile``), 'full' (one tile: every score of a context frame, then the
    radius; what small maps get anyway).
    budget_bytes: cap on the size of one block of scores (frames and regions are processed in chunks).
    screen: the frames compared in full are screened in bf16, then re-scored exactly (``propagation.screen``);
    None: where that is faster (float32 on a CPU with native bf16). ``screen_rows``: [target nodes screened,
    of which given the full float32 row].
    """

    def __init__(self, first_feat, first_labels, protocol, tile=TILE, mode='auto', budget_bytes=None,
                 screen=None):
        check_first_frame(first_feat, first_labels)
        C, h, w = first_feat.shape
        protocol.check_context(h, w)
        if mode not in ('auto', 'window', 'full'):
            raise ValueError(f"mode must be 'auto', 'window' or 'full', got {mode!r}")
        dev, dt = first_feat.device, first_feat.dtype
        self.device, self.dtype = dev, dt
        self.protocol = protocol
        self.topk, self.temperature, self.video_len = protocol.topk, protocol.temperature, protocol.video_len
        self.C, self.h, self.w, self.N, self.K = C, h, w, h * w, first_labels.shape[-1]
        self.budget = budget_bytes or default_budget(dev)
        if screen is None:
            screen = dev.type == 'cpu' and dt == torch.float32 and bf16_is_faster()
        self.screen, self.screen_rows, self._screen_keys, self._screen_resume = bool(screen), [0, 0], {}, {}
        self._t = 0

        offsets = radius_offsets(protocol.radius, h, w)                  # [M, 2] (dy, dx)
        self.num_offsets = offsets.shape[0]
        self.layout = L = TileLayout(h, w, (h, w) if mode == 'full' else tile, offsets, dev)
        self.mode = 'full' if L.num_tiles == 1 else 'window'
        if L.num_tiles * L.region_nodes * L.tile_nodes >= 2 ** 31:
            raise ValueError('feature map too large for the windowed scores (int32 gather index)')
        flat, node = L.window_index()
        self.window_index = flat.to(dev)                                 # [N, M] into the per-position maxima
        self.window_node = node.to(dev)                                  # [N, M] context node (row-major)

        self.long_term_slot = {m: 1 + self.video_len + i
                               for i, m in enumerate(sorted({m for m in protocol.long_mem if m > 0}))}
        slots = 1 + self.video_len + len(self.long_term_slot)
        self.ring = torch.zeros(L.num_tiles, 1 + self.video_len, L.tile_nodes, C, dtype=dt, device=dev)
        self.labels = torch.zeros(slots, self.N, self.K, dtype=dt, device=dev)
        self.slot_frame = [-1] * slots
        self.full_feats = {}
        self._max = self._scores = None    # reused buffers: per-position maxima (+ a -inf sentinel), scores
        self.correction_slots, self._last_feat = [], None    # see correct()
        self._store(0, 0, first_feat, first_labels.reshape(self.N, self.K).to(dt))

    # -- bank -------------------------------------------------------------------------------------------
    def _store(self, slot, frame, feat, labels):
        if slot <= self.video_len:
            self.ring[:, slot] = self.layout.tiled(feat)
        if slot == 0 or slot > self.video_len:
            self._store_full(slot, feat)
        self.labels[slot] = labels
        self.slot_frame[slot] = frame

    def _ring_slot(self, frame):
        return 0 if frame == 0 else 1 + (frame - 1) % self.video_len

    # -- annotations on later frames ------------------------------------------------------------------
    def add_labels(self, n):
        """Append ``n`` label channels (objects that appear later), zero in every stored frame."""
        self.labels = torch.cat([self.labels, self.labels.new_zeros(*self.labels.shape[:2], n)], dim=-1)
        self.K += n

    def set_labels(self, labels):
        """Replace the soft labels of the frame last stepped (or frame 0) by ``labels`` [h, w, K] (an annotated
        frame's corrected labels), for the frames after it."""
        labels = labels.reshape(self.N, self.K).to(self.device, self.dtype)
        for slot, f in enumerate(self.slot_frame):
            if f == self._t:
                self.labels[slot] = labels

    def correct(self, labels):
        """The frame last stepped is corrected to ``labels`` [h, w, K] (an annotation merged with its
        prediction). It becomes a long-term frame, compared in full for every later target like frame 0
        (frame 0 and earlier corrections stay), and the short-term frames before it keep their features but
        take new labels, propagated from the corrected frame by one step of the protocol (``_relabel``), so
        that what they remember agrees with it. Annotated frames keep theirs. Each correction keeps one more
        frame."""
        t = self._t
        if t == 0:
            raise ValueError('correct() is for a frame after the first')
        self.set_labels(labels)
        annotated = {0, t} | {self.slot_frame[s] for s in self.correction_slots}
        for slot in range(1, self.video_len + 1):
            if self.slot_frame[slot] not in annotated and self.slot_frame[slot] > 0:
                self._relabel(slot, self._ring_slot(t))
        slot = self.labels.shape[0]
        self.labels = torch.cat([self.labels, labels.reshape(1, self.N, self.K).to(self.device, self.dtype)])
        self.slot_frame.append(t)
        self._store_full(slot, self._last_feat)
        self.correction_slots.append(slot)

    def _store_full(self, slot, feat):
        self.full_feats[slot] = feat.reshape(self.C, self.N).t().contiguous()
        if self.screen:
            self._screen_keys[slot] = ScreenKeys(self.full_feats[slot])

    def _pad(self):
        """The frame whose copies pad the short-term context: the latest corrected frame, else frame 0."""
        return self.slot_frame[self.correction_slots[-1]] if self.correction_slots else 0

    def _relabel(self, slot, source):
        """Labels of ring ``slot`` := the vote of ring slot ``source`` for its features (top-k inside the radius,
        softmax at the temperature), as if it were the target frame and ``source`` its only context frame."""
        q = self.layout.untiled(self.ring[:, slot])
        vals, rows = self._topk_window(q, source, source + 1)
        wts = F.softmax(vals / self.temperature, dim=1)
        self.labels[slot] = torch.bmm(wts[:, None], self.labels.view(-1, self.K)[rows])[:, 0]

    # -- scores -----------------------------------------------------------------------------------------
    def _topk_full(self, q, slot, floor=None):
        """Top-k of target nodes q [N, C] (a ScreenQueries when screening) against every node of the
        (long-term) frame in ``slot``. Returns values [N, k'] and label rows [N, k'] (slot * N + node).
        ``floor`` [N]: scores that k other candidates reach (see ``screened_topk``)."""
        k = min(self.topk, self.N)
        keys = self.full_feats[slot]
        vals = torch.empty(self.N, k, dtype=self.dtype, device=self.device)
        rows = torch.empty(self.N, k, dtype=torch.long, device=self.device)
        if self.screen:
            t = self._t + 1                  # the target frame
            if t >= self._screen_resume.get(slot, 0):
                full = 0
                for a, b in self._node_chunks(self.N * 2):
                    v, i, n = screened_topk(q, self._screen_keys[slot], k, a, b,
                                            None if floor is None else floor[a:b])
                    vals[a:b], rows[a:b] = v, i + slot * self.N
                    full += n
                self.screen_rows[0] += self.N
                self.screen_rows[1] += full
                if full > SCREEN_GIVE_UP * self.N:   # mostly near-ties: cheaper unscreened for a while
                    self._screen_resume[slot] = t + 1 + SCREEN_PAUSE
                return vals, rows
            q = q.q
        for a, b in self._node_chunks(self.N * q.element_size()):
            v, i = torch.topk(q[a:b] @ keys.t(), k, dim=1)
            vals[a:b], rows[a:b] = v, i + slot * self.N
        return vals, rows

    def _node_chunks(self, per_node_bytes):
        """Target nodes in chunks of scores small enough to stay in cache (CPU) / the budget (GPU)."""
        cap = self.budget if self.device.type == 'cuda' else min(self.budget, CPU_BLOCK)
        n = max(1, int(cap // max(1, per_node_bytes)))
        return [(a, min(self.N, a + n)) for a in range(0, self.N, n)]

    def _window_scores(self, q, lo, hi):
        """Scores of every tile in ring slots lo..hi-1 against its region, [num_tiles, g, tile_nodes,
        region_nodes] (g = hi - lo), and their maxima over the g frames in ``self._max`` [num_tiles,
        tile_nodes, region_nodes] (+ the -inf sentinel). Tiles go in blocks that stay in cache from the
        regions' gather through the matmul to the maxima."""
        L, g, T, R = self.layout, hi - lo, self.layout.tile_nodes, self.layout.region_nodes
        size = L.num_tiles * T * R
        if self._scores is None or self._scores.numel() < g * size:   # kept: a fresh one costs page faults
            most = max(b - a for a, b in self._slot_chunks(1, self.video_len + 1))   # the largest chunk
            self._scores = None
            self._scores = torch.empty(max(g, most) * size, dtype=self.dtype, device=self.device)
        scores = self._scores[:g * size].view(L.num_tiles, g * T, R)
        if self._max is None:
            self._max = torch.empty(size + 1, dtype=self.dtype, device=self.device)
            self._max[size] = float('-inf')
        maxima = self._max[:size].view(L.num_tiles, T * R)
        cap = self.budget if self.device.type == 'cuda' else min(self.budget, CPU_BLOCK)
        n = max(1, min(L.num_tiles, int(cap // (R * (self.C + g * T) * q.element_size()))))
        for a in range(0, L.num_tiles, n):
            b = min(L.num_tiles, a + n)
            regions = q.index_select(0, L.region_index[a:b].reshape(-1)).view(b - a, R, self.C)
            keys = self.ring[a:b, lo:hi].reshape(b - a, g * T, self.C)
            out = scores[a:b]
            torch.bmm(keys, regions.transpose(1, 2), out=out)
            torch.amax(out.view(b - a, g, T * R), dim=1, out=maxima[a:b])
        return scores.view(L.num_tiles, g, T * R)

    def _topk_window(self, q, lo, hi, copies=None):
        """Joint top-k of every target node over the radius windows of ring slots lo..hi-1, each slot counted
        ``copies[slot]`` times where given (the padding). Returns values [N, k'] and label rows [N, k']."""
        L, N, M = self.layout, self.N, self.num_offsets
        scores = self._window_scores(q, lo, hi)                          # [tiles, g, T * R]
        g, TR = hi - lo, L.tile_nodes * L.region_nodes
        # the k positions (inside the radius) with the largest maxima over the frames
        kk = min(self.topk, M)
        best, pos = torch.topk(self._max.index_select(0, self.window_index.view(-1)).view(N, M), kk, dim=1)
        flat = self.window_index.gather(1, pos).long()                  # [N, kk] into [tiles, T * R] (+ sentinel)
        node = self.window_node.gather(1, pos).long()
        valid = best > float('-inf')
        flat = flat.masked_fill(~valid, 0)
        # the g frames' scores at those positions
        idx = (flat // TR * (g * TR) + flat % TR)[..., None] + torch.arange(g, device=self.device) * TR
        vals = scores.view(-1)[idx].masked_fill_(~valid[..., None], float('-inf'))   # [N, kk, g]
        slots = torch.arange(lo, hi, device=self.device)
        for slot, n in (copies or {}).items():                         # the padding's copies
            if lo <= slot < hi and n > 1:
                vals = torch.cat([vals, vals[..., slot - lo, None].expand(-1, -1, n - 1)], dim=2)
                slots = torch.cat([slots, slots[slot - lo, None].expand(n - 1)])
        G = vals.shape[2]
        v, i = torch.topk(vals.view(N, kk * G), min(self.topk, kk * G), dim=1)
        return v, slots[i % G] * N + node.gather(1, i // G)

    def _slot_chunks(self, lo, hi):
        """Ring slots lo..hi-1 in chunks whose scores fit the budget."""
        L = self.layout
        per_slot = L.num_tiles * L.region_nodes * L.tile_nodes * self.dtype.itemsize
        n = max(1, min(hi - lo, int(self.budget // per_slot)))
        chunks = -(-(hi - lo) // n)
        n = -(-(hi - lo) // chunks)
        return [(a, min(hi, a + n)) for a in range(lo, hi, n)]

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
        long_term, short_term = context_frames(t, self.video_len, self.protocol.long_mem, self._pad())
        q = feat.reshape(self.C, self.N).t().contiguous()               # [N, C]
        short_v, short_r = [], []    # first: their k-th best is a floor for the frames compared in full
        if short_term:
            copies = {self._ring_slot(f): n for f, n in Counter(short_term).items()}
            lo, hi = (0 if 0 in copies else 1), min(t, self.video_len + 1)   # ring slots of the short-term frames
            for a, b in self._slot_chunks(lo, hi):
                v, r = self._topk_window(q, a, b, copies)
                short_v.append(v)
                short_r.append(r)
        floor, queries = None, q
        if self.screen:
            queries = ScreenQueries(q)
            if short_v and sum(v.shape[1] for v in short_v) >= self.topk:
                floor = torch.topk(torch.cat(short_v, 1), self.topk, dim=1).values[:, -1]
        cand_v, cand_r = [], []
        for m, copies in Counter(long_term).items():
            v, r = self._topk_full(queries, self.long_term_slot.get(m, 0), floor)
            if copies > 1:
                v = v[:, None].expand(-1, copies, -1).reshape(self.N, -1)
                r = r[:, None].expand(-1, copies, -1).reshape(self.N, -1)
            cand_v.append(v)
            cand_r.append(r)
        for slot in self.correction_slots:
            v, r = self._topk_full(queries, slot, floor)
            cand_v.append(v)
            cand_r.append(r)

        vals, rows = torch.cat(cand_v + short_v, 1), torch.cat(cand_r + short_r, 1)
        k = self.topk
        if vals.shape[1] < k:   # fewer candidates than k: the release's masked fill-ins, weight 0
            pad = k - vals.shape[1]
            vals = torch.cat([vals, vals.new_full((self.N, pad), float('-inf'))], 1)
            rows = torch.cat([rows, rows.new_zeros((self.N, pad))], 1)
        if vals.shape[1] > k:
            vals, j = torch.topk(vals, k, dim=1)
            rows = rows.gather(1, j)
        wts = F.softmax(vals / self.temperature, dim=1)                  # [N, k]
        lbl = self.labels.view(-1, self.K)[rows]                         # [N, k, K]
        pred = torch.bmm(wts[:, None], lbl)[:, 0]                        # [N, K]

        if return_topk:
            slot_frame = torch.tensor(self.slot_frame, device=self.device)
            info = (slot_frame[rows // self.N], rows % self.N, vals / self.temperature)

        # the new frame enters the bank (after its context was used: its ring slot held frame t-L)
        if self.video_len > 0:
            self._store(self._ring_slot(t), t, feat, pred)
        if t in self.long_term_slot:
            self._store(self.long_term_slot[t], t, feat, pred)
        self._t, self._last_feat = t, feat
        pred = pred.view(self.h, self.w, self.K)
        return (pred, info) if return_topk else pred
