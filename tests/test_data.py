"""Training data: layout branches, clip indexing/resampling, decoding, corrupt files, missing folders, metadata
cache, sampler."""
import os
import shutil

import numpy as np
import pytest
import torch

import train
from conftest import one_line, train_argv
from crw.data.training import video_dataset as vds
from crw.data import video_io
from crw.data.training.sampler import ClipSampler, build_train_sampler
from crw.data.synthetic import make_sequence, write_video
from crw.data.training.video_dataset import build_train_dataset, detect_layout
from crw.utils import arguments
from crw.utils.arguments import train_args
from crw.utils.errors import CRWError

HAS_TORCHCODEC = 'torchcodec' in video_io._backends()

H, W = 32, 48
BASE, STEP = 10, 5   # frame t is a flat grey image of value BASE + STEP * t


def _frames(n):
    return np.stack([np.full((H, W, 3), BASE + STEP * t, dtype=np.uint8) for t in range(n)])


def _index_of(clip):
    """Frame numbers encoded in a uint8 clip [T, 3, S, S] (or [T, H, W, 3])."""
    means = clip.float().flatten(1).mean(1).numpy()
    return np.round((means - BASE) / STEP).astype(int).tolist()


def _resampled(n, fps, rate=8):
    step = fps / rate
    if float(step).is_integer():
        return list(range(0, n, int(step)))
    return [int(np.floor(np.float32(k) * np.float32(step))) for k in range(int(np.floor(n * rate / fps)))]


# (relative path, fps, frames): 24 fps → every 3rd frame; 30 fps → floor(k·3.75); 8 fps → every frame
VIDEOS = [('abseiling/a24.mp4', 24, 40), ('bowling/b30.mp4', 30, 45), ('bowling/c8.mkv', 8, 10)]


