"VAT: KL, VVQ against a naive float64 residual loop, grid resampling, triplane sampling, soft target, bytes."
import copy, math

import pytest
import torch
import torch.nn.functional as F

from nsp_explore.vat import (VATConfig, VATTokenizer, VariationalGridQuantizer, gaussian_kl, grid_down, grid_up,
                             nbytes, sample_planes, soft_occupancy, PLANE_AXES)

torch.set_num_threads(1)
SCALES = (1, 4, 9, 16, 36, 64)


def tiny(**kw):
    "A small nano tokenizer (fast on CPU)."
    return VATTokenizer('nano', dim=32, n_heads=2, n_inputs=16, enc_layers=1, plane_tokens=4, plane_dim=8, mip_levels=2, **kw)


def cloud(B, seed, N=256):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, N, 3, generator=g) - 0.5, F.normalize(torch.randn(B, N, 3, generator=g), dim=-1)


@pytest.mark.parametrize('seed', range(3))
def test_kl_equals_torch_distributions(seed):
    g = torch.Generator().manual_seed(seed)
    mu, lv = torch.randn(4, 7, 8, generator=g, dtype=torch.float64) * 2, torch.randn(4, 7, 8, generator=g, dtype=torch.float64) * 3
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * lv).exp()),
                                            torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, lv), ref, rtol=1e-10, atol=1e-10)
    assert (gaussian_kl(mu, lv) >= 0).all()
    assert gaussian_kl(torch.zeros(3, 8), torch.zeros(3, 8)).abs().max() == 0     # N(0, 1) itself


def test_model_kl_term_is_weighted_mean_kl():
    torch.manual_seed(0)
    tok = tiny(kl_weight=0.37).eval()
    x, n = cloud(2, 1)
    out = tok(x, n)
    torch.testing.assert_close(out.losses['kl'], 0.37 * gaussian_kl(out.mu, out.logvar).mean())


def naive_area_down(z_BKC, s):
    "Adaptive average pooling written out: bins [floor(i r / t), ceil((i + 1) r / t)) on rows and columns."
    B, K, C = z_BKC.shape
    r, t = math.isqrt(K), math.isqrt(s)
    g = z_BKC.view(B, r, r, C)
    out = torch.zeros(B, t, t, C, dtype=z_BKC.dtype)
    for i in range(t):
        for j in range(t):
            a0, a1 = (i * r) // t, -((-(i + 1) * r) // t)
            b0, b1 = (j * r) // t, -((-(j + 1) * r) // t)
            out[:, i, j] = g[:, a0:a1, b0:b1].mean((1, 2))
    return out.view(B, s, C)


def naive_residual_vq(z_BKC, quant):
    "Plain residual quantization in float64: x_s = argmin |Down_s Z_s - e|, Z_(s+1) = Z_s - Up_s(e[x_s])."
    q = copy.deepcopy(quant).double()
    cb = q.vq.codebook.detach()
    rest, out = z_BKC.double(), []
    for k, s in enumerate(q.scales):
        r = naive_area_down(rest, s)
        idx = ((r[:, :, None] - cb[None, None]) ** 2).sum(-1).argmin(-1)
        out.append(idx)
        rest = rest - q.up(k, cb[idx])
    return out


@pytest.mark.parametrize('seed', range(3))
def test_sigma_zero_no_kl_is_plain_residual_vq_of_mu(seed):
    torch.manual_seed(seed)
    tok = tiny(variational=False).train().set_stage(2)
    with torch.no_grad(): tok.encoder.latents.normal_()     # diverse tokens, so that many codes are compared
    x, n = cloud(3, 10 + seed)
    with torch.no_grad():
        tok(x, n)                                   # first training call: codebook from data, EMA step
        snapshot = copy.deepcopy(tok.quant)         # the codebook the next call quantizes with
        out = tok(x, n)                             # training mode: no noise without `variational`
        mu = tok.latents(x, n)[1]
    assert out.losses['kl'] == 0
    torch.testing.assert_close(out.z0, mu)
    ref = naive_residual_vq(mu, snapshot)
    assert len(torch.unique(torch.cat([i.reshape(-1) for i in ref]))) > 10      # a real comparison, not all one code
    for a, b in zip(out.indices, ref): assert torch.equal(a, b)


def test_variational_training_samples_but_eval_is_deterministic():
    torch.manual_seed(0)
    tok = tiny()
    x, n = cloud(2, 3)
    tok.train()
    with torch.no_grad(): a, b = tok(x, n), tok(x, n)
    assert not torch.allclose(a.z0, b.z0)
    tok.eval()
    i1, _ = tok.encode(x, normals=n); i2, _ = tok.encode(x, normals=n)
    for u, v in zip(i1, i2): assert torch.equal(u, v)
    with torch.no_grad(): o = tok(x, n)
    torch.testing.assert_close(o.z0, o.mu)
    # and eval encoding = quantizing μ
    perm = torch.randperm(x.shape[1])
    i3, _ = tok.encode(x[:, perm], normals=n[:, perm])
    for u, v in zip(i1, i3): assert torch.equal(u, v)          # an unordered set: the order of points does not matter


