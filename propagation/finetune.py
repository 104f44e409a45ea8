"""Test-time adaptation (``test.py --finetune N``): a few steps of the CRW walk loss on one test video.

Before a video is propagated, a copy of the encoder takes N Adam steps of the training objective (palindrome
walks, cycle-consistency cross-entropy) on clips of that video's own frames; the video is propagated with the
copy and the next one starts again from the original weights (never modified). A step is a training step
(train.py): ``--finetune-batch`` clips of ``--finetune-clip-len`` frames by the frame-folder rule
(``FrameFolderDataset``), random-resized-cropped to ``--img-size``, augmented and cut into nodes on the device
(``BatchAugment``), through ``model.CRW`` with the checkpoint's head (``selfsim_fc``, if its shape fits, else a
fresh one) and BatchNorm in training mode. The settings are the checkpoint's saved training ``args``, else
train.py's defaults with test.py's ``--temperature``. Every random draw comes from generators seeded by
``--manualSeed`` (the same for every video): runs are reproducible and the global RNG is left untouched.
"""
import copy
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from crw.data.images import list_frames
from crw.data.training.gpu_augment import BatchAugment
from crw.data.training.sampler import mix_seed
from crw.data.training.transforms import FrameTransform, parse_frame_transforms
from crw.data.training.video_dataset import FrameFolderDataset
from crw.model import CRW
from crw.propagation.folding import fold_batchnorm
from crw.utils.arguments import get_train_args_parser, parse_frame_aug
from crw.utils.checkpoint import checkpoint_args, clean_state_dict, load_checkpoint
from crw.utils.errors import CRWError

HEAD_PREFIX = 'selfsim_fc.'
# training settings the adaptation copies from the checkpoint's args (train.py's flag names)
TRAIN_KEYS = ('img_size', 'frame_aug', 'frame_transforms', 'patch_size', 'temp', 'dropout', 'featdrop', 'flip',
              'zero_diagonal', 'frame_skip', 'head_depth')


@dataclass
class FinetuneSettings:
    """Everything one adaptation needs. ``train`` holds the training settings (TRAIN_KEYS)."""
    steps: int
    lr: float = 1e-5
    clip_len: int = 4
    batch: int = 4
    seed: int = 777
    train: dict = field(default_factory=dict)


def training_settings(ckpt_args=None, temperature=0.07, head_depth=-1):
    """The training settings (TRAIN_KEYS) for the adaptation: the checkpoint's training args where it has
    them, else train.py's defaults with ``temperature`` as the walk temperature. ``head_depth`` >= 0
    (test.py's --head-depth) overrides the head's depth."""
    parser = get_train_args_parser()
    defaults = {k: parser.get_default(k) for k in TRAIN_KEYS}
    defaults['temp'] = temperature
    src = vars(ckpt_args) if ckpt_args is not None and not isinstance(ckpt_args, dict) else (ckpt_args or {})
    out = {k: src.get(k, defaults[k]) if src.get(k) is not None else defaults[k] for k in TRAIN_KEYS}
    if head_depth is not None and head_depth >= 0:
        out['head_depth'] = head_depth
    try:
        parse_frame_aug(out['frame_aug'])     # the spellings training accepts, nodes and augmentation alike
    except CRWError as e:
        raise CRWError(f'the checkpoint\'s training args: {e}') from e
    ps = list(out['patch_size'])
    out['patch_size'] = ps + [3] if len(ps) == 2 else ps
    return out


