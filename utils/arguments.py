"""Command-line arguments of the training and test entry points: one parser each, the grammar of their flags
(``parse_frame_aug``) and every check that needs only the values.

The flags, their spellings and their defaults are the ones of the videowalk release, so that its commands
keep working. ``train_args(argv)`` / ``test_args(argv)`` parse a list (default: the command line) and
return the namespace, exactly like the release's functions of the same name. The checks that need the model
(the encoder's smallest input) are in ``cli.py``, which train.py and test.py parse with: utils/ imports nothing
above it.
"""
import argparse
import os
import re
import sys

from utils.errors import CRWError


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (the flag and what to do), not the whole usage block."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


FRAME_AUG_WORDS = ('grid', 'cj', 'flip', 'none')


def parse_frame_aug(spec):
    """``--frame-aug`` -> ``(grid, cj, flip)`` booleans.

    The release looked for the substrings ``grid``, ``cj`` and ``flip`` anywhere in the string, so ``grid``,
    ``gridcj``, ``grid+flip``, ``grid_cj_flip``, ``cj``, ``flip`` all had a meaning, and ``''`` or ``none``
    (its documented value) meant whole frames. The same spellings are accepted here; anything else left after
    removing those words and the separators ``+ - _ , /`` and spaces (a typo such as ``gird``) is refused
    with CRWError instead of silently training on whole frames.
    """
    spec = spec or ''
    rest = spec.lower()
    for word in FRAME_AUG_WORDS:
        rest = rest.replace(word, ' ')
    rest = re.sub(r'[+\-_,/\s]+', ' ', rest).strip()
    if rest:
        extra = 'randcrop was never finished in the release; ' if 'randcrop' in spec.lower() else ''
        raise CRWError(f"--frame-aug {spec!r}: unknown part {rest.split()[0]!r}; {extra}combine grid, cj and flip "
                       "(e.g. grid, gridcj, grid+flip, cj) or use none/'' for whole frames")
    low = spec.lower()
    return 'grid' in low, 'cj' in low, 'flip' in low


def _positive_clip_len(value):
    v = int(value)
    if v <= 2:
        raise argparse.ArgumentTypeError(
            f"--clip-len {v}: the random walk needs at least 3 frames (T-2 walks), use --clip-len 3 or more")
    return v


