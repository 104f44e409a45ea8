"""Train the Contrastive Random Walk on unlabeled video.

    python train.py --data-path /path/to/kinetics/ --frame-aug grid --dropout 0.1 --clip-len 4 --temp 0.05 \
        --model-type scratch --workers 16 --batch-size 20 --cache-dataset --data-parallel --lr 0.0001
    torchrun --nproc_per_node 8 train.py ...        # DistributedDataParallel, one process per GPU (or CPU: --device cpu)
    torchrun --nnodes 2 --node_rank N --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT train.py ...

Re-running the same command resumes from <output-dir>/checkpoint.pth, mid-epoch included.
"""
import crw.utils.startup  # noqa: I001  (first: OpenMP settings before torch loads, collector paused)
import contextlib
import os
import sys
import time

import torch
import torch.nn as nn

import crw.utils.dist as dist_utils
from crw.cli import parse_train_args
from crw.data.training.gpu_augment import BatchAugment
from crw.data.training.sampler import build_train_sampler, mix_seed
from crw.data.training.video_dataset import build_train_dataset
from crw.model import CRW
from crw.utils.checkpoint import (atomic_save, check_architecture, checkpoint_args, is_release_scheduler,
                              load_checkpoint, load_state_strict, partial_load, release_scheduler_state, rng_state,
                              set_rng_state, unwrap_model)
from crw.utils.errors import CRWError, Terminated, interrupted, report, sigterm_as_interrupt
from crw.utils.logger import MetricLogger, append_json_line, truncate_json_lines
from crw.utils.output_folders import FolderLock
from crw.utils.misc import peak_memory_mb, print_run_header, remove_stale_temp_files, writable_folder
from crw.vis.sinks import Visualizer

crw.utils.startup.imports_done()

# files written atomically into --output-dir (the temporary files of an interrupted write are removed at start)
CHECKPOINT_FILES = ('checkpoint.pth', 'model_*.pth', 'train_log.jsonl', 'log.txt')


def build_optimizer(model, args):
    """Adam or SGD for --optim. Adam is fused (each tensor updated in one pass instead of about ten elementwise
    operations: the same update up to float rounding, several times faster on the CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optim == 'adam':
        fused = all(p.is_floating_point() and p.device.type in ('cpu', 'cuda') for p in params)
        # The release built Adam without weight decay (its --wd did nothing); --adam-wd opts in.
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay if args.adam_wd else 0.0,
                                fused=fused or None)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


class StepSchedule:
    """lr factor at iteration ``it``: linear warm-up from 1e-3 over ``warmup`` iterations, times ``gamma`` for
    every milestone (an iteration) passed. A callable object rather than a closure, so that LambdaLR stores
    its fields in the checkpoint and a resumed run continues the stored schedule (as the release's MultiStepLR
    state did), a release checkpoint's milestones included."""

    def __init__(self, warmup=0, milestones=(), gamma=0.1):
        self.warmup, self.milestones, self.gamma = int(warmup), sorted(int(m) for m in milestones), float(gamma)

    def __call__(self, it):
        w = 1.0 if it >= self.warmup else 1e-3 + (1 - 1e-3) * it / self.warmup
        return w * self.gamma ** sum(it >= m for m in self.milestones)


def build_scheduler(optimizer, args, iters_per_epoch):
    """Per-iteration schedule: linear warm-up over --lr-warmup-epochs, then x lr_gamma at each milestone epoch
    (the release's WarmupMultiStepLR, milestones counted from the end of warm-up)."""
    warmup = args.lr_warmup_epochs * iters_per_epoch
    milestones = [(m - args.lr_warmup_epochs) * iters_per_epoch for m in args.lr_milestones]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, StepSchedule(warmup, milestones, args.lr_gamma))