@pytest.mark.parametrize('seed', range(3))
def test_grid_resampler_exact_on_constant_maps(seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(2, 1, 5, generator=g, dtype=torch.float64) * 10
    for K in (16, 64, 144):
        full = c.expand(-1, K, -1)
        for t in range(1, math.isqrt(K) + 1):
            s = t * t
            torch.testing.assert_close(grid_down(full, s), c.expand(-1, s, -1), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(grid_up(c.expand(-1, s, -1), K), full, rtol=1e-12, atol=1e-12)


def test_grid_down_matches_naive_area_pooling():
    z = torch.randn(2, 64, 3, dtype=torch.float64)
    for s in SCALES: torch.testing.assert_close(grid_down(z, s), naive_area_down(z, s))
    torch.testing.assert_close(grid_up(z, 64), z)


@pytest.mark.parametrize('seed', range(3))
def test_triplane_sampling_reproduces_linear_field(seed):
    g = torch.Generator().manual_seed(seed)
    R, box, P = 5 + seed, 0.55, 3
    t = torch.linspace(-box, box, R, dtype=torch.float64)
    A, Bc = torch.meshgrid(t, t, indexing='ij')
    coef = torch.randn(3, P, 3, generator=g, dtype=torch.float64)
    planes = torch.stack([torch.stack([coef[p, c, 0] * A + coef[p, c, 1] * Bc + coef[p, c, 2] for c in range(P)])
                          for p in range(3)])[None]                                         # (1, 3, P, R, R)
    q = (torch.rand(1, 200, 3, generator=g, dtype=torch.float64) * 2 - 1) * box
    got = sample_planes(planes, q, box)
    for p, (a, b) in enumerate(PLANE_AXES):
        want = coef[p, :, 0] * q[0, :, a, None] + coef[p, :, 1] * q[0, :, b, None] + coef[p, :, 2]   # (Q, P)
        torch.testing.assert_close(got[0, :, p], want, rtol=1e-9, atol=1e-9)


def test_soft_target_continuous_at_band_edges():
    s = 0.013
    for e in (1e-3, 1e-6, 1e-9):
        for edge, val in ((-s, 1.0), (s, 0.0)):
            d = torch.tensor([edge - e, edge, edge + e], dtype=torch.float64)
            o = soft_occupancy(d, s)
            assert (o - val).abs().max() <= 0.5 * e / s + 1e-12
    d = torch.linspace(-0.1, 0.1, 20001, dtype=torch.float64)
    o = soft_occupancy(d, s)
    assert o.min() == 0 and o.max() == 1 and (o[1:] <= o[:-1]).all()            # monotone, 1 inside to 0 outside
    torch.testing.assert_close(soft_occupancy(torch.tensor(0.0), s), torch.tensor(0.5))
    with pytest.raises(ValueError): soft_occupancy(d, 0.0)


def test_byte_counts_exact():
    for V in (2, 3, 255, 256, 257, 4096, 65536, 65537):
        per = (len(bin(V - 1)) - 2 + 7) // 8                     # bits of the largest index, rounded up to bytes
        for sc in ((1,), SCALES, (1, 4, 9, 16, 25, 36, 49, 64, 81, 100)):
            assert nbytes(sc, V) == sum(sc) * per
    assert nbytes(SCALES, 256) == 130


def test_tokens_rebuild_z_hat_and_teacher_inputs():
    torch.manual_seed(1)
    tok = tiny()
    x, n = cloud(2, 4)
    tok.train(); tok(x, n)
    tok.eval()
    idx, _ = tok.encode(x, normals=n)
    with torch.no_grad(): out = tok(x, n)
    zs = tok.z_from_indices(idx)
    torch.testing.assert_close(zs[-1], out.z_hat, rtol=1e-5, atol=1e-5)
    for a, b in zip(zs, out.cumulative): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    teach = tok.teacher_inputs(idx)
    for k, (f, p, s) in enumerate(teach):
        assert p is None and s is None
        torch.testing.assert_close(f, grid_down(zs[k], tok.scales[k + 1]))


def test_config_validation():
    with pytest.raises(ValueError): VATConfig(scales=(1, 4, 8, 64))
    with pytest.raises(ValueError): VATConfig(scales=(1, 4, 16))
    with pytest.raises(ValueError): VATConfig(resampler='nope')
