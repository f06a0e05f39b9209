"""Tests of SMART-3D-style masked generation (nsp_explore.masked): tokens, attention, schedule, loss, sampling."""
import math

import pytest
import torch
from torch.testing import assert_close

from nsp_explore.masked import (MaskedConfig, MaskedTransformer, VoxelPatchVQ, block_cost, box_for, choose_reveal,
                                complete_masked, devoxelize, elu1, encode_dataset, from_patches, linear_attention,
                                linear_attention_quadratic, linear_attention_recurrent, masked_cross_entropy,
                                masked_loss, masked_sample, random_mask, reveal_schedule, sample_clouds,
                                spatial_bias_conv, spatial_bias_dense, to_patches, token_grid, token_structure, voxelize)


def small_model(attn='linear', codebook_size=16, n_classes=3, g=4, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = MaskedConfig.preset('nano', **{**dict(n_layer=1, d_model=32, n_head=4, attn=attn, label_dropout=0.0), **kw})
    return MaskedTransformer(cfg, grid=g, codebook_size=codebook_size, n_classes=n_classes).eval()


# --- voxel-patch tokens ----------------------------------------------------------------------
def test_voxelize_ignores_point_order():
    g = torch.Generator().manual_seed(0)
    for G in (4, 8, 16):
        x = torch.rand(2, 300, 3, generator=g) * 2 - 1
        occ, off = voxelize(x, G)
        for _ in range(3):
            perm = torch.randperm(300, generator=g)
            occ2, off2 = voxelize(x[:, perm], G)
            assert torch.equal(occ, occ2)
            assert_close(off, off2, rtol=0, atol=1e-6)


def test_voxelize_matches_definition():
    x = torch.tensor([[[-1.0, -1.0, -1.0], [-0.9, -0.9, -0.9], [0.99, 0.2, -0.3], [2.0, 0.0, 0.0]]])
    occ, off = voxelize(x, 4)
    # cell (0,0,0) holds the first two points: in cell units u = (x+1)/2*4 = 0 and 0.2
    assert occ[0, 0, 0, 0] and occ[0, 3, 2, 1]
    assert occ[0, 3, 2, 2] and int(occ.sum()) == 3               # the point outside the box is clamped into a border cell
    assert_close(off[0, 0, 0, 0], torch.full((3,), 0.1))


def test_voxel_round_trip():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 256, 3, generator=g).clamp(-2, 2) / 2.1
    G = 16
    occ, off = voxelize(x, G)
    y = devoxelize(occ, off, 256, jitter=0.0, generator=g)
    occ2, off2 = voxelize(y, G)
    assert torch.equal(occ2, occ)                                 # same cells
    assert_close(off2[occ], off[occ], rtol=0, atol=1e-4)          # points sit at the cell means
    y = devoxelize(occ, off, 256, jitter=1.0, generator=g)
    assert torch.equal(voxelize(y, G)[0], occ)                    # jittered points stay in their cells
    # every occupied cell gets floor(n/M) or ceil(n/M) points
    counts = torch.stack([torch.bincount(((((y[b] + 1) / 2 * G).floor().long()) @ torch.tensor([G * G, G, 1])), minlength=G ** 3)
                          for b in range(3)])
    for b in range(3):
        c = counts[b][occ[b].reshape(-1)]
        M = int(occ[b].sum())
        assert set(c.tolist()) <= {256 // M, 256 // M + 1}


def test_patches_round_trip_and_layout():
    grid = torch.randn(2, 16, 16, 16, 3)
    t = to_patches(grid, 4)
    assert t.shape == (2, 64, 4 ** 3 * 3)
    assert torch.equal(from_patches(t, 16, 4), grid)
    c = token_grid(4).long()
    for l in (0, 7, 63):
        x, y, z = c[l].tolist()
        assert torch.equal(t[:, l].view(2, 4, 4, 4, 3), grid[:, 4 * x:4 * x + 4, 4 * y:4 * y + 4, 4 * z:4 * z + 4])


def test_voxel_patch_vq_tokens():
    torch.manual_seed(0)
    vq = VoxelPatchVQ('nano')
    x = torch.randn(4, 256, 3) * 0.5
    vq.fit_frame(x)
    out = vq(x)
    feat, nonempty = vq.patches(x)
    assert torch.equal(out.tokens == vq.EMPTY, ~nonempty)
    assert out.tokens.max() <= vq.EMPTY and out.tokens.min() >= 0
    assert torch.equal(vq.encode(x[:, torch.randperm(256)]), vq.encode(x))
    # the targets: the first p³ features are the occupancies of the patch's cells
    occ, _ = voxelize(vq.frame.to_box(x), 16)
    assert torch.equal(feat[..., :64] > 0, to_patches(occ[..., None], 4))
    pts = vq.decode(out.tokens)
    assert pts.shape == (4, 256, 3) and torch.isfinite(pts).all()
    # decoded points lie only in non-empty patches
    occ_dec, _ = vq.decode_voxels(out.tokens)
    assert not (to_patches(occ_dec[..., None], 4).any(-1) & ~nonempty).any()
    with pytest.raises(ValueError, match='tokens must lie in'): vq.decode(torch.full((1, 64), vq.EMPTY + 1))
    with pytest.raises(ValueError, match='expected shape'): vq.decode(torch.zeros(1, 63, dtype=torch.long))


def test_vq_training_step_reduces_loss():
    torch.manual_seed(0)
    vq = VoxelPatchVQ('nano')
    x = torch.randn(8, 256, 3) * 0.5
    vq.fit_frame(x)
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        out = vq(x)
        loss = out.losses['occ'] + out.losses['offset']
        first = first if first is not None else float(loss.detach())
        opt.zero_grad(); out.loss.backward(); opt.step()
    assert float(loss.detach()) < first


# --- attention -------------------------------------------------------------------------------
@pytest.mark.parametrize('L', [1, 5, 64, 100])
def test_linear_attention_equals_quadratic_form(L):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, 3, L, 8, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    assert_close(linear_attention(q, k, v), linear_attention_quadratic(q, k, v))
    assert_close(linear_attention(q, k, v, causal=True), linear_attention_quadratic(q, k, v, causal=True))
    assert_close(linear_attention_recurrent(q, k, v), linear_attention(q, k, v, causal=True))


def test_linear_attention_naive_reference():
    "Against an explicit double loop in float64."
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 6, 3, generator=g, dtype=torch.float64) for _ in range(3))
    fq, fk = elu1(q)[0, 0], elu1(k)[0, 0]
    ref = torch.zeros(6, 3, dtype=torch.float64)
    for i in range(6):
        w = torch.stack([fq[i] @ fk[j] for j in range(6)])
        ref[i] = (w[:, None] * v[0, 0]).sum(0) / w.sum()
    assert_close(linear_attention(q, k, v)[0, 0], ref)
    # causal: row i sees keys 0..i only, so row 0 returns v_0
    assert_close(linear_attention(q, k, v, causal=True)[0, 0, 0], v[0, 0, 0])


