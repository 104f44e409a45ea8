"""utils/output_folders.py: no output on an input (real paths), the record of a folder's outputs, --overwrite
removes exactly the recorded files, and the lock of a folder; the scripts' one-line
error on an output path they cannot write. Tiny files built here."""
import json
import os
import signal
import time

import pytest

import train
from conftest import one_line, prop_argv, run_test_py, train_argv
from crw.eval import convert_davis
from crw.utils.errors import CRWError
from crw.utils.output_folders import MANIFEST, FolderLock, Inputs, OutputClaim, Plan, claim_outputs, read_manifest

READ_ONLY = '/sys/crw-read-only-test' if os.geteuid() == 0 else None   # root ignores file modes


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    out = {}
    for root, _, files in os.walk(folder):
        for n in files:
            p = os.path.join(root, n)
            with open(p, 'rb') as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


@pytest.fixture
def frames(tmp_path):
    d = tmp_path / 'data' / 'clip'
    d.mkdir(parents=True)
    for t in range(3):
        (d / f'{t:05d}.png').write_bytes(b'frame%d' % t)
    return d


@pytest.mark.parametrize('spelling', ['same', 'trailing slash', 'dotdot', 'symlink'])
def test_output_folder_that_is_an_input_folder_is_refused_by_real_path(frames, tmp_path, spelling):
    out = {'same': str(frames), 'trailing slash': str(frames) + '/',
           'dotdot': str(frames / '..' / 'clip'), 'symlink': str(tmp_path / 'link')}[spelling]
    if spelling == 'symlink':
        os.symlink(frames, tmp_path / 'link')
    before = snapshot(frames)
    plan = Plan(out, '--save-path', 'test.py', files=['00000.png'])
    with pytest.raises(CRWError, match='--save-path .*the frames .*an input'):
        claim_outputs(plan, Inputs().folder(str(frames), 'the frames'))
    # a sub-folder of the output that is the input folder (outputs <save>/<name>/...)
    plan = Plan(str(frames.parent), '--save-path', 'test.py', unit='clip', files=['clip/00000.png'],
                dirs=['', 'clip'])
    with pytest.raises(CRWError, match='into .*clip, which is the frames'):
        claim_outputs(plan, Inputs().folder(str(frames) + '/', 'the frames'))
    assert snapshot(frames) == before and not (frames / MANIFEST).exists()


def test_output_file_that_is_an_input_file_is_refused(tmp_path):
    (tmp_path / 'a.png').write_bytes(b'x')
    os.symlink(tmp_path / 'a.png', tmp_path / 'b.png')
    plan = Plan(str(tmp_path), '--save-path', 'test.py', unit='v', files=['b.png'], dirs=[''])
    with pytest.raises(CRWError, match='b.png would overwrite the mask'):
        claim_outputs(plan, Inputs().file(str(tmp_path / 'a.png'), 'the mask'))
    assert (tmp_path / 'a.png').read_bytes() == b'x' and not (tmp_path / MANIFEST).exists()


def test_record_then_refuse_then_overwrite_removes_exactly_the_recorded_files(tmp_path):
    out = tmp_path / 'out'
    first = Plan(str(out), '--save-path', 'test.py', 'test.py run one', files=[f'0_{t}_mask.png' for t in range(9)])
    claim = claim_outputs(first, Inputs())
    for f in first.files:
        (out / f).write_bytes(b'old')
    claim.finish()
    (out / 'notes.txt').write_text('mine')                       # not an output: never touched
    (out / '.0_3_mask.png.abc123.tmp').write_bytes(b'partial')   # a killed write's temporary file
    runs = read_manifest(str(out))
    assert runs[0]['status'] == 'complete' and runs[0]['command'] == 'test.py run one' and len(runs[0]['files']) == 9
    second = Plan(str(out), '--save-path', 'test.py', 'test.py run two', files=[f'0_{t}_mask.png' for t in range(6)])
    before = snapshot(out)
    with pytest.raises(CRWError, match=r'holds the outputs of test.py run one \(9 files\); pass --overwrite'):
        OutputClaim(second, Inputs())
    assert snapshot(out) == before
    claim = claim_outputs(second, Inputs(), overwrite=True)
    assert sorted(os.listdir(out)) == [MANIFEST, 'notes.txt']    # the 9 old files and the temp file removed
    runs = read_manifest(str(out))
    assert len(runs) == 1 and runs[0]['status'] == 'running' and runs[0]['command'] == 'test.py run two'


def test_files_of_the_runs_names_without_a_record(tmp_path):
    # a folder written before records existed (or by the release): files of the run's names are another run's
    out = tmp_path / 'out'
    out.mkdir()
    for t in range(9):
        (out / f'0_{t}_mask.png').write_bytes(b'old')
    (out / 'keep.png').write_bytes(b'mine')
    plan = Plan(str(out), '--save-path', 'test.py', files=[f'0_{t}_mask.png' for t in range(6)],
                patterns=[r'\d+_\d+_mask\.png'])
    with pytest.raises(CRWError, match=r'9 output file\(s\) of another run'):
        OutputClaim(plan, Inputs())
    claim_outputs(plan, Inputs(), overwrite=True)
    assert sorted(os.listdir(out)) == [MANIFEST, 'keep.png']


