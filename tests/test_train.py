"""train.py end to end on tiny synthetic frame folders: checkpoints, exact resume, errors, interruptions (Ctrl-C,
SIGTERM), partial files left by a kill, --sync-bn, torchrun."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

import train
import crw.utils.dist as dist_utils
from conftest import ROOT, FullDisk, one_line, small_train_args, train_argv
from crw.model import CRW
from crw.utils.errors import CRWError


def weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)['model']


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_contents_and_epoch_resume(train_frame_list, tmp_path):
    out = tmp_path / 'run'
    train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '2'))
    ckpt = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert {'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'} <= set(ckpt)
    assert ckpt['epoch'] == 0 and ckpt['args']['clip_len'] == 3
    assert 'encoder.model.layer3.0.conv1.weight' in ckpt['model']
    assert not any(k.startswith('module.') for k in ckpt['model'])
    assert (out / 'model_0.pth').is_file() and (out / 'log.txt').is_file()
    # same command with more epochs continues from epoch 1 and matches an uninterrupted 2-epoch run
    train.main(small_train_args(train_frame_list, out, '--epochs', '2', '--steps-per-epoch', '2'))
    ref = tmp_path / 'ref'
    train.main(small_train_args(train_frame_list, ref, '--epochs', '2', '--steps-per-epoch', '2'))
    assert_same_weights(weights(out / 'model_1.pth'), weights(ref / 'model_1.pth'))


class _Crash(Exception):
    pass


def test_mid_epoch_resume_is_bit_identical(train_frame_list, tmp_path, monkeypatch):
    ref = tmp_path / 'ref'
    train.main(small_train_args(train_frame_list, ref, '--epochs', '1', '--steps-per-epoch', '4'))

    out = tmp_path / 'run'
    real_save = train.save_state

    def save_then_crash(path, *a, **kw):
        real_save(path, *a, **kw)
        raise _Crash
    monkeypatch.setattr(train, 'save_state', save_then_crash)
    with pytest.raises(_Crash):
        train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '4',
                                    '--save-every', '2'))
    monkeypatch.setattr(train, 'save_state', real_save)
    mid = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert mid['iteration'] == 2 and not mid['epoch_complete']
    train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '4', '--save-every', '2'))
    assert_same_weights(weights(out / 'model_0.pth'), weights(ref / 'model_0.pth'))
    # log.txt's epoch record is the uninterrupted run's: the means over all 4 iterations, the time since the start
    (rec,) = [json.loads(line) for line in open(out / 'log.txt')]
    (ref_rec,) = [json.loads(line) for line in open(ref / 'log.txt')]
    assert mid['meters']['loss']['count'] == 2 and mid['train_time_s'] > 0
    train_keys = [k for k in ref_rec if k.startswith('train_')]
    assert 'train_loss' in train_keys and {k: rec[k] for k in train_keys} == {k: ref_rec[k] for k in train_keys}
    assert (rec['iterations'], rec['global_step']) == (ref_rec['iterations'], ref_rec['global_step']) == (4, 4)
    assert rec['time_s'] >= round(mid['train_time_s'], 1)
    # and the resumed run really trained: weights differ from the step-2 snapshot
    assert any(not torch.equal(v, mid['model'][k]) for k, v in weights(out / 'model_0.pth').items()
               if v.dtype.is_floating_point)


def test_each_rank_resumes_its_own_random_stream(train_frame_list, tmp_path):
    """A torchrun checkpoint holds every rank's RNG state (edge dropout draws from it); rank r resumes its
    own, and falls back to rank 0's when the number of processes changed."""
    out = tmp_path / 'run'
    train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '1'))
    ckpt = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    streams = [torch.Generator().manual_seed(s).get_state() for s in (10, 11)]
    ckpt['rng_ranks'] = [{'torch': streams[0]}, {'torch': streams[1]}]
    ckpt['rng'] = ckpt['rng_ranks'][0]
    for rank, world, expected in ((1, 2, streams[1]), (0, 2, streams[0]), (1, 3, streams[0])):
        args = small_train_args(train_frame_list, out, '--epochs', '2')
        args.rank, args.world_size = rank, world
        model = CRW(args)
        optimizer = train.build_optimizer(model, args)
        state = {'iteration': 0, 'global_step': 0, 'iters_per_epoch': 1}
        train.restore_training_state(ckpt, 'ckpt', optimizer, train.build_scheduler(optimizer, args, 1), state, args)
        assert torch.equal(torch.get_rng_state(), expected)