@pytest.fixture(scope='module')
def kinetics(tmp_path_factory):
    root = tmp_path_factory.mktemp('kin')
    for rel, fps, n in VIDEOS:
        write_video(str(root / 'train_256' / rel), _frames(n), fps=fps)
    return root


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('CRW_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.delenv('CRW_VIDEO_BACKEND', raising=False)


def _args(path, *extra):
    return train_args(['--data-path', str(path), '--clip-len', '4', '--frame-transforms', '', '--img-size', '16',
                       '--workers', '2', *extra])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------- videos
def test_resampling_rule():
    assert video_io.resampled_frame_indices(40, 24.0, 8).tolist() == list(range(0, 40, 3))
    assert video_io.resampled_frame_indices(45, 30.0, 8).tolist() == _resampled(45, 30)
    assert video_io.resampled_frame_indices(45, 30.0, 8).tolist()[:5] == [0, 3, 7, 11, 15]
    assert video_io.resampled_frame_indices(5, 4.0, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    n = np.array([40, 45, 10, 5, 7])
    fps = np.array([24.0, 30.0, 8.0, 4.0, 29.97])
    assert video_io.num_resampled_frames(n, fps, 8).tolist() == [
        len(video_io.resampled_frame_indices(a, b, 8)) for a, b in zip(n, fps)]


def test_kinetics_layout_clips_and_frames(kinetics, capsys):
    assert detect_layout(str(kinetics)) == ('kinetics', str(kinetics / 'train_256'))
    ds = build_train_dataset(_args(kinetics))
    out = capsys.readouterr().out
    assert 'Kinetics layout' in out and '3 videos' in out
    assert ds.branch == 'kinetics'
    assert [os.path.relpath(p, kinetics / 'train_256') for p in ds.paths] == [v[0] for v in VIDEOS]
    expected = [len(_resampled(n, fps)) - 4 + 1 for _, fps, n in VIDEOS]
    assert ds.clip_counts.tolist() == expected == [11, 9, 7]
    assert len(ds) == sum(expected)
    for ci in (0, 10, 11, 15, 19, 20, 26):
        v, k = ds.locate(ci)
        _, fps, n = VIDEOS[v]
        want = _resampled(n, fps)[k:k + 4]
        assert ds._frame_indices(*ds.locate(ci)).tolist() == want
        clip = ds[(ci, 123)]
        assert clip.shape == (4, 3, 16, 16) and clip.dtype == torch.uint8
        assert _index_of(clip) == want


def test_class_folders_branch_and_crop(kinetics, tmp_path, capsys):
    root = _copy(kinetics / 'train_256', tmp_path / 'classes')
    assert detect_layout(str(root)) == ('class_folders', str(root))
    args = train_args(['--data-path', str(root), '--clip-len', '4', '--img-size', '24', '--workers', '1',
                       '--frame-transforms', 'crop+flip'])
    ds = build_train_dataset(args)
    assert 'class folders of videos' in capsys.readouterr().out
    a, b, c = ds[(3, 1)], ds[(3, 1)], ds[(3, 2)]
    assert a.shape == (4, 3, 24, 24) and torch.equal(a, b)
    assert _index_of(a) == _index_of(c) == ds._frame_indices(*ds.locate(3)).tolist()


def test_corrupt_videos_skipped_with_one_warning(kinetics, tmp_path, capsys):
    root = _copy(kinetics, tmp_path / 'kc')
    bad1 = root / 'train_256' / 'bowling' / 'junk.mp4'
    bad1.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = (root / 'train_256' / 'abseiling' / 'a24.mp4').read_bytes()
    bad2 = root / 'train_256' / 'abseiling' / 'truncated.mp4'
    bad2.write_bytes(good[:len(good) // 3])
    ds = build_train_dataset(_args(root))
    err = capsys.readouterr().err
    for bad in (bad1, bad2):
        assert sum(str(bad) in line for line in err.splitlines()) == 1
    assert len(ds.paths) == 3 and ds.clip_counts.tolist() == [11, 9, 7]
    assert ds[(0, 0)].shape == (4, 3, 16, 16)


def test_decode_failure_at_load_returns_another_clip(kinetics, tmp_path, capsys):
    root = _copy(kinetics, tmp_path / 'kd')
    ds = build_train_dataset(_args(root))
    victim = root / 'train_256' / 'bowling' / 'b30.mp4'
    victim.write_bytes(b'not a video any more')
    capsys.readouterr()
    a = ds[(12, 5)]        # clip of b30
    err = capsys.readouterr().err
    assert sum(str(victim) in line for line in err.splitlines()) == 1
    b = ds[(12, 5)]
    assert capsys.readouterr().err == ''   # warned once per file
    assert torch.equal(a, b) and a.shape == (4, 3, 16, 16)
    v, _ = ds.locate(12)
    assert v == 1 and v in ds._bad
    ds._bad.clear()                         # another worker process, which did not know the file was bad
    assert torch.equal(ds[(12, 5)], a)


def test_no_usable_video_is_a_one_line_error(tmp_path):
    (tmp_path / 'train_256' / 'x').mkdir(parents=True)
    (tmp_path / 'train_256' / 'x' / 'bad.mp4').write_bytes(b'garbage')
    with pytest.raises(CRWError) as e:
        build_train_dataset(_args(tmp_path))
    assert str(tmp_path) in str(e.value) and '\n' not in str(e.value)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(CRWError):
        detect_layout(str(empty))


@pytest.mark.skipif(not HAS_TORCHCODEC, reason='TorchCodec not available')
def test_torchcodec_and_pyav_decode_the_same_frames(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (30, 32, 48, 3), dtype=np.uint8).repeat(2, axis=1).repeat(2, axis=2)
    path = str(tmp_path / 'noise.mp4')
    write_video(path, frames, fps=24)
    idx = [1, 4, 7, 10, 22, 29]
    monkeypatch.setenv('CRW_VIDEO_BACKEND', 'torchcodec')
    tc = video_io.decode_frames(path, idx)
    n_tc = video_io.probe_video(path)
    monkeypatch.setenv('CRW_VIDEO_BACKEND', 'pyav')
    pa = video_io.decode_frames(path, idx)
    n_pa = video_io.probe_video(path)
    assert tc.shape == pa.shape == (6, 64, 96, 3)
    assert (tc.int() - pa.int()).abs().max() <= 1
    assert n_tc == n_pa == (30, 24.0)


@pytest.mark.skipif(not HAS_TORCHCODEC, reason='TorchCodec not available')
def test_dataset_clips_identical_with_either_backend(kinetics, monkeypatch):
    ds = build_train_dataset(_args(kinetics))
    monkeypatch.setenv('CRW_VIDEO_BACKEND', 'pyav')
    pa = [ds[(ci, 3)] for ci in (0, 14, 24)]
    monkeypatch.setenv('CRW_VIDEO_BACKEND', 'torchcodec')
    tc = [ds[(ci, 3)] for ci in (0, 14, 24)]
    assert all((a.int() - b.int()).abs().max() <= 1 for a, b in zip(pa, tc))
    assert [_index_of(a) for a in pa] == [ds._frame_indices(*ds.locate(ci)).tolist() for ci in (0, 14, 24)]


# ---------------------------------------------------------------------------------------------- frames
def _write_frames(folder, n, names=None):
    import cv2
    os.makedirs(folder, exist_ok=True)
    for t in range(n):
        name = names[t] if names else f'{t:05d}.png'
        cv2.imwrite(os.path.join(folder, name), np.full((H, W, 3), BASE + STEP * t, dtype=np.uint8))


def test_frame_list_branch(tmp_path, capsys):
    _write_frames(tmp_path / 'v1', 20, names=[f'{t}.png' for t in range(20)])   # 1, 2, ..., 10: numeric sort
    _write_frames(tmp_path / 'v2', 40)
    _write_frames(tmp_path / 'short', 3)
    lst = tmp_path / 'list.txt'
    lst.write_text(f'{tmp_path / "v1"} 20\n{tmp_path / "v2"} 40\nshort 3\n')
    ds = build_train_dataset(_args(lst))
    cap = capsys.readouterr()
    assert 'frame list file' in cap.out and ds.branch == 'frame_list'
    assert sum('short' in line for line in cap.err.splitlines()) == 1
    assert len(ds) == 2 and ds.clip_counts.tolist() == [1, 1]
    # 20 frames, T 4, frame-skip 8: the gap drops to 5 and the only start is 0
    assert _index_of(ds[(0, 3)]) == [0, 5, 10, 15]
    # unreadable frames (after the start was drawn): one warning, then the same replacement in any process
    bad = tmp_path / 'bad'
    bad.mkdir()
    for t in range(10):
        (bad / f'{t:05d}.jpg').write_bytes(b'no image')
    lst.write_text(lst.read_text() + f'{bad} 10\n')
    ds = build_train_dataset(_args(lst))
    capsys.readouterr()
    a = ds[(2, 17)]
    assert sum(str(bad) in line for line in capsys.readouterr().err.splitlines()) == 1
    assert torch.equal(ds[(2, 17)], a)
    ds._bad.clear()
    assert torch.equal(ds[(2, 17)], a)
    starts = set()
    for seed in range(40):
        idx = _index_of(ds[(1, seed)])
        assert np.diff(idx).tolist() == [8, 8, 8] and 0 <= idx[0] <= 40 - 32
        starts.add(idx[0])
    assert len(starts) > 4


def test_folder_of_frame_folders_branch(tmp_path, capsys):
    root = tmp_path / 'frames'
    _write_frames(root / 'a', 12)
    _write_frames(root / 'b', 33)
    assert detect_layout(str(root)) == ('frame_folders', str(root))
    ds = build_train_dataset(_args(root, '--frame-skip', '2', '--cache-dataset'))
    assert 'folder of frame folders' in capsys.readouterr().out
    assert ds.counts == [12, 33] and len(ds) == 2
    idx = _index_of(ds[(1, 9)])
    assert np.diff(idx).tolist() == [2, 2, 2]
    ds2 = build_train_dataset(_args(root, '--frame-skip', '2', '--cache-dataset'))
    assert ds2.scan_info['cache'] == 'used' and ds2.counts == [12, 33]


# ---------------------------------------------------------------------------------------------- cache
def test_metadata_cache(kinetics, tmp_path, monkeypatch, capsys):
    root = _copy(kinetics, tmp_path / 'kcache')
    args = _args(root, '--cache-dataset')
    ds1 = build_train_dataset(args)
    assert ds1.scan_info['cache'] == 'written' and ds1.scan_info['scanned'] == 3
    cache_file = ds1.scan_info['cache_file']
    assert cache_file.startswith(str(tmp_path / 'cache')) and os.path.exists(cache_file)
    capsys.readouterr()

    calls = []
    real_probe = video_io.probe_video

    def counting_probe(path):
        calls.append(path)
        return real_probe(path)
    monkeypatch.setattr(vds, 'probe_video', counting_probe)

    ds2 = build_train_dataset(args)
    assert calls == [] and ds2.scan_info['cache'] == 'used'
    assert 'cache used' in capsys.readouterr().out
    assert ds2.clip_counts.tolist() == ds1.clip_counts.tolist() and ds2.paths == ds1.paths

    # touching a video invalidates the cache; only that video is probed again
    touched = root / 'train_256' / 'bowling' / 'b30.mp4'
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    ds3 = build_train_dataset(args)
    assert calls == [str(touched)] and ds3.scan_info['cache'] == 'written'
    assert 'stale' in capsys.readouterr().out
    assert not os.path.exists(cache_file)  # the stale file was replaced

    # adding a video: only the new one is probed
    calls.clear()
    new = root / 'train_256' / 'bowling' / 'd24.mp4'
    write_video(str(new), _frames(16), fps=24)
    ds4 = build_train_dataset(args)
    assert calls == [str(new)] and len(ds4.paths) == 4 and ds4.clip_counts[-1] == 6 - 4 + 1

    # a corrupt cache file is rebuilt from scratch
    calls.clear()
    with open(ds4.scan_info['cache_file'], 'wb') as f:
        f.write(b'\x80\x04garbage')
    ds5 = build_train_dataset(args)
    assert len(calls) == 4 and ds5.scan_info['cache'] == 'written'
    assert 'unreadable' in capsys.readouterr().out
    calls.clear()
    assert build_train_dataset(args).scan_info['cache'] == 'used' and calls == []

    # a different clip length has its own cache entry; no cache without --cache-dataset
    assert build_train_dataset(_args(root, '--cache-dataset', '--clip-len', '5')).scan_info['cache'] == 'written'
    assert build_train_dataset(_args(root)).scan_info['cache'] == 'off'


class _Planted:
    """Unpickling this runs ``os.mkdir(marker)``: the proof that a file was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_planted_cache_file_is_never_run(kinetics, tmp_path, capsys):
    """The metadata cache is JSON: a pickle (or anything else) put in its place is not executed; one line
    says so and the cache is rebuilt. Pickles under the old ``.pkl`` names are not opened at all."""
    import json
    import pickle
    root = _copy(kinetics, tmp_path / 'kplant')
    args = _args(root, '--cache-dataset')
    ds1 = build_train_dataset(args)
    path = ds1.scan_info['cache_file']
    assert path.endswith('.json') and json.load(open(path))['version'] >= 2
    marker = tmp_path / 'ran'
    old_name = path[:-len('.json')] + '.pkl'          # where the pickle cache used to live
    for target in (path, old_name):
        with open(target, 'wb') as f:
            pickle.dump(_Planted(str(marker)), f)
    capsys.readouterr()
    ds2 = build_train_dataset(args)
    assert not marker.exists()
    notes = [line for line in capsys.readouterr().out.splitlines() if 'unreadable' in line]
    assert len(notes) == 1 and path in notes[0] and 'rebuilding' in notes[0]
    assert ds2.scan_info['cache'] == 'written' and ds2.scan_info['scanned'] == len(VIDEOS)
    assert ds2.clip_counts.tolist() == ds1.clip_counts.tolist()
    assert json.load(open(path))['version'] >= 2               # replaced by a valid cache
    # valid JSON of the right key but a wrong entry is refused the same way
    obj = json.load(open(path))
    obj['frames'][0] = {'py/object': 'os.system'}
    with open(path, 'w') as f:
        json.dump(obj, f)
    assert build_train_dataset(args).scan_info['cache'] == 'written' and not marker.exists()
    assert build_train_dataset(args).scan_info['cache'] == 'used'


def test_cache_round_trip(tmp_path):
    """Values, failures and undecodable file names come back from the JSON cache exactly; the stale path
    gets the items back too."""
    from crw.data.training.scan import _load, _write_cache
    head = {'version': 2, 'key': 'k'}
    items = [('a.mp4', 10, 1), ('b\udcff.mp4', 20, 2), ('c.mp4', 30, 3)]   # b: a non-UTF-8 byte in its name
    for results in ([((40, 24.0), None), (None, 'DecodeError: no frame'), ((45, 29.97002997002997), None)],
                    [(12, None), (None, 'PermissionError: x'), (33, None)]):
        path = str(tmp_path / 'c.json')
        _write_cache(path, head, items, results)
        assert _load(path, 'k', 3) == (None, results)
        assert _load(path, None) == (items, results)
        with pytest.raises(ValueError):
            _load(path, 'other key')


def test_cache_key_depends_on_files_and_settings():
    from crw.data.training.scan import cache_names
    items = [('a.mp4', 10, 1), ('b.mp4', 20, 2)]
    base = cache_names('videos', '/x', items, 4, 8)
    assert cache_names('videos', '/x', items, 4, 8) == base
    assert cache_names('videos', '/x', items[:1], 4, 8)[1] != base[1]
    assert cache_names('videos', '/x', [('a.mp4', 11, 1), items[1]], 4, 8)[1] != base[1]
    assert cache_names('videos', '/x', items, 4, 8)[0] == cache_names('videos', '/x', items[:1], 4, 8)[0]
    assert cache_names('videos', '/x', items, 5, 8)[0] != base[0]
    assert cache_names('videos', '/y', items, 4, 8)[0] != base[0]


# ---------------------------------------------------------------------------------------------- sampler
COUNTS = [3, 10, 0, 7, 1, 25, 5]


def _all(sampler):
    return list(iter(sampler))


def test_sampler_clips_per_video_and_determinism():
    offsets = np.concatenate([[0], np.cumsum(COUNTS)])
    s = ClipSampler(COUNTS, 5, seed=3)
    s.set_epoch(0)
    e0 = _all(s)
    assert len(e0) == len(s) == sum(min(c, 5) for c in COUNTS)
    clips = [c for c, _ in e0]
    assert len(set(clips)) == len(clips)
    per_video = np.bincount(np.searchsorted(offsets, clips, side='right') - 1, minlength=len(COUNTS))
    assert per_video.tolist() == [min(c, 5) for c in COUNTS]
    assert len({seed for _, seed in e0}) == len(e0)
    s2 = ClipSampler(COUNTS, 5, seed=3)
    s2.set_epoch(0)
    assert _all(s2) == e0
    s.set_epoch(1)
    e1 = _all(s)
    assert [c for c, _ in e1] != clips and {sd for _, sd in e1}.isdisjoint({sd for _, sd in e0})
    other = ClipSampler(COUNTS, 5, seed=4)
    assert _all(other) != e0


def test_sampler_draws_uniformly():
    s = ClipSampler([10], 3, seed=0)
    hits = np.zeros(10)
    for e in range(600):
        s.set_epoch(e)
        for c, _ in s:
            hits[c] += 1
    assert hits.sum() == 1800 and hits.min() > 130 and hits.max() < 230   # 180 expected each


def test_sampler_resume_tail():
    s = ClipSampler(COUNTS, 5, seed=1)
    s.set_epoch(2)
    full = _all(s)
    for k in (0, 1, 7, len(full) - 1, len(full)):
        s.set_epoch(2)
        s.set_start(k)
        assert len(s) == len(full) - k
        assert _all(s) == full[k:]
    s.set_epoch(3)
    assert len(s) == len(full)   # set_epoch resets the start
    with pytest.raises(ValueError):
        s.set_start(len(full) + 1)


def test_sampler_ranks_partition_the_epoch():
    full = ClipSampler(COUNTS, 5, seed=9)
    full.set_epoch(4)
    seq = _all(full)
    n = len(seq)
    for world in (2, 3):
        shards = []
        for r in range(world):
            s = ClipSampler(COUNTS, 5, seed=9, rank=r, world_size=world)
            s.set_epoch(4)
            shards.append(_all(s))
        assert len({len(x) for x in shards}) == 1 and len(shards[0]) == -(-n // world)
        merged = [shards[p % world][p // world] for p in range(world * len(shards[0]))]
        assert [c for c, _ in merged[:n]] == [c for c, _ in seq]        # same clips, same order
        assert [sd for _, sd in merged[:n]] == [sd for _, sd in seq]    # and the same sample seeds
        assert [c for c, _ in merged[n:]] == [c for c, _ in seq[:len(merged) - n]]   # padding repeats
        # resume on one rank
        s = ClipSampler(COUNTS, 5, seed=9, rank=1, world_size=world)
        s.set_epoch(4)
        s.set_start(3)
        assert _all(s) == shards[1][3:]


def test_build_train_sampler_with_dataloader(kinetics):
    args = _args(kinetics, '--clips-per-video', '2', '--seed', '5')
    ds = build_train_dataset(args)
    sampler = build_train_sampler(ds, args)
    sampler.set_epoch(0)
    assert len(sampler) == 6
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=0)
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [4, 2] and batches[0].shape[1:] == (4, 3, 16, 16)
    sampler.set_epoch(0)
    sampler.set_start(4)
    tail = list(torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=0))
    assert len(tail) == 1 and torch.equal(tail[0], batches[1])
    # worker processes do not change anything
    sampler.set_epoch(0)
    par = list(torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2))
    assert all(torch.equal(a, b) for a, b in zip(par, batches)) and len(par) == 2


def test_missing_frame_folders_and_undecodable_videos(frame_list, tmp_path, capsys):
    lst = tmp_path / 'list.txt'
    lst.write_text(f'{tmp_path}/gone1 6\n{tmp_path}/gone2 6\n')
    assert train.cli(train_argv(str(lst), tmp_path / 'a')) == 1
    assert 'none of the 2 folders it lists exists' in one_line(capsys.readouterr().err)
    # videos whose index is fine but whose frames do not decode
    videos = tmp_path / 'videos'
    for name in ('a', 'b'):
        path = str(videos / f'{name}.mp4')
        write_video(path, make_sequence(num_frames=24, height=48, width=64, seed=0)['frames'], fps=8)
        data = bytearray(open(path, 'rb').read())
        start, index = data.find(b'mdat'), data.find(b'moov')
        cut = start + (index - start) * 15 // 100
        data[cut:index - 8] = bytes(index - 8 - cut)
        open(path, 'wb').write(data)
    assert train.cli(train_argv(str(videos), tmp_path / 'b', '--frame-skip', '8')) == 1
    msg = one_line(capsys.readouterr().err)
    assert 'a.mp4' in msg and 'b.mp4' in msg


def test_frame_list_summary_counts_existing_folders(frame_list, tmp_path, capsys):
    lst = tmp_path / 'list.txt'
    lst.write_text(open(frame_list).read() + f'{tmp_path}/gone 6\n')
    args = arguments.train_args(train_argv(str(lst), tmp_path / 'out'))
    from crw.data.training.video_dataset import build_train_dataset
    ds = build_train_dataset(args)
    captured = capsys.readouterr()
    assert len(ds) == 4 and '4 videos' in captured.out
    assert 'skipping 1 missing folder(s)' in captured.err and 'gone' in captured.err
