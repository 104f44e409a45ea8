"""Listing a training collection, probing every item in parallel, and caching the result (``--cache-dataset``).

The cache lives in ``$CRW_CACHE_DIR`` or ``~/.cache/crw/`` (the data may be read-only). A cache file is named
``<kind>-<P>-<K>.json``: P hashes (kind, absolute root, clip length, frame rate, format version), K hashes the
whole key, i.e. P's fields plus the sorted item list with sizes and modification times. Hence

* same key → the file exists and is loaded (nothing is probed);
* a file with the same P but another K → the collection changed: a one-line message, unchanged items are
  reused from it, only new or modified items are probed, the new cache replaces the old one;
* an unreadable or corrupt file (anything but this format's JSON) → a one-line message and a rescan.

The cache is plain JSON, parsed with ``json`` and checked field by field: a replaced or planted file can at
worst give wrong frame counts, never run code. Files are written atomically (``utils.misc.atomic_write``).
Items that failed to probe are cached as failures with their message (same bytes, same result) and warned
about at every start.
"""
import contextlib
import gc
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from crw.utils.errors import DecodeError
from crw.utils.misc import atomic_write

CACHE_VERSION = 2   # 2: JSON (1 was a pickle, never read now)
CACHE_EXT = '.json'


def log(msg):
    print(f'[data] {msg}', flush=True)


