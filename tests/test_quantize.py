"""Dense checks of nsp_explore.quantize: lookups vs float64 references, EMA maths, restarts,
the residual multi-scale loop vs an explicit loop, exact index round trips, LFQ and VRQ, DDP sync."""
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nsp_explore.quantize import (QuantOut, MultiScaleQuantOut, VectorQuantizer, ResidualMultiScaleQuantizer,
                                  LookupFreeQuantizer, VariationalResidualQuantizer, nearest_code,
                                  nearest_code_naive, usage_per_scale, usage_fig, token_maps_fig)
from nsp_explore.lod import check_scales, pool, upsample


# ---------------------------------------------------------------- lookup
@pytest.mark.parametrize('distance', ['l2', 'cosine'])
@pytest.mark.parametrize('chunk', [1, 37, 100000])
def test_nearest_code_matches_float64_reference(distance, chunk):
    g = torch.Generator().manual_seed(1)
    z, e = torch.randn(600, 5, generator=g, dtype=torch.float64), torch.randn(33, 5, generator=g, dtype=torch.float64)
    # reference by brute force on the float64 inputs
    if distance == 'l2': ref = torch.cdist(z, e).argmin(1)
    else: ref = (F.normalize(z, dim=1) @ F.normalize(e, dim=1).T).argmax(1)
    assert torch.equal(nearest_code(z, e, distance, chunk_size=chunk), ref)
    assert torch.equal(nearest_code_naive(z, e, distance), ref)


def test_nearest_code_empty_and_bad_distance():
    assert nearest_code(torch.zeros(0, 3), torch.randn(4, 3)).shape == (0,)
    with pytest.raises(ValueError, match="'l2' or 'cosine'"): nearest_code(torch.zeros(2, 3), torch.randn(4, 3), 'dot')


# ---------------------------------------------------------------- vector quantizer
def test_vq_forward_values_and_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3).eval()
    z = torch.randn(2, 7, 3, requires_grad=True)
    out = vq(z)
    assert isinstance(out, QuantOut) and out.indices.shape == (2, 7) and out.indices.dtype == torch.int64
    assert torch.equal(out.quantized.detach(), vq.codebook[out.indices].detach())
    w = torch.randn(2, 7, 3)
    (out.quantized * w).sum().backward()
    assert_close(z.grad, w)                                                   # identity gradient
    assert_close(out.losses['commit'], 0.25 * ((z.detach() - out.quantized.detach()) ** 2).mean())
    assert vq.codebook.grad is None                                           # ema: no codebook gradient


def test_vq_ema_update_matches_reference():
    torch.manual_seed(0)
    K, C, d, eps = 5, 2, 0.8, 1e-5
    vq = VectorQuantizer(K, C, decay=d, eps=eps, restart_dead=False)
    e0, n0, s0 = vq.codebook.detach().double().clone(), vq.cluster_size.double().clone(), vq.embed_sum.double().clone()
    z = torch.randn(1, 50, C)
    idx = vq.train()(z).indices[0]
    onehot = F.one_hot(idx, K).double()
    n = d * n0 + (1 - d) * onehot.sum(0)
    s = d * s0 + (1 - d) * onehot.T @ z[0].double()
    ref = s / ((n + eps) / (n.sum() + K * eps) * n.sum())[:, None]
    assert_close(vq.cluster_size.double(), n)
    assert_close(vq.codebook.detach().double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(idx, nearest_code_naive(z[0], e0.float()))


def test_vq_dead_code_restart_is_deterministic_and_lands_on_data():
    def run(seed):
        torch.manual_seed(seed)
        vq = VectorQuantizer(8, 2, decay=0.5, dead_threshold=0.4)
        with torch.no_grad(): vq.codebook[3] = 1e4; vq.embed_sum[3] = 1e4
        data = torch.randn(1, 64, 2)
        for _ in range(2): out = vq(data)   # decays 1 -> 0.5 -> 0.25 < 0.4: restarted in the last call
        return vq.codebook.detach().clone(), data, out
    a, data, out = run(0)
    b, _, _ = run(0)
    assert torch.equal(a, b)
    # code 3 was never used, decayed below the threshold and was restarted on an input vector
    assert (a[3][None] - data[0]).abs().sum(1).min() < 1e-4
    c, _, _ = run(1)
    assert not torch.equal(a, c)


def test_vq_no_restart_when_disabled():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, decay=0.5, restart_dead=False)
    with torch.no_grad(): vq.codebook[3] = 1e4; vq.embed_sum[3] = 1e4
    for _ in range(5): vq(torch.randn(1, 64, 2))
    assert vq.codebook[3].abs().min() > 100
    assert vq(torch.randn(1, 64, 2)).stats['dead_codes'] >= 1