def test_linear_attention_float32_close_to_float64():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 512, 16, generator=g, dtype=torch.float64) for _ in range(3))
    assert_close(linear_attention(q.float(), k.float(), v.float()).double(), linear_attention_quadratic(q, k, v),
                 rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('g', [2, 4, (2, 3, 5), (1, 1, 7)])
def test_conv_bias_equals_dense_bias(g):
    gen = torch.Generator().manual_seed(0)
    H = 3
    w, ls = torch.randn(H, generator=gen, dtype=torch.float64), torch.randn(H, generator=gen, dtype=torch.float64) * 0.5
    L = len(token_grid(g))
    v = torch.randn(2, H, L, 4, generator=gen, dtype=torch.float64)
    B = spatial_bias_dense(g, w, ls)
    assert B.shape == (H, L, L)
    assert_close(spatial_bias_conv(v, g, w, ls), B @ v)
    # the dense bias is local: zero beyond the 3x3x3 neighbourhood
    c = token_grid(g)
    far = (c[:, None] - c[None]).abs().amax(-1) > 1
    assert (B[:, far] == 0).all()
    with pytest.raises(ValueError, match='holds'): spatial_bias_conv(v[:, :, :-1], g, w, ls)


def test_conv_bias_gradients_reach_parameters():
    m = small_model()
    x = m(torch.randint(0, 18, (2, 64)))
    x.sum().backward()
    att = m.blocks[0].attn
    assert att.bias_weight.grad.abs().sum() > 0 and att.bias_log_sigma.grad.abs().sum() > 0


def test_generator_is_permutation_sensitive_and_bidirectional():
    m = small_model()
    t = torch.randint(0, 17, (2, 64))
    t2 = t.clone(); t2[:, -1] = (t2[:, -1] + 1) % 17
    assert not torch.allclose(m(t2)[:, 0], m(t)[:, 0])            # the first token sees the last


@pytest.mark.parametrize('attn', ['linear', 'softmax'])
def test_generator_shapes_and_labels(attn):
    m = small_model(attn)
    logits = m(torch.randint(0, 18, (3, 64)), torch.tensor([0, 1, 3]))
    assert logits.shape == (3, 64, 17)
    with pytest.raises(ValueError, match='labels must be in'): m(torch.zeros(1, 64, dtype=torch.long), torch.tensor([4]))
    with pytest.raises(ValueError, match='tokens: expected'): m(torch.zeros(1, 63, dtype=torch.long))


def test_label_dropout_only_in_training():
    m = small_model(label_dropout=0.999 - 1e-9)
    lab = torch.zeros(64, dtype=torch.long)
    m.train()
    assert (m._labels(lab, 64, 'cpu') == m.null_class).float().mean() > 0.9
    m.eval()
    assert torch.equal(m._labels(lab, 64, 'cpu'), lab)


# --- masked training ---------------------------------------------------------------------------
def test_random_mask_ratio_and_min_one():
    g = torch.Generator().manual_seed(0)
    m = random_mask(5000, 64, generator=g)
    assert m.sum(1).min() >= 1
    assert abs(m.float().mean().item() - 2 / math.pi) < 0.02
    m1 = random_mask(100, 1, generator=g)
    assert m1.all()


def test_loss_ignores_unmasked_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 64, 17, generator=g, requires_grad=True)
    targets = torch.randint(0, 17, (4, 64), generator=g)
    mask = random_mask(4, 64, generator=g)
    l1 = masked_cross_entropy(logits, targets, mask)
    other = torch.where(mask[..., None], logits, torch.randn(4, 64, 17, generator=g) * 50)
    assert_close(masked_cross_entropy(other, targets, mask), l1)
    # and equals the mean CE over masked positions
    ref = torch.stack([torch.nn.functional.cross_entropy(logits[b, i][None], targets[b, i][None])
                       for b in range(4) for i in range(64) if mask[b, i]]).mean()
    assert_close(l1, ref)
    l1.backward()
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).any()


