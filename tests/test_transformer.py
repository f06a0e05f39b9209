"""Tests of the block-causal next-scale transformer (nsp_explore.transformer)."""
import math

import pytest
import torch
from torch.testing import assert_close

from nsp_explore.transformer import (HAS_FLEX, ScaleTransformer, ToyTokenizer, TransformerConfig, block_causal_mask,
                                     dense_attend, flatten_teacher, flex_attend, flex_block_mask, fourier_features,
                                     model_flops, scale_ids, soft_mask_bias)

SCALES = (1, 4, 16, 64)


def make(scales=SCALES, n_classes=3, seed=0, **kw):
    torch.manual_seed(seed)
    tok = ToyTokenizer(scales, token_dim=16, codebook_size=32, seed=seed)
    cfg = TransformerConfig.preset('nano', n_layer=2, d_model=64, label_dropout=0.0, **kw)
    return tok, ScaleTransformer.for_tokenizer(cfg, tok, n_classes).eval()


def rand_indices(tok, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, tok.codebook_size, (B, s), generator=g) for s in tok.scales]


def full_logits(model, tok, indices, labels, **kw):
    return model(*flatten_teacher(tok.teacher_inputs(indices)), labels, **kw)


def cached_logits(model, tok, indices, labels):
    teacher, cache = tok.teacher_inputs(indices), model.new_cache()
    out = [model.step(0, labels=labels, cache=cache, batch_size=indices[0].shape[0])]
    out += [model.step(k, *teacher[k - 1], labels=labels, cache=cache) for k in range(1, len(tok.scales))]
    return torch.cat(out, 1)


# --- the mask -------------------------------------------------------------------------------
@pytest.mark.parametrize('scales', [(1,), (1, 2), (1, 4, 16), (2, 6, 24, 48), (3, 9, 27)])
def test_mask_matches_definition(scales):
    owner = [k for k, s in enumerate(scales) for _ in range(s)]
    ref = torch.tensor([[b <= a for b in owner] for a in owner])
    assert torch.equal(block_causal_mask(scales), ref)
    assert torch.equal(scale_ids(scales), torch.tensor(owner))


def test_mask_bad_scales():
    with pytest.raises(ValueError, match='integer ratios'): block_causal_mask((4, 6))
    with pytest.raises(ValueError, match='integer ratios'): block_causal_mask((4, 4))
    with pytest.raises(ValueError, match='positive'): block_causal_mask((0, 4))


def test_dense_attend_matches_float64_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 21, 8, dtype=torch.float64) for _ in range(3))
    m = block_causal_mask((1, 4, 16))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    ref = scores.masked_fill(~m, float('-inf')).softmax(-1) @ v
    assert_close(dense_attend(q, k, v, m), ref)
    # scale-0 token sees only itself: its output is its own value
    assert_close(dense_attend(q, k, v, m)[:, :, 0], v[:, :, 0])


def test_fourier_features_values():
    p = torch.randn(4, 7, 3, dtype=torch.float64)
    ff = fourier_features(p, 3).view(4, 7, 3, 2, 3)
    freqs = math.pi * torch.tensor([1., 2., 4.], dtype=torch.float64)
    assert_close(ff[..., 0, :], torch.sin(p[..., None] * freqs))
    assert_close(ff[..., 1, :], torch.cos(p[..., None] * freqs))


# --- the model ------------------------------------------------------------------------------
def test_shapes_and_param_count():
    tok, model = make()
    idx = rand_indices(tok, 2)
    out = full_logits(model, tok, idx, torch.tensor([0, 2]))
    assert out.shape == (2, sum(SCALES), 32)
    assert model.L == 85 and model.n_params() > model.n_params(embeddings=False)


def test_auto_backend_is_dense_with_a_soft_mask():
    "attn='auto' picks FlexAttention on CUDA only without a soft mask (a score_mod closure recompiles every step)."
    from nsp_explore.transformer import HAS_FLEX
    for soft in ('none', 'fixed', 'learned'):
        _, model = make(soft_mask=soft)
        want = 'flex' if (soft == 'none' and HAS_FLEX) else 'dense'
        assert model.backend('cuda') == want and model.backend('cpu') == 'dense'