def test_vq_usage_and_perplexity():
    vq = VectorQuantizer(4, 2).eval()
    with torch.no_grad(): vq.codebook.copy_(torch.tensor([[0., 0.], [10., 0.], [0., 10.], [10., 10.]]))
    z = torch.tensor([[[0.1, 0.], [9., 0.], [0., 9.], [9., 9.]]])
    out = vq(z)
    assert torch.equal(out.indices, torch.tensor([[0, 1, 2, 3]]))
    assert math.isclose(out.stats['perplexity'], 4.0, rel_tol=1e-9) and out.stats['usage_frac'] == 1.0
    vq(z[:, :1])
    assert torch.equal(vq.usage(), torch.tensor([2, 1, 1, 1]))
    p = torch.tensor([2, 1, 1, 1.]) / 5
    assert math.isclose(vq.perplexity, float(torch.exp(-(p * p.log()).sum())), rel_tol=1e-6)
    vq.reset_usage(); assert vq.usage().sum() == 0


def test_vq_gradient_codebook_mode():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, ema=False)
    out = vq(torch.randn(2, 4, 3))
    assert set(out.losses) == {'commit', 'codebook'}
    out.loss.backward()
    used = torch.unique(out.indices)
    assert vq.codebook.grad[used].abs().sum() > 0
    unused = torch.ones(8, dtype=torch.bool); unused[used] = False
    assert vq.codebook.grad[unused].abs().sum() == 0


def test_vq_cosine_unit_norm_codes():
    vq = VectorQuantizer(8, 4, distance='cosine').eval()
    x = torch.randn(2, 9, 4)
    o = vq(x)
    assert_close(o.quantized.norm(dim=-1), torch.ones(2, 9))
    assert torch.equal(vq(5 * x).indices, o.indices)


@pytest.mark.parametrize('bad, msg', [(torch.randn(4, 3), r'\(B, L, C\)'), (torch.randn(1, 4, 2), 'C = 3'),
                                      (torch.full((1, 2, 3), float('nan')), 'NaN')])
def test_vq_bad_inputs(bad, msg):
    with pytest.raises(ValueError, match=msg): VectorQuantizer(8, 3)(bad)


def test_vq_bad_args_and_indices():
    with pytest.raises(ValueError, match='distance'): VectorQuantizer(8, 3, distance='l1')
    with pytest.raises(ValueError, match='decay'): VectorQuantizer(8, 3, decay=1.0)
    with pytest.raises(IndexError, match=r'\[0, 8\)'): VectorQuantizer(8, 3).embed(torch.tensor([8]))
    with pytest.raises(TypeError, match='integers'): VectorQuantizer(8, 3).embed(torch.tensor([1.0]))


# ---------------------------------------------------------------- residual multi-scale
def test_pool_upsample_tree_order():
    x = torch.randn(3, 24, 2)
    ref = torch.stack([x[:, i * 4:(i + 1) * 4].mean(1) for i in range(6)], 1)
    assert_close(pool(x, 4), ref)
    assert torch.equal(pool(upsample(ref, 4), 4), ref)


