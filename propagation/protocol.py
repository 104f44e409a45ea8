"""The label-propagation protocol, shared by the reference and the windowed implementations.

For target frame t >= 1 the context is the long-term memory (``--long-mem``, frame 0 by default) plus the
``--videoLen`` L previous frames, where frames before 0 are copies of frame 0 (the release padded the
video with L copies of frame 0; the duplicates matter for top-k and are kept). Every target node is
compared with the context nodes (cosine similarity / tau); short-term context nodes must lie strictly
within ``--radius`` feature cells of the target node (the long-term frames are not restricted); the
``--topk`` largest scores over all remaining context nodes jointly are softmaxed and vote with the context
frames' soft labels.

Long-term memory ids other than 0 are frame indices: frame m is in the context of every target t > m (with
its predicted soft labels); for targets t <= m its place is taken by frame 0. (The release's index bank used
frame m+1, and only from target m+L+1 on.)
"""
import math
from dataclasses import dataclass

import torch

from crw.utils.errors import CRWError

MASK_VALUE = -1e10   # the release's additive radius mask


@dataclass(frozen=True)
class Protocol:
    """Label-propagation settings; test.py's flags in brackets. Defaults: the README's protocol, what
    ``test.py --video`` uses (``--filelist`` keeps the release's temperature 0.07)."""
    topk: int = 10               # [--topk] context nodes that vote
    video_len: int = 20          # [--videoLen] short-term context frames before the target
    radius: float = 12.0         # [--radius] short-term context nodes lie strictly within it (feature cells)
    temperature: float = 0.05    # [--temperature] softmax temperature (the release's test.py default: 0.07)
    long_mem: tuple = (0,)       # [--long-mem] frames always in the context

    def __post_init__(self):
        object.__setattr__(self, 'long_mem', tuple(int(m) for m in self.long_mem))
        if self.topk < 1:
            raise CRWError(f'--topk must be >= 1, got {self.topk}')
        if not self.radius > 0:
            raise CRWError(f'--radius {self.radius:g}: the context radius must be positive, in feature cells '
                           '(README: 12)')
        if not self.temperature > 0:
            raise CRWError(f'--temperature {self.temperature:g}: the softmax temperature must be positive '
                           '(README: 0.05)')
        if self.video_len < 0:
            raise CRWError(f'--videoLen must be >= 0, got {self.video_len}')
        if any(m < 0 for m in self.long_mem):
            raise CRWError(f'--long-mem frames must be >= 0, got {list(self.long_mem)}')
        if self.video_len == 0 and not self.long_mem:
            raise CRWError('no context: --videoLen is 0 and there is no --long-mem frame')

    def check_context(self, h, w):
        """Raise CRWError when --topk exceeds the context nodes of an h x w feature map (the long-term frames
        plus --videoLen frames; the release's top-k failed there)."""
        n = (len(self.long_mem) + self.video_len) * h * w
        if self.topk > n:
            raise CRWError(f'--topk {self.topk} exceeds the {n} context nodes ({len(self.long_mem)} long-term + '
                           f'{self.video_len} frames of {h}x{w} feature cells); use --topk {n} or less')

    @classmethod
    def from_args(cls, args):
        """From test.py's argument namespace."""
        return cls(topk=args.topk, video_len=args.videoLen, radius=args.radius, temperature=args.temperature,
                   long_mem=tuple(args.long_mem))


def context_frames(t, video_len, long_mem=(0,), pad=0):
    """Context of target frame t >= 1 as frame indices: (long-term ids, short-term ids oldest first).

    Short-term: t-L ... t-1, where indices <= 0 are copies of frame ``pad`` (the padding: the release's is
    frame 0; after a correction, the corrected frame, see ``correct`` in the propagators; duplicates are
    kept). Long-term id m: frame m once it is in the past (m < t), frame 0 before that."""
    lm = [int(m) if int(m) < t else 0 for m in long_mem]
    st = [j if j > 0 else pad for j in range(t - video_len, t)]
    return lm, st


def _inside_radius(d2, radius):
    """The release's test: Euclidean distance (float32 sqrt of the squared integer distance) strictly < R."""
    return d2.to(torch.float32) ** 0.5 < radius


def radius_offsets(radius, h=None, w=None):
    """[M, 2] long (dy, dx): the grid offsets strictly inside ``radius``, row-major. With the feature map's
    size h x w, only offsets that join two of its nodes (|dy| < h, |dx| < w): a radius beyond the map costs
    no more than the whole map."""
    r = math.ceil(radius)
    ry, rx = (r if h is None else min(r, h - 1)), (r if w is None else min(r, w - 1))
    dy, dx = torch.meshgrid(torch.arange(-ry, ry + 1), torch.arange(-rx, rx + 1), indexing='ij')
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


def default_budget(device):
    """Bytes one affinity chunk may take (target nodes are processed in chunks of this size). On the CPU, 320 MB
    holds the windowed scores of the 20 short-term frames of a 480p map at once (303 MB: one pass, not two)."""
    return (1024 if torch.device(device).type == 'cuda' else 320) * 2 ** 20


def check_first_frame(first_feat, first_labels):
    """Shapes of the first frame: features [C, h, w], labels [h, w, K]."""
    if first_feat.dim() != 3:
        raise ValueError(f'first-frame features must be [C, h, w], got {tuple(first_feat.shape)}')
    if tuple(first_labels.shape[:2]) != tuple(first_feat.shape[1:]) or first_labels.dim() != 3:
        raise ValueError(f'labels {tuple(first_labels.shape)} do not match the feature map '
                         f'{first_feat.shape[1]}x{first_feat.shape[2]} (expected [h, w, K])')
