"""fpsample's bucket FPS behind the package's start-point and tie contract (nsp_explore.lod, issue 18):
started where asked by replaying its tree build, exact against the naive float64 reference on fresh
random clouds (with duplicates, at 256 and 2048 points), and falling back to the vanilla loop where
it cannot promise the naive order."""
import numpy as np
import pytest
import torch

import nsp_explore.lod as L
from nsp_explore.lod import fps_order, fps_order_naive, fps_start, orders_agree

fpsample = pytest.importorskip('fpsample')
SEED = int(np.random.SeedSequence().entropy % 2 ** 31)         # fresh clouds every run (printed on failure)


@pytest.fixture(autouse=True)
def bucket_for_small_clouds(monkeypatch):
    "The package takes the bucket path from BUCKET_MIN_POINTS (speed); its exactness is tested down to 8 points."
    monkeypatch.setattr(L, 'BUCKET_MIN_POINTS', 8)


def with_duplicates(x, g):
    "Replace about a quarter of the points by exact copies of other points (random positions)."
    N = x.shape[0]
    src, dst = torch.randint(N, (N // 4,), generator=g), torch.randint(N, (N // 4,), generator=g)
    y = x.clone(); y[dst] = x[src]
    return y


@pytest.mark.parametrize('N', [256, 2048])
@pytest.mark.parametrize('dups', [False, True])
def test_bucket_matches_naive_reference(N, dups):
    g = torch.Generator().manual_seed(SEED + N + dups)
    trials, fast = 4 if N == 2048 else 8, 0
    for trial in range(trials):
        x = torch.randn(N, 3, generator=g) * torch.rand(3, generator=g).add(0.2)   # anisotropic
        if dups: x = with_duplicates(x, g)
        start = int(torch.randint(N, (), generator=g)) if trial % 2 else 'centroid'
        s = int(fps_start(x, start))
        ref64 = fps_order(x, start=start, backend='naive')
        ref32 = fps_order_naive(x, start=start, dtype=torch.float32)
        o = L._fps_bucket_one(x.numpy(), N, s)
        if o is not None:                                            # the fast path (else: an exact tie was seen)
            fast += 1
            o = torch.from_numpy(o)
            assert int(o[0]) == s and sorted(o.tolist()) == list(range(N))
            assert torch.equal(o, ref32), (SEED, N, dups, trial)     # float32 arithmetic, lowest index at ties
        out = fps_order(x, start=start)                              # the package's default CPU path
        assert orders_agree(x, out, ref64), (SEED, N, dups, trial)
        assert torch.equal(out, ref32) or torch.equal(out, ref64), (SEED, N, dups, trial)
    assert fast >= trials // 2, (SEED, fast)                          # ties are rare: mostly the fast path


def test_exact_ties_keep_the_lowest_index_rule():
    "A mirror-symmetric cloud started on the mirror plane: an exact tie at almost every pick."
    g = torch.Generator().manual_seed(SEED)
    for _ in range(3):
        half = torch.randn(300, 3, generator=g); half[:, 0] = half[:, 0].abs() + 0.01
        x = torch.cat([half, half * torch.tensor([-1., 1, 1]), torch.tensor([[0., 3, 0]])])
        x = x[torch.randperm(len(x), generator=g)]
        s = int(x[:, 0].abs().argmin())                              # the point on the plane x = 0
        ref = L._fps_torch(x[None], len(x), torch.tensor([s]))[0]
        assert torch.equal(fps_order(x, start=s, backend='fpsample'), ref), SEED
        assert torch.equal(ref, fps_order_naive(x, start=s, dtype=torch.float32))


def test_ties_on_random_clouds_are_caught():
    "Whenever the fast path answers, it is the float32 naive order; over many clouds some ties occur."
    g = torch.Generator().manual_seed(SEED)
    for _ in range(12):
        x = torch.randn(1024, 3, generator=g) * torch.rand(3, generator=g).add(0.05)
        s = int(fps_start(x))
        o = L._fps_bucket_one(x.numpy(), 1024, s)
        if o is not None:
            assert torch.equal(torch.from_numpy(o), L._fps_torch(x[None], 1024, torch.tensor([s]))[0]), SEED


def test_bucket_equals_vanilla_in_batches_and_prefixes():
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(5, 700, 3, generator=g)
    x[1] = with_duplicates(x[1], g)
    first = fps_start(x, 'random', generator=g)
    full = L._fps_fpsample(x, 700, first)
    assert torch.equal(full, L._fps_fpsample(x, 700, first, bucket=False)), SEED
    assert torch.equal(full, L._fps_torch(x, 700, first)), SEED
    for n in (1, 9, 350):
        assert torch.equal(L._fps_fpsample(x, n, first), full[:, :n])


def test_duplicate_copies_follow_the_lowest_index_rule():
    base = torch.randn(100, 3, generator=torch.Generator().manual_seed(SEED))
    x = torch.cat([base[50:], base, base[:20]])                  # copies before and after their originals
    o = L._fps_bucket_one(x.numpy(), len(x), int(fps_start(x)))
    assert o is not None
    assert torch.equal(torch.from_numpy(o), fps_order_naive(x, dtype=torch.float32)), SEED
    assert len({tuple(p) for p in x[o[:100]].tolist()}) == 100  # distinct positions first


def test_falls_back_where_it_cannot_promise_the_order(monkeypatch):
    grid = torch.stack(torch.meshgrid(torch.arange(4.), torch.arange(8.), torch.arange(8.), indexing='ij'), -1).reshape(-1, 3)
    assert L._fps_bucket_one(grid.numpy(), 256, 0) is None      # lattice: exact ties between distinct points
    assert torch.equal(fps_order(grid, backend='fpsample'), fps_order_naive(grid))
    small = torch.randn(L.BUCKET_MIN_POINTS - 1, 3)
    assert L._fps_bucket_one(small.numpy(), len(small), 0) is None
    assert torch.equal(fps_order(small, backend='fpsample'), fps_order_naive(small, dtype=torch.float32))
    # a bucket build that no longer matches the replay (e.g. another fpsample) is caught by the first pick
    x = torch.randn(3, 512, 3, generator=torch.Generator().manual_seed(SEED))
    monkeypatch.setattr(L, '_kdline_slot', lambda pT, s, h=L.BUCKET_H: (s + 1) % pT.shape[1])
    assert all(L._fps_bucket_one(c.numpy(), 512, 0) is None for c in x)
    assert torch.equal(fps_order(x, start=0, backend='fpsample'), fps_order_naive(x, start=0, dtype=torch.float32))


def test_slot_replay_on_awkward_clouds():
    "The replayed tree build puts the start where fpsample does: ties on the split value, equal spans, clusters."
    g = torch.Generator().manual_seed(SEED)
    clouds = [torch.randn(512, 3, generator=g),
              torch.rand(300, 3, generator=g).mul(4).floor().add(torch.rand(300, 3, generator=g) * 1e-3),
              torch.cat([torch.zeros(40, 3), torch.randn(200, 3, generator=g)]),
              torch.randn(1000, 3, generator=g) * torch.tensor([1., 1., 1e-3])]
    for x in clouds:
        p = x.numpy().astype(np.float32); pT = np.ascontiguousarray(p.T)
        for s in torch.randint(len(p), (20,), generator=g).tolist():
            k = L._kdline_slot(pT, s)
            assert int(fpsample.bucket_fps_kdline_sampling(p, 1, h=L.BUCKET_H, start_idx=k)[0]) == s, (SEED, s)


def test_start_on_a_copy_stays_the_start():
    "The start is given: a start point with a lower-index copy is not renamed to that copy."
    base = torch.randn(200, 3, generator=torch.Generator().manual_seed(SEED))
    x = torch.cat([base, base[:50]])                              # point 200 + i is a copy of point i
    for s in (200, 230, 249, 0):
        o = L._fps_bucket_one(x.numpy(), len(x), s)
        assert o is not None and int(o[0]) == s
        assert torch.equal(torch.from_numpy(o), fps_order_naive(x, start=s, dtype=torch.float32)), (SEED, s)