def test_masked_loss_inputs_hide_masked_targets():
    "The model never sees the target at a masked position: the input there is MASK."
    m = small_model()
    seen = {}
    orig = m.forward
    def spy(tokens, labels=None):
        seen['tokens'] = tokens.clone(); return orig(tokens, labels)
    m.forward = spy
    tokens = torch.randint(0, 17, (6, 64))
    torch.manual_seed(0)
    out = masked_loss(m, dict(tokens=tokens, label=torch.zeros(6, dtype=torch.long)))
    inp = seen['tokens']
    masked = inp == m.MASK
    assert masked.any(1).all()
    assert torch.equal(inp[~masked], tokens[~masked])
    assert torch.isfinite(out['loss'])


# --- schedule and policies -------------------------------------------------------------------
@pytest.mark.parametrize('L,T', [(64, 8), (512, 25), (585, 12), (64, 64), (1, 1), (100, 1), (9, 8)])
@pytest.mark.parametrize('kind', ['cosine', 'linear'])
def test_schedule_partitions_tokens(L, T, kind):
    s = reveal_schedule(L, T, kind)
    assert len(s) == T and sum(s) == L and min(s) >= 1


def test_schedule_is_cosine_shaped():
    s = reveal_schedule(512, 25)
    assert s[0] < s[-1]                                  # few early, many late
    masked_after = 512 - torch.tensor(s).cumsum(0)
    ref = torch.tensor([math.floor(512 * math.cos(math.pi / 2 * t / 25)) for t in range(1, 26)])
    assert (masked_after - ref).abs().max() <= 1
    with pytest.raises(ValueError): reveal_schedule(4, 5)
    with pytest.raises(ValueError): reveal_schedule(4, 2, 'square')


@pytest.mark.parametrize('policy', ['random', 'confidence', 'spatial'])
def test_policies_pick_exactly_n_masked(policy):
    g = torch.Generator().manual_seed(0)
    masked = torch.rand(6, 64, generator=g) < 0.5
    n = torch.tensor([0, 1, 3, 10, 30, 64])
    r = choose_reveal(policy, masked, n, logp_BL=torch.randn(6, 64, generator=g), gumbel_temp=1.0,
                      centres_L3=token_grid(4), generator=g)
    assert torch.equal(r.sum(1), torch.minimum(n, masked.sum(1)))
    assert not (r & ~masked).any()


def test_spatial_policy_spreads_picks():
    g = torch.Generator().manual_seed(0)
    c = token_grid(4)
    r = choose_reveal('spatial', torch.ones(1, 64, dtype=torch.bool), torch.tensor([8]), centres_L3=c, generator=g)
    pts = c[r[0]]
    assert torch.pdist(pts).min() >= 2.0 - 1e-6          # 8 farthest points on a 4^3 grid: the corners of a 2-spaced lattice


@pytest.mark.parametrize('policy', ['random', 'confidence', 'spatial'])
def test_sampling_reveals_each_token_once(policy):
    m = small_model()
    o = masked_sample(m, labels=torch.tensor([0, 1]), steps=8, policy=policy, top_k=4, record=True, seed=0)
    assert o['n_evals'] == 8
    assert (o['tokens'] <= m.EMPTY).all()
    sched = torch.tensor(reveal_schedule(64, 8))
    per_round = torch.stack([(o['reveal_step'] == t).sum(1) for t in range(8)], 1)
    assert torch.equal(per_round, sched.expand(2, -1))
    for a, b in zip(o['history'], o['history'][1:]):     # nothing is re-masked or changed
        kept = a != m.MASK
        assert torch.equal(b[kept], a[kept])
        assert (b != m.MASK).sum() > kept.sum()


