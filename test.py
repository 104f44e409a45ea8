#!/usr/bin/env python
"""Label propagation with a trained CRW encoder: the release's test.py command line.

    python test.py --filelist /path/to/davis/vallist.txt --model-type scratch --resume pretrained.pth \\
        --save-path /save/path --topk 10 --videoLen 20 --radius 12 --temperature 0.05 --cropSize -1

Per video it runs the one propagation loop (``propagation.VideoPropagator.run``) into a sink
(``data.inference.outputs``) that writes what the filelist's kind needs: DAVIS ``{save}/{i}_{t}_mask.png``
and ``_blend.jpg`` (read by eval/convert_davis.py); VIP (annotations in ``.../Category_ids/``, or
``--vip``) ``{save}/<video>/<frame>.png`` greyscale ids at the annotation's size (eval/eval_vip.py); JHMDB
(``<frames folder> <joint_positions.mat>``) ``{save}/{i}.dat`` and skeleton blends (eval/eval_pck.py);
your own video (``--video clip.mp4 --mask first.png``, README "Your own video") ``{save}/clip/<frame>.png``
and ``{save}/clip_overlay.mp4`` (``--bidirectional``: also back from the first annotated frame to frame 0).
``--finetune N`` adapts a copy of the encoder to each video first; frames
are read by DataLoader workers and outputs written on background threads, so memory stays at a few frames.
"""
import crw.utils.startup  # noqa: I001  (first: OpenMP settings before torch loads, collector paused)
import functools
import os
import random
import shlex
import sys
import time
import warnings

import numpy as np
import torch
from tqdm import tqdm

from crw.cli import parse_test_args as test_args
from crw.data.images import list_frames
from crw.data.inference.filelists import read_filelist
from crw.data.inference.frames import frame_loader, processing_size
from crw.data.inference.jhmdb import JhmdbVideo
from crw.data.inference.outputs import (DavisWriter, FirstRun, PartsWriter, PoseWriter, SequenceWriter, ViewerSink,
                                        export_sinks, label_picture)
from crw.data.inference.user_video import UserVideo, VideoMasks
from crw.data.inference.vos import VOSVideo
from crw.model import PRETRAINED_TYPES
from crw.propagation import STRIDE, PropagationOptions, load_encoder
from crw.propagation.finetune import VideoAdapter
from crw.propagation.video import feature_batch
from crw.utils.arguments import describe_settings
from crw.utils.errors import CRWError, interrupted, report, sigterm_as_interrupt
from crw.utils.misc import git_revision, peak_memory_bytes, reset_peak_memory
from crw.utils.output_folders import Inputs, OutputClaim, Plan

crw.utils.startup.imports_done()

# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------

def build_encoder(args, device):
    """The encoder for ``args`` (layer4 removed by default), weights from --resume."""
    if not args.resume and args.model_type not in PRETRAINED_TYPES:
        warnings.warn(f'no --resume: the {args.model_type} encoder has random weights (seed {args.manualSeed})',
                      stacklevel=2)
    encoder = load_encoder(args.resume or None, device, args.model_type, args.remove_layers, args.imagenet_weights,
                           allow_partial=args.allow_partial, trust=args.trust_checkpoint, fold_bn=args.finetune <= 0)
    print(f'encoder: {args.model_type}, {sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M params')
    return encoder


def build_adapter(args, device):
    """The test-time adaptation for --finetune N > 0 (its settings printed), else None."""
    if args.finetune <= 0:
        return None
    adapter = VideoAdapter.from_args(args, device)
    print(adapter.describe())
    return adapter


# ----------------------------------------------------------------------------------------------------------
# One video: its frames, its first labels and a sink, through the one loop
# ----------------------------------------------------------------------------------------------------------