def test_sigterm_is_one_line_and_keeps_the_checkpoint(train_frame_list, tmp_path, monkeypatch, capsys):
    """SIGTERM (torchrun stopping its workers after losing a node, SLURM at the time limit) mid-run: one line
    naming the intact checkpoint, exit status 143; the same command resumes from it."""
    import signal
    out = tmp_path / 'run'
    real_mix = train.mix_seed

    def term_at_step_2(seed, step, rank):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_mix(seed, step, rank)
    monkeypatch.setattr(train, 'mix_seed', term_at_step_2)
    argv = ['--data-path', train_frame_list, '--frame-aug', 'grid', '--img-size', '64', '--patch-size', '32', '32',
            '--clip-len', '3', '--frame-skip', '1', '--batch-size', '2', '--workers', '0', '--device', 'cpu',
            '--output-dir', str(out), '--remove-layers', 'layer4', '--epochs', '1', '--steps-per-epoch', '3',
            '--save-every', '1']
    before = signal.getsignal(signal.SIGTERM)
    assert train.cli(argv) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'SIGTERM' in err[0] and f'{out / "checkpoint.pth"} is intact' in err[0]
    assert torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)['global_step'] == 2
    monkeypatch.setattr(train, 'mix_seed', real_mix)
    assert train.cli(argv) == 0
    assert torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)['global_step'] == 3


def test_full_disk_during_checkpoint_write_keeps_previous_and_names_it(train_frame_list, tmp_path, monkeypatch,
                                                                         capsys):
    import contextlib
    import crw.utils.checkpoint as ck
    out = tmp_path / 'run'
    train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '1'))
    before = weights(out / 'checkpoint.pth')
    real_atomic = ck.atomic_write

    @contextlib.contextmanager
    def small_disk(path, *a, **kw):     # torch's zip writer meets ENOSPC after 100 kB (it says 'unexpected pos')
        with real_atomic(path, *a, **kw) as f:
            yield FullDisk(f, 100_000)
    monkeypatch.setattr(ck, 'atomic_write', small_disk)
    argv = small_train_args(train_frame_list, out, '--epochs', '2', '--steps-per-epoch', '1')
    with pytest.raises(CRWError, match=r'model_1.pth: cannot write the checkpoint \(No space left on device\); '
                                       rf'{out / "checkpoint.pth"} is intact: free some space'):
        train.main(argv)
    # through the entry point: one line, exit status 1
    assert train.cli(['--data-path', train_frame_list, '--frame-aug', 'grid', '--img-size', '64', '--patch-size',
                      '32', '32', '--clip-len', '3', '--frame-skip', '1', '--batch-size', '2', '--workers', '0',
                      '--device', 'cpu', '--output-dir', str(out), '--seed', '3', '--remove-layers', 'layer4',
                      '--temp', '0.05', '--dropout', '0.1', '--print-freq', '1',
                      '--epochs', '2', '--steps-per-epoch', '1']) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith('train.py: error: ') and 'is intact' in err[-1] and len(err) == 1, err
    monkeypatch.setattr(ck, 'atomic_write', real_atomic)
    assert_same_weights(weights(out / 'checkpoint.pth'), before)
    assert not [p for p in os.listdir(out) if p.endswith('.tmp')]
    # with space again, the same command resumes from it
    train.main(argv)
    assert torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)['epoch'] == 1