def get_train_args_parser(add_help=True):
    p = _Parser('CRW training', add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    p.add_argument('--data-path', default=None,
                   help='Kinetics-layout root (X/train_256/<class>/<video>.mp4), a folder of class folders of '
                        'videos, a folder of frame folders, or a text file "<frames folder> <num frames>" per line')
    p.add_argument('--clip-len', default=8, type=_positive_clip_len, metavar='T',
                   help='frames per clip; the walk has T-2 palindromes (the README trains with 4)')
    p.add_argument('--clips-per-video', default=5, type=int,
                   help='at most this many clips are drawn per video per epoch (Kinetics sampler)')
    p.add_argument('--frame-skip', default=8, type=int,
                   help='videos: frames per second clips are resampled to; frame folders: gap between frames')
    p.add_argument('--cache-dataset', action='store_true',
                   help='cache the video metadata scan (hours for Kinetics-400) so that the next start takes seconds')
    p.add_argument('--fast-test', action='store_true', help='debug: batch 1, no workers, no DataParallel')
    p.add_argument('-j', '--workers', default=10, type=int, help='data loading processes (decoding + frame crops)')
    # augmentation
    p.add_argument('--img-size', default=256, type=int, help='frames are cropped/resized to this square size')
    p.add_argument('--frame-transforms', default='crop', type=str,
                   help="frame-level augmentation, '+'-or-substring list of: crop (random resized crop), cj, flip")
    p.add_argument('--frame-aug', default='', type=str,
                   help="'grid': 7x7 grid of 64x64 patches, each a node (README setting); '' or none: every feature "
                        "cell is a node; add cj / flip (gridcj, grid+flip, cj, ...) for colour jitter / flips per "
                        "patch (grid) or per frame")
    p.add_argument('--patch-size', default=[64, 64, 3], type=int, nargs='+', help='grid patch size (H W C)')
    # model
    p.add_argument('--model-type', default='scratch', type=str,
                   help='scratch (ResNet-18, reflect padding) | scratch_zeropad | imagenet18 (needs local weights)')
    p.add_argument('--imagenet-weights', default='', type=str,
                   help='path of torchvision resnet18 ImageNet weights for --model-type imagenet18 '
                        '(default: the torch hub cache); nothing is downloaded')
    p.add_argument('--temp', default=0.07, type=float, help='softmax temperature of the transitions (README: 0.05)')
    p.add_argument('--dropout', default=0.0, type=float, help='edge dropout rate on the affinities (README: 0.1)')
    p.add_argument('--featdrop', default=0.0, type=float, help='dropout on the node feature maps')
    p.add_argument('--head-depth', default=0, type=int, help='hidden layers of the MLP head; 0 = linear, <0 = none')
    p.add_argument('--remove-layers', default=[], nargs='*', type=str,
                   help='ResNet layers to drop (e.g. layer4); none while training')
    p.add_argument('--zero-diagonal', action='store_true', help='zero the diagonal of the affinities')
    p.add_argument('--flip', action='store_true', help='multiply the palindrome in reversed order (paper-era variant)')
    p.add_argument('--restrict', default=-1, type=int, help='release flag with no effect; must stay -1')
    p.add_argument('--sk-align', action='store_true', help='release experiment (Sinkhorn-Knopp); not supported')
    p.add_argument('--sk-targets', action='store_true', help='release experiment (Sinkhorn-Knopp); not supported')
    # optimisation
    p.add_argument('--device', default=None,
                   help="'cuda' or 'cpu' (default: cuda when available, else cpu)")
    p.add_argument('-b', '--batch-size', default=8, type=int, help='clips per step (per process under torchrun)')
    p.add_argument('--epochs', default=25, type=int)
    p.add_argument('--steps-per-epoch', default=None, type=int, help='cap on iterations per epoch (default: all)')
    p.add_argument('--optim', default='adam', type=str, help='adam (release) | sgd')
    p.add_argument('--lr', default=1e-4, type=float)
    p.add_argument('--momentum', default=0.9, type=float, help='SGD momentum')
    p.add_argument('--wd', '--weight-decay', default=1e-4, type=float, dest='weight_decay',
                   help='weight decay for SGD; Adam ignores it unless --adam-wd is set, as in the release')
    p.add_argument('--adam-wd', action='store_true',
                   help='apply --wd to Adam too (the release built Adam without weight decay)')
    p.add_argument('--lr-milestones', nargs='+', default=[20, 30, 40], type=int,
                   help='epochs at which the lr is multiplied by --lr-gamma (scheduler steps per iteration)')
    p.add_argument('--lr-gamma', default=0.3, type=float)
    p.add_argument('--lr-warmup-epochs', default=0, type=int, help='linear lr warm-up, in epochs')
    p.add_argument('--amp', action='store_true', help='bf16 autocast on CUDA (ignored on CPU, with a warning)')
    p.add_argument('--seed', default=0, type=int, help='seeds weights, sampling and augmentation (resume is exact)')
    # parallelism
    p.add_argument('--data-parallel', action='store_true',
                   help='nn.DataParallel over the visible GPUs (release); BatchNorm statistics are per GPU')
    p.add_argument('--sync-bn', action='store_true',
                   help='under torchrun on GPUs: SyncBatchNorm, BatchNorm statistics over the whole batch of all '
                        'processes (default: per process, like the release under DataParallel)')
    p.add_argument('--dist-url', default='env://', help='init method under torchrun')
    # checkpoints and logging
    p.add_argument('--output-dir', default='auto', help="'auto' names the folder after the run's settings")
    p.add_argument('--name', default='', type=str, help='prefix of the auto output folder')
    p.add_argument('--resume', default='', help='checkpoint to resume from (default: <output-dir>/checkpoint.pth if present)')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='allow full unpickling of checkpoint files that the safe loader (torch.load weights_only) '
                        'refuses; it can run code stored in the file, so only for files you trust')
    p.add_argument('--partial-reload', default='', help='load only the matching model keys, restart the schedule')
    p.add_argument('--start-epoch', default=0, type=int)
    p.add_argument('--save-every', default=1000, type=int,
                   help='also write checkpoint.pth every this many iterations (the release saved at random)')
    p.add_argument('--print-freq', default=10, type=int)
    p.add_argument('--visualize', action='store_true',
                   help='scalars to wandb (offline by default); pictures of the walk (PCA, flow, matches, '
                        'neighbours, per-node loss) to <output-dir>/vis/, visdom and wandb')
    p.add_argument('--vis-every', default=50, type=int,
                   help='with --visualize, draw the pictures every this many iterations (the release drew on a '
                        'random 2%% of its iterations, one in 50 on average)')
    p.add_argument('--port', default=8095, type=int, help='visdom port')
    p.add_argument('--server', default='localhost', type=str, help='visdom server')
    p.add_argument('--channels-last', action='store_true',
                   help='channels_last memory format for the encoder (faster convolutions on recent GPUs)')
    p.add_argument('--compile', action='store_true', help='torch.compile the model (slow start, faster steps)')
    return p


