"""The bf16 screen of the frames compared in full (propagation/screen.py): its error bound holds, it returns the
float32 top-k, and a screened propagator gives the unscreened one's results, on synthetic and real frames."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crw.propagation.windowed as windowed
from crw.eval.davis_io import read_label_png
from crw.data.video_io import iter_frames
from crw.propagation import Protocol, load_encoder, propagate
from crw.propagation.screen import ScreenKeys, ScreenQueries, screened_topk
from crw.propagation.windowed import WindowedPropagator

from test_propagation import clip_video, entries, identity_keys, random_video, same_topk_up_to_ties

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def features(n, C, seed, scale=1.0, flat=0):
    """[n, C] L2-normalised random features times ``scale``; the first ``flat`` of them near-duplicates of one
    vector (a flat region: many scores within the screen's error bound of each other)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, C, generator=g)
    f[:flat] = f[0] + 1e-3 * torch.randn(flat, C, generator=g)
    return F.normalize(f, dim=1) * scale


@pytest.mark.parametrize('C,scale', [(16, 1.0), (256, 1.0), (64, 3.0)])
def test_bound_holds_for_every_pair(C, scale):
    q, k = features(700, C, 1, scale), features(900, C, 2, scale, flat=200)
    sq, sk = ScreenQueries(q), ScreenKeys(k)
    approx = (sq.aug @ sk.aug).float()
    error = (approx - (q.double() @ k.double().t() - 1)).abs()
    bound = sq.bound(sk, 0, len(q))[:, None] + 2.0 ** -7 * approx.abs()
    assert bool((error <= bound).all()), float((error - bound).max())
    assert float(error.max()) > 0.1 * float(bound.min())   # the bound is not vacuous


def test_screened_topk_is_the_float32_topk():
    q, k = features(600, 64, 3), features(800, 64, 4, flat=300)
    q[:300] = F.normalize(k[:300] + 1e-4 * features(300, 64, 5), dim=1)   # targets in the flat region too
    vals, ids, full = screened_topk(ScreenQueries(q), ScreenKeys(k), 10, 0, len(q))
    exact = q.double() @ k.double().t()
    ev, ei = torch.topk(exact, 10, dim=1)
    assert torch.allclose(vals.double(), ev, atol=1e-6)
    gap = ev[:, 9] - torch.topk(exact, 11, dim=1).values[:, 10]     # rows without a tie at the k-th place
    clear = gap > 1e-6
    assert torch.equal(ids.sort(1).values[clear], ei.sort(1).values[clear])
    assert full >= 290   # the flat region's near-ties need the full row


def test_floor_keeps_every_node_above_it():
    q, k = features(500, 32, 6, flat=200), features(700, 32, 7, flat=300)
    exact = q @ k.t()
    floor = torch.topk(exact, 3, dim=1).values[:, -1]                 # the 3rd best: only 3 nodes needed
    floor[::4] = exact[::4].max(1).values + 0.05                     # out of reach: nothing needed
    vals, ids, full = screened_topk(ScreenQueries(q), ScreenKeys(k), 10, 0, len(q), floor=floor)
    ev, ei = torch.topk(exact, 10, dim=1)
    for p in range(len(q)):
        above = set(ei[p][ev[p] >= floor[p] + 1e-6].tolist())
        assert above <= set(ids[p].tolist())
        assert set(ids[p][vals[p] >= floor[p] + 1e-6].tolist()) == above
    assert bool(torch.isinf(vals[::4]).all()) and bool(torch.isfinite(vals[1::4]).all())
    assert full < screened_topk(ScreenQueries(q), ScreenKeys(k), 10, 0, len(q))[2]   # the floor spares rows


def step_both(feats, labels, protocol, corrections=(), **opts):
    """Screened and unscreened propagators stepped side by side on the same context (the screened one takes the
    unscreened one's labels after every step, so that a tie decided the other way does not spread). Asserts the
    same top-k up to ties and the same soft labels where the top-k agree; returns (nodes whose top-k differ by
    ties, screened rows [screened, full])."""
    plain = WindowedPropagator(feats[0], labels, protocol, screen=False, **opts)
    screened = WindowedPropagator(feats[0], labels, protocol, screen=True, **opts)
    ties = 0
    for t in range(1, len(feats)):
        pa, ia = plain.step(feats[t], return_topk=True)
        pb, ib = screened.step(feats[t], return_topk=True)
        differ = (identity_keys(ia) != identity_keys(ib)).any(1).nonzero()[:, 0].tolist()
        for d, f in zip(entries(ia, differ), entries(ib, differ)):
            assert same_topk_up_to_ties(d, f, tol=1e-5), f'frame {t}: top-k sets differ'
        ties += len(differ)
        same = torch.ones(plain.N, dtype=torch.bool)
        same[differ] = False
        assert float((pa - pb).abs().view(plain.N, -1)[same].max()) < 1e-5, f'frame {t}'
        screened.set_labels(pa)
        if t in corrections:
            plain.correct(labels)
            screened.correct(labels)
    return ties, screened.screen_rows


# (a long-term frame and a correction together are left out: the long-term frame's ring copy is relabelled by
# the correction, its long-term copy is not, and the two tie exactly, so either may be chosen)
@pytest.mark.parametrize('seed,L,long_mem,corrections', [(3, 4, [0], ()), (4, 20, [0], ()), (5, 3, [0, 4], ()),
                                                          (6, 3, [0], (6,))])
def test_screened_propagator_matches_unscreened_clip(seed, L, long_mem, corrections):
    feats, labels = clip_video(14, seed=seed)
    protocol = Protocol(topk=10, radius=5, temperature=0.05, video_len=L, long_mem=long_mem)
    ties, (rows, full) = step_both(feats, labels, protocol, corrections, tile=(4, 4), mode='window')
    assert ties <= 3 and rows > 0


def test_screened_propagator_matches_unscreened_random_map():
    feats, labels = random_video(12, 32, 40, 40, 3, seed=52)      # the --cropSize 320 map, t > L
    protocol = Protocol(topk=10, radius=12, temperature=0.05, video_len=8)
    ties, (rows, full) = step_both(feats, labels, protocol)
    assert ties <= 3 and rows == 11 * 1600 and 0 < full < rows


def test_screen_pauses_on_a_flat_frame():
    # every node nearly the same feature: the screen cannot separate them and sends most rows to the full
    # float32 row; it then stays off for windowed.SCREEN_PAUSE steps, with the same results throughout
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.ones(14, 16, 12, 12) + 1e-3 * torch.randn(14, 16, 12, 12, generator=g), dim=1)
    labels = torch.softmax(torch.randn(12, 12, 2, generator=g), dim=-1)
    protocol = Protocol(topk=10, radius=3, temperature=0.05, video_len=3)
    _, (rows, full) = step_both(feats, labels, protocol, tile=(4, 4), mode='window')
    assert full > windowed.SCREEN_GIVE_UP * rows
    assert rows == 144 * len(range(1, 14, windowed.SCREEN_PAUSE + 1))   # screened at frames 1, 12


def test_screen_on_real_frames_gives_the_same_masks(monkeypatch):
    """The bundled hockey clip (real DAVIS frames), 24 frames at longer side 320 with a correction on frame 12,
    pretrained.pth: the screened and unscreened runs write identical masks."""
    clip = os.path.join(ROOT, 'assets', 'hockey')
    frames = [f for _, f in zip(range(24), (f for _, f in iter_frames(os.path.join(clip, 'hockey.mp4'))))]
    truth = {t: read_label_png(os.path.join(clip, 'Annotations', '480p', 'hockey', f'{t:05d}.png')) for t in (0, 12)}
    encoder = load_encoder(os.path.join(ROOT, 'pretrained.pth'), 'cpu')
    calls = []
    real = windowed.screened_topk
    monkeypatch.setattr(windowed, 'screened_topk', lambda *a, **kw: calls.append(1) or real(*a, **kw))
    protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
    runs = [dict(propagate(encoder, frames, truth, protocol, 'cpu', max_side=320, screen=s)) for s in (False, True)]
    assert len(calls) >= 23 and sorted(runs[0]) == sorted(runs[1]) == list(range(24))
    for t in range(24):
        assert np.array_equal(runs[0][t], runs[1][t]), f'frame {t}'
