"""Tests of the flat autoregressive baseline (nsp_explore.flat_ar): tokens, orders, factorized head, KV cache, permutation test."""
import math

import pytest
import torch
from torch.testing import assert_close

from nsp_explore.flat_ar import (FlatAR, FlatARConfig, dequantize, flat_ar_loss, flat_ar_losses, flat_ar_nll,
                                 flat_ar_sample, masked_nll, morton_code, next_scale_nll, point_order, quantize,
                                 sequence_nll, serialize, train_flat_ar)


def tiny(bits=2, n_points=6, n_classes=2, seed=0, init_std=None, **kw):
    torch.manual_seed(seed)
    m = FlatAR('nano', n_points=n_points, bits=bits, n_classes=n_classes, n_layer=2, d_model=32, n_head=4,
               label_dropout=0.0, **kw).eval()
    if init_std is not None:   # large random weights: an untrained model whose outputs depend strongly on its inputs
        with torch.no_grad():
            for p in m.parameters():
                if p.ndim >= 1 and p.numel() > 3 * 32: p.normal_(0, init_std)
    return m


# --- coordinate tokens ------------------------------------------------------------------------
def test_quantize_round_trip_within_half_a_bin():
    g = torch.Generator().manual_seed(0)
    for bits in (1, 3, 6, 8, 10):
        u = torch.rand(4000, 3, generator=g, dtype=torch.float64).float() * 2 - 1
        idx = quantize(u, bits)
        assert idx.dtype == torch.int64 and idx.min() >= 0 and idx.max() < 2 ** bits
        r = dequantize(idx, bits)
        assert (r.double() - u.double()).abs().max() <= 1 / 2 ** bits + 1e-6      # half of the bin width 2/V
        j = dequantize(idx, bits, jitter=1.0, generator=torch.Generator().manual_seed(bits))
        assert torch.equal(quantize(j, bits), idx)                                    # jitter stays in the bin
        assert (j - r).abs().max() > 0.2 / 2 ** bits                                  # ... and moves the points


def test_quantize_clamps_and_is_monotone():
    u = torch.linspace(-1.5, 1.5, 301)
    q = quantize(u, 4)
    assert q.min() == 0 and q.max() == 15 and (q.diff() >= 0).all()


def test_morton_code_matches_bitwise_reference():
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 64, (200, 3), generator=g)
    def ref(x, y, z):
        s = ''.join(f'{x:06b}'[i] + f'{y:06b}'[i] + f'{z:06b}'[i] for i in range(6))
        return int(s, 2)
    assert morton_code(idx, 6).tolist() == [ref(*map(int, r)) for r in idx]


@pytest.mark.parametrize('order', ['fps', 'morton'])
def test_canonical_orders_ignore_storage_order(order):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 128, 3, generator=g) * 2 - 1
    for _ in range(3):
        perm = torch.randperm(128, generator=g)
        assert torch.equal(serialize(x, 6, order), serialize(x[:, perm], 6, order))