def test_second_run_on_an_output_dir_is_refused_and_a_killed_one_leaves_no_lock(train_frame_list, tmp_path,
                                                                                 capsys):
    out = tmp_path / 'run'
    out.mkdir()
    # another process holds the folder's lock (as a running train.py does for its lifetime)
    holder = subprocess.Popen([sys.executable, '-c', 'import time; from utils.output_folders import FolderLock; '
                               f'FolderLock({str(out)!r}).acquire("--output-dir"); '
                               'print("locked", flush=True); time.sleep(60)'],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        (out / '.checkpoint.pth.abc.tmp').write_bytes(b'the running write')   # its checkpoint write in progress
        assert train.cli(['--data-path', train_frame_list, '--output-dir', str(out), '--device', 'cpu',
                          '--workers', '0', '--epochs', '1']) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f'--output-dir {out}: another train.py run (pid {holder.pid}) is using it' in err[0]
        assert (out / '.checkpoint.pth.abc.tmp').exists() and not (out / 'checkpoint.pth').exists()
    finally:
        holder.kill()   # SIGKILL: no clean-up code runs
        holder.wait()
    # the killed holder left its lock file, but not the lock: the next run trains
    assert (out / '.crw.lock').exists()
    train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '1'))
    assert (out / 'checkpoint.pth').is_file() and not (out / '.checkpoint.pth.abc.tmp').exists()


def test_non_finite_loss_stops_naming_iteration(train_frame_list, tmp_path, monkeypatch):
    import crw.model as model_mod
    real_forward = model_mod.CRW.forward
    calls = {'n': 0}

    def nan_on_second(self, x, *a, **kw):
        q, loss, diags = real_forward(self, x, *a, **kw)
        calls['n'] += 1
        return q, (loss * float('nan') if calls['n'] == 2 else loss), diags
    monkeypatch.setattr(model_mod.CRW, 'forward', nan_on_second)
    out = tmp_path / 'run'
    with pytest.raises(FloatingPointError, match='iteration 1'):
        train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '3'))
    assert not (out / 'model_0.pth').exists()


