"""Tests of the PointNSP tokenizer (nsp_explore.tokenizer) and its training (nsp_explore.train_tokenizer)."""
import math

import pytest
import torch
from torch.testing import assert_close

from nsp_explore.tokenizer import (PointNSPTokenizer, TokenizerConfig, TokenizerState, fourier_features, knn_index,
                                   LeafEncoder, LeafExpansion)


def blob_clouds(B=3, n=256, seed=0):
    "Random smooth-ish clouds: points on perturbed ellipsoids (distinct shapes, no ties in distances)."
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(B, n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    axes = 0.3 + torch.rand(B, 1, 3, generator=g)
    return d * axes * (1 + 0.1 * torch.sin(3 * d[..., :1] + torch.rand(B, 1, 1, generator=g) * 6))


@pytest.fixture(scope='module')
def tok():
    torch.manual_seed(0)
    return PointNSPTokenizer('nano').eval()


# ---------------------------------------------------------------- config
def test_config_presets_and_validation():
    nano = TokenizerConfig.preset('nano')
    assert nano.n_points == 256 and nano.points_per_leaf == nano.n_points // nano.scales[-1]
    small = TokenizerConfig.preset('small')
    assert small.n_points == 2048
    assert TokenizerConfig.from_dict(small.to_dict()) == small
    assert TokenizerConfig.from_dict({**nano.to_dict(), 'scales': list(nano.scales)}).scales == nano.scales
    with pytest.raises(ValueError, match='integer ratios'): TokenizerConfig(scales=(1, 3, 8))
    with pytest.raises(ValueError, match='increasing'): TokenizerConfig(scales=(4, 4, 16))
    with pytest.raises(ValueError, match='multiple of the finest'): TokenizerConfig(n_points=100)
    with pytest.raises(TypeError, match='no field'): TokenizerConfig.preset('nano', widht=3)


def test_small_preset_is_pointnsp_s_sized():
    n = sum(p.numel() for p in PointNSPTokenizer('small').parameters())
    assert 15e6 < n < 30e6, n


# ---------------------------------------------------------------- parts
def test_fourier_features_float64_reference():
    p = torch.randn(4, 7, 3, dtype=torch.float64)
    ff = fourier_features(p, 3)
    ref = [p]
    for fn in (torch.sin, torch.cos):
        ref.append(torch.stack([fn(p * (2 ** i) * math.pi) for i in range(3)], -1).flatten(-2))
    assert_close(ff, torch.cat(ref, -1))


def test_knn_index_matches_bruteforce():
    p = torch.rand(2, 30, 3)
    idx = knn_index(p, 5)
    d = ((p[:, :, None] - p[:, None]) ** 2).sum(-1)
    ref = d.argsort(-1)[..., :5]
    assert torch.equal(idx.sort(-1).values, ref.sort(-1).values)
    assert torch.equal(idx[..., 0], torch.arange(30).expand(2, -1))     # itself first


def test_encoder_is_equivariant_to_leaf_permutation():
    "Permuting whole leaves (blocks) and the points inside each leaf permutes the leaf features the same way."
    torch.manual_seed(1)
    cfg = TokenizerConfig.preset('nano')
    enc = LeafEncoder(cfg).eval()
    x = torch.rand(2, 256, 3)
    leaves = x[:, ::4]
    perm_leaves = torch.randperm(64)
    within = torch.cat([torch.tensor([0]), 1 + torch.randperm(3)])        # keep the leaf point first
    xb = x.view(2, 64, 4, 3)[:, perm_leaves][:, :, within].reshape(2, 256, 3)
    with torch.no_grad():
        f, fp = enc(x, leaves), enc(xb, xb[:, ::4])
    assert_close(fp, f[:, perm_leaves], atol=1e-5, rtol=1e-4)


def test_leaf_expansion_groups_points_by_leaf():
    cfg = TokenizerConfig.preset('nano')
    le = LeafExpansion(cfg)
    f, lv = torch.randn(1, 64, cfg.dim), torch.rand(1, 64, 3) * 4
    with torch.no_grad(): x = le(f, lv)
    assert x.shape == (1, 256, 3)
    # each block of 4 points is nearer to its own leaf than the leaves are to each other on average
    blk = x.view(1, 64, 4, 3)
    own = (blk - lv[:, :, None]).norm(dim=-1).mean()
    spread = torch.cdist(lv, lv).mean()
    assert own < 0.25 * spread


# ---------------------------------------------------------------- tokenizer
def test_forward_shapes_and_losses(tok):
    x = blob_clouds(2)
    out = tok(x)
    assert out.x_hat.shape == (2, 256, 3)
    assert [tuple(i.shape) for i in out.indices] == [(2, s) for s in tok.scales]
    assert [tuple(p.shape) for p in out.scale_points] == [(2, s, 3) for s in tok.scales]
    assert all(i.dtype == torch.int64 for i in out.indices)
    # the targets are the true LoD points of each scale (nested: scale k's points are the first of each block)
    for k in range(tok.K - 1):
        assert_close(out.target_scale_points[k], out.target_scale_points[k + 1][:, ::tok.ratios[k]])
    assert set(out.losses) >= {'loss', 'cd', 'node', 'commit'}
    assert torch.isfinite(out.losses['loss'])
    out.losses['loss'].backward()
    assert tok.encoder.point_mlp[0].weight.grad is not None and tok.structure.heads[0][0].weight.grad is not None
    tok.zero_grad()


def test_tokens_identical_for_permuted_input(tok):
    x = blob_clouds(3, seed=2)
    perm = torch.randperm(256)
    a, lod_a = tok.encode(x)
    b, lod_b = tok.encode(x[:, perm])
    for ia, ib in zip(a, b): assert torch.equal(ia, ib)
    assert_close(lod_b.gather(x[:, perm]), lod_a.gather(x))
    # and the reconstruction (tree order) is the same cloud
    assert_close(tok(x[:, perm]).x_hat, tok(x).x_hat, atol=1e-5, rtol=1e-4)


def test_round_trip_indices_to_features_exact(tok):
    x = blob_clouds(2, seed=3)
    f, lod, _, _ = tok._encode_features(x)
    q = tok.quantizer(f)
    f_hat = tok.quantizer.indices_to_features(q.indices)
    assert torch.equal(f_hat, q.f_hat.detach())
    st = tok.start_state(2)
    with torch.no_grad():
        for k, idx in enumerate(q.indices): tok.add_scale(st, k, idx)
    assert torch.equal(st.f_hat, f_hat.detach())


def test_decode_of_encode_equals_forward(tok):
    x = blob_clouds(2, seed=4)
    with torch.no_grad(): out = tok(x)
    idx, _ = tok.encode(x)
    dec = tok.decode(idx)
    assert_close(dec['points'], out.x_hat, atol=1e-5, rtol=1e-4)
    for p, q in zip(dec['scale_points'], out.scale_points): assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_teacher_inputs_equal_incremental(tok):
    x = blob_clouds(2, seed=5)
    idx, _ = tok.encode(x)
    ti = tok.teacher_inputs(idx)
    assert len(ti) == tok.K - 1
    st = tok.start_state(2)
    with torch.no_grad():
        for k in range(tok.K - 1):
            tok.add_scale(st, k, idx[k])
            feat, par, slot = tok.next_scale_inputs(st, k)
            assert_close(feat, ti[k][0]); assert_close(par, ti[k][1]); assert torch.equal(slot, ti[k][2])
            s1, r = tok.scales[k + 1], tok.ratios[k]
            assert feat.shape == (2, s1, tok.token_dim) and par.shape == (2, s1, 3) and slot.shape == (2, s1)
            assert slot.dtype == torch.int64 and torch.equal(slot[0, :r], torch.arange(r))
            # feat = cumulative features pooled at the parents, repeated over the r children
            S = tok.scales[-1]
            ref = st.f_hat.view(2, tok.scales[k], S // tok.scales[k], -1).mean(2).repeat_interleave(r, 1)
            assert_close(feat, ref)
            assert_close(par[:, ::r], st.positions[k])
        tok.add_scale(st, tok.K - 1, idx[-1])
        # a state holding more scales still gives the inputs of an earlier scale
        for k in range(tok.K - 1):
            for a, b in zip(tok.next_scale_inputs(st, k), ti[k]): assert_close(a, b)
        assert_close(tok.decode_state(st), tok.decode(idx)['points'])


def test_cached_lod_index_gives_same_tokens(tok):
    x = blob_clouds(2, seed=6)
    a, lod = tok.encode(x)
    b, _ = tok.encode(x, lod=lod.index)
    for ia, ib in zip(a, b): assert torch.equal(ia, ib)


def test_bad_inputs_clear_errors(tok):
    x = blob_clouds(2)
    with pytest.raises(ValueError, match='n_points=256'): tok(torch.rand(2, 128, 3))
    with pytest.raises(ValueError, match=r'\(B, N, 3\)'): tok(torch.rand(256, 3))
    bad = x.clone(); bad[0, 5, 1] = float('nan')
    with pytest.raises(ValueError, match='NaN'): tok(bad)
    with pytest.raises(ValueError, match='LoD index has shape'): tok(x, lod=torch.zeros(2, 64, dtype=torch.long))
    idx, lod = tok.encode(x)
    with pytest.raises(ValueError, match='decode needs 4 scales'): tok.decode(idx[:2])
    with pytest.raises(ValueError, match=r'integers in \[0, 64\)'): tok.decode([i + 64 for i in idx])
    with pytest.raises(ValueError, match=r'shape \(B, 4\)'): tok.add_scale(tok.add_scale(tok.start_state(2), 0, idx[0]), 1, idx[2])
    with pytest.raises(ValueError, match='expected scale 0'): tok.add_scale(tok.start_state(2), 1, idx[1])
    with pytest.raises(ValueError, match='holds only'): tok.next_scale_inputs(tok.start_state(2), 0)
    with pytest.raises(IndexError, match='k must be in'): tok.next_scale_inputs(tok.start_state(2), 3)
    with pytest.raises(ValueError, match='decode_state needs all 4'): tok.decode_state(tok.start_state(2))


def test_leaf_scale_equal_to_n_points():
    "points_per_leaf = 1: the LoD tree is the token scales only, and everything still runs."
    t = PointNSPTokenizer('nano', n_points=64, scales=(1, 4, 16, 64)).eval()
    assert t.points_per_leaf == 1 and t.lod_scales == (1, 4, 16, 64)
    out = t(blob_clouds(2, n=64))
    assert out.x_hat.shape == (2, 64, 3)