def test_sampling_determinism():
    m = small_model()
    a = masked_sample(m, n=3, seed=5, top_k=3)['tokens']
    assert torch.equal(a, masked_sample(m, n=3, seed=5, top_k=3)['tokens'])
    assert not torch.equal(a, masked_sample(m, n=3, seed=6, top_k=3)['tokens'])


def test_completion_keeps_observed_and_handles_few_free():
    m = small_model()
    fixed = torch.full((2, 64), -1)
    fixed[0, :60] = torch.randint(0, 17, (60,))             # row 0: 4 free tokens (< T)
    fixed[1, ::2] = torch.randint(0, 17, (32,))             # row 1: 32 free
    o = masked_sample(m, n=2, fixed=fixed, steps=8)
    keep = fixed >= 0
    assert torch.equal(o['tokens'][keep], fixed[keep])
    assert (o['reveal_step'][keep] == -1).all() and (o['reveal_step'][~keep] >= 0).all()
    assert (o['tokens'] <= m.EMPTY).all()


def test_complete_masked_end_to_end():
    torch.manual_seed(0)
    vq = VoxelPatchVQ('nano', codebook_size=16, d_model=32)
    x = torch.randn(256, 3) * 0.5
    vq.fit_frame(x[None]).eval()
    m = MaskedTransformer.for_tokenizer(MaskedConfig.preset('nano', n_layer=1, d_model=32), vq, n_classes=2).eval()
    keep = token_grid(4)[:, 0] < 2
    out = complete_masked(m, vq, x, keep, n_samples=2, label=1)
    assert torch.equal(out['tokens'][:, keep], out['observed'][keep].expand(2, -1))
    assert out['points'].shape == (2, 256, 3)


# --- plumbing ---------------------------------------------------------------------------------
def test_encode_dataset_and_short_training():
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.train import TrainConfig, fit
    torch.manual_seed(0)
    ds = SyntheticShapes('train', categories=['chair', 'table'], n_per_category=3, n_points=256)
    vq = VoxelPatchVQ('nano', codebook_size=32, d_model=32).fit_frame(ds.all_points()).eval()
    seqs = encode_dataset(vq, ds, passes=2)
    assert seqs.tokens.shape == (12, 64) and seqs.labels.tolist() == [0, 0, 0, 1, 1, 1] * 2
    m = MaskedTransformer.for_tokenizer(MaskedConfig.preset('nano', n_layer=1, d_model=32), vq, n_classes=2)
    hist = fit(m, seqs.sampler(8, 0), masked_loss, TrainConfig.preset('nano', steps=30, log_every=10, warmup_steps=5))
    assert hist.rows[-1]['loss'] < hist.rows[0]['loss']
    out = sample_clouds(m.eval(), vq, labels=[0, 1], seed=0)
    assert out['points'].shape == (2, 256, 3) and torch.isfinite(out['points']).all()


def test_box_for_and_block_cost():
    for L in (64, 128, 512, 1000, 8192):
        gx, gy, gz = box_for(L)
        assert gx * gy * gz == L and gx <= gy <= gz
    assert box_for(512) == (8, 8, 8)
    r = block_cost(128, 'linear', repeats=1, device='cpu')
    assert r['L'] == 128 and r['ms'] > 0


def test_config_presets():
    assert MaskedConfig.preset('nano').steps == 8 and MaskedConfig.preset('small').steps == 25
    from nsp_explore.masked import VoxelVQConfig
    assert VoxelVQConfig.preset('nano').L == 64 and VoxelVQConfig.preset('small').L == 512
    with pytest.raises(ValueError, match='multiple'): VoxelVQConfig(grid=10, patch=4)
    with pytest.raises(ValueError, match="'linear' or 'softmax'"): MaskedConfig(attn='flash')


def test_token_structure_by_hand():
    E = 9                                                  # EMPTY id
    train = torch.full((2, 8), E); train[0, :2] = 1; train[1, :4] = 2
    # grid 2x2x2, row-major: tokens 0 (0,0,0) and 1 (0,0,1) are face neighbours; 0 and 7 are opposite corners
    s = torch.full((2, 8), E); s[0, [0, 1]] = 3; s[1, [0, 7]] = 4
    r = token_structure(s, train, E, 2)
    assert r['nonempty'] == 2.0
    assert r['pattern_distance'] == (0 + 2) / 2           # row 0 equals train 0's pattern; row 1 differs in 2 places from train 0
    assert r['isolated'] == (0 + 2) / 2                   # row 1's two patches touch nothing
