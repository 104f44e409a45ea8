"""Listing a training collection, probing every item in parallel, and caching the result (``--cache-dataset``).

The cache lives in ``$CRW_CACHE_DIR`` or ``~/.cache/crw/`` (the data may be read-only). A cache file is named
``<kind>-<P>-<K>.json``: P hashes (kind, absolute root, clip length, frame rate, format version), K hashes the
whole key, i.e. P's fields plus the sorted item list with sizes and modification times. Hence

* same key → the file exists and is loaded (nothing is probed);
* a file with the same P but another K → the collection changed: a one-line message, unchanged items are
  reused from it, only new or modified items are probed, the new cache replaces the old one;
* an unreadable or corrupt file (anything but this format's JSON) → a one-line message and a rescan.

The cache is plain JSON, parsed with ``json`` and checked field by field: a replaced or planted file can
give wrong numbers at worst (then the key check rebuilds it), never run code. Files are written atomically (``utils.misc.atomic_write``). Items that failed to
probe are cached as failures with their message (same bytes, same result) and warned about at every start.
"""
import hashlib
import os
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from utils.errors import DecodeError
from utils.misc import atomic_write

CACHE_VERSION = 2   # 2: JSON (1 was a pickle, never read now)
CACHE_EXT = '.json'


def log(msg):
    print(f'[data] {msg}', flush=True)


def cache_dir():
    d = os.environ.get('CRW_CACHE_DIR')
    return os.path.abspath(os.path.expanduser(d)) if d else os.path.join(os.path.expanduser('~'), '.cache', 'crw')


def list_files(root, extensions):
    """``[(relative path, size, mtime_ns)]`` of the files under ``root`` (recursive, links followed) whose
    name ends with one of ``extensions``, sorted by relative path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for name in filenames:
            if name.startswith('.') or not name.lower().endswith(extensions):
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            out.append((os.path.relpath(full, root), st.st_size, st.st_mtime_ns))
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
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode('utf-8', 'surrogateescape'))
        h.update(b'\n')
    return h.hexdigest()


def cache_names(kind, root, items, clip_len, frame_skip):
    """``(prefix, file name)`` of the cache file for this key."""
    head = (kind, os.path.abspath(root), int(clip_len), int(frame_skip), CACHE_VERSION)
    prefix = f'{kind}-{_hash(head)[:12]}'
    full = _hash(head + tuple(items))[:24]
    return prefix, f'{prefix}-{full}{CACHE_EXT}'


def _as_result(r):
    """A cached ``[value, error]`` back to ``(value, None)`` / ``(None, message)``; value: an int (frame count)
    or ``(num_frames, fps)``."""
    if not (isinstance(r, list) and len(r) == 2):
        raise ValueError('unexpected result entry')
    value, err = r
    if err is not None:
        if not isinstance(err, str) or value is not None:
            raise ValueError('unexpected error entry')
        return None, err
    if isinstance(value, list):
        if not (len(value) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
            raise ValueError('unexpected value entry')
        return tuple(value), None
    if not (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError('unexpected value entry')
    return value, None


def _as_item(i):
    if not (isinstance(i, list) and len(i) == 3 and isinstance(i[0], str)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in i[1:])):
        raise ValueError('unexpected item entry')
    return tuple(i)


def _load(path, key_hash):
    """The cache ``{'items': [(rel, size, mtime_ns)], 'results': [(value, error)], ...}`` at ``path``; raises
    ValueError (or OSError) for anything else. Parsed as JSON only (nothing in the file can run)."""
    with open(path, 'rb') as f:
        obj = json.loads(f.read().decode('utf-8'))
    if not (isinstance(obj, dict) and obj.get('version') == CACHE_VERSION and isinstance(obj.get('items'), list)
            and isinstance(obj.get('results'), list) and len(obj['items']) == len(obj['results'])):
        raise ValueError('unexpected content')
    if key_hash is not None and obj.get('key') != key_hash:
        raise ValueError('key mismatch')
    obj['items'] = [_as_item(i) for i in obj['items']]
    obj['results'] = [_as_result(r) for r in obj['results']]
    return obj


def _write_cache(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
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
                obj = _load(path, key_hash)
                log(f'metadata cache used: {path} ({len(items)} {what}, nothing rescanned)')
                info['cache'] = 'used'
                return obj['results'], info
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
                    obj = _load(os.path.join(cdir, old), None)
                    reuse.update(zip(map(tuple, obj['items']), obj['results']))
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
                                 'kind': kind, 'clip_len': clip_len, 'frame_skip': frame_skip,
                                 'items': items, 'results': results})
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