def test_orders_are_permutations_and_differ():
    x = torch.rand(2, 100, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    outs = {o: point_order(x, o, 6, torch.Generator().manual_seed(0)) for o in ('fps', 'morton', 'random', 'given')}
    for o, p in outs.items():
        assert torch.equal(p.sort(1).values, torch.arange(100).expand(2, -1)), o
    assert not torch.equal(outs['fps'], outs['morton']) and not torch.equal(outs['fps'], outs['random'])
    # Morton: consecutive codes are non-decreasing along the order
    codes = morton_code(quantize(torch.gather(x, 1, outs['morton'][..., None].expand(-1, -1, 3)), 6), 6)
    assert (codes.diff(dim=1) >= 0).all()


def test_config_validation():
    with pytest.raises(ValueError, match='order'): FlatARConfig(order='hilbert')
    with pytest.raises(ValueError, match='bits'): FlatARConfig(bits=0)
    with pytest.raises(ValueError, match='divisible'): FlatARConfig(d_model=30, n_head=4)
    m = tiny()
    with pytest.raises(ValueError, match='tokens'): m(torch.zeros(1, 7, 3, dtype=torch.long))


# --- the factorized head ----------------------------------------------------------------------
def _naive_nll(m, tok, labels):
    "Float64 reference: position by position, rerun the prefix, and add -log p(x) - log p(y|x) - log p(z|x,y)."
    B, N, _ = tok.shape
    total = torch.zeros(B, dtype=torch.float64)
    with torch.no_grad():
        for t in range(N):
            h = m.trunk(m.embed(tok[:, :t + 1], labels))[:, t]                    # (B, D), only points < t as input
            x, y, z = tok[:, t, 0], tok[:, t, 1], tok[:, t, 2]
            lx, ly, lz = m.heads(h, x, y)
            for logits, target in ((lx, x), (ly, y), (lz, z)):
                total -= logits.double().log_softmax(-1).gather(1, target[:, None])[:, 0]
    return total


def test_factorized_loss_is_sum_of_conditionals():
    for seed in range(3):
        m = tiny(bits=3, n_points=7, seed=seed, init_std=0.3)
        g = torch.Generator().manual_seed(seed)
        tok = torch.randint(0, 8, (4, 7, 3), generator=g)
        labels = torch.randint(0, 3, (4,), generator=g)
        cx, cy, cz = flat_ar_losses(m, tok, labels)
        out = flat_ar_loss(m, dict(tokens=tok, label=labels))
        assert_close(out['loss'], (cx + cy + cz).mean())
        assert_close(out['loss'].detach(), out['loss_x'] + out['loss_y'] + out['loss_z'], rtol=1e-5, atol=1e-5)
        assert_close(sequence_nll(m, tok, labels), _naive_nll(m, tok, labels), rtol=1e-5, atol=1e-4)


def test_factorized_head_is_a_distribution_over_the_joint_bins():
    "Summed over all V³ (x, y, z) the factorized probability is 1 (and each point's NLL is one of its entries)."
    m = tiny(bits=2, n_points=4, init_std=0.3)
    V = 4
    tok = torch.randint(0, V, (1, 4, 3), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        h = m.trunk(m.embed(tok, torch.tensor([1])))[0, 2].double().float()     # position 2
        grid = torch.cartesian_prod(torch.arange(V), torch.arange(V), torch.arange(V))   # (V³, 3)
        H = h.expand(len(grid), -1)
        lx, ly, lz = m.heads(H, grid[:, 0], grid[:, 1])
        logp = sum(l.double().log_softmax(-1).gather(1, grid[:, a:a + 1])[:, 0] for a, l in enumerate((lx, ly, lz)))
    assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    cx, cy, cz = flat_ar_losses(m, tok, torch.tensor([1]))
    row = ((grid == tok[0, 2]).all(1)).nonzero()[0, 0]
    assert_close(-logp[row], (cx + cy + cz)[0, 2].double(), rtol=1e-5, atol=1e-5)


def test_causal_no_future_leak():
    m = tiny(bits=3, n_points=10, init_std=0.3)
    tok = torch.randint(0, 8, (2, 10, 3), generator=torch.Generator().manual_seed(0))
    base = m(tok, torch.tensor([0, 1]))
    for j in (0, 4, 9):
        t2 = tok.clone(); t2[:, j] = (t2[:, j] + 3) % 8
        new = m(t2, torch.tensor([0, 1]))
        assert_close(new[0][:, :j + 1], base[0][:, :j + 1])          # x logits up to point j do not read point j
        if j < 9: assert not torch.allclose(new[0][:, j + 1:], base[0][:, j + 1:])


# --- sampling -----------------------------------------------------------------------------------
def test_cached_step_equals_full_forward():
    m = tiny(bits=3, n_points=9, init_std=0.3)
    tok = torch.randint(0, 8, (3, 9, 3), generator=torch.Generator().manual_seed(1))
    lab = torch.tensor([0, 1, 2])
    with torch.no_grad():
        full = m.trunk(m.embed(tok, lab))
        cache = m.new_cache()
        steps = torch.cat([m.step(t, tok[:, t - 1] if t else None, lab, cache) for t in range(9)], 1)
    assert_close(steps, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='cache'): m.step(3, tok[:, 2], lab, m.new_cache())


@pytest.mark.parametrize('kw', [dict(), dict(temperature=0.7, top_k=3), dict(temperature=1.5)])
def test_kv_cache_sampling_equals_uncached(kw):
    m = tiny(bits=3, n_points=12, init_std=0.3)
    for seed in (0, 1):
        a = flat_ar_sample(m, 5, labels=torch.tensor([0, 1, 2, 0, 1]), seed=seed, **kw)
        b = flat_ar_sample(m, 5, labels=torch.tensor([0, 1, 2, 0, 1]), seed=seed, use_cache=False, **kw)
        assert torch.equal(a['tokens'], b['tokens'])
        assert_close(a['points'], b['points'])
        assert a['points'].shape == (5, 12, 3) and a['n_evals'] == 12
    assert not torch.equal(flat_ar_sample(m, 5, seed=0)['tokens'], flat_ar_sample(m, 5, seed=1)['tokens'])


def test_top_k_one_is_greedy_and_batching_is_consistent():
    m = tiny(bits=3, n_points=8, init_std=0.3)
    a = flat_ar_sample(m, 4, labels=1, top_k=1, seed=0)
    b = flat_ar_sample(m, 4, labels=1, top_k=1, seed=9, batch_size=3)
    assert torch.equal(a['tokens'], b['tokens'])                       # greedy: the seed does not matter
    assert (a['tokens'] == a['tokens'][:1]).all()                      # same class, same greedy sequence


def test_samples_land_in_the_frame():
    m = tiny(bits=4, n_points=16)
    m.frame.centre.fill_(2.0); m.frame.scale.fill_(0.5)
    p = flat_ar_sample(m, 3, seed=0)['points']
    assert (p >= 1.5 - 1e-5).all() and (p <= 2.5 + 1e-5).all()


# --- the permutation test ---------------------------------------------------------------------
def test_permutation_flat_ar_changes_next_scale_and_masked_do_not():
    from nsp_explore.data import Normalizer, SyntheticShapes
    from nsp_explore.generate import load_pretrained
    from nsp_explore.masked import MaskedTransformer, VoxelPatchVQ
    tok, gen = load_pretrained('nano')
    cats = gen.info['categories']
    ds = SyntheticShapes('val', ['chair', 'car'], 2, n_points=256, resample=False,
                         normalizer=Normalizer('global', tok.norm_mean, tok.norm_std))
    x = torch.stack([ds[i]['points'] for i in range(len(ds))])                     # (4, 256, 3)
    labels = torch.tensor([cats.index(ds[i]['category']) for i in range(len(ds))])
    torch.manual_seed(0)
    vq = VoxelPatchVQ('nano').fit_frame(x).eval()
    mk = MaskedTransformer.for_tokenizer('nano', vq, len(cats)).eval()
    fa = tiny(bits=6, n_points=256, n_classes=len(cats), init_std=0.2).fit_frame(x)
    g = torch.Generator().manual_seed(0)
    perms = [torch.randperm(256, generator=g) for _ in range(3)]
    base = dict(given=flat_ar_nll(fa, x, labels, 'given'), fps=flat_ar_nll(fa, x, labels, 'fps'),
                morton=flat_ar_nll(fa, x, labels, 'morton'),
                random=flat_ar_nll(fa, x, labels, 'random', torch.Generator().manual_seed(1)),
                nsp=next_scale_nll(gen, tok, x, labels), masked=masked_nll(mk, vq, x, labels))
    assert (base['nsp'] > 0).all() and (base['masked'] > 0).all()
    for p in perms:
        xp = x[:, p]
        assert ((flat_ar_nll(fa, xp, labels, 'given') - base['given']).abs() > 1e-2).all()   # storage order matters
        assert_close(flat_ar_nll(fa, xp, labels, 'fps'), base['fps'], rtol=1e-6, atol=1e-3)
        assert_close(flat_ar_nll(fa, xp, labels, 'morton'), base['morton'], rtol=1e-6, atol=1e-3)
        assert_close(next_scale_nll(gen, tok, xp, labels), base['nsp'], rtol=1e-5, atol=1e-3)
        assert_close(masked_nll(mk, vq, xp, labels), base['masked'], rtol=1e-5, atol=1e-3)
    # the choice of order changes the likelihood of the same set
    for a, b in (('fps', 'morton'), ('fps', 'random'), ('morton', 'random')):
        assert ((base[a] - base[b]).abs() > 1e-2).all(), (a, b)


def test_train_flat_ar_lowers_the_loss():
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.train import TrainConfig
    ds = SyntheticShapes('train', ['mug'], 6, n_points=64)
    cfg = FlatARConfig.preset('nano', n_points=64, n_layer=1, d_model=32)
    m, h = train_flat_ar(ds, cfg, TrainConfig.preset('nano', steps=120, batch_size=8, lr=3e-3, warmup_steps=5, log_every=5),
                         passes=2, progress_bar=False)
    assert h.last('loss') < h.rows[0]['loss'] - 1.0
    assert m.n_classes == 1 and not m.training
    p = flat_ar_sample(m, 2, labels=0, seed=0)['points']
    assert p.shape == (2, 64, 3) and torch.isfinite(p).all()


# --- the second variant: PointNSP's tokens one at a time ---------------------------------------
def _toy_token_ar(seed=0, scales=(1, 4, 16)):
    from nsp_explore.flat_ar import TokenAR
    from nsp_explore.transformer import ToyTokenizer, TransformerConfig
    toy = ToyTokenizer(scales=scales, token_dim=8, codebook_size=8, seed=seed)
    torch.manual_seed(seed)
    m = TokenAR(TransformerConfig.preset('nano', n_layer=2, d_model=32, label_dropout=0.0), toy.token_dim, toy.scales, 2,
                toy.codebook_size).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2: p.normal_(0, 0.3)
    return m, toy


def test_token_ar_is_strictly_causal():
    from nsp_explore.transformer import flatten_teacher
    m, toy = _toy_token_ar()
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, 8, (2, s), generator=g) for s in toy.scales]
    f, p, sl = flatten_teacher(toy.teacher_inputs(idx))
    tokens, lab = torch.cat(idx, 1), torch.tensor([0, 1])
    base = m(f, p, sl, lab, tokens=tokens)
    assert base.shape == (2, 21, 8)
    for j in (5, 9, 20):                          # tokens of the last scale: the teacher inputs stay the same
        t2 = tokens.clone(); t2[:, j] = (t2[:, j] + 1) % 8
        new = m(f, p, sl, lab, tokens=t2)
        assert_close(new[:, :j + 1], base[:, :j + 1])
        if j < 20: assert not torch.allclose(new[:, j + 1], base[:, j + 1])   # ... but the next position reads it
    with pytest.raises(ValueError, match='target tokens'): m(f, p, sl, lab)