class TestRun:
    """What the videos of one run share: the arguments, the propagation options (built once from them), the
    device and the visdom viewer (``open_viewer``). ``davis``, ``vip``, ``jhmdb`` and ``own_video`` each
    propagate one video: its frames, its first labels and a sink, through the one loop."""

    def __init__(self, args, options, device):
        self.args, self.options, self.device, self.viewer = args, options, device, None

    def open_viewer(self):
        """--visdom / --pca-vis: connect to the server (without one: one warning, results are still written)."""
        if self.args.visdom or self.args.pca_vis:
            from crw.vis.sinks import PropagationViewer
            a = self.args
            self.viewer = PropagationViewer(a.server, a.port, blend=a.visdom, pca=a.pca_vis) or None

    def close(self):
        if self.viewer is not None:
            self.viewer.close()

    def davis(self, entry, encoder, progress=None):
        """``{save}/{i}_{t}_mask.png`` and ``_blend.jpg`` at the frame size (the release's layout)."""
        video = VOSVideo(entry, self.options.crop_size)
        sink = DavisWriter(os.path.join(self.args.save_path, str(entry.index)))
        self._run((entry.index, entry.name), encoder, video.frames, {0: video.mask}, sink, video.size, progress,
                  len(video))
        return len(video)

    def vip(self, entry, encoder, progress=None):
        """``{save}/<video>/<frame>.png``: greyscale label ids at the annotation's resolution (VIP's layout)."""
        video = VOSVideo(entry, self.options.crop_size)
        sink = PartsWriter(os.path.join(self.args.save_path, entry.name), video.frame_names)
        self._run((entry.index, entry.name), encoder, video.frames, {0: video.mask}, sink, video.mask.shape[:2],
                  progress, len(video))
        return len(video)

    def jhmdb(self, entry, encoder, progress=None):
        """Frame 0's joint heat maps propagated as soft maps, decoded per frame: ``{save}/{i}.dat`` and the
        skeleton blends."""
        video = JhmdbVideo(entry, self.options.crop_size)
        sink = PoseWriter(os.path.join(self.args.save_path, str(entry.index)), STRIDE)
        first = {0: lambda map_size: video.first_heatmaps(map_size, STRIDE)}
        self._run((entry.index, entry.name), encoder, video.frames, first, sink, None, progress, len(video),
                  draw=sink.picture)
        return len(video)

    def own_video(self, encoder, video, masks, progress=None):
        """--video: a UserVideo from its first annotated frame on, its VideoMasks -> ``{save}/<video>/<frame>.png``,
        ``<video>_overlay.mp4`` (and with --save-blend ``<video>_blend/``) and the --export formats; with
        --bidirectional, first from the first annotated frame back to frame 0 into the same outputs (its label
        maps kept in memory, compressed, to open the overlay video in frame order). Returns the frames written."""
        a = self.args
        proc_size = processing_size(video.size, self.options.crop_size, self.options.max_side)
        writer = functools.partial(SequenceWriter, a.save_path, video.name, video.frame_names, masks.palette,
                                   video.fps, a.save_blend, 'palette' in a.export)
        extra = export_sinks(a.export, a.save_path, video.name, video.frame_names, video.file_names,
                             masks.object_ids, {'video': a.video, 'masks': a.mask})
        start, back = masks.start, None
        if a.bidirectional and start > 0:
            back = self._open(writer, extra, overlay=False, skip=start)
            self._run((0, video.name), encoder, video.dataset(proc_size, start, reverse=True), masks.first_only(),
                      [back] + [FirstRun(s, start) for s in extra], video.size, progress, start + 1)
        sink = self._open(writer, extra)
        if back is not None:
            try:
                for t, image in enumerate(video.images(start)):   # the backward run's frames, in order
                    sink.overlay_frame(back.held(t), image)
            except BaseException as e:
                for s in [sink] + extra:
                    s.abort(e)
                raise
        self._run((0, video.name), encoder, video.dataset(proc_size, start), masks, [sink] + extra, video.size,
                  progress, len(video) - start, reset=back is None)
        return (back.frames if back is not None else 0) + sink.frames

    @staticmethod
    def _open(writer, others, **kwargs):
        """``writer(**kwargs)``; when it fails, the sinks ``others`` already opened are aborted first."""
        try:
            return writer(**kwargs)
        except BaseException as e:
            for s in others:
                s.abort(e)
            raise

    def _run(self, video_id, encoder, frames, masks, sink, out_size, progress, total, draw=label_picture,
             reset=True):
        """``frames`` (a dataset of (input, frame, t)) through the loop into ``sink`` (or a list of sinks) and,
        with a viewer, into visdom as video ``video_id`` (index, name). ``reset``: restart the progress bar at
        ``total`` (else ``total`` more frames are added to it)."""
        sinks = list(sink) if isinstance(sink, list) else [sink]
        if self.viewer is not None:
            sinks.append(ViewerSink(self.viewer, *video_id, draw))
        if progress is not None:
            if reset:
                progress.reset(total=total)   # draws the bar at once, delay or not:
                progress.delay = 0            # so that closing it ends its line (tqdm skips that within the delay)
            else:
                progress.total += total
        batches = frame_loader(frames, feature_batch(self.device), self.args.workers, self.device)
        self.options.propagator(encoder, self.device).run(batches, masks, sinks, out_size, progress)