def save_state(path, model, optimizer, lr_scheduler, args, epoch, iteration, epoch_complete, global_step,
               rng_ranks=None, meters=None, train_time=0.0):
    """A checkpoint. ``rng_ranks``: every process's RNG state (``dist_utils.all_rng_states``), so that each rank
    of a torchrun job resumes its own edge-dropout stream (``rng`` stays rank 0's, the single-process format);
    mid-epoch checkpoints also hold the epoch's meters so far (``MetricLogger.state_dict``) and every checkpoint
    the training time so far, so that a resumed run's log.txt record is an uninterrupted run's."""
    state = {
        'model': unwrap_model(model).state_dict(), 'optimizer': optimizer.state_dict(),
        'lr_scheduler': lr_scheduler.state_dict(), 'epoch': epoch, 'args': vars(args),  # loads weights_only
        'iteration': iteration, 'epoch_complete': epoch_complete, 'global_step': global_step,
        'rng': rng_ranks[0] if rng_ranks else rng_state(), 'meters': meters or {},
        'train_time_s': float(train_time),
    }
    if rng_ranks and len(rng_ranks) > 1:
        state['rng_ranks'] = rng_ranks
    try:
        atomic_save(state, path)
    except CRWError as e:
        note = checkpoint_note(os.path.dirname(path), 'free some space and re-run the same command to resume')
        raise CRWError(f'{e}; {note}') from e


def train_one_epoch(model, aug, optimizer, lr_scheduler, loader, device, epoch, args, state, vis=None):
    """One epoch (or what is left of it after a mid-epoch resume). ``state`` holds iteration/global_step and
    is updated in place. Returns the epoch's averaged metrics."""
    model.train()
    logger = MetricLogger(device, args.batch_size * args.world_size)
    logger.load_state_dict(state.pop('meters', None))     # a resumed epoch's meters so far
    start, total = state['iteration'], state['iters_per_epoch']
    header = f'Epoch: [{epoch}]'
    use_amp = args.amp and device.type == 'cuda'
    first_bad = None
    for clips in logger.log_every(loader, args.print_freq, header, total=total, start=start):
        step = state['global_step']
        clips = clips.to(device, non_blocking=True)
        # The model's input: jittered, normalised frames, or with --frame-aug grid the patches that are the walk's
        # nodes (data/training/nodes.py). Seed from (seed, step): the same batch gets the same crops after a resume.
        video = aug(clips, mix_seed(args.seed, step, args.rank))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            q, loss, diags = model(video)
        loss = loss.mean()  # DataParallel returns one loss per replica
        if not torch.isfinite(loss):
            first_bad = step
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        state['iteration'] += 1
        state['global_step'] += 1
        if vis is not None and step % args.vis_every == 0:  # logged at the same step number as the scalars
            vis.pictures(unwrap_model(model), clips, video, q, state['global_step'])
        if state['iteration'] % args.print_freq == 0 or state['iteration'] == total:
            diags = {k: v.mean().item() for k, v in diags.items()}
            loss_v = dist_utils.all_reduce_mean(loss.detach()).item()
            logger.update(loss=loss_v, lr=optimizer.param_groups[0]['lr'],
                          **{k.split(' ', 1)[1]: v for k, v in diags.items() if ' acc ' in k})
            if dist_utils.is_main_process():
                append_json_line(os.path.join(args.output_dir, 'train_log.jsonl'),
                                 {'epoch': epoch, 'iteration': state['iteration'], 'global_step': state['global_step'],
                                  'loss': loss_v, 'lr': optimizer.param_groups[0]['lr'], **diags})
                if vis is not None:
                    vis.log({'loss': loss_v, **diags}, step=state['global_step'])
        # the epoch's last step is saved by the end-of-epoch write; don't serialise it twice
        if args.save_every > 0 and state['global_step'] % args.save_every == 0 and state['iteration'] < total:
            rngs = dist_utils.all_rng_states(rng_state())  # every rank takes part
            if dist_utils.is_main_process():
                save_state(os.path.join(args.output_dir, 'checkpoint.pth'), model, optimizer, lr_scheduler, args,
                           epoch, state['iteration'], False, state['global_step'], rngs, logger.state_dict(),
                           time.time() - state['t0'])
    if first_bad is not None:
        raise FloatingPointError(f'non-finite loss at iteration {first_bad} (epoch {epoch}); stopping. '
                                 + checkpoint_note(args.output_dir, 'resume from it with a lower --lr'))
    return {k: m.global_avg for k, m in logger.meters.items()}