def cache_dir():
    d = os.environ.get('CRW_CACHE_DIR')
    return os.path.abspath(os.path.expanduser(d)) if d else os.path.join(os.path.expanduser('~'), '.cache', 'crw')


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection inside: with torch imported a full collection walks millions of objects,
    and building 240k entries triggered enough of them to make a cached start 10x slower."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def list_files(root, extensions):
    """``[(relative path, size, mtime_ns)]`` of the files under ``root`` (recursive, links followed) whose
    name ends with one of ``extensions``, sorted by relative path."""
    out = []
    with _gc_paused():
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            rel_dir = os.path.relpath(dirpath, root)   # once per folder: relpath per file was half the time
            prefix = '' if rel_dir == os.curdir else rel_dir + os.sep
            base = os.path.join(dirpath, '')
            for name in filenames:
                if name.startswith('.') or not name.lower().endswith(extensions):
                    continue
                try:
                    st = os.stat(base + name)
                except OSError:
                    continue
                out.append((prefix + name, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def list_subfolders(root):
    """``[(name, 0, mtime_ns)]`` of the immediate subfolders of ``root``, sorted (a folder's mtime changes
    when files are added to or removed from it)."""
    out = []
    with os.scandir(root) as it:
        for e in it:
            if e.name.startswith('.') or not e.is_dir(follow_symlinks=True):
                continue
            out.append((e.name, 0, e.stat(follow_symlinks=True).st_mtime_ns))
    out.sort()
    return out


def _hash(parts):
    """sha256 of the lines ``repr(part)``."""
    text = ''.join(f'{p!r}\n' for p in parts)
    return hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()


def cache_names(kind, root, items, clip_len, frame_skip):
    """``(prefix, file name)`` of the cache file for this key."""
    head = (kind, os.path.abspath(root), int(clip_len), int(frame_skip), CACHE_VERSION)
    prefix = f'{kind}-{_hash(head)[:12]}'
    full = _hash(head + tuple(items))[:24]
    return prefix, f'{prefix}-{full}{CACHE_EXT}'


def _is_int(x):
    return type(x) is int   # noqa: E721 (bool is not a size)


def _load(path, key_hash, num_items=None):
    """``(items, results)`` of the cache at ``path``: ``items`` ``[(rel, size, mtime_ns)]`` (None when
    ``key_hash`` is given: the key already fixes them), ``results`` ``[(value, None) | (None, error)]``.
    Raises ValueError (or OSError) for anything else. Parsed as JSON only (nothing in the file can run).

    File layout, flat columns (fast to parse at Kinetics scale): ``paths``, ``sizes``, ``mtimes``,
    ``frames`` (frame counts, null for a failure), ``fps`` (videos only; else null) and ``errors``
    ({index: message}). A value is ``(frames, fps)`` for videos, ``frames`` for frame folders."""
    with open(path, 'rb') as f, _gc_paused():
        obj = json.loads(f.read().decode('utf-8'))
        if not (isinstance(obj, dict) and obj.get('version') == CACHE_VERSION):
            raise ValueError('unexpected content')
        if key_hash is not None and obj.get('key') != key_hash:
            raise ValueError('key mismatch')
        cols = [obj.get(k) for k in ('paths', 'sizes', 'mtimes', 'frames')]
        fps, errors = obj.get('fps'), obj.get('errors')
        n = len(cols[0]) if isinstance(cols[0], list) else -1
        if not (all(isinstance(c, list) and len(c) == n for c in cols) and isinstance(errors, dict)
                and (fps is None or isinstance(fps, list) and len(fps) == n)
                and (num_items is None or n == num_items)):
            raise ValueError('unexpected columns')
        frames = cols[3]
        good = [k for k, v in enumerate(frames) if v is not None]
        if not all(_is_int(frames[k]) for k in good):
            raise ValueError('a frame count is not an integer')
        if fps is not None and not all(type(fps[k]) in (int, float) for k in good):   # noqa: E721
            raise ValueError('a frame rate is not a number')
        if len(good) < n and not all(isinstance(errors.get(str(k)), str) for k in range(n) if frames[k] is None):
            raise ValueError('a failed entry without its message')
        if fps is None:
            results = [(v, None) if v is not None else (None, errors[str(k)]) for k, v in enumerate(frames)]
        else:
            results = [((v, r), None) if v is not None else (None, errors[str(k)])
                       for k, (v, r) in enumerate(zip(frames, fps))]
        items = None
        if key_hash is None:
            if not (all(isinstance(p, str) for p in cols[0]) and all(map(_is_int, cols[1]))
                    and all(map(_is_int, cols[2]))):
                raise ValueError('unexpected items')
            items = list(zip(*cols[:3]))
    return items, results


def _write_cache(path, head, items, results):
    """Write the cache (layout: ``_load``) atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pairs = [v for v, err in results if err is None and isinstance(v, tuple)]
    obj = dict(head, paths=[i[0] for i in items], sizes=[i[1] for i in items], mtimes=[i[2] for i in items],
               frames=[None if err is not None else v[0] if isinstance(v, tuple) else v for v, err in results],
               fps=[None if err is not None else v[1] for v, err in results] if pairs else None,
               errors={str(k): err for k, (v, err) in enumerate(results) if err is not None})
    # ensure_ascii keeps undecodable file names (surrogate escapes) as \udcxx escapes that load back unchanged
    data = json.dumps(obj, separators=(',', ':'), ensure_ascii=True).encode('ascii')
    with atomic_write(path) as f:
        f.write(data)


def probe_all(paths, probe, workers, what='videos'):
    """``[(value, None) | (None, error message)]`` for every path, probed by ``probe`` in a thread pool of
    ``workers`` threads (decoders and file system calls release the GIL)."""
    def one(p):
        try:
            return probe(p), None
        except Exception as e:
            msg = str(e).strip().splitlines()
            msg = msg[0][:400] if msg else ''
            return None, msg if isinstance(e, DecodeError) else f'{type(e).__name__}: {msg}'

    n = len(paths)
    if n == 0:
        return []
    t0 = time.time()
    workers = max(1, int(workers or 1))
    report = n >= 2000
    out = []
    if workers == 1 or n == 1:
        it = map(one, paths)
        pool = None
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        it = pool.map(one, paths)
    try:
        for k, r in enumerate(it, 1):
            out.append(r)
            if report and k % max(1, n // 10) == 0 and k < n:
                log(f'scanned {k}/{n} {what} ({time.time() - t0:.0f} s)')
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def scan(kind, root, items, probe, *, workers=1, use_cache=False, clip_len=0, frame_skip=0, what='videos'):
    """Probe ``items`` (``[(rel, size, mtime_ns)]`` under ``root``) with ``probe(absolute path)``, through the
    cache when ``use_cache``. Returns ``(results, info)``: ``results[k]`` is ``(value, None)`` or
    ``(None, error)`` for ``items[k]``; ``info`` says ``cache`` ('off' | 'used' | 'written' | 'unwritable')
    and ``scanned`` (how many items were probed now)."""
    items = [tuple(i) for i in items]
    info = {'cache': 'off', 'scanned': 0, 'cache_file': None}
    reuse = {}
    path = None
    if use_cache:
        cdir = cache_dir()
        prefix, name = cache_names(kind, root, items, clip_len, frame_skip)
        path = os.path.join(cdir, name)
        key_hash = name[len(prefix) + 1:-len(CACHE_EXT)]
        info['cache_file'] = path
        if os.path.exists(path):
            try:
                _, results = _load(path, key_hash, len(items))
                log(f'metadata cache used: {path} ({len(items)} {what}, nothing rescanned)')
                info['cache'] = 'used'
                return results, info
            except Exception as e:
                why = str(e).splitlines()[0][:120] if str(e) else ''
                log(f'metadata cache {path} unreadable, not a cache file of this version ({type(e).__name__}: '
                    f'{why}); ignoring it (nothing in it is run) and rebuilding it')
        else:
            olds = []
            try:
                olds = sorted(f for f in os.listdir(cdir) if f.startswith(prefix + '-') and f.endswith(CACHE_EXT))
            except OSError:
                pass
            for old in olds:
                try:
                    reuse.update(zip(*_load(os.path.join(cdir, old), None)))
                except Exception:
                    continue
            if olds:
                kept = sum(1 for i in items if i in reuse)
                log(f'metadata cache stale (the files under {root} changed): reusing {kept} unchanged entries, '
                    f'scanning {len(items) - kept} {what}')
            else:
                log(f'no metadata cache for {root} yet: scanning {len(items)} {what}')
    todo = [k for k, i in enumerate(items) if i not in reuse]
    t0 = time.time()
    fresh = probe_all([os.path.join(root, items[k][0]) for k in todo], probe, workers, what)
    results = [reuse.get(i) for i in items]
    for k, r in zip(todo, fresh):
        results[k] = r
    info['scanned'] = len(todo)
    if todo and len(todo) >= 200:
        log(f'scanned {len(todo)} {what} in {time.time() - t0:.1f} s with {max(1, int(workers or 1))} threads')
    if use_cache:
        try:
            _write_cache(path, {'version': CACHE_VERSION, 'key': key_hash, 'root': os.path.abspath(root),
                                'kind': kind, 'clip_len': clip_len, 'frame_skip': frame_skip}, items, results)
            info['cache'] = 'written'
            log(f'metadata cache written: {path}')
            for old in os.listdir(os.path.dirname(path)):
                if old.startswith(prefix + '-') and old.endswith(CACHE_EXT) and old != name:
                    try:
                        os.unlink(os.path.join(os.path.dirname(path), old))
                    except OSError:
                        pass
        except OSError as e:
            info['cache'] = 'unwritable'
            print(f'[data] warning: could not write the metadata cache {path} ({e}); set CRW_CACHE_DIR to a '
                  f'writable folder', file=sys.stderr, flush=True)
    return results, info