def run_user_video(run):
    """--video/--mask: your own video (with --finetune, by an encoder adapted to the video's frames first).
    Every input is checked, and the output folder claimed, before anything is written."""
    args, device = run.args, run.device
    if args.finetune > 0 and not os.path.isdir(args.video):
        raise CRWError(f'--finetune with --video {args.video}: adaptation samples clips from a folder of frames; '
                       'extract the frames to a folder (e.g. ffmpeg -i clip.mp4 frames/%05d.jpg) and pass it')
    video = UserVideo(args.video)
    masks = VideoMasks(args.mask, video)
    first = 0 if args.bidirectional else masks.start
    claim = OutputClaim(video_plan(args, video, first, masks.object_ids), video_inputs(args), args.overwrite)
    encoder = build_encoder(args, device)
    adapter = build_adapter(args, device)
    claim.take()
    if adapter is not None:
        encoder, info = adapter.adapt(encoder, args.video)
        print(adapter.summary(info), flush=True)
    run.open_viewer()
    reset_peak_memory(device)
    t0 = time.time()
    if masks.start > 0 and not args.bidirectional:
        masks.reader.note(f'{args.mask}: the first annotated frame is {video.frame_names[masks.start]}; the '
                          f'{masks.start} frame(s) before it get no output')
    with tqdm(desc=video.name, unit='frame', mininterval=1.0, delay=1.0, file=sys.stderr) as bar:
        n = run.own_video(encoder, video, masks, bar)
    claim.finish(frames=n)
    dt = time.time() - t0
    first = video.frame_names[0 if args.bidirectional else masks.start]
    print(f'{args.video}: {n} frames from frame {first}, {n / dt:.2f} frames/s, peak '
          f'{"GPU" if device.type == "cuda" else "RSS"} memory {peak_memory_bytes(device) / 2 ** 20:.0f} MB; '
          f'masks and overlay video in {args.save_path}', flush=True)


# ----------------------------------------------------------------------------------------------------------
# What a run writes and reads: its output folder is claimed before anything is written (utils/output_folders.py)
# ----------------------------------------------------------------------------------------------------------

DAVIS_NAMES = (r'\d+_\d+_mask\.png', r'\d+_\d+_blend\.jpg', r'\d+\.dat')   # {i}_{t}_mask.png, ..., {i}.dat


def _command(args):
    return 'test.py ' + shlex.join(args.argv) if getattr(args, 'argv', None) is not None else 'test.py'