def test_check_scales():
    assert check_scales([1, 4, 16]) == (1, 4, 16)
    for bad in [(), (4, 6), (4, 4), (0, 4), (16, 4)]:
        with pytest.raises(ValueError, match='scales'): check_scales(bad)


def _reference_rq(rq, f):
    "Explicit float64 loop over blocks and codes: indices and f_hat (eval mode)."
    f = f.double(); B, S, C = f.shape
    e = rq.vq.codebook.detach().double()
    f_rest, f_hat, idxs = f.clone(), torch.zeros_like(f), []
    for k, s in enumerate(rq.scales):
        r = S // s
        g = torch.stack([f_rest[:, i * r:(i + 1) * r].mean(1) for i in range(s)], 1)          # (B, s, C)
        idx = ((g[:, :, None] - e[None, None]) ** 2).sum(-1).argmin(-1)                      # (B, s)
        z = e[idx]
        up = torch.stack([z[:, j // r] for j in range(S)], 1)                               # (B, S, C)
        if rq.phi_index[k] >= 0:
            phi = rq.phis[rq.phi_index[k]]
            h = 0.5 * up + 0.5 * (up @ phi.proj.weight.detach().double().T + phi.proj.bias.detach().double())
        else: h = up
        f_hat, f_rest = f_hat + h, f_rest - h
        idxs.append(idx)
    return idxs, f_hat


@pytest.mark.parametrize('phi_share', [0, 1, 2, 4])
def test_rq_matches_explicit_loop_and_round_trip(phi_share):
    torch.manual_seed(phi_share)
    rq = ResidualMultiScaleQuantizer(4, 64, (1, 2, 8, 32), phi_share=phi_share).eval()
    f = torch.randn(3, 32, 4)
    out = rq(f)
    assert isinstance(out, MultiScaleQuantOut)
    ref_idx, ref_fhat = _reference_rq(rq, f)
    for a, b in zip(out.indices, ref_idx): assert torch.equal(a, b)
    assert_close(out.f_hat.double(), ref_fhat, rtol=1e-5, atol=1e-5)
    assert torch.equal(rq.indices_to_features(out.indices), out.f_hat)             # exact
    for k in range(4):
        partial = sum(rq.lookup(out.indices[j], j) for j in range(k + 1))
        assert torch.equal(out.cumulative[k], partial)
    assert len(rq.phis) == min(phi_share, 4)


def test_rq_phi_sharing_positions():
    rq = ResidualMultiScaleQuantizer(4, 8, (1, 2, 4, 8, 16, 32, 64, 128), phi_share=4)
    assert rq.phi_index[0] == 0 and rq.phi_index[-1] == 3 and sorted(set(rq.phi_index)) == [0, 1, 2, 3]
    assert rq.phi_index == sorted(rq.phi_index)


def test_rq_gradients_reach_encoder_and_phis():
    torch.manual_seed(0)
    rq = ResidualMultiScaleQuantizer(4, 16, (1, 4, 16))
    f = torch.randn(2, 16, 4, requires_grad=True)
    out = rq(f)
    w = torch.randn_like(f)
    (out.f_hat * w).sum().backward()
    assert_close(f.grad, w)                                  # straight-through to the encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rq.phis.parameters())
    f.grad = None
    rq.zero_grad(); rq(f).loss.backward()
    assert f.grad.abs().sum() > 0 and rq.phis[0].proj.weight.grad.abs().sum() > 0


def test_rq_residual_norm_falls_scale_by_scale_after_training():
    torch.manual_seed(0)
    scales = (1, 4, 16, 64)
    def feats(B, seed):
        g = torch.Generator().manual_seed(seed); f = 0
        for k, s in enumerate(scales): f = f + upsample(torch.randn(B, s, 3, generator=g) * 0.6 ** k, 64 // s)
        return f
    rq = ResidualMultiScaleQuantizer(3, 64, scales, decay=0.9, dead_threshold=0.05)
    opt = torch.optim.Adam(rq.parameters(), lr=3e-3)
    for step in range(120):
        out = rq.train()(feats(16, step)); opt.zero_grad(); out.loss.backward(); opt.step()
    rq.eval()
    f = feats(64, 999)
    out = rq(f)
    res = out.stats['residual_norm']
    assert all(b < a for a, b in zip(res, res[1:])), res
    assert res[-1] < 0.6
    # the stat is what it says: |f - f_hat| / |f|
    assert math.isclose(res[-1], float((f - out.f_hat.detach()).norm() / f.norm()), rel_tol=1e-4)


def test_rq_bad_inputs():
    rq = ResidualMultiScaleQuantizer(4, 8, (1, 4, 16))
    with pytest.raises(ValueError, match='S = 16'): rq(torch.randn(2, 12, 4))
    with pytest.raises(ValueError, match='C = 4'): rq(torch.randn(2, 16, 3))
    with pytest.raises(ValueError, match='3 index maps'): rq.indices_to_features([torch.zeros(2, 1, dtype=torch.long)])
    with pytest.raises(ValueError, match=r'\(B, 4\)'): rq.lookup(torch.zeros(2, 3, dtype=torch.long), 1)


def test_rq_no_ema_has_codebook_loss():
    rq = ResidualMultiScaleQuantizer(4, 8, (1, 4), ema=False)
    out = rq(torch.randn(2, 4, 4))
    assert 'codebook' in out.losses
    out.loss.backward(); assert rq.vq.codebook.grad.abs().sum() > 0


# ---------------------------------------------------------------- LFQ
def test_lfq_bits_indices_round_trip_and_values():
    lfq = LookupFreeQuantizer(5, n_bits=5)
    idx = torch.arange(32)
    bits = lfq.indices_to_bits(idx)
    assert set(bits.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(lfq.bits_to_indices(bits), idx)
    z = torch.randn(2, 11, 5, requires_grad=True)
    out = lfq(z)
    assert torch.equal(out.quantized.detach(), torch.where(z > 0, 1.0, -1.0))
    assert torch.equal(lfq.embed(out.indices), out.quantized.detach())
    out.quantized.sum().backward(); assert_close(z.grad, torch.ones_like(z))
    with pytest.raises(IndexError, match=r'\[0, 32\)'): lfq.embed(torch.tensor([32]))


def test_lfq_entropy_reference():
    lfq = LookupFreeQuantizer(3, n_bits=3, temperature=0.7)
    u = torch.randn(200, 3, dtype=torch.float64)
    ps, be = lfq._entropy(u)
    # brute force over the 8 corners: softmax of -|u - c|^2 / T
    corners = lfq.indices_to_bits(torch.arange(8)).double()
    p = torch.softmax(-((u[:, None] - corners[None]) ** 2).sum(-1) / 0.7, dim=1)
    ref_ps = -(p * p.log()).sum(1).mean()
    avg = p.mean(0); ref_be = -(avg * avg.log()).sum()
    assert_close(ps.double(), ref_ps, rtol=1e-4, atol=1e-5)
    assert_close(be.double(), ref_be, rtol=1e-4, atol=1e-5)


def test_lfq_projection_and_losses():
    torch.manual_seed(0)
    lfq = LookupFreeQuantizer(8, n_bits=6)
    out = lfq(torch.randn(2, 10, 8))
    assert out.quantized.shape == (2, 10, 8) and out.indices.max() < 64
    assert set(out.losses) == {'commit', 'entropy'} and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match='n_bits'): LookupFreeQuantizer(4, n_bits=0)


# ---------------------------------------------------------------- VRQ
def test_vrq_kl_and_round_trip():
    torch.manual_seed(0)
    vrq = VariationalResidualQuantizer(4, 16, (1, 4, 16), kl_weight=0.5)
    f = torch.randn(2, 16, 4)
    out = vrq(f)
    mu, logvar = vrq.to_moments(f).chunk(2, -1)
    kl = 0.5 * (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(-1).mean()
    assert_close(out.losses['kl'], kl)
    # training samples differ from call to call; evaluation uses the mean
    assert not torch.equal(vrq(f).f_hat, vrq(f).f_hat)
    vrq.eval(); o1, o2 = vrq(f), vrq(f)
    assert torch.equal(o1.f_hat, o2.f_hat)
    assert torch.equal(vrq.indices_to_features(o1.indices), o1.f_hat)
    assert torch.equal(o1.indices[0], vrq.rq(mu).indices[0])


# ---------------------------------------------------------------- DDP synchronization (gloo, CPU)
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _ddp_worker(rank, world, port, data, init, path, decay=0.7):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)           # different RNG per rank: restarts must still agree
        vq = VectorQuantizer(6, 2, decay=decay, dead_threshold=0.3)
        vq.load_state_dict(init)
        for step in range(3): vq(data[step, rank][None])
        torch.save({k: v.clone() for k, v in vq.state_dict().items()}, f'{path}.{rank}')
    finally:
        dist.destroy_process_group()


def test_vq_ddp_sync_equals_single_process_on_the_union(tmp_path):
    import torch.multiprocessing as mp
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 2, decay=0.7, dead_threshold=0.3, restart_dead=False)
    init = {k: v.clone() for k, v in vq.state_dict().items()}
    data = torch.randn(3, 2, 40, 2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), data, init, str(tmp_path / 'sd')), nprocs=2, join=True)
    sd0, sd1 = torch.load(tmp_path / 'sd.0'), torch.load(tmp_path / 'sd.1')
    for k in ('codebook', 'cluster_size', 'embed_sum'): assert torch.equal(sd0[k], sd1[k]), k
    # without restarts, the synchronized EMA equals one process seeing both shards at once
    for step in range(3): vq(data[step].reshape(1, 80, 2))
    assert (vq.cluster_size >= 0.3).all()          # no code died, so the workers restarted nothing either
    assert_close(sd0['codebook'], vq.codebook.detach(), rtol=1e-5, atol=1e-6)
    assert_close(sd0['cluster_size'], vq.cluster_size)


def test_vq_ddp_restarts_agree_across_ranks(tmp_path):
    import torch.multiprocessing as mp
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 2, decay=0.5, dead_threshold=0.3)
    with torch.no_grad(): vq.codebook[2] = 1e4; vq.embed_sum[2] = 1e4      # code 2 dies and is restarted
    init = {k: v.clone() for k, v in vq.state_dict().items()}
    data = torch.randn(3, 2, 40, 2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), data, init, str(tmp_path / 'sd'), 0.5), nprocs=2, join=True)
    sd0, sd1 = torch.load(tmp_path / 'sd.0'), torch.load(tmp_path / 'sd.1')
    assert sd0['codebook'][2].abs().max() < 100                                # it was restarted ...
    for k in ('codebook', 'cluster_size', 'embed_sum'): assert torch.equal(sd0[k], sd1[k]), k   # ... identically


# ---------------------------------------------------------------- views
def test_usage_per_scale_and_figures():
    idx = [torch.tensor([[0]]), torch.tensor([[1, 1, 3, 0]])]
    u = usage_per_scale(idx, 4)
    assert torch.equal(u, torch.tensor([[1, 0, 0, 0], [1, 2, 0, 1]]))
    fig = usage_fig(u, scales=(1, 4))
    assert fig.data[0].z.shape == (2, 4) and 'ppl 1.0' in fig.data[0].y[0]
    with pytest.raises(ValueError, match='codebook_size'): usage_fig(torch.zeros(3))
    pts = [torch.randn(2, 1, 3), torch.randn(2, 4, 3)]
    idx2 = [torch.zeros(2, 1, dtype=torch.long), torch.tensor([[0, 1, 1, 2]] * 2)]
    fig = token_maps_fig(pts, idx2, b=1)
    assert len(fig.frames) == 2 and '3 distinct' in fig.frames[1].layout.title.text
    with pytest.raises(ValueError, match='do not match'): token_maps_fig(pts, [idx2[0], idx2[0]])