def auto_output_dir(args):
    keys = {'dropout': 'drop', 'clip_len': 'len', 'frame_transforms': 'ftrans', 'frame_aug': 'faug',
            'optim': 'optim', 'temp': 'temp', 'featdrop': 'fdrop', 'lr': 'lr', 'head_depth': 'mlp'}
    parts = []
    for k, short in keys.items():
        v = getattr(args, k)
        parts.append(f"{short}{'-'.join(map(str, v)) if isinstance(v, list) else v}")
    return os.path.join('checkpoints', f"{args.name}_{'-'.join(parts)}")


def _finish_train_args(p, args):
    if args.data_path is None:
        p.error('--data-path is required: a Kinetics-layout folder, a folder of frame folders or a frame list file')
    if not os.path.exists(args.data_path):
        p.error(f'--data-path {args.data_path}: no such file or folder')
    if args.restrict != -1:
        p.error('--restrict had no effect in the release and is not implemented; leave it at -1')
    if args.sk_align or args.sk_targets:
        p.error('--sk-align/--sk-targets were unfinished experiments of the release and are not supported')
    if args.optim not in ('adam', 'sgd'):
        p.error(f"--optim {args.optim}: choose adam or sgd")
    try:
        grid = parse_frame_aug(args.frame_aug)[0]
    except CRWError as e:
        p.error(str(e))
    if len(args.patch_size) == 2:
        args.patch_size = list(args.patch_size) + [3]
    if len(args.patch_size) != 3 or args.patch_size[0] != args.patch_size[1] or args.patch_size[2] != 3:
        p.error('--patch-size takes H W [3] with H == W, e.g. --patch-size 64 64 3')
    for name in ('batch_size', 'epochs', 'img_size', 'clips_per_video', 'frame_skip'):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.vis_every <= 0:
        p.error('--vis-every must be positive')
    # values that would train at chance (loss = ln N at every step) or fail deep inside the model
    for name, value in (('dropout', args.dropout), ('featdrop', args.featdrop)):
        if not 0 <= value < 1:
            p.error(f'--{name} {value:g}: a dropout rate lies in [0, 1) (the README trains with --dropout 0.1)')
    if not args.temp > 0:
        p.error(f'--temp {args.temp:g}: the softmax temperature must be positive (README: 0.05)')
    if not args.lr > 0:
        p.error(f'--lr {args.lr:g}: the learning rate must be positive (release: 0.0001)')
    if args.weight_decay < 0:
        p.error(f'--wd {args.weight_decay:g}: weight decay must be >= 0')
    P = args.patch_size[0]
    if grid and args.img_size < P:   # the encoder's smallest input is checked by cli.py (it needs the model)
        p.error(f'--img-size {args.img_size} is smaller than --patch-size {P}: the grid needs frames of at least '
                f'one patch; use --img-size >= {P} (README: 256 with 64)')
    if args.steps_per_epoch is not None and args.steps_per_epoch <= 0:
        p.error('--steps-per-epoch must be positive')
    if args.workers < 0:
        p.error('--workers must be >= 0')
    if args.fast_test:
        args.batch_size, args.workers, args.data_parallel = 1, 0, False
    if args.output_dir == 'auto':
        args.output_dir = auto_output_dir(args)
    return args


def train_args(argv=None):
    """Parse training flags from ``argv`` (a list; default ``sys.argv[1:]``)."""
    p = get_train_args_parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return _finish_train_args(p, args)