@pytest.mark.parametrize('kw', [dict(), dict(temperature=0.8, top_k=3)])
def test_token_ar_kv_cache_sampling_equals_uncached(kw):
    from nsp_explore.flat_ar import token_ar_sample
    m, toy = _toy_token_ar(1)
    for seed in (0, 4):
        a = token_ar_sample(m, toy, torch.tensor([0, 1, 1, 0]), seed=seed, **kw)
        b = token_ar_sample(m, toy, torch.tensor([0, 1, 1, 0]), seed=seed, use_cache=False, **kw)
        for ia, ib in zip(a['indices'], b['indices']): assert torch.equal(ia, ib)
        assert_close(a['points'], b['points'])
        assert a['n_evals'] == 21 and [i.shape[1] for i in a['indices']] == [1, 4, 16]


def test_token_ar_loss_matches_naive_cross_entropy():
    from nsp_explore.flat_ar import token_ar_loss
    from nsp_explore.transformer import flatten_teacher
    m, toy = _toy_token_ar(2)
    g = torch.Generator().manual_seed(2)
    idx = [torch.randint(0, 8, (3, s), generator=g) for s in toy.scales]
    f, p, sl = flatten_teacher(toy.teacher_inputs(idx))
    tokens, lab = torch.cat(idx, 1), torch.tensor([0, 1, 2])
    out = token_ar_loss(m, dict(tokens=tokens, label=lab, feat=f, pos=p, slot=sl))
    logits = m(f, p, sl, lab, tokens=tokens).double()
    ref = -logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0].mean()
    assert_close(out['loss'].double(), ref, rtol=1e-5, atol=1e-5)
