"""Command-line arguments of the training and test entry points: one parser each, the grammar of their flags
(``parse_frame_aug``) and every check that needs only the values.

The flags, their spellings and their defaults are the ones of the videowalk release, so that its commands
keep working. ``train_args(argv)`` / ``test_args(argv)`` parse a list (default: the command line) and
return the namespace, exactly like the release's functions of the same name. The checks that need the model
(the encoder's smallest input) are in ``cli.py``, which train.py and test.py parse with: utils/ imports nothing
above it.
"""
import argparse
import importlib.util
import math
import os
import re
import sys

from crw.utils.encoder_weights import PRETRAINED_TYPES
from crw.utils.errors import CRWError


MODEL_TYPE_HELP = ('scratch (ResNet-18, reflect padding) | scratch_zeropad | imagenet18 | uvc (ResNet-18) | '
                   'imagenet50 | moco50 | timecycle (ResNet-50); the last five need a local weight file '
                   '(--encoder-weights)')
WEIGHTS_HELP = ('weight file of a pretrained --model-type in its published layout (README "Other encoders"; '
                'default: its file name in the torch hub cache, or the current folder for moco50/timecycle/uvc); '
                'nothing is downloaded. --imagenet-weights is the same flag')


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (the flag and what to do), not the whole usage block: every
    entry point's parser."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def finite_float(text):
    """argparse type: a finite float (``inf`` or ``nan`` would train at chance or write NaN weights)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'{text}: a finite number is needed')
    return value


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
    p = OneLineParser('CRW training', add_help=add_help,
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
    p.add_argument('--model-type', default='scratch', type=str, help=MODEL_TYPE_HELP)
    p.add_argument('--encoder-weights', '--imagenet-weights', dest='imagenet_weights', default='', type=str,
                   help=WEIGHTS_HELP)
    p.add_argument('--temp', default=0.07, type=finite_float, help='softmax temperature of the transitions (README: 0.05)')
    p.add_argument('--dropout', default=0.0, type=finite_float, help='edge dropout rate on the affinities (README: 0.1)')
    p.add_argument('--featdrop', default=0.0, type=finite_float, help='dropout on the node feature maps')
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
    p.add_argument('--lr', default=1e-4, type=finite_float)
    p.add_argument('--momentum', default=0.9, type=finite_float, help='SGD momentum')
    p.add_argument('--wd', '--weight-decay', default=1e-4, type=finite_float, dest='weight_decay',
                   help='weight decay for SGD; Adam ignores it unless --adam-wd is set, as in the release')
    p.add_argument('--adam-wd', action='store_true',
                   help='apply --wd to Adam too (the release built Adam without weight decay)')
    p.add_argument('--lr-milestones', nargs='+', default=[20, 30, 40], type=int,
                   help='epochs at which the lr is multiplied by --lr-gamma (scheduler steps per iteration)')
    p.add_argument('--lr-gamma', default=0.3, type=finite_float)
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
    p.add_argument('--dist-timeout', default=1800, type=float,
                   help='under torchrun: seconds a collective waits for a hung process before the run stops with '
                        'an error (a process that dies is noticed at once)')
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


def _check_weights_flag(p, args):
    if args.imagenet_weights and args.model_type not in PRETRAINED_TYPES:
        p.error(f'--encoder-weights goes with a pretrained --model-type ({", ".join(PRETRAINED_TYPES)}); '
                f'{args.model_type} has no weight file')


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
    _check_weights_flag(p, args)
    P = args.patch_size[0]
    if grid and args.img_size < P:   # the encoder's smallest input is checked by cli.py (it needs the model)
        p.error(f'--img-size {args.img_size} is smaller than --patch-size {P}: the grid needs frames of at least '
                f'one patch; use --img-size >= {P} (README: 256 with 64)')
    if not args.dist_timeout > 0:
        p.error('--dist-timeout must be a positive number of seconds')
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


# test.py's defaults that depend on the mode. --filelist keeps the release's; --video (new) has the README's
# protocol at the video's own size, at most VIDEO_MAX_SIDE on its longer side (= data.inference.frames'
# DEFAULT_MAX_SIDE; utils is a leaf), with the bundled checkpoint. The parser's default for these flags is None
# ("not given"); resolve_mode_defaults fills them.
BUNDLED_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'pretrained.pth')
VIDEO_MAX_SIDE = 854
MODE_DEFAULTS = {
    'filelist': {'temperature': 0.07, 'cropSize': 320, 'max_side': None, 'resume': ''},
    'video': {'temperature': 0.05, 'cropSize': -1, 'max_side': VIDEO_MAX_SIDE, 'resume': BUNDLED_CHECKPOINT},
}
EXPORTS = ('palette', 'binary', 'coco', 'soft')
RANDOM_INIT_TYPES = ('scratch', 'scratch_zeropad')   # the model types that no --resume leaves random


def get_test_args_parser(add_help=True):
    p = OneLineParser('CRW label propagation', add_help=add_help,
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
                   help=f'with --video: propagate at most this many pixels on the longer side, aspect ratio kept '
                        f'(masks are still written at the video\'s size); 0: the video\'s own size however large '
                        f'(default: {VIDEO_MAX_SIDE}, DAVIS 480p\'s width)')
    p.add_argument('--bidirectional', action='store_true',
                   help='with --video: also propagate from the first annotated frame back to frame 0 (the same protocol '
                        'in reverse time), so that every frame gets a mask; without it the frames before the first '
                        'mask get none')
    p.add_argument('--save-blend', action='store_true',
                   help='with --video: also write the overlays as <save-path>/<video>_blend/<frame>.jpg')
    p.add_argument('--export', action='append', default=None, metavar='FORMATS',
                   help=f'with --video: what to write, comma-separated or repeated, of {", ".join(EXPORTS)}: palette = '
                        '<video>/<frame>.png (DAVIS palette PNGs), binary = <video>_binary/<id>/<frame>.png (one 0/255 '
                        'PNG per object per frame), coco = <video>_coco.json (COCO run-length encoding), soft = '
                        '<video>_soft/<frame>.npz (per-object soft maps at the feature map, float32); default: palette')
    p.add_argument('--random-init', action='store_true',
                   help='with --video: propagate with a randomly initialised encoder instead of the bundled '
                        'pretrained.pth (a baseline; --filelist without --resume does this, as the release did)')
    p.add_argument('--save-path', default='./results', type=str,
                   help='where {i}_{t}_mask.png/_blend.jpg (DAVIS), {i}.dat (JHMDB) or <video>/<frame>.png (VIP) go '
                        '(--filelist), or <video>/ and <video>_overlay.mp4 (--video)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the outputs of an earlier run in --save-path (only the files its record '
                        '.crw_outputs.json lists, or files of this run\'s output names; by default such a folder '
                        'is refused)')
    p.add_argument('--vip', action='store_true',
                   help='treat the filelist as VIP (write <save>/<video>/<frame>.png label ids at the annotation '
                        'size); automatic when the annotation folders lie in a folder named Category_ids')
    p.add_argument('--resume', default=None, type=str,
                   help='checkpoint (train.py or the release); default: none (random init) with --filelist, the '
                        'bundled pretrained.pth with --video')
    p.add_argument('--allow-partial', action='store_true',
                   help='propagate even when --resume fills only part of the encoder (the rest keeps its '
                        'initialisation); by default that is an error')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='allow full unpickling of checkpoint files that the safe loader (torch.load weights_only) '
                        'refuses; it can run code stored in the file, so only for files you trust')
    p.add_argument('--model-type', default='scratch', type=str, help=MODEL_TYPE_HELP)
    p.add_argument('--encoder-weights', '--imagenet-weights', dest='imagenet_weights', default='', type=str,
                   help=WEIGHTS_HELP)
    p.add_argument('--device', default=None, help="'cuda' or 'cpu' (default: cuda when available, else cpu)")
    p.add_argument('--workers', default=4, type=int, help='frame loading processes')
    p.add_argument('--manualSeed', default=777, type=int, help='seed (random init of a scratch encoder)')
    p.add_argument('--gpu-id', default='0', type=str, help='sets CUDA_VISIBLE_DEVICES, as in the release')
    p.add_argument('--batchSize', default=1, type=int, help='videos per batch; must be 1 (release)')
    # protocol
    p.add_argument('--topk', default=10, type=int, help='k nearest context nodes that vote')
    p.add_argument('--videoLen', default=20, type=int, help='L: short-term context frames before the target')
    p.add_argument('--radius', default=12, type=finite_float,
                   help='short-term context nodes must lie strictly within this distance (feature cells)')
    p.add_argument('--temperature', default=None, type=finite_float,
                   help='softmax temperature (default: 0.07 with --filelist, the release; 0.05 with --video, the '
                        'README)')
    p.add_argument('--cropSize', default=None, type=int,
                   help='resize frames to S x S; -1 keeps the native size (default: 320 with --filelist, the '
                        'release; -1 with --video)')
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
    p.add_argument('--finetune-lr', default=1e-5, type=finite_float,
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
        for flag in ('mask', 'max_side', 'save_blend', 'export', 'random_init', 'bidirectional'):
            if getattr(args, flag) is not None and getattr(args, flag) is not False:
                p.error(f"--{flag.replace('_', '-')} goes with --video")
    if args.max_side is not None and (args.max_side < 0 or 0 < args.max_side < 8):
        p.error('--max-side must be at least 8 (one feature cell), or 0 for the video\'s own size')
    try:
        resolve_mode_defaults(args)
    except CRWError as e:
        p.error(str(e))
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
    _check_weights_flag(p, args)
    # the encoder's smallest input and the protocol's ranges are checked by cli.py (they need the model and
    # propagation.Protocol)
    args.imgSize = args.cropSize
    args.visdom_server = args.server  # the release's attribute name
    return args


def parse_exports(values):
    """``--export`` values (each comma-separated; None: not given) -> the formats in EXPORTS order; CRWError for
    an unknown one."""
    if values is None:
        return ['palette']
    given = [v.strip().lower() for value in values for v in value.split(',') if v.strip()]
    unknown = [v for v in given if v not in EXPORTS]
    if unknown or not given:
        raise CRWError(f'--export {",".join(unknown) or "(empty)"}: choose any of {", ".join(EXPORTS)} '
                       '(comma-separated or repeated)')
    return [e for e in EXPORTS if e in given]


def resolve_mode_defaults(args):
    """Fill the flags left unset (None) with their mode's defaults (MODE_DEFAULTS: --filelist the release's,
    --video the README's); ``args.mode_defaults`` names those filled. With --video, no --resume means the
    bundled checkpoint for the scratch encoder it was trained as, ImageNet weights for imagenet18, and an
    error for other scratch types: a random encoder only with --random-init. Raises CRWError."""
    mode = 'video' if args.video is not None else 'filelist'
    filled = []
    if mode == 'video':
        args.export = parse_exports(args.export)
        if 'coco' in args.export and importlib.util.find_spec('pycocotools') is None:
            raise CRWError('--export coco needs pycocotools: .venv/bin/pip install pycocotools (it is in '
                           'requirements.txt)')
        if args.random_init:
            if args.resume:
                raise CRWError('--random-init and --resume exclude each other: one encoder or the other')
            if args.model_type not in RANDOM_INIT_TYPES:
                raise CRWError(f'--random-init: the {args.model_type} encoder is not randomly initialised here')
            args.resume = ''
        elif args.resume is None and args.model_type != 'scratch':
            if args.model_type in RANDOM_INIT_TYPES:
                raise CRWError(f'--model-type {args.model_type} with --video: give its checkpoint with --resume (the '
                               'bundled pretrained.pth is a scratch encoder), or --random-init for random weights')
            args.resume = ''     # imagenet18: its ImageNet weights
    for name, value in MODE_DEFAULTS[mode].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
            filled.append(name)
    if mode == 'video' and args.max_side == 0:
        args.max_side = None
    if mode == 'video' and args.resume == BUNDLED_CHECKPOINT and not os.path.isfile(args.resume):
        raise CRWError(f'--video: the bundled checkpoint {args.resume} is missing; give --resume, or --random-init '
                       'for random weights')
    args.mode_defaults = filled
    return args


def describe_settings(args):
    """One line: the protocol, frame size and encoder test.py runs with, each taken from a mode's defaults
    marked (see ``resolve_mode_defaults``)."""
    mode = '--video' if args.video is not None else '--filelist'
    mark = lambda name: f' ({mode} default)' if name in getattr(args, 'mode_defaults', ()) else ''  # noqa: E731
    if args.cropSize == -1:
        size = ("the video's own size" if args.video is not None else 'native size') + mark('cropSize')
    else:
        size = f'{args.cropSize}x{args.cropSize}{mark("cropSize")}'
    if args.video is not None:
        size += (f', at most {args.max_side} px on the longer side{mark("max_side")}' if args.max_side else
                 ', no --max-side')
    resume = os.path.relpath(args.resume) if args.resume and not os.path.relpath(args.resume).startswith('..') \
        else args.resume
    encoder = (f'{resume}{mark("resume")}' if args.resume else
               'ImageNet weights' if args.model_type == 'imagenet18' else f'random weights (seed {args.manualSeed})')
    line = (f'settings: topk {args.topk}, videoLen {args.videoLen}, radius {args.radius:g}, temperature '
            f'{args.temperature:g}{mark("temperature")}; frames: {size}; encoder: {args.model_type}, {encoder}')
    if args.video is not None:
        line += f'; exports: {", ".join(args.export)}'
    return line


def test_args(argv=None):
    """Parse test (label propagation) flags from ``argv`` (a list; default ``sys.argv[1:]``)."""
    p = get_test_args_parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return _finish_test_args(p, args)
