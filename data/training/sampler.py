"""Epoch order of the training clips, with per-sample seeds, exact mid-epoch resume and rank sharding.

An epoch (RandomClipSampler semantics of the torchvision references, which the release used): from every
video draw at most ``clips_per_video`` of its clips uniformly without replacement, then shuffle all drawn
clips together. Everything comes from a ``torch.Generator`` seeded with ``mix_seed(seed, epoch)``, so the
order is a pure function of (seed, epoch).

Sharding (as ``DistributedSampler``): the epoch's sequence is padded by repeating it from its start to a
multiple of ``world_size``; rank r takes positions r, r + W, r + 2W, ... Each yielded item is
``(clip_index, sample_seed)`` with ``sample_seed = mix_seed(seed, epoch, position)``, position being the
index in the padded global sequence — so a clip's augmentation does not depend on the number of ranks, the
DataLoader workers or where an interrupted epoch was resumed.

``set_epoch(e)`` selects the epoch and resets the start to 0; ``set_start(k)`` then skips the first ``k``
samples this rank would yield (without touching the data): ``len(sampler)`` counts what is left.
"""
import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts):
    """A 63-bit seed that is a fixed hash of the integers ``parts`` (order matters)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def sample_subsets(counts, max_per_group, generator):
    """For each group g with ``counts[g]`` members, ``min(counts[g], max_per_group)`` distinct member indices
    drawn uniformly (Floyd's algorithm, vectorised over groups). Returns the global indices (group offset +
    member), group after group."""
    counts = torch.as_tensor(counts, dtype=torch.int64).reshape(-1)
    V = counts.numel()
    if V == 0:
        return torch.zeros(0, dtype=torch.int64)
    k = counts.clamp(max=max_per_group)
    K = int(k.max()) if V else 0
    chosen = torch.full((V, max(K, 1)), -1, dtype=torch.int64)
    for s in range(K):
        active = s < k
        j = counts - k + s                                   # Floyd: j runs over n-k .. n-1
        u = torch.rand(V, generator=generator, dtype=torch.float64)
        t = torch.minimum((u * (j + 1).to(torch.float64)).floor().to(torch.int64), j.clamp(min=0))
        dup = (chosen[:, :s] == t[:, None]).any(dim=1) if s else torch.zeros(V, dtype=torch.bool)
        chosen[:, s] = torch.where(active, torch.where(dup, j, t), torch.full_like(j, -1))
    offsets = torch.cumsum(counts, 0) - counts
    mask = chosen >= 0
    return (chosen + offsets[:, None])[mask]


class ClipSampler(torch.utils.data.Sampler):
    """Yields ``(clip_index, sample_seed)`` for one rank; see the module docstring."""

    def __init__(self, clip_counts, clips_per_video, seed=0, rank=0, world_size=1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} / world size {world_size}')
        self.clip_counts = torch.as_tensor(clip_counts, dtype=torch.int64).reshape(-1).clone()
        self.clips_per_video = int(clips_per_video)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch, self.start = 0, 0
        self.epoch_size = int(self.clip_counts.clamp(max=self.clips_per_video).sum())  # before padding
        self.num_per_rank = -(-self.epoch_size // self.world_size)

    def set_epoch(self, epoch):
        """Select the epoch; resets the start to 0 (call ``set_start`` after this to resume mid-epoch)."""
        self.epoch, self.start = int(epoch), 0

    def set_start(self, k):
        """Skip the first ``k`` samples this rank yields in the current epoch."""
        k = int(k)
        if not 0 <= k <= self.num_per_rank:
            raise ValueError(f'set_start({k}): this rank has {self.num_per_rank} samples per epoch')
        self.start = k

    def epoch_order(self, epoch=None):
        """The epoch's global clip sequence (before padding and sharding), a 1-D int64 tensor."""
        epoch = self.epoch if epoch is None else int(epoch)
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, epoch, 0x5A4D))
        picked = sample_subsets(self.clip_counts, self.clips_per_video, g)
        return picked[torch.randperm(picked.numel(), generator=g)]

    def __len__(self):
        return self.num_per_rank - self.start

    def __iter__(self):
        order = self.epoch_order()
        n = order.numel()
        if n == 0:
            return iter(())
        order = order.tolist()
        W, r, epoch, seed = self.world_size, self.rank, self.epoch, self.seed
        start, stop = self.start, self.num_per_rank

        def gen():
            for j in range(start, stop):
                pos = r + j * W                    # position in the padded global sequence
                yield order[pos % n], mix_seed(seed, epoch, pos)
        return gen()


def build_train_sampler(dataset, args, rank=0, world_size=1):
    """The sampler of ``build_train_dataset(args)``: at most ``--clips-per-video`` clips per video for videos,
    one clip per folder for frame folders; seeded with ``--seed``."""
    per_video = args.clips_per_video if getattr(dataset, 'branch', '') not in ('frame_list', 'frame_folders') else 1
    return ClipSampler(dataset.clip_counts, per_video, seed=getattr(args, 'seed', 0), rank=rank,
                       world_size=world_size)