def video_plan(args, video, start, object_ids=()):
    """--video: from frame ``start`` on, ``<name>/<frame>.png`` (--export palette), ``<name>_overlay.mp4``,
    ``<name>_blend/<frame>.jpg`` (--save-blend) and the other --export formats (``<name>_binary/<id>/``,
    ``<name>_coco.json``, ``<name>_soft/``): the video's own unit of --save-path (other videos' outputs may
    share the folder)."""
    name, names = video.name, video.frame_names[start:]
    export = getattr(args, 'export', None) or ['palette']
    files, dirs = [], []
    if 'palette' in export:
        files += [f'{name}/{n}.png' for n in names]
        dirs.append(name)
    files.append(f'{name}_overlay.mp4')
    if args.save_blend:
        files += [f'{name}_blend/{n}.jpg' for n in names]
        dirs.append(f'{name}_blend')
    if 'binary' in export:
        dirs += [f'{name}_binary'] + [f'{name}_binary/{k}' for k in object_ids]
        files += [f'{name}_binary/{k}/{n}.png' for k in object_ids for n in names]
    if 'coco' in export:
        files.append(f'{name}_coco.json')
    if 'soft' in export:
        dirs.append(f'{name}_soft')
        files += [f'{name}_soft/{n}.npz' for n in names]
    return Plan(args.save_path, '--save-path', 'test.py', _command(args), unit=name, files=files, dirs=[''] + dirs,
                unit_dirs=dirs, info={'kind': 'video', 'videos': [{'name': name, 'input': os.path.abspath(
                    args.video), 'first': names[0] if names else None, 'frames': len(names)}]})


def video_inputs(args):
    inputs = Inputs().file(args.resume, f'the checkpoint --resume {args.resume}')
    if os.path.isdir(args.video):
        inputs.folder(args.video, f'the frames folder --video {args.video}')
    else:
        inputs.file(args.video, f'the video --video {args.video}')
    if os.path.isdir(args.mask):
        return inputs.folder(args.mask, f'the mask folder --mask {args.mask}')
    return inputs.file(args.mask, f'the mask --mask {args.mask}', with_folder=True)


def filelist_plan(args, entries, frames):
    """--filelist: every video's outputs (``frames``: {index: its frame paths}); the run owns the folder."""
    files, dirs, videos = [], [''], []
    for e in entries:
        names = [os.path.splitext(os.path.basename(p))[0] for p in frames[e.index]]
        if e.kind == 'davis':
            files += [f'{e.index}_{t}_{suffix}' for t in range(len(names)) for suffix in ('mask.png', 'blend.jpg')]
        elif e.kind == 'jhmdb':
            files += [f'{e.index}_{t}_blend.jpg' for t in range(len(names))] + [f'{e.index}.dat']
        else:
            files += [f'{e.name}/{n}.png' for n in names]
            dirs.append(e.name)
        videos.append({'index': e.index, 'name': e.name, 'kind': e.kind, 'frames': os.path.abspath(e.frames_dir),
                       'target': os.path.abspath(e.target), 'num_frames': len(names)})
    return Plan(args.save_path, '--save-path', 'test.py', _command(args), files=files, dirs=dirs,
                patterns=list(DAVIS_NAMES), unit_dirs=dirs[1:],
                info={'kind': 'filelist', 'filelist': os.path.abspath(args.filelist), 'videos': videos})


def filelist_inputs(args, entries):
    inputs = Inputs().file(args.filelist, f'--filelist {args.filelist}').file(args.resume, '--resume')
    inputs.folder(args.data_root, f'--data-root {args.data_root}')
    for e in entries:
        where = f'{args.filelist}:{e.line_no}'
        inputs.folder(e.frames_dir, f'the frames folder of {where}')
        if e.kind == 'jhmdb':
            inputs.file(e.target, f'the joint file of {where}', with_folder=True)
        else:
            inputs.folder(e.target, f'the annotations folder of {where}')
    return inputs


