"""The release's label propagation, kept as the reference implementation (``test.py --dense``).

It keeps every frame's features and soft labels, as the release did; for target t it stacks the context
frames (long-term first, then the L short-term ones, duplicates included), computes every affinity, adds
-1e10 outside the radius on the short-term part, divides by tau, takes the top-k over all context nodes
jointly, softmaxes them and votes. Target nodes are processed in chunks to bound the affinity's size; the
stored history still grows with the video, which is why ``propagation.windowed`` is the default.

Shapes: features [C, h, w] per frame (already L2-normalised if wanted), label maps [h, w, K].
"""
import torch
import torch.nn.functional as F

from crw.propagation.protocol import MASK_VALUE, check_first_frame, context_frames, default_budget, radius_mask


class ReferencePropagator:
    """``ReferencePropagator(first_feat, first_labels, protocol)``, then ``step(feat)`` for frames 1, 2, ...
    in order; each returns the soft label map [h, w, K] of that frame."""

    def __init__(self, first_feat, first_labels, protocol, budget_bytes=None):
        check_first_frame(first_feat, first_labels)
        C, h, w = first_feat.shape
        protocol.check_context(h, w)
        self.protocol = protocol
        self.h, self.w, self.N, self.K = h, w, h * w, first_labels.shape[-1]
        dev = first_feat.device
        self.budget = budget_bytes or default_budget(dev)
        self.feats = [first_feat.reshape(C, self.N)]
        self.labels = [first_labels.reshape(self.N, self.K).to(first_feat.dtype)]
        # additive mask [context node, target node]: 0 inside the radius, -1e10 outside
        self.mask = torch.zeros(self.N, self.N, dtype=first_feat.dtype, device=dev)
        self.mask.masked_fill_(~radius_mask(h, w, protocol.radius).to(dev), MASK_VALUE)
        self.corrections = []   # see correct()

    @property
    def t(self):
        """Index of the last frame propagated (0 before the first step)."""
        return len(self.feats) - 1

    def add_labels(self, n):
        """Append ``n`` label channels (objects that appear later), zero in every stored frame."""
        self.labels = [torch.cat([lab, lab.new_zeros(lab.shape[0], n)], dim=1) for lab in self.labels]
        self.K += n

    def set_labels(self, labels):
        """Replace the soft labels of the frame last stepped (or frame 0) by ``labels`` [h, w, K]."""
        self.labels[-1] = labels.reshape(self.N, self.K).to(self.labels[-1])

    def correct(self, labels):
        """The frame last stepped is corrected to ``labels`` [h, w, K] (see WindowedPropagator.correct): it
        becomes a long-term frame, and the short-term frames before it that were not annotated take the labels
        it propagates to them in one step (top-k inside the radius)."""
        self.set_labels(labels)
        t, L = self.t, self.protocol.video_len
        annotated = {0, *self.corrections}
        for j in range(max(1, t - L + 1), t):
            if j not in annotated:
                self.labels[j] = self._vote(self.feats[j], [t], 0)[0]
        self.corrections.append(t)

    def _vote(self, q, ids, n_long, return_topk=False):
        """Soft labels [N, K] of target nodes q [C, N] from context frames ``ids`` (the first ``n_long``
        compared in full, the others inside the radius): affinities / tau, joint top-k, softmax, vote.
        Returns (labels, [(top-k context indices, logits)] per chunk if return_topk)."""
        p, N, k, n_ctx = self.protocol, self.N, self.protocol.topk, len(ids)
        keys = torch.cat([self.feats[j] for j in ids], dim=1)            # [C, n*N]
        ctx_lbls = torch.cat([self.labels[j] for j in ids])              # [n*N, K]
        pred = torch.empty(N, self.K, dtype=q.dtype, device=q.device)
        sel = []
        chunk = max(1, self.budget // (n_ctx * N * q.element_size() * 2))
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            # [target, context frame, context node]: the release's affinity, target-major so that the
            # top-k runs along contiguous rows (same values, much faster than along dim 0)
            A = (q[:, a:b].t() @ keys).view(b - a, n_ctx, N)
            A[:, n_long:] += self.mask[:, a:b].t()[:, None]
            A /= p.temperature
            A = A.view(b - a, n_ctx * N)
            vals, idx = torch.topk(A, k, dim=1)                          # [nb, k]
            wts = F.softmax(vals, dim=1)
            pred[a:b] = (ctx_lbls[idx] * wts[..., None]).sum(1)
            if return_topk:
                sel.append((idx, vals))
        return pred, sel

    def step(self, feat, return_topk=False):
        """Predict the next frame from its features [C, h, w] -> soft labels [h, w, K]
        (and, with return_topk, (frame ids [N, k], node ids [N, k], logits [N, k]) of the chosen context)."""
        p = self.protocol
        t = len(self.feats)
        lm, st = context_frames(t, p.video_len, p.long_mem, self.corrections[-1] if self.corrections else 0)
        lm = lm + self.corrections
        ids = lm + st
        q = feat.reshape(feat.shape[0], self.N)
        pred, sel = self._vote(q, ids, len(lm), return_topk)
        self.feats.append(q)
        self.labels.append(pred)
        pred = pred.view(self.h, self.w, self.K)
        if not return_topk:
            return pred
        idx = torch.cat([s[0] for s in sel])
        vals = torch.cat([s[1] for s in sel])
        frame_of_slot = torch.tensor(ids, device=idx.device)
        return pred, (frame_of_slot[idx // self.N], idx % self.N, vals)