def test_units_share_a_folder_and_unrecorded_files_in_a_unit_folder_are_refused(tmp_path):
    out = tmp_path / 'out'

    def video(name, n):
        files = [f'{name}/{t:05d}.png' for t in range(n)] + [f'{name}_overlay.mp4']
        return Plan(str(out), '--save-path', 'test.py', unit=name, files=files, dirs=['', name], unit_dirs=[name])

    for name in ('a', 'b'):                                   # two videos into one folder: both recorded
        claim = claim_outputs(video(name, 3), Inputs())
        os.makedirs(out / name, exist_ok=True)
        for f in claim.plan.files:
            (out / f).write_bytes(b'x')
        claim.finish()
    assert [r['unit'] for r in read_manifest(str(out))] == ['a', 'b']
    with pytest.raises(CRWError, match='holds the outputs of'):
        OutputClaim(video('a', 2), Inputs())
    claim_outputs(video('a', 2), Inputs(), overwrite=True)   # a's old files go, b's stay
    assert sorted(os.listdir(out / 'a')) == [] and len(os.listdir(out / 'b')) == 3
    assert [r['unit'] for r in read_manifest(str(out))] == ['b', 'a']
    (out / 'c').mkdir()
    (out / 'c' / '00009.png').write_bytes(b'who?')
    with pytest.raises(CRWError, match=r'c holds 1 file\(s\) this run does not write \(c/00009.png\)'):
        OutputClaim(video('c', 2), Inputs(), overwrite=True)
    # a whole-folder run overlaps every unit
    with pytest.raises(CRWError, match='holds the outputs of'):
        OutputClaim(Plan(str(out), '--save-path', 'test.py', files=['0_0_mask.png']), Inputs())


def test_a_file_where_the_folder_should_be_and_an_unreadable_record(tmp_path):
    (tmp_path / 'f').write_text('x')
    with pytest.raises(CRWError, match='is a file, not a folder'):
        OutputClaim(Plan(str(tmp_path / 'f'), '--save-path', 'test.py'), Inputs())
    (tmp_path / 'o').mkdir()
    (tmp_path / 'o' / MANIFEST).write_text('{not json')
    with pytest.raises(CRWError, match='cannot be read'):
        OutputClaim(Plan(str(tmp_path / 'o'), '--save-path', 'test.py'), Inputs())
    claim_outputs(Plan(str(tmp_path / 'o'), '--save-path', 'test.py'), Inputs(), overwrite=True)
    assert json.loads((tmp_path / 'o' / MANIFEST).read_text())['runs'][0]['tool'] == 'test.py'


def test_folder_lock_refuses_a_second_holder_and_a_killed_holder_leaves_nothing_stuck(tmp_path):
    first = FolderLock(str(tmp_path)).acquire('--output-dir')
    with pytest.raises(CRWError, match=rf'--output-dir {tmp_path}: another run \(pid {os.getpid()}\) is using it'):
        FolderLock(str(tmp_path)).acquire('--output-dir')
    first.release()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child takes the lock and is killed holding it
        FolderLock(str(tmp_path)).acquire('--output-dir')
        os.write(w, b'held')
        time.sleep(60)
        os._exit(0)
    assert os.read(r, 4) == b'held'
    with pytest.raises(CRWError, match=rf'\(pid {pid}\)'):
        FolderLock(str(tmp_path)).acquire('--output-dir')
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    FolderLock(str(tmp_path)).acquire('--output-dir').release()     # the OS released the dead run's lock


@pytest.mark.parametrize('kind', ['file', 'read-only'])
def test_unwritable_output_paths(frame_list, davis, tmp_path, capsys, kind):
    if kind == 'file':
        target = tmp_path / 'taken'
        target.write_text('a file')
    elif READ_ONLY:
        target = READ_ONLY
    else:
        (tmp_path / 'ro').mkdir(mode=0o555)
        target = tmp_path / 'ro' / 'out'
    target = str(target)
    assert train.cli(train_argv(frame_list, target)) == 1
    captured = capsys.readouterr()
    assert f'--output-dir {target}' in one_line(captured.err) and '[data]' not in captured.out
    root, filelist, ckpt, _ = davis
    assert run_test_py(prop_argv(filelist, ckpt, target)) == 1
    assert f'--save-path {target}' in one_line(capsys.readouterr().err)
    raw = tmp_path / 'raw'
    assert run_test_py(prop_argv(filelist, ckpt, raw)) == 0
    assert convert_davis.main(['--in_folder', str(raw), '--out_folder', target, '--dataset', root]) == 1
    assert f'--out_folder {target}' in one_line(capsys.readouterr().err)