def checkpoint_note(output_dir, what):
    """The end of a message about the run's state on disk: names checkpoint.pth only if it exists."""
    path = os.path.join(output_dir, 'checkpoint.pth')
    if os.path.isfile(path):
        return f'{path} is intact: {what}'
    return f'no checkpoint was written yet in {output_dir}'


def find_resume_path(args):
    if args.resume:
        if not os.path.isfile(args.resume):
            raise CRWError(f'--resume {args.resume}: no such file')
        return args.resume
    auto = os.path.join(args.output_dir, 'checkpoint.pth')
    return auto if os.path.isfile(auto) else ''


@contextlib.contextmanager
def prepare_output_dir(args):
    """Check that --output-dir can take checkpoints (every process, before the data scan and the first step);
    the main process holds its lock while the block runs (a second run there is refused) and removes the
    temporary files of writes that a kill interrupted."""
    writable_folder(args.output_dir, '--output-dir')
    if not dist_utils.is_main_process():
        yield
        return
    lock = FolderLock(args.output_dir).acquire('--output-dir', 'another train.py run')
    try:
        stale = remove_stale_temp_files(args.output_dir, CHECKPOINT_FILES)
        if stale:
            print(f'| removed {len(stale)} partial file(s) of an interrupted checkpoint write in {args.output_dir}')
        yield
    finally:
        lock.release()


def restore_training_state(ckpt, path, optimizer, lr_scheduler, state, args):
    """Optimizer, schedule, position and RNG from a checkpoint (this project's or the release's); returns the
    epoch to start at and prints one line."""
    if 'optimizer' in ckpt:
        try:
            optimizer.load_state_dict(ckpt['optimizer'])
        except (ValueError, KeyError) as e:
            raise CRWError(f'checkpoint {path}: its optimizer state does not fit --optim {args.optim} ({e})') from e
    sched = ckpt.get('lr_scheduler')
    release = is_release_scheduler(sched)
    if sched is not None:
        lr_scheduler.load_state_dict(release_scheduler_state(sched) if release else sched)
    epoch = ckpt.get('epoch', -1)
    if release:
        # The release saved at epoch ends and at random steps; its iterations per epoch follow from its
        # milestones (len(loader) x milestone epoch). A mid-epoch file continues mid-epoch.
        step, ms = lr_scheduler.last_epoch, lr_scheduler.lr_lambdas[0].milestones
        epochs = checkpoint_args(ckpt).get('lr_milestones') or []
        per_epoch = ms[0] // epochs[0] if ms and epochs and epochs[0] > 0 and ms[0] % epochs[0] == 0 else 0
        done = step - epoch * per_epoch if per_epoch else -1
        start_epoch = epoch if 0 <= done < min(per_epoch, state['iters_per_epoch']) else epoch + 1
        state['iteration'] = done if start_epoch == epoch else 0
        state['global_step'] = step
        print(f"| --resume {path}: the release's checkpoint (MultiStepLR: milestones at iterations {ms}, gamma "
              f"{lr_scheduler.lr_lambdas[0].gamma:g}, {step} steps done, epoch {epoch}); continuing at epoch "
              f"{start_epoch}, iteration {state['iteration']}, lr {optimizer.param_groups[0]['lr']:.3g}")
        return start_epoch
    start_epoch = epoch + 1 if ckpt.get('epoch_complete', True) else epoch  # the release wrote at epoch ends
    if start_epoch == epoch:
        state['iteration'] = ckpt['iteration']
        state['meters'] = ckpt.get('meters') or {}
    state['train_time_s'] = float(ckpt.get('train_time_s', 0.0))
    state['global_step'] = ckpt.get('global_step', lr_scheduler.last_epoch)
    ranks = ckpt.get('rng_ranks')
    set_rng_state(ranks[args.rank] if ranks and len(ranks) == args.world_size else ckpt.get('rng'))
    print(f'| resumed from {path}: epoch {start_epoch}, iteration {state["iteration"]}, '
          f'step {state["global_step"]}')
    return start_epoch