class VideoAdapter:
    """``adapt(encoder, frames_dir)`` -> (adapted copy of the encoder in eval mode, info dict)."""

    def __init__(self, settings, device, head_state=None):
        if settings.steps <= 0:
            raise CRWError(f'--finetune {settings.steps}: the number of adaptation steps must be positive')
        if settings.clip_len < 3:
            raise CRWError(f'--finetune-clip-len {settings.clip_len}: the walk needs clips of at least 3 frames')
        if settings.batch < 1 or settings.lr <= 0:
            raise CRWError('--finetune-batch must be >= 1 and --finetune-lr positive')
        self.settings = settings
        self.device = torch.device(device)
        self.head_state = head_state or {}
        tr = settings.train
        ft = parse_frame_transforms(tr['frame_transforms'])
        self.transform = FrameTransform(tr['img_size'], crop='crop' in ft, flip='flip' in ft)
        self.augment = BatchAugment(frame_aug=tr['frame_aug'], frame_transforms=tr['frame_transforms'],
                                    patch_size=tr['patch_size'], img_size=tr['img_size'])

    @classmethod
    def from_args(cls, args, device):
        """From test.py's namespace: --finetune, --finetune-lr/-clip-len/-batch, --manualSeed, --resume (its
        training args and head), --temperature, --head-depth."""
        ckpt_args, head = None, {}
        if args.resume:
            ckpt = load_checkpoint(args.resume, map_location='cpu', trust=args.trust_checkpoint)
            head = {k[len(HEAD_PREFIX):]: v for k, v in clean_state_dict(ckpt['model']).items()
                    if k.startswith(HEAD_PREFIX)}
            ckpt_args = checkpoint_args(ckpt)
        train = training_settings(ckpt_args, args.temperature, args.head_depth)
        settings = FinetuneSettings(steps=args.finetune, lr=args.finetune_lr, clip_len=args.finetune_clip_len,
                                    batch=args.finetune_batch, seed=args.manualSeed, train=train)
        return cls(settings, device, head)

    def describe(self):
        s, tr = self.settings, self.settings.train
        nodes = 'grid' if parse_frame_aug(tr['frame_aug'])[0] else 'dense'
        return (f'test-time adaptation: {s.steps} Adam steps, lr {s.lr:g}, {s.batch} clips of {s.clip_len} frames '
                f'per step, {nodes} nodes at {tr["img_size"]}px, temp {tr["temp"]:g}, edge dropout {tr["dropout"]:g}, '
                f'head depth {tr["head_depth"]}')

    @staticmethod
    def summary(info):
        """One line about an ``adapt`` result: time, first and last walk loss, where the head came from."""
        return (f"adapted in {info['seconds']:.1f} s (walk loss {info['losses'][0]:.3f} -> {info['losses'][-1]:.3f}, "
                f"{info['head']} head)")

    def build_model(self, encoder):
        """CRW whose encoder is a deep copy of ``encoder`` and whose head is the checkpoint's (when it fits)
        or a fresh one; in training mode on the device. Returns (model, head_source)."""
        if getattr(encoder, 'bn_folded', False):
            raise CRWError('test-time adaptation needs the encoder\'s BatchNorm layers: load it with '
                           'load_encoder(..., fold_bn=False)')
        tr = self.settings.train
        model = CRW(SimpleNamespace(head_depth=tr['head_depth'], temp=tr['temp'], dropout=tr['dropout'],
                                    featdrop=tr['featdrop'], flip=tr['flip'], zero_diagonal=tr['zero_diagonal']),
                    encoder=copy.deepcopy(encoder))
        head_source = 'none' if tr['head_depth'] < 0 else 'fresh'
        own = model.selfsim_fc.state_dict()
        if own and self.head_state and set(own) == set(self.head_state) and all(
                own[k].shape == self.head_state[k].shape for k in own):
            model.selfsim_fc.load_state_dict(self.head_state)
            head_source = 'checkpoint'
        return model.to(self.device).train(), head_source

    def clip_source(self, frames_dir):
        """The video's frames as a one-folder training dataset: item (0, seed) -> uint8 clip [T, 3, S, S]."""
        n = len(list_frames(frames_dir))
        if n < self.settings.clip_len:
            raise CRWError(f'{frames_dir}: {n} frames, fewer than --finetune-clip-len {self.settings.clip_len}')
        return FrameFolderDataset([frames_dir], [n], self.settings.clip_len, self.settings.train['frame_skip'],
                                  self.transform)

    def sample_clips(self, source, step):
        """[batch, clip_len, 3, S, S] uint8 clips for one step (seeded by the step)."""
        return torch.stack([source[(0, mix_seed(self.settings.seed, step, b))] for b in range(self.settings.batch)])

    def adapt(self, encoder, frames_dir):
        """N steps of the walk loss on clips of ``frames_dir`` with a copy of ``encoder``. Returns (adapted
        encoder in eval mode, BatchNorm folded, {'seconds', 'losses' [N], 'head'})."""
        s = self.settings
        t0 = time.time()
        source = self.clip_source(frames_dir)
        devices = [self.device.index or 0] if self.device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(mix_seed(s.seed, 0x7E57))
            if self.device.type == 'cuda':
                torch.cuda.manual_seed(mix_seed(s.seed, 0x7E57))
            model, head = self.build_model(encoder)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=s.lr)     # no weight decay, as training's Adam
            losses = []
            for step in range(s.steps):
                clips = self.sample_clips(source, step).to(self.device, non_blocking=True)
                video = self.augment(clips, mix_seed(s.seed, step, 0xA06))
                _, loss, _ = model(video)
                if not torch.isfinite(loss):
                    raise CRWError(f'{frames_dir}: non-finite walk loss at adaptation step {step}; '
                                   'lower --finetune-lr')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        adapted = fold_batchnorm(model.encoder.eval())
        for p in adapted.parameters():
            p.requires_grad_(False)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return adapted, {'seconds': time.time() - t0, 'losses': np.array(losses), 'head': head}