def get_test_args_parser(add_help=True):
    p = _Parser('CRW label propagation', add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--filelist', default=None, type=str,
                   help='text file, one video a line: "<frames folder> <annotations folder>" (DAVIS) '
                        'or "<frames folder> <joint_positions.mat>" (JHMDB)')
    p.add_argument('--data-root', default='', type=str,
                   help='folder that relative paths in --filelist are resolved against (e.g. a DAVIS root for '
                        'eval/davis_vallist.txt); default: the current folder, then the filelist\'s folder')
    p.add_argument('--video', default=None, type=str,
                   help='your own video instead of --filelist: a video file (.mp4 .mkv .webm .avi .mov ...) or a '
                        'folder of frames; writes <save-path>/<video>/<frame>.png (DAVIS format) and '
                        '<video>_overlay.mp4')
    p.add_argument('--mask', default=None, type=str,
                   help='with --video: the first frame\'s label image (palette PNG, or greyscale/RGB with a few flat '
                        'colours), or a folder of label images named like their frames (later ones add or correct '
                        'objects from their frame on)')
    p.add_argument('--max-side', default=None, type=int,
                   help='with --video: propagate at most this many pixels on the longer side (masks are still written '
                        'at the video\'s size); default: the size --cropSize gives (-1: the video\'s own)')
    p.add_argument('--bidirectional', action='store_true',
                   help='with --video: also propagate from the first annotated frame back to frame 0 (the same protocol '
                        'in reverse time), so that every frame gets a mask; without it the frames before the first '
                        'mask get none')
    p.add_argument('--save-blend', action='store_true',
                   help='with --video: also write the overlays as <save-path>/<video>_blend/<frame>.jpg')
    p.add_argument('--save-path', default='./results', type=str,
                   help='where {i}_{t}_mask.png/_blend.jpg (DAVIS), {i}.dat (JHMDB) or <video>/<frame>.png (VIP) go '
                        '(--filelist), or <video>/ and <video>_overlay.mp4 (--video)')
    p.add_argument('--vip', action='store_true',
                   help='treat the filelist as VIP (write <save>/<video>/<frame>.png label ids at the annotation '
                        'size); automatic when the annotation folders lie in a folder named Category_ids')
    p.add_argument('--resume', default='', type=str, help='checkpoint (train.py or the release); none = random init')
    p.add_argument('--allow-partial', action='store_true',
                   help='propagate even when --resume fills only part of the encoder (the rest keeps its '
                        'initialisation); by default that is an error')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='allow full unpickling of checkpoint files that the safe loader (torch.load weights_only) '
                        'refuses; it can run code stored in the file, so only for files you trust')
    p.add_argument('--model-type', default='scratch', type=str, help='scratch | scratch_zeropad | imagenet18')
    p.add_argument('--imagenet-weights', default='', type=str,
                   help='path of torchvision resnet18 ImageNet weights for --model-type imagenet18')
    p.add_argument('--device', default=None, help="'cuda' or 'cpu' (default: cuda when available, else cpu)")
    p.add_argument('--workers', default=4, type=int, help='frame loading processes')
    p.add_argument('--manualSeed', default=777, type=int, help='seed (random init of a scratch encoder)')
    p.add_argument('--gpu-id', default='0', type=str, help='sets CUDA_VISIBLE_DEVICES, as in the release')
    p.add_argument('--batchSize', default=1, type=int, help='videos per batch; must be 1 (release)')
    # protocol
    p.add_argument('--topk', default=10, type=int, help='k nearest context nodes that vote')
    p.add_argument('--videoLen', default=20, type=int, help='L: short-term context frames before the target')
    p.add_argument('--radius', default=12, type=float,
                   help='short-term context nodes must lie strictly within this distance (feature cells)')
    p.add_argument('--temperature', default=0.07, type=float, help='softmax temperature (README uses 0.05)')
    p.add_argument('--cropSize', default=320, type=int, help='resize frames to S x S; -1 keeps the native size')
    p.add_argument('--long-mem', default=[0], type=int, nargs='*', help='frames always in the context (first frame)')
    p.add_argument('--remove-layers', default=['layer4'], nargs='*', type=str,
                   help='ResNet layers removed at test time (layer3 features, stride 8)')
    p.add_argument('--head-depth', default=-1, type=int,
                   help='propagation uses no head (release); with --finetune, the depth of the walk head the '
                        'adaptation trains (-1: the checkpoint\'s training depth)')
    p.add_argument('--no-l2', action='store_true', help='skip L2 normalisation of the features')
    p.add_argument('--norm_mask', action='store_true', help='min-max normalise each predicted soft map per pixel')
    p.add_argument('--dense', action='store_true',
                   help="use the release's reference algorithm (every affinity, memory grows with the video) instead of "
                        'the windowed path (same results)')
    # release flags kept for compatibility
    p.add_argument('--visdom', action='store_true', help='show predictions in visdom')
    p.add_argument('--visdom-server', '--server', dest='server', default='localhost', type=str,
                   help="visdom server (the release's flag; --server is accepted too)")
    p.add_argument('--port', default=8095, type=int, help='visdom port')
    # test-time adaptation (listed as "To do" by the release)
    p.add_argument('--finetune', default=0, type=int, metavar='N',
                   help='before propagating each video, adapt a copy of the encoder with N Adam steps of the walk '
                        'loss on clips of that video (0 = off, the release default); the next video starts from '
                        'the original weights')
    p.add_argument('--finetune-lr', default=1e-5, type=float,
                   help='Adam learning rate of the adaptation: a tenth of the training lr, so N steps on one video '
                        'nudge the features rather than overwrite them')
    p.add_argument('--finetune-clip-len', default=4, type=int,
                   help='frames per adaptation clip (the README training setting, 2 palindromes)')
    p.add_argument('--finetune-batch', default=4, type=int,
                   help='clips per adaptation step (small: one video has few distinct clips)')
    p.add_argument('--texture', action='store_true', help='release flag; not implemented')
    p.add_argument('--round', action='store_true', help='release flag; not implemented')
    p.add_argument('--pca-vis', action='store_true',
                   help="show the PCA of each frame's features in visdom (colours fitted on the first frame)")
    return p


