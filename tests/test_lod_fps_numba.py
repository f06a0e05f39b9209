"""The numba KD-tree FPS (`fps_order(backend='numba')`, nsp_explore.lod, issue 18): one run, the naive float32
loop's order bit for bit, tie rule included, on fresh random clouds (anisotropic, with exact duplicates, lattices
full of exact ties, mirror-symmetric clouds) and at sizes around the leaf size."""
import numpy as np
import pytest
import torch

from nsp_explore.lod import NUMBA_LEAF, fps_order, fps_order_naive, fps_start

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
