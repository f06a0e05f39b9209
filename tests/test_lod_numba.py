"""The numba kernels of nsp_explore.lod (issue 18). FPS (`fps_order(backend='numba')`): one run, the naive float32
loop's order bit for bit, tie rule included, on fresh random clouds (anisotropic, with exact duplicates, lattices
full of exact ties, mirror-symmetric clouds) and at sizes around the leaf size. Assignment
(`assign_greedy(backend='numba')`): the batched torch path's choices at every level of 2048-point trees."""
import numpy as np
import pytest
import torch

from nsp_explore.lod import (NUMBA_LEAF, _mean_dist, _tree_step, assign_greedy, build_lod, fps_order, fps_order_naive,
                             fps_start, make_scales)

pytest.importorskip('numba')
SEED = int(np.random.SeedSequence().entropy % 2 ** 31)         # fresh clouds every run (printed on failure)


def clouds(g, N):
    "Anisotropic Gaussian, one with a quarter exact duplicates, a mirror-symmetric one, a lattice."
    x = torch.randn(N, 3, generator=g) * torch.rand(3, generator=g).add(0.2)
    d = x.clone(); d[torch.randint(N, (N // 4,), generator=g)] = x[torch.randint(N, (N // 4,), generator=g)]
    h = torch.randn((N + 1) // 2, 3, generator=g); m = torch.cat([h, -h])[:N]
    side = int(np.ceil(N ** (1 / 3)))
    lat = torch.stack(torch.meshgrid(*[torch.arange(float(side))] * 3, indexing='ij'), -1).reshape(-1, 3)[:N]
    return dict(aniso=x, dups=d, mirror=m, lattice=lat * 0.1)


@pytest.mark.parametrize('N', [1, 2, 3, NUMBA_LEAF - 1, NUMBA_LEAF, NUMBA_LEAF + 1, 100, 256, 1000, 2048])
def test_numba_fps_is_the_naive_float32_order(N):
    g = torch.Generator().manual_seed(SEED + N)
    for name, x in clouds(g, N).items():
        for start in ('centroid', int(torch.randint(N, (), generator=g))):
            ref32 = fps_order_naive(x, start=start, dtype=torch.float32)
            out = fps_order(x, start=start, backend='numba')
            assert torch.equal(out, ref32), (SEED, N, name, start)
            assert int(out[0]) == int(fps_start(x, start))
            assert torch.equal(torch.sort(out).values, torch.arange(N))          # a permutation
            n = max(1, N // 3)
            assert torch.equal(fps_order(x, n, start=start, backend='numba'), out[:n]), (SEED, N, name)   # prefix


def test_numba_fps_batches_and_auto():
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(5, 300, 3, generator=g)
    out = fps_order(x, backend='numba')
    for b in range(5): assert torch.equal(out[b], fps_order(x[b], backend='numba'))   # alone = inside a batch
    assert torch.equal(fps_order(x), fps_order(x, backend='torch'))                   # auto (numba here) = torch loop


def levels(x, scales):
    "Children, parents and capacity of every level of the trees of `x` (B, N, 3), with the torch path's trees."
    fps = fps_order(x, scales[-1])
    pts = x.gather(1, fps[..., None].expand(-1, -1, 3))
    tree = torch.arange(scales[0]).expand(len(x), -1)
    for s_k, s_next in zip(scales, scales[1:]):
        par = pts.gather(1, tree[..., None].expand(-1, -1, 3))
        yield pts[:, s_k:s_next], par, s_next // s_k - 1
        tree = _tree_step(tree, assign_greedy(pts[:, s_k:s_next], par, s_next // s_k - 1, backend='torch'), s_next)


@pytest.mark.parametrize('N', [256, 2048])
def test_numba_assignment_makes_the_torch_choices(N):
    g = torch.Generator().manual_seed(SEED + 7 * N)
    x = torch.randn(4, N, 3, generator=g) * torch.rand(4, 1, 3, generator=g).add(0.2)
    same = total = 0
    for kids, par, cap in levels(x, make_scales(N)):
        a = assign_greedy(kids, par, cap, backend='numba')
        b = assign_greedy(kids, par, cap, backend='torch')
        for i in range(len(x)):
            assert torch.equal(torch.bincount(a[i], minlength=par.shape[1]), torch.full((par.shape[1],), cap))  # capacities
            total += 1
            if torch.equal(a[i], b[i]): same += 1
            else:   # allowed only where the two paths' k-NN sets part at a near tie: same quality
                assert abs(_mean_dist(kids[i:i + 1], par[i:i + 1], a[i:i + 1]) / _mean_dist(kids[i:i + 1], par[i:i + 1], b[i:i + 1]) - 1) < 5e-3
    assert same >= 0.9 * total, (SEED, same, total)


def test_numba_lod_trees_equal_the_torch_trees(monkeypatch):
    import nsp_explore.lod as L
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(3, 512, 3, generator=g) * torch.tensor([1.0, 0.6, 0.3])
    d = x.clone(); d[:, 100:140] = x[:, :40]                           # exact duplicate points
    sc = make_scales(512)
    trees = [build_lod(c, sc) for c in (x, d)]                          # CPU + numba: the numba kernels
    monkeypatch.setitem(L.ASSIGNERS, 'greedy', lambda c, p, cap: assign_greedy(c, p, cap, backend='torch'))
    for t, c in zip(trees, (x, d)):
        t.check(512)
        ref = build_lod(c, sc, backend='torch')                         # torch FPS loop + torch assignment
        assert torch.equal(t.fps, ref.fps)
        assert sum(torch.equal(t.index[i], ref.index[i]) for i in range(3)) >= 2, SEED
    with pytest.raises(ValueError, match='backend'):
        assign_greedy(x[:, 8:32], x[:, :8], 3, backend='fast')
