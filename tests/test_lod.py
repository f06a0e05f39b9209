"""Tests of nsp_explore.lod: FPS backends against the naive reference, the LoD tree invariants
(prefix/nesting, exact child counts, tree order, permutation invariance), pooling, caching."""
import itertools, os

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from nsp_explore.lod import (fps_order, fps_order_naive, fps_start, fps_backends, orders_agree, make_scales,
                             check_scales, build_lod, build_lod_naive, LoDTree, pool, upsample,
                             assign_greedy, assign_optimal)

CPU_BACKENDS = fps_backends('cpu')


def rand_clouds(B, N, seed=0, dtype=torch.float32):
    return torch.randn(B, N, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def surface_cloud(n=512, seed=0):
    "A clustered, non-uniform cloud (points on a few blobs), harder than a Gaussian."
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, 3, generator=g) * 2
    return centres[torch.randint(5, (n,), generator=g)] + 0.3 * torch.randn(n, 3, generator=g)


# ---------------------------------------------------------------------------------------------- FPS
def test_naive_small_example():
    line = torch.tensor([[0., 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [5, 0, 0], [2, 3, 0]])
    assert fps_order_naive(line).tolist() == [4, 0, 5, 2, 1, 3]
    assert fps_order_naive(line, start=0).tolist() == [0, 4, 5, 2, 1, 3]


def test_naive_is_farthest_point_each_step():
    x = rand_clouds(1, 120, seed=1)[0].double()
    o = fps_order_naive(x)
    for i in range(1, 120):                                  # definition of FPS, checked from scratch
        d = torch.cdist(x, x[o[:i]]).min(1).values
        d[o[:i]] = -1
        assert d[o[i]] == d.max()


@pytest.mark.parametrize('backend', CPU_BACKENDS)
@pytest.mark.parametrize('B,N,n', [(1, 1, None), (1, 7, None), (3, 257, None), (2, 2048, None), (2, 3000, 300)])
def test_backend_matches_naive(backend, B, N, n):
    x = rand_clouds(B, N, seed=N)
    ref64, ref32 = fps_order_naive(x, n), fps_order_naive(x, n, dtype=torch.float32)
    out = fps_order(x, n, backend=backend)
    assert out.shape == ref64.shape and out.dtype == torch.int64
    for b in range(B):
        assert orders_agree(x[b], out[b], ref64[b]), (backend, b)    # equal, or parted at a near tie
        # float32 backends round like one of the two references: identical orders
        assert torch.equal(out[b], ref64[b]) or torch.equal(out[b], ref32[b]), (backend, b)


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_backend_start_modes(backend):
    x = rand_clouds(3, 400, seed=2)
    for start in ('centroid', 5, torch.tensor([0, 10, 399])):
        assert torch.equal(fps_order(x, 50, start=start, backend=backend), fps_order_naive(x, 50, start=start))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    o1 = fps_order(x, 50, start='random', backend=backend, generator=g1)
    o2 = fps_order_naive(x, 50, start='random', generator=g2)
    assert torch.equal(o1, o2)


def test_centroid_start_is_farthest_from_centroid():
    x = rand_clouds(4, 300, seed=3)
    s = fps_start(x)
    d = (x - x.mean(1, keepdim=True)).norm(dim=-1)
    assert torch.equal(s, d.argmax(1))


@pytest.mark.parametrize('backend', CPU_BACKENDS + ['naive'])
def test_prefix_property(backend):
    x = rand_clouds(2, 600, seed=4)
    full = fps_order(x, backend=backend)
    assert sorted(full[0].tolist()) == list(range(600))     # a permutation
    for s in (1, 2, 17, 300):
        assert torch.equal(fps_order(x, s, backend=backend), full[:, :s])


@pytest.mark.parametrize('backend', CPU_BACKENDS + ['naive'])
def test_fps_permutation_invariant(backend):
    x = surface_cloud(700, seed=5)
    perm = torch.randperm(700, generator=torch.Generator().manual_seed(0))
    a = x[fps_order(x, backend=backend)]
    b = x[perm][fps_order(x[perm], backend=backend)]
    assert torch.equal(a, b)                                  # same points in the same order


@pytest.mark.parametrize('backend', CPU_BACKENDS + ['naive'])
def test_duplicates_each_picked_once(backend):
    base = rand_clouds(1, 40, seed=6)[0]
    x = torch.cat([base, base[:25], base[:5]])               # 30 exact duplicates
    o = fps_order(x, backend=backend)
    assert sorted(o.tolist()) == list(range(70))
    # the 40 distinct positions come first: duplicates have distance 0 once a copy is picked
    assert len({tuple(p) for p in x[o[:40]].tolist()}) == 40


def test_bad_inputs():
    x = rand_clouds(2, 10)
    with pytest.raises(ValueError, match='only N=10'):
        fps_order(x, 11)
    with pytest.raises(ValueError, match='positive integer'):
        fps_order(x, 0)
    with pytest.raises(ValueError, match='expected shape'):
        fps_order(torch.randn(2, 10, 2))
    with pytest.raises(ValueError, match='at least 1'):
        fps_order(torch.zeros(2, 0, 3))
    bad = x.clone(); bad[1, 2, 0] = float('inf')
    with pytest.raises(ValueError, match='NaN/inf'):
        fps_order(bad)
    with pytest.raises(ValueError, match='unknown FPS backend'):
        fps_order(x, backend='quick')
    with pytest.raises(ValueError, match='start'):
        fps_order(x, start='middle')
    with pytest.raises(ValueError, match='out of range'):
        fps_order(x, start=10)
    if 'triton' not in CPU_BACKENDS:
        with pytest.raises(RuntimeError, match='not available'):
            fps_order(x, backend='triton')


def test_unbatched_and_float64_input():
    x = rand_clouds(1, 100, dtype=torch.float64)[0]
    o = fps_order(x, 20)
    assert o.shape == (20,)
    assert torch.equal(o, fps_order_naive(x, 20))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    x = rand_clouds(8, 2048, seed=9)
    ref = fps_order(x, backend='naive')
    for be in fps_backends('cuda'):
        out = fps_order(x.cuda(), backend=be)
        assert out.is_cuda
        assert all(orders_agree(x[b], out[b].cpu(), ref[b]) for b in range(8)), be
    t_cpu, t_gpu = build_lod(x, make_scales(2048), assign='greedy'), build_lod(x.cuda(), make_scales(2048), assign='greedy')
    assert torch.equal(t_cpu.fps, t_gpu.fps.cpu())
    # the assignment runs in float32 on both devices; allow rare near-tie differences
    assert (t_cpu.index == t_gpu.index.cpu()).float().mean() > 0.99


# ------------------------------------------------------------------------------------------- scales
def test_make_scales():
    assert make_scales(2048) == (1, 4, 16, 64, 256, 1024, 2048)
    assert make_scales(256, 2, 2) == (2, 4, 8, 16, 32, 64, 128, 256)
    assert make_scales(1) == (1,)
    with pytest.raises(ValueError, match='not a multiple'):
        make_scales(1000)
    with pytest.raises(ValueError, match='integer ratios'):
        check_scales((1, 4, 4))
    with pytest.raises(ValueError, match='integer ratios'):
        check_scales((2, 5))
    with pytest.raises(ValueError, match='exceeds'):
        check_scales((1, 4, 16), n_points=15)
    with pytest.raises(ValueError, match='positive'):
        check_scales(())


# ------------------------------------------------------------------------------------- assignment
@pytest.mark.parametrize('assign', [assign_greedy, assign_optimal])
def test_assignment_respects_capacity(assign):
    g = torch.Generator().manual_seed(1)
    for P, cap in [(1, 3), (4, 1), (16, 3), (32, 7)]:
        kids, pars = torch.rand(3, P * cap, 3, generator=g), torch.rand(3, P, 3, generator=g)
        slot = assign(kids, pars, cap)
        assert slot.shape == (3, P * cap)
        for b in range(3):
            assert torch.equal(torch.bincount(slot[b], minlength=P), torch.full((P,), cap))
    with pytest.raises(ValueError, match='cannot fill'):
        assign(torch.rand(1, 5, 3), torch.rand(1, 2, 3), 2)


def test_optimal_assignment_is_optimal_brute_force():
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        kids, pars = torch.rand(1, 6, 3, generator=g), torch.rand(1, 3, 3, generator=g)
        D = torch.cdist(kids[0].double(), pars[0].double())
        best = min(sum(D[i, s // 2] for i, s in enumerate(p)) for p in itertools.permutations(range(6)))
        slot = assign_optimal(kids, pars, 2)[0]
        assert_close(D[torch.arange(6), slot].sum(), best)


def test_greedy_close_to_optimal():
    x = surface_cloud(1024, seed=3)[None]
    pts = x[:, fps_order(x)[0]]
    ratios = []
    for a, b in [(16, 64), (64, 256), (256, 1024)]:
        kids, pars = pts[:, a:b], pts[:, :a]
        d = lambda s: (kids - pars[:, s[0]]).norm(dim=-1).mean()
        near = torch.cdist(kids, pars).min(-1).values.mean()
        d_opt, d_gr = d(assign_optimal(kids, pars, b // a - 1)), d(assign_greedy(kids, pars, b // a - 1))
        assert near <= d_opt + 1e-6 and d_opt <= d_gr + 1e-6
        ratios.append(float(d_gr / d_opt))
    assert max(ratios) < 1.3, ratios


# ------------------------------------------------------------------------------------------- tree
def check_tree(x, lod):
    "Every structural invariant of a LoD tree built on clouds x (B, N, 3)."
    B = x.shape[0]
    S = lod.scales
    assert lod.index.shape == (B, S[-1])
    for b in range(B):
        assert len(set(lod.index[b].tolist())) == S[-1]                    # no point twice
    for k in range(lod.K):
        sk = lod.scale_index(k)
        assert sk.shape == (B, S[k])
        for b in range(B):                                                  # nesting: scale k = FPS prefix
            assert set(sk[b].tolist()) == set(lod.fps[b, :S[k]].tolist())
        if k + 1 < lod.K:
            nxt = lod.scale_index(k + 1)
            r = lod.ratios[k]
            # each node heads its block of exactly r children in the next scale
            assert torch.equal(nxt[:, ::r], sk)
            # siblings after the head are new points, ordered by FPS rank
            rank = torch.full((B, x.shape[1]), -1); rank.scatter_(1, lod.fps, torch.arange(S[-1]).expand(B, -1))
            fam = rank.gather(1, nxt).view(B, S[k], r)
            assert (fam[..., 1:] >= S[k]).all() and (fam[..., 1:].diff(dim=-1) > 0).all()
    assert torch.equal(lod.scale_index(0), lod.fps[:, :S[0]])              # the coarsest scale in FPS order


@pytest.mark.parametrize('scales', [(1, 4, 16, 64, 256), (2, 8, 24, 96), (4, 512), (1,), (3, 6, 12, 48, 480)])
def test_tree_invariants(scales):
    x = torch.stack([surface_cloud(512, seed=s) for s in range(3)])
    lod = build_lod(x, scales)
    assert lod.scales == tuple(scales) and lod.K == len(scales)
    check_tree(x, lod)


def test_tree_matches_naive_with_optimal_assignment():
    x = torch.stack([surface_cloud(256, seed=s) for s in range(2)])
    idx, fps = build_lod_naive(x, (1, 4, 16, 64, 256))
    lod = build_lod(x, (1, 4, 16, 64, 256), assign='optimal')
    assert torch.equal(lod.fps, fps)
    assert torch.equal(lod.index, idx)


@pytest.mark.parametrize('assign', ['greedy', 'optimal'])
def test_tree_permutation_invariant(assign):
    x = surface_cloud(1024, seed=8)
    perm = torch.randperm(1024, generator=torch.Generator().manual_seed(1))
    scales = (1, 4, 16, 64, 256, 1024)
    a, b = build_lod(x, scales, assign=assign), build_lod(x[perm], scales, assign=assign)
    for k in range(len(scales)):
        assert torch.equal(a.gather(x[None], k), b.gather(x[perm][None], k))


def test_tree_batch_equals_single():
    x = torch.stack([surface_cloud(300, seed=s) for s in range(5)])
    lod = build_lod(x, (3, 12, 48, 96, 288), chunk=2)
    for b in range(5):
        assert torch.equal(build_lod(x[b], (3, 12, 48, 96, 288)).index[0], lod.index[b])


def test_children_near_parents():
    x = surface_cloud(1024, seed=4)[None]
    lod = build_lod(x, (1, 4, 16, 64, 256, 1024))
    for k in range(2, lod.K - 1):
        par, kid = lod.gather(x, k), lod.gather(x, k + 1)                 # (1, s_k, 3), (1, s_{k+1}, 3)
        d_par = (kid - upsample(par, lod.ratios[k])).norm(dim=-1).mean()
        d_rand = (kid - upsample(par[:, torch.randperm(par.shape[1])], lod.ratios[k])).norm(dim=-1).mean()
        assert d_par < 0.3 * d_rand                                         # families are local


def test_lodtree_api():
    x = rand_clouds(4, 64, seed=11)
    lod = build_lod(x, (1, 4, 16, 64))
    assert lod.ratios == (4, 4, 4) and lod.B == 4 and len(lod) == 4
    assert torch.equal(lod.scale_index(-1), lod.index) and torch.equal(lod.scale_index(0), lod.index[:, :1])
    feats = torch.randn(4, 64, 5)
    g = lod.gather(feats, 2)
    assert g.shape == (4, 16, 5)
    assert torch.equal(g[1, 3], feats[1, lod.index[1, 12]])
    assert torch.equal(lod.gather(feats), feats.gather(1, lod.index[..., None].expand(-1, -1, 5)))
    sub = lod[1:3]
    assert sub.B == 2 and torch.equal(sub.index, lod.index[1:3]) and torch.equal(sub.fps, lod.fps[1:3])
    assert lod[2].B == 1 and torch.equal(lod[-1].index, lod.index[-1:])
    assert torch.equal(lod.parent_slots(1), torch.arange(16) // 4)
    re = LoDTree.from_index(lod.index[0], (1, 4, 16, 64))
    assert re.B == 1 and re.fps is None and torch.equal(re.scale_index(1)[0], lod.scale_index(1)[0])
    assert lod.to('cpu').index.device.type == 'cpu'
    with pytest.raises(ValueError, match='must be'):
        LoDTree.from_index(torch.zeros(2, 10, dtype=torch.long), (1, 4, 16))
    with pytest.raises(IndexError, match='out of range'):
        lod.scale_index(4)
    with pytest.raises(ValueError, match='gather needs'):
        lod.gather(torch.randn(3, 64, 2))
    with pytest.raises(ValueError, match='exceeds'):
        build_lod(x, (1, 4, 128))


# ------------------------------------------------------------------------------------- pool/upsample
def test_pool_upsample():
    f = torch.randn(2, 12, 5)
    assert_close(pool(upsample(f, 3), 3), f)                 # (x+x+x)/3 may round
    up = upsample(f, 4)
    assert up.shape == (2, 48, 5) and torch.equal(up[:, 4 * 7 + 2], f[:, 7])
    x = torch.randn(2, 48, 5)
    ref = torch.stack([x[:, 4 * i:4 * i + 4].mean(1) for i in range(12)], 1)   # explicit family means
    assert_close(pool(x, 4), ref)
    with pytest.raises(ValueError, match='not a multiple'):
        pool(x, 5)


def test_pool_matches_tree_families():
    x = surface_cloud(256, seed=1)[None]
    lod = build_lod(x, (1, 4, 16, 64, 256))
    fine = lod.gather(x, 4)
    # pooling the tree-order finest scale averages exactly each scale-3 node's family
    fam = pool(fine, 4)[0]
    for i in range(64):
        members = lod.index[0, 4 * i:4 * i + 4]
        assert_close(fam[i], x[0, members].mean(0))
        assert lod.index[0, 4 * i] == lod.scale_index(3)[0, i]                 # the parent heads it


# ----------------------------------------------------------------------------- optional backends
class FakeTorchCluster:
    "A stand-in with torch_cluster.fps's documented CPU semantics (start at each cloud's first point, "
    "ceil(deg * ratio) points in float32, no marking of picked points), to test our wrapper."
    @staticmethod
    def fps(src, batch, ratio=0.5, random_start=True):
        assert not random_start
        out, ptr = [], 0
        for b in batch.unique():
            y = src[batch == b]
            n = int(torch.ceil(torch.tensor(len(y), dtype=torch.float32) * torch.tensor(ratio, dtype=torch.float32)))
            dist = (y - y[0]).pow(2).sum(1); o = [0]
            for _ in range(1, n):
                a = int(dist.argmax()); o.append(a); dist = torch.minimum(dist, (y - y[a]).pow(2).sum(1))
            out.append(torch.tensor(o) + ptr); ptr += len(y)
        return torch.cat(out)


def test_torch_cluster_wrapper(monkeypatch):
    import sys
    from nsp_explore import lod as L
    monkeypatch.setitem(sys.modules, 'torch_cluster', FakeTorchCluster)
    assert 'torch_cluster' in fps_backends('cpu')
    x = rand_clouds(3, 150, seed=12)
    for n, start in [(None, 'centroid'), (37, 5), (149, torch.tensor([3, 0, 149]))]:
        assert torch.equal(fps_order(x, n, start=start, backend='torch_cluster'),
                           fps_order_naive(x, n, start=start, dtype=torch.float32))
    base = rand_clouds(1, 30, seed=13)[0]
    d = torch.cat([base, base[:20]])[None]                    # duplicates: the library re-picks, we fix the tail
    assert torch.equal(fps_order(d, backend='torch_cluster'), fps_order_naive(d))


def test_triton_kernel_in_interpreter(monkeypatch):
    pytest.importorskip('triton')
    if not torch.cuda.is_available():
        monkeypatch.setenv('TRITON_INTERPRET', '1')            # Triton's CPU interpreter runs the same kernel
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    x = rand_clouds(3, 300, seed=14)
    base = rand_clouds(1, 30, seed=15)[0]
    d = torch.cat([base, base[:20]])[None]
    for cloud, n in [(x, None), (x, 40), (d, None)]:
        out = fps_order(cloud.to(dev), n, backend='triton').cpu()
        ref64, ref32 = fps_order_naive(cloud, n), fps_order_naive(cloud, n, dtype=torch.float32)
        assert all(torch.equal(out[b], ref64[b]) or torch.equal(out[b], ref32[b]) for b in range(len(cloud)))


# ------------------------------------------------------------------------------------------ dataset
class TinyDataset(torch.utils.data.Dataset):
    "Items in the nsp_explore.data contract, a fixed point set per index."
    def __init__(self, n=10, N=64, resample=False, seed=0):
        self.x = torch.stack([surface_cloud(N, seed=seed + i) for i in range(n)])
        self.names = [f'tiny/{i}' for i in range(n)]
        self.resample, self.categories = resample, ['blob']

    def __len__(self): return len(self.x)

    def __getitem__(self, i):
        return dict(points=self.x[i], label=torch.tensor(0), category='blob', mean=torch.zeros(1, 3),
                    std=torch.ones(1, 1), name=self.names[i])


def test_lod_dataset_items_and_collate():
    from nsp_explore.lod import LoDDataset
    ds = TinyDataset()
    lds = LoDDataset(ds, (1, 4, 16, 64), batch_size=4, verbose=False)
    assert len(lds) == 10 and lds.index.shape == (10, 1, 64) and lds.index.dtype == torch.int16
    ref = build_lod(ds.x, (1, 4, 16, 64))
    for i in range(10):
        it = lds[i]
        assert it['lod_index'].dtype == torch.int64 and torch.equal(it['points'], ds.x[i])
        assert torch.equal(it['lod_index'], ref.index[i])
    assert lds.categories == ['blob']                                 # attributes pass through
    try:
        from nsp_explore.data import collate
    except ImportError:
        collate = lambda items: {k: torch.stack([it[k] for it in items]) for k in ('points', 'lod_index')}
    batch = collate([lds[i] for i in range(3)])
    tree = LoDTree.from_index(batch['lod_index'], lds.scales)
    assert tree.B == 3
    assert torch.equal(tree.gather(batch['points'], 1), ref[:3].gather(ds.x[:3], 1))


def test_lod_dataset_trajectories_and_cache(tmp_path):
    from nsp_explore.lod import LoDDataset
    ds = TinyDataset(n=6)
    path = tmp_path / 'lod.pt'
    lds = LoDDataset(ds, (2, 8, 32, 64), n_trajectories=3, seed=1, cache_path=path, verbose=False)
    assert path.is_file() and lds.index.shape == (6, 3, 64)
    assert torch.equal(lds.index[:, 0].long(), build_lod(ds.x, (2, 8, 32, 64)).index)   # trajectory 0: default start
    assert not torch.equal(lds.index[:, 1], lds.index[:, 2])                         # random starts differ
    for t in range(3):                                                               # every trajectory is a valid tree
        tr = LoDTree.from_index(lds.index[:, t], lds.scales)
        for b in range(6):
            assert sorted(tr.index[b].tolist()) == list(range(64))
        assert torch.equal(tr.scale_index(2)[:, ::4], tr.scale_index(1))
    picks = set()
    torch.manual_seed(0)
    for _ in range(30):
        li = lds[0]['lod_index']
        picks.add(next(t for t in range(3) if torch.equal(li, lds.index[0, t].long())))
    assert picks == {0, 1, 2}
    # the cache is reused (same meta) and rebuilt when the request changes
    again = LoDDataset(ds, (2, 8, 32, 64), n_trajectories=3, seed=1, cache_path=path, verbose=False)
    assert torch.equal(again.index, lds.index)
    torch.save(dict(meta='stale', index=torch.zeros(1)), path)
    rebuilt = LoDDataset(ds, (2, 8, 32, 64), n_trajectories=3, seed=1, cache_path=path, verbose=False)
    assert torch.equal(rebuilt.index, lds.index)
    path.write_bytes(b'not a torch file')
    assert torch.equal(LoDDataset(ds, (2, 8, 32, 64), n_trajectories=3, seed=1, cache_path=path, verbose=False).index, lds.index)
    fixed = LoDDataset(ds, (2, 8, 32, 64), n_trajectories=3, seed=1, pick=2, verbose=False)
    assert torch.equal(fixed[4]['lod_index'], lds.index[4, 2].long())


def test_lod_dataset_bad_inputs():
    from nsp_explore.lod import LoDDataset
    with pytest.raises(ValueError, match='resample=True'):
        LoDDataset(TinyDataset(resample=True), (1, 4, 16))
    with pytest.raises(ValueError, match='exceeds'):
        LoDDataset(TinyDataset(N=32), (1, 4, 64), verbose=False)
    with pytest.raises(ValueError, match='n_trajectories'):
        LoDDataset(TinyDataset(), (1, 4), n_trajectories=0)
    with pytest.raises(ValueError, match='pick'):
        LoDDataset(TinyDataset(), (1, 4), n_trajectories=2, pick=2)


def test_lod_dataset_with_synthetic_shapes():
    data = pytest.importorskip('nsp_explore.data')
    from nsp_explore.lod import LoDDataset
    ds = data.SyntheticShapes('val', categories=['chair'], n_per_category=2, n_points=128, resample=False)
    lds = LoDDataset(ds, make_scales(128), verbose=False)
    batch = data.collate([lds[0], lds[1]])
    assert batch['lod_index'].shape == (2, 128)
    assert torch.equal(batch['lod_index'], build_lod(batch['points'], make_scales(128)).index)


# -------------------------------------------------------------------------------------------- views
def test_views_and_downsampling():
    from nsp_explore.lod import (lod_slider, fps_animation, tree_fig, compare_downsampling_fig, voxel_downsample,
                                 random_downsample, coverage, capacity_cost)
    x = surface_cloud(400, seed=2)
    lod = build_lod(x, (1, 4, 16, 64, 256))
    assert len(lod_slider(x, lod).frames) == 5
    assert len(fps_animation(x, n_frames=6).frames) == 6
    fig = tree_fig(x, lod, k=1)
    assert len(fig.data) == 3 and len(fig.data[0].x) == 256
    assert len(tree_fig(x, lod, k=-1, links=False).data) == 2
    assert len(compare_downsampling_fig(x, 50).data) == 3
    v = voxel_downsample(x, 50)
    assert 30 <= len(v) <= 50 and v.shape[1] == 3
    r = random_downsample(x, 50)
    assert r.shape == (50, 3) and torch.equal(r, random_downsample(x, 50))
    for seed in range(5):                                             # FPS minimizes the largest gap
        assert coverage(x, x[fps_order(x, 50)]) < coverage(x, random_downsample(x, 50, seed))
    assert coverage(x, x) == 0 and coverage(x, x, 'mean') == 0
    assert coverage(x, r, 'mean') < coverage(x, r, 'max')
    with pytest.raises(ValueError, match='reduce'):
        coverage(x, r, 'median')
    rows = capacity_cost(x, lod)
    assert [r['level'] for r in rows] == ['1->4', '4->16', '16->64', '64->256']
    assert all(r['ratio'] >= 1 - 1e-9 for r in rows)


def test_torch_backend_chunking(monkeypatch):
    from nsp_explore import lod as L
    monkeypatch.setattr(L, 'CPU_CHUNK_POINTS', 500)            # force several chunks of 2 clouds
    x = rand_clouds(5, 230, seed=16)
    out = fps_order(x, backend='torch')
    assert torch.equal(out, fps_order_naive(x, dtype=torch.float32))
