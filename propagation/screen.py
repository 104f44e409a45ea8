"""Exact top-k against a whole frame, screened in bfloat16 (CPUs with native bf16 matrix multiply).

The float32 scores q . k of every target node against every node of a long-term frame cost a full GEMM
(21 GFLOP a 480p frame). A bf16 GEMM runs about twice as fast on CPUs with native bf16 (AVX512-BF16, AMX),
and its error is bounded: with q = qh + ql (qh = bf16(q)) and likewise k,

    qh . kh - q . k = -(qh . kl + ql . k),   |qh . kl + ql . k| <= |qh| max|kl| + |ql| max|k|  (= e_in)

plus float32 accumulation and one rounding of the result to bf16. The GEMM computes qh . kh - 1 (a column
of -1 against a column of 1, both exact in bf16): the top scores of L2-normalised features lie near 1, so
the result is near 0 and its rounding small. Each score a is then within e(a) = e_in + 2^-7 |a| of the
exact score minus 1.

Per target node: the kp best bf16 scores are re-scored exactly (float32). The other nodes of the frame
are provably irrelevant when their best bound a_kp + e(a_kp) lies below
  * the exact k-th best's lower bound a_k - e(a_k) (they cannot be in the frame's top-k), or
  * ``floor``, a score that k other candidates of the same target already reach (they cannot be in the
    joint top-k over all context frames).
Nodes where neither holds (near-ties among many nodes: sky, water) get the full float32 row. The result
equals the float32 top-k up to the order of float summation (differences ~1e-7).
"""
import time

import torch

SCREEN_K = 16   # bf16 candidates re-scored per target node
U_OUT = 2.0 ** -7   # bound on the bf16 result's relative rounding (2u with u = 2^-8: margin for 1/(1-u))
_SPEED = {}          # device capability -> whether the bf16 GEMM is faster than float32 (measured once)


def _pad_to(width):
    return -width % 32


def bf16_is_faster():
    """Whether a bf16 GEMM beats a float32 one on this CPU (measured once per process on a small problem;
    False where bf16 is emulated or unsupported)."""
    key = torch.backends.cpu.get_cpu_capability()
    if key not in _SPEED:
        try:
            a, b = torch.randn(512, 288), torch.randn(288, 1024)
            ah, bh = a.bfloat16(), b.bfloat16()

            def best(f):
                f()
                t = []
                for _ in range(3):
                    s = time.perf_counter()
                    f()
                    t.append(time.perf_counter() - s)
                return min(t)
            _SPEED[key] = best(lambda: ah @ bh) < 0.75 * best(lambda: a @ b)
        except RuntimeError:
            _SPEED[key] = False
    return _SPEED[key]


class ScreenKeys:
    """The bf16 screen of one frame's keys [N, C] (float32, row-major nodes): kh - with a column of ones -
    and the norms of the bound."""

    def __init__(self, keys):
        N, C = keys.shape
        kh = keys.bfloat16()
        self.keys = keys
        self.aug = torch.cat([kh, kh.new_ones(N, 1), kh.new_zeros(N, _pad_to(C + 1))], 1).t().contiguous()
        self.low_max = float((keys - kh.float()).norm(dim=1).max())
        self.norm_max = float(keys.norm(dim=1).max())
        self.high_max = float(kh.float().norm(dim=1).max())


class ScreenQueries:
    """The target nodes q [N, C] (float32) in bf16 with a column of -1, and their bound e_in [N] against
    ``keys`` (a ScreenKeys)."""

    def __init__(self, q):
        N, C = q.shape
        qh = q.bfloat16()
        self.q, self.C = q, C
        self.aug = torch.cat([qh, qh.new_full((N, 1), -1), qh.new_zeros(N, _pad_to(C + 1))], 1)
        self.high = qh.float().norm(dim=1)
        self.low = (q - qh.float()).norm(dim=1)

    def bound(self, keys, a, b):
        """e_in [b - a] of target nodes a..b-1 against ``keys`` (accumulation over C + 1 products included)."""
        acc = (self.C + 2) * 2.0 ** -23 * (self.high[a:b] * keys.high_max + 1)
        return self.high[a:b] * keys.low_max + self.low[a:b] * keys.norm_max + acc


def screened_topk(queries, keys, k, a, b, floor=None, kp=SCREEN_K):
    """Exact top-k (values [n, k], node ids [n, k]) of target nodes a..b-1 (n = b - a) of ``queries`` against
    every node of ``keys``; ``floor`` [n] (optional): a score k other candidates of each target reach, below
    which nodes may be left out (their place is then taken by nodes that score below the floor too, or by
    -inf where no node can reach it).
    Returns (values, ids, number of nodes that needed the full float32 row)."""
    nodes, n = keys.keys.shape[0], b - a
    kp = min(max(kp, k), nodes)
    scores = queries.aug[a:b] @ keys.aug                                # [n, nodes] bf16: exact score - 1
    e_in = queries.bound(keys, a, b)
    rows = None
    if floor is not None:   # targets whose best bf16 score is too low to reach the floor take nothing here
        reach = floor - 1 - e_in
        tau = torch.where(reach <= 0, reach / (1 - U_OUT), reach / (1 + U_OUT))   # a < tau: exact < floor
        rows = (scores.amax(1).float() >= tau).nonzero()[:, 0]
        if len(rows) == n:
            rows = None
        else:
            scores, e_in, floor = scores[rows], e_in[rows], floor[rows]
    q = queries.q[a:b] if rows is None else queries.q[a:b][rows]
    approx, cand = torch.topk(scores, kp, dim=1)
    approx = approx.float()
    outside = approx[:, -1] + e_in + U_OUT * approx[:, -1].abs()        # best exact score - 1 left out
    if kp == nodes:
        outside.fill_(float('-inf'))
    needed = approx[:, k - 1] - e_in - U_OUT * approx[:, k - 1].abs()   # the k-th best's exact score - 1, at least
    if floor is not None:
        needed = torch.maximum(needed, floor - 1)
    exact = torch.bmm(keys.keys[cand], q[:, :, None])[..., 0]          # [n', kp]
    vals, j = torch.topk(exact, k, dim=1)
    ids = cand.gather(1, j)
    full = (outside >= needed).nonzero()[:, 0]
    if len(full):
        vals[full], ids[full] = torch.topk(q[full] @ keys.keys.t(), k, dim=1)
    if rows is not None:
        vals = vals.new_full((n, k), float('-inf')).index_copy_(0, rows, vals)
        ids = ids.new_zeros((n, k)).index_copy_(0, rows, ids)
    return vals, ids, len(full)
