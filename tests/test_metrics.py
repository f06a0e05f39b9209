"""Tests of nsp_explore.metrics against float64 brute force and sanity anchors."""
import itertools, math, warnings

import numpy as np
import pytest
import torch

from nsp_explore import metrics as M


def rand_clouds(B, N, seed, dtype=torch.float64, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5) * scale + shift


def chamfer_ref(x, y, squared=True, directions='sum'):
    "float64 brute force by explicit differences."
    D = ((x.double()[:, :, None] - y.double()[:, None]) ** 2).sum(-1)
    dx, dy = D.min(2).values, D.min(1).values
    if not squared: dx, dy = dx.sqrt(), dy.sqrt()
    out = dx.mean(1) + dy.mean(1)
    return out / 2 if directions == 'mean' else out


# ---------------------------------------------------------------- Chamfer
@pytest.mark.parametrize('N,Mn', [(64, 64), (100, 37), (513, 300)])
def test_chamfer_matches_bruteforce(N, Mn):
    x, y = rand_clouds(3, N, 1, torch.float32), rand_clouds(3, Mn, 2, torch.float32, shift=0.1)
    torch.testing.assert_close(M.chamfer_distance(x, y).double(), chamfer_ref(x, y), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(M.chamfer_sq_mean(x, y).double(), chamfer_ref(x, y, directions='mean'), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(M.chamfer_euclid_mean(x, y).double(), chamfer_ref(x, y, False, 'mean'), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(M.chamfer_euclid_sum(x, y).double(), chamfer_ref(x, y, False, 'sum'), rtol=1e-4, atol=1e-6)


def test_chamfer_chunking_and_float64():
    x, y = rand_clouds(3, 60, 3), rand_clouds(3, 50, 4)
    full = M.chamfer_distance(x, y)
    small = M.chamfer_distance(x, y, max_elements=200)       # forces row blocks of 4 points, one cloud at a time
    torch.testing.assert_close(full, chamfer_ref(x, y), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(small, full, rtol=1e-12, atol=1e-14)
    assert full.dtype == torch.float64 and full.shape == (3,)


def test_chamfer_properties():
    x, y = rand_clouds(2, 80, 5, torch.float32), rand_clouds(2, 90, 6, torch.float32)
    torch.testing.assert_close(M.chamfer_distance(x, y), M.chamfer_distance(y, x))            # symmetric
    assert (M.chamfer_distance(x, x) < 1e-6).all()
    perm = torch.randperm(80, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(M.chamfer_distance(x[:, perm], y), M.chamfer_distance(x, y))    # order-free
    # unbatched input gives a scalar; a batch of 1 broadcasts
    assert M.chamfer_distance(x[0], y[0]).shape == ()
    torch.testing.assert_close(M.chamfer_distance(x[:1], y), M.chamfer_distance(x[:1].expand(2, -1, -1), y))


def test_chamfer_gradient_matches_bruteforce():
    x, y = rand_clouds(2, 40, 7).requires_grad_(), rand_clouds(2, 30, 8)
    M.chamfer_distance(x, y).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    chamfer_ref(x2, y).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert torch.autograd.gradcheck(lambda a: M.chamfer_euclid_mean(a, y[:, :8]), (x[:, :6].detach().clone().requires_grad_(),))


def test_chamfer_bad_inputs():
    x = rand_clouds(2, 10, 0)
    with pytest.raises(ValueError, match='expected shape'): M.chamfer_distance(x[..., :2], x)
    with pytest.raises(ValueError, match='same batch size'): M.chamfer_distance(x, rand_clouds(3, 10, 1))
    bad = x.clone(); bad[1, 3, 0] = float('nan')
    with pytest.raises(ValueError, match='NaN'): M.chamfer_distance(x, bad)
    with pytest.raises(ValueError, match='at least'): M.chamfer_distance(x[:, :0], x)
    with pytest.raises(ValueError, match='directions'): M.chamfer(x, x, directions='max')


# ---------------------------------------------------------------- EMD exact
def emd_bruteforce(x, y, cost):
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    if cost in ('pointflow', 'euclidean'): C = C.sqrt()
    n = len(x)
    return min(C[torch.arange(n), torch.tensor(p)].mean() for p in itertools.permutations(range(n)))


@pytest.mark.parametrize('cost', ['pointflow', 'pvd', 'euclidean', 'squared'])
def test_emd_exact_equals_min_over_permutations(cost):
    x, y = rand_clouds(3, 6, 11), rand_clouds(3, 6, 12, shift=0.2)
    got = M.emd_exact(x, y, cost)
    want = torch.stack([emd_bruteforce(x[b], y[b], cost) for b in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_emd_exact_is_assignment_cost_and_a_permutation():
    x, y = rand_clouds(2, 64, 13), rand_clouds(2, 64, 14)
    perm = M.emd_assignment(x, y, 'pvd')
    assert perm.shape == (2, 64) and all(sorted(p.tolist()) == list(range(64)) for p in perm)
    cost = ((x - torch.gather(y, 1, perm[..., None].expand(-1, -1, 3))) ** 2).sum(-1).mean(1)
    torch.testing.assert_close(M.emd_exact(x, y, 'pvd'), cost)
    # no random permutation does better
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.randperm(64, generator=g)
        assert (((x - y[:, p]) ** 2).sum(-1).mean(1) >= cost - 1e-12).all()
    # a cloud against a shuffled copy of itself is at distance 0; the matching undoes the shuffle
    sh = torch.randperm(64, generator=g)
    assert M.emd_exact(x, x[:, sh]).abs().max() < 1e-7
    assert (sh[M.emd_assignment(x, x[:, sh])[0]] == torch.arange(64)).all()


def test_emd_assignment_threads_match_one_thread(monkeypatch):
    "The batch's pairs are solved on worker threads; the matchings are those of the one-thread loop, in order."
    x, y = rand_clouds(5, 96, 21), rand_clouds(5, 96, 22)
    x[:, 40:] = x[:, :1]                                      # many equal points: ties, the slow case for the solver
    many = M.emd_assignment(x, y)
    monkeypatch.setattr(M.torch, 'get_num_threads', lambda: 1)
    one = M.emd_assignment(x, y)
    assert torch.equal(many, one)
    for b in range(5):                                        # and each row is that pair's own optimum
        torch.testing.assert_close(M.emd_exact(x[b:b + 1], y[b:b + 1]), M.emd_exact(x, y)[b:b + 1])


def test_emd_exact_vs_chamfer_and_bad_inputs():
    x, y = rand_clouds(2, 50, 15), rand_clouds(2, 50, 16)
    # matching one-to-one costs at least the nearest-neighbour cost of each direction
    assert (M.emd_exact(x, y, 'pvd') >= M.chamfer_sq_mean(x, y) - 1e-12).all()
    with pytest.raises(ValueError, match='same number of points'): M.emd_exact(x, y[:, :40])
    with pytest.raises(ValueError, match='cost must be'): M.emd_exact(x, y, cost='l1')


# ---------------------------------------------------------------- EMD approx (Sinkhorn)
@pytest.mark.parametrize('cost', ['pointflow', 'pvd'])
def test_emd_approx_close_to_exact_and_batched(cost):
    x, y = rand_clouds(3, 64, 17, torch.float32), rand_clouds(3, 64, 18, torch.float32, shift=0.3)
    ex = M.emd_exact(x, y, cost)
    ap = M.emd_approx(x, y, cost, eps_final=1e-3, scaling=0.7, n_final=30)
    assert ap.shape == (3,)
    torch.testing.assert_close(ap, ex, rtol=0.03, atol=0)
    # batched result equals pair-by-pair
    one = torch.stack([M.emd_approx(x[i], y[i], cost, eps_final=1e-3, scaling=0.7, n_final=30) for i in range(3)])
    torch.testing.assert_close(ap, one, rtol=1e-5, atol=1e-7)
    # chunking does not change the result
    torch.testing.assert_close(M.emd_approx(x, y, cost, max_elements=1), M.emd_approx(x, y, cost), rtol=1e-5, atol=1e-7)


def test_emd_approx_feasible_plan_is_upper_bound():
    x, y = rand_clouds(3, 96, 19, torch.float32), rand_clouds(3, 96, 20, torch.float32)
    C = M.cost_matrix(x, y, 'pointflow')
    P = M.round_to_feasible(M.sinkhorn_plan(C, *M.sinkhorn_potentials(C, 1e-2, 0.7, 5)))
    torch.testing.assert_close(P.sum(2), torch.full((3, 96), 1 / 96), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(P.sum(1), torch.full((3, 96), 1 / 96), rtol=1e-4, atol=1e-7)
    up = M.emd_approx(x, y, feasible=True)
    assert (up >= M.emd_exact(x, y) * (1 - 1e-5)).all()


def test_emd_approx_gradient_is_plan_weighted():
    x, y = rand_clouds(2, 32, 21).requires_grad_(), rand_clouds(2, 32, 22)
    M.emd_approx(x, y, 'pvd').sum().backward()
    # envelope theorem: grad = sum_j P_ij * d C_ij / d x_i, with C = |x - y|^2
    C = M.cost_matrix(x.detach(), y, 'pvd')
    P = M.sinkhorn_plan(C, *M.sinkhorn_potentials(C, 1e-2, 0.7, 5))
    want = 2 * (P.sum(2, keepdim=True) * x.detach() - P @ y)
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-8)
    # and a small step along -grad lowers the loss
    assert (M.emd_approx(x.detach() - 1e-2 * x.grad, y, 'pvd') < M.emd_approx(x.detach(), y, 'pvd')).all()


# ---------------------------------------------------------------- EMD auction
@pytest.mark.parametrize('cost', ['pointflow', 'pvd'])
def test_emd_auction_within_certificate(cost):
    x, y = rand_clouds(3, 100, 23, torch.float32), rand_clouds(3, 100, 24, torch.float32, shift=0.05)
    ex = M.emd_exact(x, y, cost)
    au = M.emd_auction(x, y, cost)
    bound = 1e-3 * M.cost_matrix(x, y, cost).amax((1, 2))
    assert (au >= ex - 1e-6).all() and (au <= ex + bound + 1e-6).all()
    torch.testing.assert_close(au, ex, rtol=1e-2, atol=0)


def test_auction_assignment_is_permutation_even_when_capped():
    C = M.cost_matrix(rand_clouds(2, 60, 25), rand_clouds(2, 60, 26))
    perm, info = M.auction_assignment(C, max_rounds=2)        # forced leftovers, fixed by Hungarian
    assert info['leftover'] > 0
    assert all(sorted(p.tolist()) == list(range(60)) for p in perm)
    perm, info = M.auction_assignment(C)
    assert info['leftover'] == 0 and all(sorted(p.tolist()) == list(range(60)) for p in perm)
    with pytest.raises(ValueError, match='square'): M.auction_assignment(C[:, :50])


# ---------------------------------------------------------------- set metrics
def blob_sets(S, N, seed, shift=0.0, stretch=1.0):
    "S clouds: Gaussian blobs with random per-cloud axis lengths (a distribution of shapes)."
    g = torch.Generator().manual_seed(seed)
    ax = 0.1 + 0.1 * torch.rand(S, 1, 3, generator=g)
    return (torch.randn(S, N, 3, generator=g) * ax * torch.tensor([stretch, 1, 1]) + shift).float()


def test_pairwise_distances_match_direct():
    A, B = blob_sets(5, 64, 1), blob_sets(4, 64, 2)
    D = M.pairwise_distances(A, B, batch_size=3)
    want = torch.stack([torch.stack([chamfer_ref(A[i:i + 1], B[j:j + 1])[0] for j in range(4)]) for i in range(5)])
    torch.testing.assert_close(D, want, rtol=1e-4, atol=1e-8)
    Ds = M.pairwise_distances(A, batch_size=2)
    assert torch.equal(Ds, Ds.T) and (Ds.diagonal() == 0).all()
    torch.testing.assert_close(Ds, M.pairwise_distances(A, A), rtol=1e-5, atol=1e-6)
    De = M.pairwise_distances(A[:3], B[:2], metric='emd', emd='exact', cost='pvd')
    torch.testing.assert_close(De[2, 1], M.emd_exact(A[2], B[1], 'pvd').double(), rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="metric must be"): M.pairwise_distances(A, B, metric='f1')
    with pytest.raises(ValueError, match="emd must be"): M.pairwise_distances(A, B, metric='emd', emd='fast')


def test_mmd_cov_against_loops():
    g = torch.Generator().manual_seed(3)
    D = torch.rand(7, 5, generator=g, dtype=torch.float64)
    assert M.mmd(D) == pytest.approx(np.mean([min(D[i, j] for i in range(7)) for j in range(5)]))
    nearest = {int(np.argmin(D[i].numpy())) for i in range(7)}
    assert M.coverage(D) == len(nearest) / 5
    assert M.nearest_sample_mmd(D) == pytest.approx(np.mean([min(D[i]) for i in range(7)]))
    # a set covers itself completely
    A = blob_sets(10, 64, 4)
    assert M.coverage(M.pairwise_distances(A, A)) == 1.0


def nna_loops(D_SS, D_SR, D_RR):
    S, R = D_SR.shape
    full = np.block([[D_SS.numpy(), D_SR.numpy()], [D_SR.T.numpy(), D_RR.numpy()]])
    lab = [1] * S + [0] * R
    right = [lab[min((j for j in range(S + R) if j != i), key=lambda j: full[i, j])] == lab[i] for i in range(S + R)]
    return np.mean(right)


def test_one_nn_accuracy_against_loops():
    g = torch.Generator().manual_seed(5)
    P = torch.rand(13, 4, generator=g, dtype=torch.float64)
    D = torch.cdist(P, P)
    S = 6
    got = M.one_nn_accuracy(D[:S, :S], D[:S, S:], D[S:, S:])
    assert got['acc'] == pytest.approx(nna_loops(D[:S, :S], D[:S, S:], D[S:, S:]))
    assert got['acc'] == pytest.approx((S * got['acc_sample'] + 7 * got['acc_ref']) / 13)
    with pytest.raises(ValueError, match='do not fit'): M.one_nn_accuracy(D[:S, :S], D[:S, S:], D[:S, :S])


def test_sanity_anchors_one_nna():
    "Independent resample of the same distribution ~50%; a shifted distribution ~100%."
    S, N = 40, 128
    A, B = blob_sets(S, N, 10), blob_sets(S, N, 11)
    res = M.compute_all_metrics(A, B, metrics=('cd',), jsd=False)
    assert 0.3 <= res['1-NNA-CD'] <= 0.7, res
    far = M.compute_all_metrics(A, blob_sets(S, N, 12, shift=0.15), metrics=('cd',), jsd=False)
    assert far['1-NNA-CD'] >= 0.95, far
    assert far['MMD-CD'] > res['MMD-CD']
    assert M.compute_all_metrics(A, A, metrics=('cd',), jsd=False)['COV-CD'] == 1.0


def test_sanity_anchors_emd():
    S, N = 16, 64
    A, B, C = blob_sets(S, N, 13), blob_sets(S, N, 14), blob_sets(S, N, 15, stretch=2.5)
    same = M.compute_all_metrics(A, B, metrics=('emd',), jsd=False)
    diff = M.compute_all_metrics(A, C, metrics=('emd',), jsd=False)
    assert same['1-NNA-EMD'] <= 0.8 and diff['1-NNA-EMD'] >= 0.9 and diff['MMD-EMD'] > same['MMD-EMD']
    ex = M.compute_all_metrics(A[:6], C[:6], metrics=('emd',), emd='exact', jsd=False, return_matrices=True)
    au = M.compute_all_metrics(A[:6], C[:6], metrics=('emd',), emd='auction', jsd=False, return_matrices=True)
    D_ex, D_au = ex['matrices']['emd']['D_SR'], au['matrices']['emd']['D_SR']
    assert (D_au >= D_ex - 1e-6).all() and ((D_au - D_ex) / D_ex).mean() < 0.01


def test_jsd():
    inside = lambda X: X.clamp(-0.5, 0.5)                       # the grid's domain: no unit-cube warning
    A, B, C = inside(blob_sets(6, 256, 16)), inside(blob_sets(6, 256, 17)), inside(blob_sets(6, 256, 18, shift=0.2))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert M.jsd_between_point_cloud_sets(A, A) == 0.0
        near, far = M.jsd_between_point_cloud_sets(A, B), M.jsd_between_point_cloud_sets(A, C)
    assert 0 < near < far <= 1
    p = torch.tensor([1., 2, 3, 0]); q = torch.tensor([0., 1, 1, 2])
    pn, qn = p / p.sum(), q / q.sum(); mid = (pn + qn) / 2
    kl = lambda a, b: sum(float(a[i] * math.log2(a[i] / b[i])) for i in range(4) if a[i] > 0)
    assert M.jensen_shannon(p, q) == pytest.approx(0.5 * kl(pn, mid) + 0.5 * kl(qn, mid))
    # counts equal brute-force nearest grid point, inside and outside the sphere
    pts = torch.rand(1, 5000, 3, generator=torch.Generator().manual_seed(1)) - 0.5
    grid = M.occupancy_grid(28)
    assert len(grid) < 28 ** 3 and (grid.norm(dim=1) <= 0.5).all()
    want = torch.bincount(torch.cdist(pts[0].double(), grid).argmin(1), minlength=len(grid)).double()
    assert torch.equal(M.grid_counts(pts), want)
    with pytest.warns(UserWarning, match='unit cube'): M.grid_counts(pts * 3)
    with pytest.raises(ValueError, match='non-negative'): M.jensen_shannon(-p, q)


def test_compute_all_metrics_denormalizes_and_checks():
    A, B = blob_sets(8, 64, 19), blob_sets(8, 64, 20)
    mean = torch.randn(8, 1, 3, generator=torch.Generator().manual_seed(0)) * 0.01
    std = torch.full((8, 1, 1), 0.5)
    got = M.compute_all_metrics(A, B, mean=mean, std=std, metrics=('cd',), jsd=False)
    want = M.compute_all_metrics(A * std + mean, B * std + mean, metrics=('cd',), jsd=False)
    assert got == want
    rows = M.metrics_table(got)
    assert {r['metric'] for r in rows} == {'MMD', 'COV', '1-NNA', '1-NNA acc_sample', '1-NNA acc_ref', 'MMD_smp'}
    assert all(r['distance'] == 'CD' for r in rows)
    with pytest.raises(ValueError, match='equally many'): M.compute_all_metrics(A, B[:7])
    bad = A.clone(); bad[0, 0, 0] = float('inf')
    with pytest.raises(ValueError, match='NaN/inf'): M.compute_all_metrics(bad, B)
    with pytest.raises(ValueError, match='unknown metric'): M.compute_all_metrics(A, B, metrics=('cd', 'f1'))


@pytest.mark.cuda
def test_cpu_and_cuda_agree():
    A, B = blob_sets(6, 256, 21), blob_sets(6, 256, 22)
    for metric in ('cd', 'emd'):
        cpu = M.pairwise_distances(A, B, metric=metric, device='cpu')
        gpu = M.pairwise_distances(A, B, metric=metric, device='cuda')
        torch.testing.assert_close(gpu, cpu, rtol=2e-3, atol=1e-6)
    x = A.cuda().requires_grad_()
    M.emd_approx(x, B.cuda()).sum().backward()
    xc = A.clone().requires_grad_()
    M.emd_approx(xc, B).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xc.grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(M.chamfer_distance(A.cuda(), B.cuda()).cpu(), M.chamfer_distance(A, B), rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_emd_auction_2048_points_error():
    "The approximation-error goal on 2048-point clouds (slow: ~1-2 s of Hungarian per pair)."
    x, y = blob_sets(2, 2048, 23), blob_sets(2, 2048, 24)
    ex, au = M.emd_exact(x, y), M.emd_auction(x, y)
    rel = ((au - ex) / ex)
    assert (rel >= -1e-6).all() and rel.mean() < 0.01, rel


def test_compute_all_metrics_reuses_ref_matrices():
    g = torch.Generator().manual_seed(5)
    A, B, C = (torch.randn(6, 32, 3, generator=g) for _ in range(3))
    first = M.compute_all_metrics(A, B, metrics=('cd', 'emd'), emd='exact', jsd=False, return_matrices=True)
    fresh = M.compute_all_metrics(C, B, metrics=('cd', 'emd'), emd='exact', jsd=False)
    reused = M.compute_all_metrics(C, B, metrics=('cd', 'emd'), emd='exact', jsd=False, ref_matrices=first['matrices'])
    assert fresh == reused
    bad = {'cd': {'D_RR': torch.zeros(3, 3)}}
    with pytest.raises(ValueError, match='D_RR'):
        M.compute_all_metrics(C, B, metrics=('cd',), jsd=False, ref_matrices=bad)


# ---------------------------------------------------------------- CPU fast paths: KD-tree, cache-sized brute force
KD_BACKENDS = ['ckdtree'] + (['pykdtree'] if M.kdtree_backend() == 'pykdtree' else [])


@pytest.mark.parametrize('backend', KD_BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_kdtree_nn_equals_float64_bruteforce(backend, dtype):
    seed = int(torch.randint(0, 2**30, ()))                              # fresh inputs every run
    x, y = rand_clouds(2, 530, seed, dtype), rand_clouds(2, 611, seed + 1, dtype, shift=0.05)
    jx, jy = M.nn_index(x, y, backend=backend)
    D = ((x.double()[:, :, None] - y.double()[:, None]) ** 2).sum(-1)
    # the found neighbours are nearest: their distance is the minimum (to float32 rounding of the coordinates)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(D.gather(2, jx[..., None])[..., 0], D.min(2).values, rtol=tol, atol=tol)
    torch.testing.assert_close(D.gather(1, jy[:, None])[:, 0], D.min(1).values, rtol=tol, atol=tol)
    for m in ('kdtree', 'brute'):
        got = M.chamfer_distance(x, y, method=m)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), chamfer_ref(x, y), rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    torch.testing.assert_close(M.chamfer_euclid_mean(x, y, method='kdtree').double(), chamfer_ref(x, y, False, 'mean'),
                               rtol=1e-5, atol=0)


def test_kdtree_gradient_equals_bruteforce():
    seed = int(torch.randint(0, 2**30, ()))
    x, y = rand_clouds(2, 600, seed), rand_clouds(2, 520, seed + 1)
    grads = {}
    for m in ('kdtree', 'brute'):
        xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
        M.chamfer_euclid_sum(xa, ya, method=m).sum().backward()
        grads[m] = (xa.grad, ya.grad)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    chamfer_ref(xr, yr, False, 'sum').sum().backward()
    for m in grads:
        torch.testing.assert_close(grads[m][0], xr.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(grads[m][1], yr.grad, rtol=1e-9, atol=1e-12)


def test_kdtree_under_bf16_autocast_is_fp32():
    x, y = rand_clouds(2, 600, 31, torch.float32), rand_clouds(2, 600, 32, torch.float32)
    ref = M.chamfer_distance(x, y, method='kdtree')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, bf = M.chamfer_distance(x, y, method='kdtree'), M.chamfer_distance(x.bfloat16(), y, method='kdtree')
        self_cd = M.chamfer_distance(x, x, method='kdtree')
    assert got.dtype == torch.float32 and bf.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert (self_cd == 0).all()


def test_auto_method_and_cache_blocks_give_the_same_values():
    x, y = rand_clouds(3, 300, 33, torch.float32), rand_clouds(3, 700, 34, torch.float32)
    ref = chamfer_ref(x, y)
    for kw in (dict(), dict(method='brute'), dict(method='brute', max_elements=2**24), dict(method='brute', max_elements=999),
               dict(method='kdtree')):
        torch.testing.assert_close(M.chamfer_distance(x, y, **kw).double(), ref, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match='method must be'): M.chamfer_distance(x, y, method='fast')


def test_kdtree_handles_duplicates_and_ties():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**30, ())))
    grid = torch.stack(torch.meshgrid(*[torch.arange(9.)] * 3, indexing='ij'), -1).reshape(1, -1, 3) / 8   # 729 points
    x = torch.cat([grid, grid[:, :40]], 1)                               # exact duplicates
    y = grid[:, torch.randperm(729, generator=g)] + 0.0625               # every grid point has tied neighbours
    torch.testing.assert_close(M.chamfer_distance(x, y, method='kdtree').double(), chamfer_ref(x, y), rtol=1e-6, atol=0)
    assert float(M.chamfer_distance(x, grid, method='kdtree')) == 0.0


@pytest.mark.parametrize('backend', KD_BACKENDS)
def test_kdtree_matrix_equals_bruteforce(backend):
    seed = int(torch.randint(0, 2**30, ()))
    A, B = rand_clouds(5, 260, seed, torch.float32), rand_clouds(4, 300, seed + 1, torch.float32)
    want = torch.stack([chamfer_ref(A[i:i + 1].expand(4, -1, -1), B) for i in range(5)])           # (5, 4) float64
    got = M._cd_matrix_kdtree(A, B, backend=backend)
    assert got.dtype == torch.float64 and got.shape == (5, 4)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    Ds = M._cd_matrix_kdtree(A, None, backend=backend)
    assert torch.equal(Ds, Ds.T) and (Ds.diagonal() == 0).all()
    torch.testing.assert_close(Ds, torch.stack([chamfer_ref(A[i:i + 1].expand(5, -1, -1), A) for i in range(5)]),
                               rtol=1e-6, atol=1e-12)
    # the package's CPU path uses it at these sizes, and agrees with the brute-force pair loop
    torch.testing.assert_close(M.pairwise_distances(A, B, device='cpu'),
                               M.pairwise_distances(A, B, device='cpu', cd_method='brute'), rtol=1e-5, atol=0)
    A64 = A.double()
    torch.testing.assert_close(M.pairwise_distances(A64, cd_method='kdtree', device='cpu'),
                               M.pairwise_distances(A64, cd_method='brute', device='cpu'), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match='cd_method'): M.pairwise_distances(A, B, cd_method='fast')


def test_emd_solver_default_fits_the_device():
    assert M.emd_solver('cpu', 256) == 'exact' and M.emd_solver('cpu', M.HUNGARIAN_CPU_MAX_POINTS) == 'exact'
    assert M.emd_solver('cpu', M.HUNGARIAN_CPU_MAX_POINTS + 1) == 'auction' and M.emd_solver('cuda', 256) == 'auction'
    A, B = blob_sets(5, 40, 35), blob_sets(5, 40, 36)
    auto = M.compute_all_metrics(A, B, metrics=('emd',), jsd=False, device='cpu')
    assert auto == M.compute_all_metrics(A, B, metrics=('emd',), emd='exact', jsd=False, device='cpu')
    torch.testing.assert_close(M.pairwise_distances(A, B, 'emd', device='cpu'),
                               M.pairwise_distances(A, B, 'emd', emd='exact', device='cpu'), rtol=0, atol=0)


@pytest.mark.parametrize('cost', ['pointflow', 'pvd'])
def test_emd_lower_bounds_are_below_the_exact_emd(cost):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**30, ())))
    X = torch.rand(6, 40, 3, generator=g) * torch.rand(6, 1, 3, generator=g)
    LB = M.emd_lower_bounds(X, cost)
    D = M.pairwise_distances(X, None, 'emd', emd='exact', cost=cost, device='cpu')
    assert LB.shape == (6, 6) and torch.equal(LB, LB.T)
    off = ~torch.eye(6, dtype=torch.bool)
    assert (LB[off] <= D[off]).all() and (LB[off] > 0).all()      # a bound, and not a trivial one


@pytest.mark.parametrize('cost', ['pointflow', 'pvd'])
def test_emd_nearest_only_gives_the_full_statistics(cost):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**30, ())))
    def sets(n):                                                          # two families of shapes, so neighbours matter
        base = torch.rand(n, 48, 3, generator=g) - 0.5
        return base * (1 + torch.rand(n, 1, 3, generator=g) * torch.tensor([1.5, 0, 0]))
    A, B, C = sets(9), sets(9), sets(9)
    kw = dict(metrics=('emd',), emd='exact', cost=cost, jsd=False, device='cpu')
    full = M.compute_all_metrics(A, B, return_matrices=True, **kw)
    pr = M.compute_all_metrics(A, B, return_matrices=True, emd_nearest_only=True, **kw)
    fm, pm = full.pop('matrices')['emd'], pr.pop('matrices')['emd']
    assert pr == full
    total = 9 * 9 + 2 * 36
    assert 0 < pm['pairs_computed'] <= total
    for k in ('D_SR', 'D_SS', 'D_RR'):                                      # computed entries are the full path's values
        known = torch.isfinite(pm[k])
        torch.testing.assert_close(pm[k][known], fm[k][known], rtol=1e-12, atol=1e-12)
    # reusing the partly known ref-ref matrix for another sample set gives the full statistics again
    again = M.compute_all_metrics(C, B, ref_matrices={'emd': pm}, emd_nearest_only=True, **kw)
    assert again == M.compute_all_metrics(C, B, **kw)
    # a partly known ref-ref matrix is refused without emd_nearest_only (pm itself may be complete: with 9 shapes
    # the pruning sometimes computes every ref-ref pair, which made this check fail in about 1 run of 3)
    partial = dict(pm, D_RR=pm['D_RR'].clone())
    partial['D_RR'][0, 1] = partial['D_RR'][1, 0] = float('inf')
    with pytest.raises(ValueError, match='unknown'):
        M.compute_all_metrics(C, B, ref_matrices={'emd': partial}, **kw)
