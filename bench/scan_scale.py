"""The training-data scan at Kinetics scale: videos/s of the first scan, peak memory, cache size, and the time
of a restart that finds the metadata cache (``--cache-dataset``), extrapolated to Kinetics-400 train.

    python bench/scan_scale.py --videos 20000 --workers 1 2                # Kinetics-shaped synthetic videos
    python bench/scan_scale.py --videos 20000 --source /path/to/videos      # links to your own files

N videos are laid out as ``<tmp>/train_256/class<k>/v<i>.mp4`` in 400 classes, each a hard link (or a
symbolic link) to one of a few source videos: the decoder cannot tell, and the disk holds the sources
only. Default sources: 4 synthetic Kinetics-shaped videos (340x256, 30 fps, 10 s, H.264: 300 frames each,
about 235 kB; real Kinetics clips hold as many frames at 2-4x the bytes). Every measurement runs in a fresh
process (its peak RSS is the scan's): a first scan with an empty cache per ``--workers``, then a restart
that loads the cache (listing the files, hashing the key, reading the JSON, building the dataset and the
first epoch's clip order). The sources are read from the page cache: I/O of a cold disk is not included.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

KINETICS400_TRAIN = 240_000     # videos in Kinetics-400 train (about 246k listed, ~240k downloadable)
CLASSES = 400
SMALL = 400                     # videos of the layout that measures the restart's fixed part


def layout(root, sources, n):
    """``n`` links in the Kinetics layout under ``root`` to ``sources`` (round robin)."""
    for i in range(n):
        d = os.path.join(root, 'train_256', f'class{i % CLASSES:03d}')
        os.makedirs(d, exist_ok=True)
        src = sources[i % len(sources)]
        dst = os.path.join(d, f'v{i:06d}' + os.path.splitext(src)[1])
        try:
            os.link(src, dst)
        except OSError:
            os.symlink(os.path.abspath(src), dst)


def child(a):
    """One measurement in this process: prints a JSON line."""
    import resource

    import torch
    from crw.data.training.sampler import build_train_sampler
    from crw.data.training.video_dataset import build_train_dataset
    from crw.utils.arguments import train_args
    torch.set_num_threads(1)
    args = train_args(['--data-path', a.root, '--clip-len', '4', '--workers', str(a.workers[0]), '--cache-dataset'])
    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)   # all threads of this process
        return r.ru_utime + r.ru_stime
    t0, c0 = time.perf_counter(), cpu()
    ds = build_train_dataset(args)
    t_data, c_data = time.perf_counter() - t0, cpu() - c0
    sampler = build_train_sampler(ds, args)
    sampler.set_epoch(0)
    order = sampler.epoch_order()
    t_all, c_all = time.perf_counter() - t0, cpu() - c0
    info = ds.scan_info
    print(json.dumps({'seconds_dataset': t_data, 'cpu_seconds_dataset': c_data, 'seconds_ready': t_all,
                      'cpu_seconds_ready': c_all,
                      'scanned': info['scanned'], 'cache': info['cache'], 'cache_bytes': os.path.getsize(info['cache_file']),
                      'videos': len(ds.paths), 'clips': len(ds), 'epoch_clips': int(order.numel()),
                      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def gil_check(sources, seconds=8.0):
    """Rate of a pure-Python counter thread alone, beside a thread that probes videos (same process: it
    slows only if the probe holds the GIL) and beside a process that probes them (the CPU share alone)."""
    import threading

    from crw.data.video_io import probe_video
    probe_code = ('import sys, time; sys.path.insert(0, %r); from data.video_io import probe_video\n'
                  't = time.time()\nwhile time.time() - t < %r:\n    [probe_video(p) for p in %r]'
                  % (ROOT, seconds, sources))

    def counter_rate(beside):
        stop, out = threading.Event(), []

        def count():
            n = 0
            while not stop.is_set():
                for _ in range(1000):
                    n += 1
            out.append(n)
        th = threading.Thread(target=count)
        t0 = time.perf_counter()
        th.start()
        if beside == 'thread':
            t = time.time()
            while time.time() - t < seconds:
                [probe_video(p) for p in sources]
        elif beside == 'process':
            subprocess.run([sys.executable, '-c', probe_code], check=True)
        else:
            time.sleep(seconds)
        stop.set()
        th.join()
        return out[0] / (time.perf_counter() - t0) / 1e6
    probe_video(sources[0])
    return [(b, counter_rate(b)) for b in ('alone', 'thread', 'process', 'thread', 'process')]


def measure(root, workers, cache_dir):
    env = dict(os.environ, CRW_CACHE_DIR=cache_dir, OMP_NUM_THREADS='1')
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', '--root', root, '--workers',
                        str(workers)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f'child exited with {r.returncode}: {r.stderr[-2000:]}')
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out['seconds_process'] = wall
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--videos', type=int, default=20000)
    p.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    p.add_argument('--source', default='', help='folder of real videos to link to (default: synthetic)')
    p.add_argument('--tmp', default='/tmp', help='where the layout and the caches go (removed at the end)')
    p.add_argument('--cores', type=int, default=16, help='core count of the extrapolation')
    p.add_argument('--no-write', action='store_true', help='print only; do not append to bench/RESULTS.md')
    p.add_argument('--gil', action='store_true', help='only check whether probing holds the GIL')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--root', default='', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a)
    if a.videos <= SMALL:
        p.error(f'--videos must be more than {SMALL}')

    from crw.bench.results import publish
    from crw.data.video_io import VIDEO_EXTENSIONS
    from crw.utils.misc import cpu_name, git_revision
    work = tempfile.mkdtemp(prefix='crw-scan-scale-', dir=a.tmp)
    try:
        if a.source:
            sources = sorted(os.path.join(d, f) for d, _, fs in os.walk(a.source) for f in fs
                             if f.lower().endswith(VIDEO_EXTENSIONS))
            what = f'{len(sources)} real videos of {a.source}'
        else:
            from crw.bench.data_pipeline import make_videos
            make_videos(os.path.join(work, 'src'), n=4)
            sources = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(work, 'src')) for f in fs)
            what = '4 synthetic 340x256 30 fps 10 s H.264 videos'
        if a.gil:
            rates = gil_check(sources)
            thread = min(v for k, v in rates if k == 'thread')
            process = min(v for k, v in rates if k == 'process')
            verdict = ('at or above the process figure: the probe releases the GIL, so `--workers` threads '
                       'scale with cores' if thread >= 0.8 * process else 'well below the process figure: the '
                       'probe holds the GIL for part of its time, so threads do not scale with cores')
            publish(f'### scan_scale --gil — {time.strftime("%Y-%m-%d %H:%M")} — {cpu_name()}, {os.cpu_count()} '
                    f'cores, load average {os.getloadavg()[0]:.1f}, git {git_revision()}\n\n'
                    '`python bench/scan_scale.py --gil`: a Python counter thread (M counts/s) alone, beside a '
                    f'thread probing {what} (same process), beside a process probing them: '
                    + ', '.join(f'{k} {v:.1f}' for k, v in rates) + f'. Beside a thread (worst {thread:.1f}) '
                    f'{verdict}.\n', write=not a.no_write)
            return
        root = os.path.join(work, 'data')
        t0 = time.perf_counter()
        layout(root, sources, a.videos)
        print(f'{a.videos} links to {what} in {time.perf_counter() - t0:.1f} s', flush=True)

        load0 = os.getloadavg()[0]
        rows, cold = [], {}
        for w in a.workers:
            cache = os.path.join(work, f'cache{w}')
            c = measure(root, w, cache)
            assert c['cache'] == 'written' and c['scanned'] == a.videos, c
            cold[w] = c
            r = measure(root, w, cache)
            assert r['cache'] == 'used' and r['scanned'] == 0 and r['clips'] == c['clips'], r
            rows.append((w, c, r))
            print(f'workers {w}: first scan {c["seconds_dataset"]:.1f} s, restart {r["seconds_ready"]:.2f} s',
                  flush=True)
        # the restart's fixed part (imports aside: listing, hashing, reading a near-empty cache), from a small layout
        small = os.path.join(work, 'small')
        layout(small, sources, SMALL)
        measure(small, a.workers[-1], os.path.join(work, 'cache-small'))
        fixed = measure(small, a.workers[-1], os.path.join(work, 'cache-small'))['cpu_seconds_ready']
        load1 = os.getloadavg()[0]

        n = a.videos
        lines = [f'### scan_scale — {time.strftime("%Y-%m-%d %H:%M")} — {cpu_name()}, {os.cpu_count()} cores, '
                 f'load average {load0:.1f} → {load1:.1f}, git {git_revision()}',
                 '', f'`python bench/scan_scale.py --videos {n} --workers {" ".join(map(str, a.workers))}'
                 + (f' --source {a.source}' if a.source else '') + f'`: {n} links to {what}, Kinetics layout, '
                 f'{CLASSES} classes; every row a fresh process.', '',
                 '| --workers | first scan: s | videos/s | CPU ms per video | peak RSS MB | cache MB | '
                 'cached restart: dataset s | + first epoch order s | (its CPU s) | whole process s |',
                 '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
        for w, c, r in rows:
            lines.append(f'| {w} | {c["seconds_dataset"]:.1f} | {n / c["seconds_dataset"]:.0f} | '
                         f'{c["cpu_seconds_dataset"] / n * 1e3:.1f} | {c["peak_rss_mb"]:.0f} | '
                         f'{c["cache_bytes"] / 2 ** 20:.1f} | {r["seconds_dataset"]:.2f} | {r["seconds_ready"]:.2f} | '
                         f'{r["cpu_seconds_ready"]:.2f} | '
                         f'{r["seconds_process"]:.1f} |')
        cpu_ms = max(c['cpu_seconds_dataset'] for c in cold.values()) / n * 1e3
        scale = KINETICS400_TRAIN / n
        full = KINETICS400_TRAIN * cpu_ms / 1e3 / a.cores
        per_video = max(rows[-1][2]['cpu_seconds_ready'] - fixed, 0) / (n - SMALL)
        restart = fixed + per_video * (KINETICS400_TRAIN - SMALL)
        w1, w2 = a.workers[0], max(a.workers)
        lines += ['', f'Extrapolation to Kinetics-400 train ({KINETICS400_TRAIN} videos), `--workers {a.cores}` on '
                  f'{a.cores} cores: first scan {KINETICS400_TRAIN} x {cpu_ms:.1f} ms of CPU / {a.cores} = '
                  f'**{full / 60:.1f} min** (goal < 15 min; assumes the probe threads run in parallel, as the '
                  f'GIL is released while probing (`--gil`); here {w1} → {w2} workers gave '
                  f'{cold[w1]["seconds_dataset"] / cold[w2]["seconds_dataset"]:.2f}x on a shared machine at load '
                  f'{load0:.0f}); cached restart in CPU seconds (its time on an idle machine, files in the page cache) '
                  f'{fixed:.2f} s (fixed: {SMALL} videos) + {per_video * 1e6:.1f} µs x {KINETICS400_TRAIN} = '
                  f'**{restart:.1f} s** (goal < 10 s; Python and torch imports not included: see the last column); '
                  'cache '
                  f'{rows[-1][1]["cache_bytes"] * scale / 2 ** 20:.0f} MB.', '']
        publish('\n'.join(lines), write=not a.no_write)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