@pytest.mark.parametrize('soft', [False, True])
def test_no_leak_from_finer_scales(soft):
    "Perturbing scale j's tokens changes the inputs of scales > j only: logits of scales <= j stay exactly equal."
    tok, model = make(soft_mask=soft)
    idx, labels = rand_indices(tok, 3), torch.tensor([0, 1, 2])
    ref = full_logits(model, tok, idx, labels)
    ends = torch.tensor(SCALES).cumsum(0).tolist()
    for j in range(len(SCALES) - 1):
        idx2 = [i.clone() for i in idx]
        idx2[j] = (idx2[j] + 1 + torch.randint(0, 30, idx2[j].shape)) % 32   # every token of scale j changes
        out = full_logits(model, tok, idx2, labels)
        assert torch.equal(out[:, :ends[j]], ref[:, :ends[j]])            # scales 0..j: untouched
        assert (out[:, ends[j]:] - ref[:, ends[j]:]).abs().max() > 1e-5     # scale j+1 sees the change


def test_mask_is_needed_for_no_leak():
    "Sanity check of the test above: with an all-ones mask the coarse logits do change."
    tok, model = make()
    model.mask = torch.ones_like(model.mask)
    idx, labels = rand_indices(tok, 2), torch.tensor([0, 1])
    idx2 = [i.clone() for i in idx]
    idx2[1] = (idx2[1] + 1) % 32
    a, b = full_logits(model, tok, idx, labels), full_logits(model, tok, idx2, labels)
    assert (a[:, :5] - b[:, :5]).abs().max() > 1e-6


@pytest.mark.parametrize('soft', [False, True])
def test_kv_cache_equals_full_forward(soft):
    tok, model = make(soft_mask=soft)
    idx, labels = rand_indices(tok, 4), torch.tensor([0, 1, 2, 3])   # 3 = the null class
    with torch.no_grad():
        assert_close(cached_logits(model, tok, idx, labels), full_logits(model, tok, idx, labels), atol=1e-5, rtol=1e-5)


def test_kv_cache_unconditional_and_odd_s1():
    tok, model = make(scales=(2, 8, 16), n_classes=0)
    idx = rand_indices(tok, 3)
    with torch.no_grad():
        assert_close(cached_logits(model, tok, idx, None), full_logits(model, tok, idx, None), atol=1e-5, rtol=1e-5)


def test_step_rejects_wrong_cache():
    tok, model = make()
    teacher = tok.teacher_inputs(rand_indices(tok, 1))
    with pytest.raises(ValueError, match='cache must hold'):
        model.step(1, *teacher[0], cache=model.new_cache())


@pytest.mark.skipif(not HAS_FLEX, reason='FlexAttention needs torch >= 2.5')
@pytest.mark.parametrize('soft', [False, True])
def test_flex_equals_dense_cpu(soft):
    tok, model = make(soft_mask=soft)
    idx, labels = rand_indices(tok, 2), torch.tensor([1, 2])
    with torch.no_grad():   # FlexAttention has no CPU backward
        assert_close(full_logits(model, tok, idx, labels, backend='flex'),
                     full_logits(model, tok, idx, labels, backend='dense'), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FLEX, reason='FlexAttention needs torch >= 2.5')