def main(args):
    device = dist_utils.init_distributed_mode(args)
    if args.amp and device.type != 'cuda':
        print('| --amp: bf16 autocast is used on CUDA only; training in fp32 on the CPU')
    print_run_header(args, 'CRW training')
    with prepare_output_dir(args):
        train(args, device)


def train(args, device):
    """The run itself, in a prepared --output-dir: resume, data, model, the epochs."""
    # the checkpoint is read (and checked against the flags) before the data scan, which can take long
    resume = find_resume_path(args)
    ckpt = load_checkpoint(resume, map_location='cpu', trust=args.trust_checkpoint) if resume else None
    if ckpt is not None:
        check_architecture(ckpt, args, resume)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels

    torch.manual_seed(args.seed + args.rank)
    model = CRW(args).to(device)
    if ckpt is not None:
        load_state_strict(model, ckpt['model'], resume)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.partial_reload:
        source = load_checkpoint(args.partial_reload, map_location='cpu', trust=args.trust_checkpoint)
        loaded = partial_load(model, source['model'])[0]
        del source
        if not loaded:
            raise CRWError(f'--partial-reload {args.partial_reload}: no weight matches this model (other '
                           'architecture or --model-type?); refusing to train from random weights')

    dataset = build_train_dataset(args)
    sampler = build_train_sampler(dataset, args, rank=args.rank, world_size=args.world_size)
    loader_gen = torch.Generator().manual_seed(args.seed)  # keeps the DataLoader off the global RNG
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        pin_memory=device.type == 'cuda', drop_last=True, generator=loader_gen,
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None)
    iters_full = len(sampler) // args.batch_size
    iters_per_epoch = min(iters_full, args.steps_per_epoch or iters_full)
    if iters_per_epoch == 0:
        raise CRWError(f'--data-path {args.data_path}: {len(sampler)} clips per epoch on this process, fewer than '
                         f'--batch-size {args.batch_size}; lower the batch size or add videos')
    aug = BatchAugment(args)

    optimizer = build_optimizer(model, args)
    lr_scheduler = build_scheduler(optimizer, args, iters_per_epoch)

    state = {'iteration': 0, 'global_step': 0, 'iters_per_epoch': iters_per_epoch}
    start_epoch = args.start_epoch
    if ckpt is not None:
        start_epoch = restore_training_state(ckpt, resume, optimizer, lr_scheduler, state, args)
        del ckpt
        if dist_utils.is_main_process():
            for name in ('train_log.jsonl', 'log.txt'):  # the resumed run writes these records again
                truncate_json_lines(os.path.join(args.output_dir, name), 'global_step', state['global_step'])

    # every node must read the same checkpoint (a folder they all share), or the ranks would drift apart
    dist_utils.check_same((bool(resume), start_epoch, state['iteration'], state['global_step']),
                          'where to resume (checkpoint found, epoch, iteration, step); --output-dir (or --resume) '
                          'must be one folder every node sees, e.g. on a shared file system')
    model_without_ddp = model
    model = wrap_model(model, args, device)
    if args.compile:
        model = torch.compile(model)

    vis = None
    if args.visualize and dist_utils.is_main_process():
        vis = Visualizer(args)

    print(f'| {len(dataset)} clips, {iters_per_epoch} iterations per epoch, '
          f'{args.batch_size * args.world_size} clips per step, device {device}')
    if start_epoch >= args.epochs:
        print(f'| already trained for {start_epoch} epochs (--epochs {args.epochs}); raise --epochs to continue')
    t0 = state['t0'] = time.time() - state.pop('train_time_s', 0.0)   # training time, counted across resumes
    for epoch in range(start_epoch, args.epochs):
        if state['iteration'] < iters_per_epoch:  # else: stopped after the last step, before the epoch's save
            sampler.set_epoch(epoch)
            sampler.set_start(state['iteration'] * args.batch_size)
            stats = train_one_epoch(model, aug, optimizer, lr_scheduler, loader, device, epoch, args, state, vis)
        else:
            stats = {k: v['total'] / max(v['count'], 1) for k, v in (state.pop('meters', None) or {}).items()}
        rngs = dist_utils.all_rng_states(rng_state())
        if dist_utils.is_main_process():
            for name in (f'model_{epoch}.pth', 'checkpoint.pth'):
                save_state(os.path.join(args.output_dir, name), model_without_ddp, optimizer, lr_scheduler, args,
                           epoch, state['iteration'], True, state['global_step'], rngs,
                           train_time=time.time() - t0)
            append_json_line(os.path.join(args.output_dir, 'log.txt'),
                             {'epoch': epoch, 'iterations': state['iteration'], 'global_step': state['global_step'],
                              **{f'train_{k}': v for k, v in stats.items()},
                              'peak_mem_mb': round(peak_memory_mb(device)), 'time_s': round(time.time() - t0, 1)})
        state['iteration'] = 0
        dist_utils.barrier()
    print(f'| training done in {time.time() - t0:.0f}s; checkpoints in {args.output_dir}')
    if vis is not None:
        vis.close()
    dist_utils.cleanup()