@pytest.mark.slow
@pytest.mark.parametrize('argv, needle', [
    ([], '--data-path'),
    (['--data-path', '/no/such/dir'], '/no/such/dir'),
    (['--data-path', '.', '--clip-len', '2'], '--clip-len'),
])
def test_bad_arguments_one_line_error(argv, needle):
    r = subprocess.run([sys.executable, 'train.py', *argv], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and 'Traceback' not in r.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes(train_frame_list, tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29531',
           'train.py', '--data-path', train_frame_list, '--frame-aug', 'grid', '--img-size', '64',
           '--patch-size', '32', '32', '--clip-len', '3', '--frame-skip', '1', '--batch-size', '1',
           '--workers', '0', '--device', 'cpu', '--epochs', '1', '--steps-per-epoch', '2',
           '--output-dir', str(out)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert ckpt['args']['world_size'] == 2 and ckpt['global_step'] == 2
    assert sorted(p for p in os.listdir(out) if p.endswith('.pth')) == ['checkpoint.pth', 'model_0.pth']


def test_visualize_without_wandb_or_visdom_server_warns_and_trains(train_frame_list, tmp_path, monkeypatch):
    import warnings
    # pick a port nothing listens on; wandb may or may not be installed: both paths must only warn
    monkeypatch.setenv('WANDB_MODE', 'offline')
    out = tmp_path / 'vis'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        train.main(small_train_args(train_frame_list, out, '--epochs', '1', '--steps-per-epoch', '1', '--visualize',
                              '--port', '1', '--vis-every', '1'))
    assert any('visdom' in str(w.message) for w in caught)
    assert (out / 'checkpoint.pth').is_file()
    views = ('flow', 'loss', 'matches', 'neighbours', 'pca')
    assert sorted(os.listdir(out / 'vis')) == [f'00000001_{v}.png' for v in views]  # pictures without any server
    import importlib.util
    if importlib.util.find_spec('wandb') is not None:  # optional dependency: an offline run with the pictures
        media = list((out / 'wandb').glob('offline-run-*/files/media/images/vis/*.png'))
        assert sorted({p.name.split('_')[0] for p in media}) == sorted(views)


def test_sync_bn_only_for_distributed_gpus(capsys):
    model = CRW(types.SimpleNamespace())
    args = types.SimpleNamespace(sync_bn=True, distributed=False)
    assert dist_utils.sync_batchnorm(model, args, 'cpu') is model
    assert 'single process' in capsys.readouterr().out
    args.distributed = True
    with pytest.raises(CRWError, match='GPUs only'):
        dist_utils.sync_batchnorm(model, args, 'cpu')
    synced = dist_utils.sync_batchnorm(model, args, torch.device('cuda', 0))   # conversion needs no GPU
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert synced.state_dict().keys() == CRW(types.SimpleNamespace()).state_dict().keys()


def test_non_finite_loss_message_names_no_missing_checkpoint(frame_list, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(CRW, 'walk_loss', lambda self, q, size=None, masks=None: (q.sum() * float('nan'), {}))
    assert train.cli(train_argv(frame_list, tmp_path / 'run')) == 1
    msg = one_line(capsys.readouterr().err)
    assert 'non-finite loss at iteration 0' in msg and 'no checkpoint was written yet' in msg


class _InterruptingFile:
    """A file object whose third write stores half its bytes and then raises KeyboardInterrupt (Ctrl-C in the
    middle of torch.save)."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, b):
        self.n += 1
        if self.n == 3:
            self.f.write(bytes(b)[:len(b) // 2])
            raise KeyboardInterrupt
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def test_ctrl_c_during_checkpoint_write(frame_list, tmp_path, capsys, monkeypatch):
    real = torch.serialization._open_zipfile_writer
    monkeypatch.setattr(torch.serialization, '_open_zipfile_writer', lambda f: real(_InterruptingFile(f)))
    out = tmp_path / 'run'
    assert train.cli(train_argv(frame_list, out, '--steps-per-epoch', '1')) == 130
    msg = one_line(capsys.readouterr().err, 'interrupted')
    assert msg.startswith('train.py: interrupted') and 'no checkpoint was written yet' in msg
    assert sorted(os.listdir(out)) == ['.crw.lock', 'train_log.jsonl']    # no partial file left
    monkeypatch.setattr(torch.serialization, '_open_zipfile_writer', real)
    assert train.cli(train_argv(frame_list, out, '--steps-per-epoch', '1')) == 0
    monkeypatch.setattr(torch.serialization, '_open_zipfile_writer', lambda f: real(_InterruptingFile(f)))
    assert train.cli(train_argv(frame_list, out, '--steps-per-epoch', '1', '--epochs', '2')) == 130
    msg = one_line(capsys.readouterr().err, 'interrupted')
    assert f'{out / "checkpoint.pth"} is intact' in msg
    assert torch.load(out / 'checkpoint.pth', weights_only=True)['epoch'] == 0


def test_sigterm_in_training_is_one_line(frame_list, tmp_path, capsys, monkeypatch):
    import signal
    monkeypatch.setattr(train, 'save_state', lambda *a, **kw: os.kill(os.getpid(), signal.SIGTERM))
    assert train.cli(train_argv(frame_list, tmp_path / 'run', '--steps-per-epoch', '1')) == 143
    text = capsys.readouterr().err
    assert one_line(text, 'interrupted').startswith('train.py: interrupted (SIGTERM)') and 'Traceback' not in text


def test_resume_housekeeping(frame_list, tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    stale = [out / '.checkpoint.pth.x1y2.tmp', out / '.model_3.pth.abcd.tmp']
    for p in stale:
        p.write_bytes(b'partial')
    assert train.cli(train_argv(frame_list, out)) == 0
    assert 'removed 2 partial file(s)' in capsys.readouterr().out
    assert not any(p.exists() for p in stale)
    # steps logged after the last checkpoint (a kill) are logged again by the resumed run: no duplicates
    log = out / 'train_log.jsonl'
    with open(log, 'a') as f:
        f.write(json.dumps({'epoch': 1, 'iteration': 1, 'global_step': 3, 'loss': 9.0}) + '\n')
    assert train.cli(train_argv(frame_list, out, '--epochs', '2')) == 0
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r['global_step'] for r in records] == [1, 2, 3, 4] and records[2]['loss'] != 9.0
    assert [json.loads(x)['epoch'] for x in (out / 'log.txt').read_text().splitlines()] == [0, 1]
    # a missing --resume file is reported before the data scan
    capsys.readouterr()
    assert train.cli(train_argv(frame_list, out, '--resume', str(tmp_path / 'nope.pth'))) == 1
    captured = capsys.readouterr()
    assert 'nope.pth: no such file' in one_line(captured.err) and '[data]' not in captured.out
