"""The command lines of train.py and test.py: ``utils.arguments``' parsers and checks, then those that need the model.

``utils/arguments.py`` defines the flags (one parser per entry point, the release's ``train_args``/``test_args``)
and every check that needs only the values; it imports nothing above ``utils/``. The checks here also need the
encoder (the smallest frame or patch the chosen ``--model-type`` takes: ``model.min_input_size``) or the
propagation protocol (its ranges: ``propagation.Protocol``). They run right after parsing, before any work,
and fail like the others: one line naming the flag, exit status 2.
"""
from crw.model import min_input_size
from crw.propagation.protocol import Protocol
from crw.utils.errors import CRWError
from crw.utils.arguments import get_test_args_parser, get_train_args_parser, parse_frame_aug, test_args, train_args


def train_size_error(args):
    """The message when the frames (dense nodes) or grid patches are smaller than the encoder takes, else None."""
    smallest = min_input_size(args.model_type)
    if parse_frame_aug(args.frame_aug)[0]:
        P = args.patch_size[0]
        if P < smallest:
            return (f'--patch-size {P}: the {args.model_type} encoder needs patches of at least {smallest}x{smallest} '
                    'pixels (README: 64)')
    elif args.img_size < smallest:
        return (f'--img-size {args.img_size}: the {args.model_type} encoder needs frames of at least '
                f'{smallest}x{smallest} pixels (stride 8; use 64 or more for a useful graph)')
    return None


def test_size_error(args):
    """The message when ``--cropSize`` (other than -1) is smaller than the encoder takes, else None."""
    smallest = min_input_size(args.model_type)
    if 0 < args.cropSize < smallest:
        return (f'--cropSize {args.cropSize}: the {args.model_type} encoder needs frames of at least '
                f'{smallest}x{smallest} pixels (stride 8); the release used 320, or -1 for the native size')
    return None


def parse_train_args(argv=None):
    """train.py's namespace from ``argv`` (a list; default ``sys.argv[1:]``); a bad value exits with one line."""
    args = train_args(argv)
    message = train_size_error(args)
    if message:
        get_train_args_parser().error(message)
    return args


def parse_test_args(argv=None):
    """test.py's namespace from ``argv`` (a list; default ``sys.argv[1:]``); a bad value exits with one line
    (including a protocol value that ``propagation.Protocol`` refuses)."""
    args = test_args(argv)
    message = test_size_error(args)
    if not message:
        try:
            Protocol.from_args(args)
        except CRWError as e:
            message = str(e)
    if message:
        get_test_args_parser().error(message)
    return args