def wrap_model(model, args, device):
    """DistributedDataParallel under torchrun (with SyncBatchNorm for --sync-bn), DataParallel for
    --data-parallel with several GPUs (BatchNorm statistics per GPU, as the release), else the model."""
    model = dist_utils.sync_batchnorm(model, args, device)
    if args.distributed:
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.data_parallel and device.type == 'cuda' and torch.cuda.device_count() > 1:
        return nn.DataParallel(model)
    if args.data_parallel:
        print(f'| --data-parallel: only one device ({device}) is available; training without DataParallel')
    return model


def _say(args, what, todo, prefix='train.py: error: '):
    """One line on stderr from every rank (print is silenced on ranks > 0: a survivor may be any rank)."""
    who = f'rank {args.rank} of {args.world_size} ' if getattr(args, 'world_size', 1) > 1 else ''
    sys.stderr.write(f'{prefix}{who}{what}; {checkpoint_note(args.output_dir, todo)}\n')
    sys.stderr.flush()


def cli(argv=None):
    """Parse, train, and turn errors, Ctrl-C and SIGTERM into one line and an exit status."""
    args = parse_train_args(argv)
    try:
        with sigterm_as_interrupt():
            main(args)
    except (CRWError, FloatingPointError) as e:
        return report('train.py', e)
    except KeyboardInterrupt as e:   # Ctrl-C, or SIGTERM (utils.errors.Terminated)
        if isinstance(e, Terminated):
            what = 'interrupted (SIGTERM), as torchrun does when it loses a node and SLURM at the end of a job'
            _say(args, what, 're-run the same command (on every node) to resume from it', prefix='train.py: ')
            return 143
        return interrupted('train.py', e, checkpoint_note(args.output_dir, 're-run the same command to resume'))
    except RuntimeError as e:
        lost = dist_utils.peer_failure(e)
        if lost is None:
            raise
        _say(args, f'lost contact with the other processes of the torchrun job (a node died, hung past '
                   f'--dist-timeout or lost its network): {lost}', 're-run the same command on every node to '
                   'resume from it')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(cli())
