"""The release's palindrome walk loss, written the way the release wrote it: the affinity tensor is masked in
place (so a backward transition also sees the forward mask), and every palindrome is multiplied out from
scratch. model.py computes the same thing with prefix products; the tests compare the two, and
bench/train_throughput.py times this one as the release's cost."""
import torch
import torch.nn.functional as F

EPS = 1e-20


def release_walks(q, tau, p, flip=False, masks=None):
    """q [B, C, T, N] unit nodes -> (walks [T-2, B, N, N], mean cross-entropy loss).

    p: edge dropout rate; masks: optional (forward, backward) bool [B, T-1, N, N] used instead of drawing."""
    B, C, T, N = q.shape
    As = torch.einsum('bctn,bctm->btnm', q[:, :, :-1], q[:, :, 1:]).float().clone()

    def stoch(A, m):
        if p > 0 or m is not None:
            A[(torch.rand_like(A) < p) if m is None else m] = -1e20
        return torch.softmax(A / tau, dim=-1)

    A12s = [stoch(As[:, i], None if masks is None else masks[0][:, i]) for i in range(T - 1)]
    A21s = [stoch(As[:, i].transpose(-1, -2), None if masks is None else masks[1][:, i]) for i in range(T - 1)]
    walks, losses = [], []
    target = torch.arange(N, device=q.device)[None].repeat(B, 1).view(-1)
    for i in range(1, len(A12s)):
        g = A12s[:i + 1] + A21s[:i + 1][::-1]
        aar = aal = g[0]
        for a in g[1:]:
            aar, aal = aar @ a, a @ aal
        W = aal if flip else aar
        walks.append(W)
        losses.append(F.cross_entropy(torch.log(W + EPS).flatten(0, -2), target))
    return torch.stack(walks), sum(losses) / len(losses)