# ----------------------------------------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = test_args(argv)
    args.argv = argv
    options = PropagationOptions.from_args(args)    # its values were checked by test_args
    if any(a == '--gpu-id' or a.startswith('--gpu-id=') for a in argv) or 'CUDA_VISIBLE_DEVICES' not in os.environ:
        os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu_id    # before CUDA is initialised (release behaviour)
    try:
        with sigterm_as_interrupt():
            run(args, options)
    except CRWError as e:
        return report('test.py', e)
    except OSError as e:     # a write outside the writers (the folder's record) failed: a full disk, a lost mount
        return report('test.py', f'cannot write into {args.save_path} ({e.strerror or e}); free some space or '
                      'choose another --save-path')
    except KeyboardInterrupt as e:   # Ctrl-C or SIGTERM: the loop aborted its writers (no partial overlay video)
        return interrupted('test.py', e, f'the unfinished video has no overlay video; {args.save_path} keeps the '
                           'finished files and records the run as unfinished: re-run with --overwrite to redo it')
    return 0


def run(args, options):
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CRWError(f'--device {args.device}: CUDA is not available on this machine; use --device cpu')

    print(f'git revision: {git_revision()}')
    print('Arguments', args)
    print(describe_settings(args))
    print(f'Context length {options.protocol.video_len}, image size {options.crop_size}, device {device}, '
          f"{'reference (release) propagation' if options.reference else 'windowed propagation'}")

    random.seed(args.manualSeed)
    np.random.seed(args.manualSeed % 2 ** 32)
    torch.manual_seed(args.manualSeed)
    if device.type == 'cuda':     # float32 features: TF32 would change the masks
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    runner = TestRun(args, options, device)
    try:
        if args.video is not None:
            run_user_video(runner)
        else:
            run_filelist(runner)
    finally:
        runner.close()


def run_filelist(runner):
    """--filelist: every video checked (its frames listed) before the first is computed, then each
    propagated (after --finetune's adaptation of a copy of the encoder) with its per-video line."""
    args, device = runner.args, runner.device
    entries = read_filelist(args.filelist, args.data_root, vip=args.vip)
    vip_names = [e.name for e in entries if e.kind == 'vip']
    if len(set(vip_names)) < len(vip_names):
        raise CRWError(f'{args.filelist}: two VIP videos have the same folder name; their outputs '
                       '(<save>/<video>/<frame>.png) would overwrite each other')
    if any(e.kind == 'jhmdb' for e in entries) and runner.options.crop_size <= 0:
        raise CRWError('JHMDB pose propagation needs --cropSize > 0 (the release used 320)')
    frames = {}
    for entry in entries:   # list every video's frames now: a bad folder fails before any video is computed
        try:
            frames[entry.index] = list_frames(entry.frames_dir)
        except CRWError as e:
            raise CRWError(f'{args.filelist}:{entry.line_no}: {e}') from e
    claim = OutputClaim(filelist_plan(args, entries, frames), filelist_inputs(args, entries), args.overwrite)

    encoder = build_encoder(args, device)
    adapter = build_adapter(args, device)
    claim.take()
    runner.open_viewer()
    for entry in entries:
        reset_peak_memory(device)
        t0 = time.time()
        run_video = {'jhmdb': runner.jhmdb, 'vip': runner.vip}.get(entry.kind, runner.davis)
        video_encoder, adapted, t_adapt = encoder, '', 0.0
        with tqdm(desc=f'[{entry.index}] {entry.name}', unit='frame', leave=False, delay=1.0,
                  mininterval=1.0, file=sys.stderr) as bar:
            try:
                if adapter is not None:   # a copy is adapted; the next video starts from `encoder` again
                    video_encoder, info = adapter.adapt(encoder, entry.frames_dir)
                    t_adapt = info['seconds']
                    adapted = ', ' + adapter.summary(info)
                n = run_video(entry, video_encoder, bar)
            except CRWError as e:
                raise CRWError(f'{args.filelist}:{entry.line_no}: {e}') from e
        dt = time.time() - t0 - t_adapt
        print(f'video {entry.index} {entry.name}: {n} frames, {n / dt:.2f} frames/s, '
              f'peak {"GPU" if device.type == "cuda" else "RSS"} memory '
              f'{peak_memory_bytes(device) / 2 ** 20:.0f} MB{adapted}', flush=True)
    claim.finish()


if __name__ == '__main__':
    sys.exit(main())