def _finish_test_args(p, args):
    if args.filelist is None and args.video is None:
        p.error('--filelist is required (one "<frames folder> <annotations folder>" line per video), or --video '
                'with --mask for your own video')
    if args.filelist is not None and args.video is not None:
        p.error('give --filelist or --video, not both')
    if args.filelist is not None and not os.path.isfile(args.filelist):
        p.error(f'--filelist {args.filelist}: no such file')
    if args.video is not None:
        if not os.path.exists(args.video):
            p.error(f'--video {args.video}: no such file or folder')
        if args.mask is None:
            p.error('--video needs --mask: the first frame\'s label image or a folder of label images')
        if not os.path.exists(args.mask):
            p.error(f'--mask {args.mask}: no such file or folder')
    else:
        for flag in ('mask', 'max_side', 'save_blend', 'bidirectional'):
            if getattr(args, flag):
                p.error(f"--{flag.replace('_', '-')} goes with --video")
    if args.max_side is not None and args.max_side < 8:
        p.error('--max-side must be at least 8 (one feature cell)')
    if args.resume and not os.path.isfile(args.resume):
        p.error(f'--resume {args.resume}: no such file (refusing to run with random weights)')
    if args.batchSize != 1:
        p.error('--batchSize must be 1: videos have different lengths and sizes')
    if args.finetune < 0:
        p.error('--finetune takes a number of adaptation steps >= 0')
    if args.finetune and (args.finetune_clip_len < 3 or args.finetune_batch < 1 or args.finetune_lr <= 0):
        p.error('--finetune-clip-len must be >= 3 (the walk needs 3 frames), --finetune-batch >= 1, '
                '--finetune-lr > 0')
    for flag in ('texture', 'round'):
        if getattr(args, flag):
            p.error(f"--{flag.replace('_', '-')}: this release flag did nothing useful and is not implemented")
    if args.cropSize == 0 or args.cropSize < -1:
        p.error('--cropSize takes a positive size or -1 (native)')
    # the encoder's smallest input is checked by cli.py (it needs the model)
    args.imgSize = args.cropSize
    args.visdom_server = args.server  # the release's attribute name
    return args


def test_args(argv=None):
    """Parse test (label propagation) flags from ``argv`` (a list; default ``sys.argv[1:]``)."""
    p = get_test_args_parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return _finish_test_args(p, args)