def test_flex_compiled_cpu_equals_dense():
    "The compiled (inductor, C++) FlexAttention kernel on CPU: ~30 s of compilation, hence slow."
    from torch.nn.attention.flex_attention import flex_attention
    torch.manual_seed(0)
    scales = (1, 4, 16, 64)
    q, k, v = (torch.randn(2, 4, 85, 16) for _ in range(3))
    out = torch.compile(flex_attention)(q, k, v, block_mask=flex_block_mask(scales))
    assert_close(out, dense_attend(q, k, v, block_causal_mask(scales)), atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_flex_equals_dense_cuda():
    tok, model = make()
    tok, model = tok.cuda(), model.cuda()
    idx, labels = [i.cuda() for i in rand_indices(tok, 8)], torch.arange(8).cuda() % 4
    with torch.no_grad():
        a = full_logits(model, tok, idx, labels, backend='flex')
        b = full_logits(model, tok, idx, labels, backend='dense')
    assert_close(a, b, atol=2e-3, rtol=2e-3)
    feat, pos, slot = flatten_teacher(tok.teacher_inputs(idx))
    model(feat, pos, slot, labels, backend='flex').logsumexp(-1).mean().backward()   # compiled backward exists on CUDA


def test_soft_mask_bias_values():
    pos = torch.randn(2, 5, 3, dtype=torch.float64)
    sid = scale_ids((1, 4))
    b = soft_mask_bias(pos, sid, 2.0)
    assert torch.isinf(b[:, 0, 1:]).all()                                        # scale 0 cannot see scale 1
    assert_close(b[:, 1:, 0], torch.zeros(2, 4, dtype=torch.float64))            # across allowed scales: no bias
    d2 = ((pos[:, 2] - pos[:, 4]) ** 2).sum(-1)
    assert_close(b[:, 2, 4], -2.0 * d2)


def test_label_dropout_uses_null_class():
    tok, model = make(n_classes=3)
    idx = rand_indices(tok, 64)
    feat, pos, slot = flatten_teacher(tok.teacher_inputs(idx))
    labels = torch.full((64,), 1)
    with torch.no_grad():
        cond = model(feat, pos, slot, labels)
        null = model(feat, pos, slot, torch.full((64,), 3))
        model.cfg.label_dropout = 0.5
        model.train(); torch.manual_seed(3)
        mixed = model(feat, pos, slot, labels)
    is_null = (mixed - null).abs().amax((1, 2)) < 1e-6
    is_cond = (mixed - cond).abs().amax((1, 2)) < 1e-6
    assert (is_null ^ is_cond).all() and 10 < is_null.sum() < 54


def test_bad_inputs():
    tok, model = make()
    feat, pos, slot = flatten_teacher(tok.teacher_inputs(rand_indices(tok, 2)))
    with pytest.raises(ValueError, match='teacher inputs'): model(feat[:, :-1], pos[:, :-1], slot[:, :-1])
    with pytest.raises(ValueError, match='labels must be in'): model(feat, pos, slot, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r'labels: expected shape \(2,\)'): model(feat, pos, slot, torch.tensor([0]))
    with pytest.raises(ValueError, match='empty'): flatten_teacher([])
    with pytest.raises(TypeError, match='no field'): TransformerConfig.preset('nano', layers=3)


def test_gradients_reach_every_input_path():
    tok, model = make()
    model.train()
    feat, pos, slot = flatten_teacher(tok.teacher_inputs(rand_indices(tok, 2)))
    model(feat, pos, slot, torch.tensor([0, 1])).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name in ['feat_proj.weight', 'pos_proj.weight', 'slot_emb.weight', 'start_emb', 'class_emb.weight']:
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


def test_input_order_does_not_matter():
    "Permuting the input cloud leaves the tokens, hence the logits, unchanged (toy tokenizer sorts points)."
    tok, model = make()
    x = torch.randn(2, 256, 3)
    a, _ = tok.encode(x)
    b, _ = tok.encode(x[:, torch.randperm(256)])
    assert torch.equal(full_logits(model, tok, a, torch.tensor([0, 1])), full_logits(model, tok, b, torch.tensor([0, 1])))


def test_model_flops_regression():
    tok, model = make()
    D, nL, L = 64, 2, 85
    lin = nL * 12 * D * D + 16 * D + 48 * D + D * 32
    pairs = 1 + 4 * 5 + 16 * 21 + 64 * 85
    assert model_flops(model, training=False) == 2 * lin * L + 4 * D * nL * pairs
    assert model_flops(model) == 3 * model_flops(model, training=False)


def test_deterministic_init():
    _, a = make(seed=5)
    _, b = make(seed=5)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize('backend', ['dense', 'flex'] if HAS_FLEX else ['dense'])
@pytest.mark.parametrize('soft', [False, True])
def test_prefix_forward_equals_full(backend, soft):
    "A forward over scales 1..n gives the same logits as the first tokens of the full forward."
    tok, model = make(soft_mask=soft)
    idx, labels = rand_indices(tok, 2), torch.tensor([0, 3])
    feat, pos, slot = flatten_teacher(tok.teacher_inputs(idx))
    with torch.no_grad():
        full = model(feat, pos, slot, labels, backend=backend)
        for n in range(1, len(SCALES) + 1):
            T, Lp = sum(SCALES[1:n]), sum(SCALES[:n])
            assert_close(model(feat[:, :T], pos[:, :T], slot[:, :T], labels, backend=backend), full[:, :Lp], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='prefix'):
        model(feat[:, :3], pos[:, :3], slot[:, :3], labels)


def test_config_rebuilds_model():
    tok, model = make(n_classes=5)
    again = ScaleTransformer.from_config(TransformerConfig.from_dict(model.cfg.to_dict()))
    again.load_state_dict(model.state_dict())
    idx = rand_indices(tok, 2)
    assert torch.equal(full_logits(again.eval(), tok, idx, torch.tensor([0, 4])), full_logits(model, tok, idx, torch.tensor([0, 4])))
    with pytest.raises(ValueError, match='lacks'):
        ScaleTransformer.from_config(TransformerConfig.preset('nano'))
