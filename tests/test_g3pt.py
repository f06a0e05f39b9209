"""Dense checks of nsp_explore.g3pt and the shared generator plumbing it relies on: LFQ values and exact
entropy vs brute force, the residual loop telescoping, permutation invariance, the incremental tokenizer
API vs teacher forcing and the sampler, non-divisible scales in the transformer, training determinism."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nsp_explore.g3pt import (G3PTConfig, G3PTTokenizer, evaluate_tokenizer, pick_queries, prefix_next_scale_loss,
                              progressive_schedule, shape_batches, tokenizer_loss, train_tokenizer, usage_per_scale,
                              voronoi_assign)
from nsp_explore.generate import TokenSequences, cache_tokens, next_scale_loss, sample
from nsp_explore.occupancy import OccupancyShapes
from nsp_explore.quantize import LookupFreeQuantizer
from nsp_explore.transformer import (ScaleTransformer, TransformerConfig, block_causal_mask, flatten_teacher,
                                     scale_ids)

TINY = dict(n_points=64, n_latents=16, scales=(1, 4, 9, 16), dim=32, n_heads=4, enc_layers=1, dec_layers=1,
            n_freqs=4, n_bits=6, n_queries=64, mesh_res=10)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return G3PTTokenizer(G3PTConfig(**{**TINY, **kw}))


def cloud(B=2, N=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5
    return x, F.normalize(torch.randn(B, N, 3, generator=g, dtype=dtype), dim=-1)


@pytest.fixture(scope='module')
def occ_data():
    return OccupancyShapes('val', categories=['chair', 'mug'], n_per_category=3, n_points=64, n_queries=256)


# ---------------------------------------------------------------- LFQ
@pytest.mark.parametrize('dim', [6, 32])
def test_lfq_outputs_exactly_pm1_and_indices_round_trip(dim):
    torch.manual_seed(0)
    q = LookupFreeQuantizer(dim, n_bits=6).eval()
    z = torch.randn(3, 11, dim)
    out = q(z)
    bits = q.indices_to_bits(out.indices)
    assert set(bits.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(q.bits_to_indices(bits), out.indices)                       # index -> bits -> index
    assert torch.equal(bits, torch.where(q.proj_in(z) > 0, 1.0, -1.0))            # the sign of each projected value
    assert_close(out.quantized, q.embed(out.indices))                            # decoding the integers = the forward value
    if dim == 6: assert set(out.quantized.unique().tolist()) <= {-1.0, 1.0}       # identity projections: exactly ±1
    every = torch.arange(64)
    assert torch.equal(q.bits_to_indices(q.indices_to_bits(every)), every)


@pytest.mark.parametrize('b', [1, 3, 6, 8])
def test_lfq_exact_entropy_equals_brute_force(b):
    torch.manual_seed(b)
    T = 0.7
    q = LookupFreeQuantizer(b, n_bits=b, temperature=T)
    u = torch.randn(40, b, dtype=torch.float64)
    per_sample, batch = q._entropy(u)
    corners = q.indices_to_bits(torch.arange(2 ** b)).double()                  # (2^b, b)
    P = torch.softmax(-torch.cdist(u, corners).square() / T, -1)                  # softmax over all corners
    avg = P.mean(0)
    assert_close(batch.double(), -(avg * avg.log()).sum(), rtol=1e-5, atol=1e-6)
    assert_close(per_sample.double(), -(P * P.log()).sum(-1).mean(), rtol=1e-5, atol=1e-6)


def test_exact_entropy_sees_correlated_bits_a_per_bit_surrogate_does_not():
    q = LookupFreeQuantizer(2, n_bits=2)
    u = torch.tensor([[5., 5.], [-5., -5.]]).repeat(10, 1)                        # two bits, always equal
    _, joint = q._entropy(u)
    p1 = torch.sigmoid(4 * u).mean(0)
    per_bit = -(p1 * p1.log() + (1 - p1) * (1 - p1).log()).sum()
    assert abs(float(joint) - math.log(2)) < 1e-3                                # 2 codes used: log 2
    assert abs(float(per_bit) - 2 * math.log(2)) < 1e-3                          # looks like 4 codes used


# ---------------------------------------------------------------- the tokenizer
def test_residuals_telescope_and_decoding_tokens_gives_z_hat():
    tok = tiny().double().eval().requires_grad_(False)
    x, n = cloud(dtype=torch.float64)
    out = tok(x, n)
    zs = [out.cumulative[0]] + [b - a for a, b in zip(out.cumulative, out.cumulative[1:])]   # Z̃_s
    assert_close(sum(zs), out.z_hat)
    for k, c in enumerate(out.cumulative):
        assert abs(out.residual_norm[k] - float((out.z - c).norm() / out.z.norm())) < 1e-9
    # Z_(s+1) = Z_s - Z̃_s: the next scale reads exactly the residual
    assert_close(tok.down(1, out.z - zs[0]), tok.down(1, out.z - out.cumulative[0]))
    rebuilt = tok.z_from_indices(out.indices)
    for a, b in zip(rebuilt, out.cumulative): assert_close(a, b)
    assert [i.shape for i in out.indices] == [(2, s) for s in TINY['scales']]


def test_tokens_unchanged_when_points_are_permuted():
    for init in ('fps', 'learned'):
        tok = tiny(latent_init=init).double().eval()
        x, n = cloud(B=3, dtype=torch.float64)
        perm = torch.randperm(64)
        a, _ = tok.encode(x, normals=n)
        b, _ = tok.encode(x[:, perm], normals=n[:, perm])
        for i, j in zip(a, b): assert torch.equal(i, j)
    y, m = cloud(B=3, seed=5, dtype=torch.float64)                               # a different shape changes them
    assert not all(torch.equal(i, j) for i, j in zip(a, tok.encode(y, normals=m)[0]))


def test_teacher_inputs_equal_sampler_rebuild_and_greedy_sampling_matches_forward():
    tok = tiny().eval()
    x, n = cloud(B=3)
    gt, _ = tok.encode(x, normals=n)
    teacher = tok.teacher_inputs(gt)
    st = tok.start_state(3)
    for k in range(len(gt) - 1):            # the sampler's loop: add scale k, then ask for scale k+1's inputs
        tok.add_scale(st, k, gt[k])
        feat, pos, slot = tok.next_scale_inputs(st, k)
        assert pos is None and slot is None
        assert_close(feat, teacher[k][0])
    torch.manual_seed(1)
    model = ScaleTransformer(TransformerConfig(n_layer=2, n_head=2, d_model=32, learned_pos=True, qk_norm=True,
                                               label_dropout=0.0), tok.token_dim, tok.scales, 2, tok.codebook_size).eval()
    f, p, s = flatten_teacher(teacher)
    labels = torch.tensor([0, 1, 1])
    ref = model(f, p, s, labels)[:, -tok.scales[-1]:].argmax(-1)
    for use_cache in (True, False):
        out = sample(model, tok, labels=labels, fixed_indices=gt[:-1], top_k=1, use_cache=use_cache)
        assert torch.equal(out['indices'][-1], ref)
        assert out['points'].shape == (3, 64, 3) and out['scale_points'] == []


def test_car_input_previous_option_differs_from_cumulative():
    tok = tiny().eval()
    x, n = cloud()
    gt, _ = tok.encode(x, normals=n)
    a = tok.teacher_inputs(gt)
    tok.car_input = 'previous'
    b = tok.teacher_inputs(gt)
    assert_close(a[0][0], b[0][0])                       # after scale 1 the sum is scale 1's contribution
    assert not torch.allclose(a[2][0], b[2][0])


def test_pool_ablation_regions_are_nested_voronoi_cells():
    tok = tiny(down='pool').eval()
    x, n = cloud()
    out = tok(x, n)
    assert [i.shape[1] for i in out.indices] == list(TINY['scales'])
    z, pos = tok.encoder(x, n)
    _, w = tok.down(2, z, pos, return_weights=True)
    assert_close(w.sum(-1), torch.ones(2, 9))
    a = voronoi_assign(pos, 9)
    assert torch.equal(a[:, :9], torch.arange(9).expand(2, -1))                 # each FPS point owns its own cell
    with pytest.raises(NotImplementedError): tok.add_scale(tok.start_state(2), 0, out.indices[0])


def test_vq_variant_and_attention_weights():
    tok = tiny(quantizer='vq').eval()
    x, n = cloud()
    out = tok(x, n)
    assert all(int(i.max()) < tok.codebook_size for i in out.indices)
    assert_close(tok.z_from_indices(out.indices)[-1], out.z_hat)
    _, w = tok.down(1, out.z, return_weights=True)
    assert w.shape == (2, 4, 16) and torch.allclose(w.sum(-1), torch.ones(2, 4))


def test_bad_inputs_are_clear():
    tok = tiny()
    x, n = cloud()
    with pytest.raises(ValueError, match='n_points'): tok(x[:, :10], n[:, :10])
    with pytest.raises(ValueError, match='normals'): tok(x)
    with pytest.raises(ValueError, match='shape of x'): tok(x, n[:, :5])
    with pytest.raises(RuntimeError, match='stage 1'): tok.set_stage(1).encode(x, normals=n)
    tok.set_stage(2)
    with pytest.raises(ValueError, match=r'\(B, 4\)'): tok.add_scale(tok.add_scale(tok.start_state(2), 0, torch.zeros(2, 1, dtype=torch.long)), 1, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match='lie in'): tok.add_scale(tok.start_state(2), 0, torch.full((2, 1), 64))
    with pytest.raises(ValueError, match='expected scale 0'): tok.add_scale(tok.start_state(2), 1, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='finest scale'): G3PTConfig(**{**TINY, 'scales': (1, 4, 9)})
    with pytest.raises(ValueError, match='increasing'): G3PTConfig(**{**TINY, 'scales': (1, 9, 4, 16)})
    with pytest.raises(ValueError, match='latent_init'): G3PTConfig(**{**TINY, 'latent_init': 'grid'})
    with pytest.raises(ValueError, match='needs latent_init'): G3PTConfig(**{**TINY, 'down': 'pool', 'latent_init': 'learned'})
    with pytest.raises(ValueError, match='stage'): tok.set_stage(3)


def test_stage1_is_continuous_and_has_no_tokens():
    tok = tiny().set_stage(1)
    x, n = cloud()
    out = tok(x, n)
    assert all(i is None for i in out.indices) and float(out.losses['quant']) == 0.0


def test_tanh_stage1_trains_the_quantizer_maps_and_the_switch_only_rounds():
    tok = tiny(stage1='tanh').set_stage(1)
    x, n = cloud()
    out = tok(x, n)
    assert all(i is None for i in out.indices) and float(out.losses['quant']) == 0.0
    out.z_hat.sum().backward()        # stage 1 reaches LFQ's projections, not the unused LayerNorm
    assert tok.quant.proj_in.weight.grad.abs().sum() > 0 and tok.stage1_norm.weight.grad is None
    e = torch.randn(2, 5, TINY['dim'])
    with torch.no_grad():
        tok.quant.proj_in.weight.mul_(1e3)                  # |u| large: tanh(u) = sign(u), stage 1 = stage 2
        assert_close(tok.continuous(e), tok.quant(e).quantized)
    with pytest.raises(ValueError, match='stage1'): G3PTConfig(**{**TINY, 'stage1': 'sigmoid'})
    with pytest.raises(ValueError, match='needs quantizer'): G3PTConfig(**{**TINY, 'stage1': 'tanh', 'quantizer': 'vq'})
    old = {k: v for k, v in G3PTConfig(**TINY).to_dict().items() if k != 'stage1'}     # a config saved before the field
    assert G3PTConfig.from_dict(old).stage1 == 'layernorm'


# ---------------------------------------------------------------- training and evaluation
def test_pick_queries_halves_and_labels(occ_data):
    b = shape_batches(occ_data, 4)(0)
    q, o, near = pick_queries(b, 40, torch.Generator().manual_seed(0))
    assert q.shape == (4, 40, 3) and near[:, :20].all() and not near[:, 20:].any()
    # every picked (query, label) pair is one of the pool's pairs
    for bi in range(4):
        D = (q[bi][:, None] - b['queries'][bi][None]).square().sum(-1)          # exact: 0 for the same point
        j = D.argmin(1)
        assert float(D.min(1).values.max()) == 0.0 and torch.equal(o[bi], b['occ'][bi][j])


def test_training_is_deterministic_and_learns(occ_data):
    runs = []
    for _ in range(2):
        tok = tiny(seed=3)
        from nsp_explore.train import TrainConfig
        tok, hists = train_tokenizer(tok, occ_data, steps=(15, 15), batch_size=4,
                                     train_cfg=TrainConfig(lr=3e-3, warmup_steps=2, log_every=5))
        runs.append((tok, hists))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()): assert torch.equal(p, q)
    h1 = runs[0][1][0].rows
    assert h1[-1]['loss'] < h1[0]['loss']
    r = evaluate_tokenizer(runs[0][0], occ_data, batch_size=4)
    assert 0 <= r['iou'] <= 1 and len(r['iou_per_scale']) == 4 and abs(r['cs_iou'] - sum(r['iou_per_scale']) / 4) < 1e-9
    assert len(r['usage']['frac']) == 4 and r['usage']['distinct'][0] <= 6


def test_stage2_learning_rate_and_one_call_equals_two(occ_data):
    "`lr2` gives stage 2 its own peak rate; one call equals the stage-by-stage calls the pretrained script made before."
    from nsp_explore.train import TrainConfig
    cfg = TrainConfig(lr=3e-3, warmup_steps=2, log_every=1)
    get = shape_batches(occ_data, 4, 0)
    a, ha = train_tokenizer(tiny(seed=3), get, (6, 6), train_cfg=cfg, lr2=5e-4)
    assert max(r['lr'] for r in ha[0].rows) == pytest.approx(3e-3) and max(r['lr'] for r in ha[1].rows) == pytest.approx(5e-4)
    b, _ = train_tokenizer(tiny(seed=3), get, (6, 0), train_cfg=cfg)
    b, _ = train_tokenizer(b, lambda step: get(step + 6), (0, 6), train_cfg=cfg.override(lr=5e-4))
    for p, q in zip(a.parameters(), b.parameters()): assert torch.equal(p, q)
    c, hc = train_tokenizer(tiny(seed=3), get, (6, 6), train_cfg=cfg)
    assert max(r['lr'] for r in hc[1].rows) == pytest.approx(3e-3)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_usage_per_scale_counts():
    u = usage_per_scale([torch.tensor([[1], [1], [3]]), torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])], 8)
    assert u['distinct'] == [2, 8] and u['frac'] == [0.25, 1.0] and u['of_possible'] == [2 / 3, 1.0]


# ---------------------------------------------------------------- shared plumbing
@pytest.mark.parametrize('scales', [(1, 4, 9, 16, 36, 64), (2, 3, 5)])
def test_block_causal_mask_for_non_divisible_scales(scales):
    owner = [k for k, s in enumerate(scales) for _ in range(s)]
    ref = torch.tensor([[b <= a for b in owner] for a in owner])
    assert torch.equal(block_causal_mask(scales, integer_ratios=False), ref)
    assert torch.equal(scale_ids(scales, integer_ratios=False), torch.tensor(owner))
    with pytest.raises(ValueError, match='integer ratios'): block_causal_mask(scales)     # the PointNSP default is unchanged
    with pytest.raises(ValueError, match='increase'): block_causal_mask((4, 4), integer_ratios=False)


@pytest.mark.parametrize('learned_pos,qk_norm', [(True, True), (True, False), (False, True)])
def test_positionless_transformer_cache_matches_full_forward(learned_pos, qk_norm):
    torch.manual_seed(0)
    scales = (1, 4, 9, 16)
    cfg = TransformerConfig(n_layer=2, n_head=2, d_model=32, learned_pos=learned_pos, qk_norm=qk_norm, label_dropout=0.0)
    model = ScaleTransformer(cfg, 8, scales, 3, 50).eval()
    feat = torch.randn(2, sum(scales[1:]), 8)
    labels = torch.tensor([0, 2])
    full = model(feat, None, None, labels)
    cache, off = model.new_cache(), 0
    for k, s in enumerate(scales):
        f = None if k == 0 else feat[:, off - scales[0]:off - scales[0] + s]
        step = model.step(k, f, None, None, labels=labels, cache=cache)
        assert_close(step, full[:, off:off + s], rtol=1e-4, atol=1e-5)
        off += s
    if learned_pos: assert model.pos_emb.shape == (30, 32)
    with pytest.raises(ValueError, match='soft_mask'):
        ScaleTransformer(cfg.override(soft_mask=True), 8, scales, 3, 50)(feat, None, None, labels)


def test_cache_tokens_and_losses_without_positions(occ_data):
    tok = tiny().eval()
    seqs = cache_tokens(tok, occ_data, batch_size=4, teacher=True)
    assert seqs.pos is None and seqs.slot is None and seqs.feat.shape == (6, 29, 32)
    x = torch.stack([occ_data[i]['points'] for i in range(6)]); n = torch.stack([occ_data[i]['normals'] for i in range(6)])
    gt, _ = tok.encode(x, normals=n)
    assert all(torch.equal(a, b) for a, b in zip(seqs.indices, gt))
    batch = seqs.batch([0, 3, 5])
    assert 'pos' not in batch and 'slot' not in batch
    torch.manual_seed(0)
    model = ScaleTransformer(TransformerConfig(n_layer=1, n_head=2, d_model=32, learned_pos=True, label_dropout=0.0),
                             tok.token_dim, tok.scales, 2, tok.codebook_size).eval()
    a = next_scale_loss(model, batch)
    b = prefix_next_scale_loss(model, batch)
    assert_close(a['loss'], b['loss'])
    c = next_scale_loss(model, dict(tokens=batch['tokens'], label=batch['label']), tokenizer=tok)   # teacher rebuilt
    assert_close(a['loss'], c['loss'], rtol=1e-4, atol=1e-5)
    d = prefix_next_scale_loss(model, {**batch, 'n_scales': 2})
    assert_close(d['loss'], torch.stack([d['loss_0'], d['loss_1']]).mean())
    assert 'loss_2' not in d


def test_progressive_schedule():
    s = [progressive_schedule(t, 100, 6, 0.4) for t in range(100)]
    assert s[0] == 2 and s[-1] == 6 and all(a <= b for a, b in zip(s, s[1:])) and s[40] == 6
    assert progressive_schedule(0, 100, 6, 0.0) == 6


def test_locality_option_adds_anchor_loss_and_presets_build():
    tok = tiny(locality=50.0)
    b = dict(zip(('points', 'normals'), cloud()))
    b.update(queries=torch.rand(2, 32, 3) - 0.5, occ=(torch.rand(2, 32) > 0.5).float(),
             near=torch.arange(32).expand(2, -1) < 16)
    out = tokenizer_loss(tok, b)
    assert 'anchor' in out and torch.isfinite(out['loss'])
    out['loss'].backward()
    assert tok.decoder.log_alpha.grad is not None and tok.decoder.anchor[1].weight.grad.abs().sum() > 0
    assert 'anchor' not in tokenizer_loss(tiny(), b)
    small = G3PTConfig.preset('small')
    assert small.n_latents == 256 and small.n_bits == 13 and sum(small.scales) == 530


def test_guided_sampling_without_positions():
    tok = tiny().eval()
    torch.manual_seed(0)
    model = ScaleTransformer(TransformerConfig(n_layer=1, n_head=2, d_model=32, learned_pos=True, label_dropout=0.0),
                             tok.token_dim, tok.scales, 3, tok.codebook_size).eval()
    a = sample(model, tok, labels=torch.tensor([0, 2]), cfg_scale=2.0, seed=1)
    b = sample(model, tok, labels=torch.tensor([0, 2]), cfg_scale=2.0, seed=1, use_cache=False)
    assert all(torch.equal(i, j) for i, j in zip(a['indices'], b['indices']))       # KV cache = prefix recompute
    assert a['points'].shape == (2, 64, 3)


def test_sample_n_scales_on_g3pt_tokens():
    "sample(n_scales=m) with G3PT's tokenizer: the same first m token maps as the full call; no per-scale positions: points None."
    tok = tiny().eval()
    torch.manual_seed(0)
    model = ScaleTransformer(TransformerConfig(n_layer=1, n_head=2, d_model=32, learned_pos=True, label_dropout=0.0),
                             tok.token_dim, tok.scales, 3, tok.codebook_size).eval()
    full = sample(model, tok, labels=torch.tensor([0, 2]), seed=1)
    part = sample(model, tok, labels=torch.tensor([0, 2]), seed=1, n_scales=2)
    assert all(torch.equal(i, j) for i, j in zip(part['indices'], full['indices'][:2])) and len(part['indices']) == 2
    assert part['points'] is None and part['scale_points'] == [] and full['points'].shape == (2, 64, 3)
