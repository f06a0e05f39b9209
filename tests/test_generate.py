"""Tests of training data, loss, sampling and views of the next-scale generator (nsp_explore.generate)."""
import math

import pytest
import torch
from torch.testing import assert_close

from nsp_explore.generate import (PrefixRecompute, TokenSequences, apply_temperature, cache_tokens, cfg_combine,
                                  class_gallery, complete, completion_fig, generator_train_config, load_generator,
                                  next_scale_loss, sample, sample_logits, sampling_slider, scale_logits, token_map_fig,
                                  top_k_filter, top_p_filter, train_generator, _run_step)
from nsp_explore.transformer import ScaleTransformer, ToyTokenizer, TransformerConfig, flatten_teacher


def toy(n_classes=3, scales=(1, 4, 16, 64), seed=0, **kw):
    torch.manual_seed(seed)
    tok = ToyTokenizer(scales, token_dim=16, codebook_size=32, seed=seed)
    cfg = TransformerConfig.preset('nano', n_layer=2, d_model=64, **kw)
    return tok, ScaleTransformer.for_tokenizer(cfg, tok, n_classes).eval()


# --- logits filters ---------------------------------------------------------------------------
def test_top_k_matches_reference():
    torch.manual_seed(0)
    x = torch.randn(6, 9, 20, dtype=torch.float64)
    for k in (1, 3, 19, 20, 50):
        out = top_k_filter(x, k)
        kk = min(k, 20)
        ref = torch.full_like(x, float('-inf')).scatter(-1, x.topk(kk, -1).indices, x.topk(kk, -1).values)
        assert torch.equal(out, ref)
    with pytest.raises(ValueError, match='top_k must be >= 1'): top_k_filter(x, 0)


def test_top_p_matches_reference():
    torch.manual_seed(1)
    x = torch.randn(40, 15, dtype=torch.float64) * 3
    for p in (0.01, 0.5, 0.9, 0.999):
        out = top_p_filter(x, p)
        for row, o in zip(x, out):
            probs, order = row.softmax(-1).sort(descending=True)
            n_keep = int((probs.cumsum(0) < p).sum()) + 1           # smallest prefix reaching p
            kept = set(order[:n_keep].tolist())
            assert set(torch.isfinite(o).nonzero().flatten().tolist()) == kept
            assert torch.equal(o[list(kept)], row[list(kept)])
    with pytest.raises(ValueError, match='top_p'): top_p_filter(x, 0.0)


def test_temperature_and_distribution():
    logits = torch.tensor([1.5, 0.2, -0.3, 0.9])
    with pytest.raises(ValueError, match='temperature'): apply_temperature(logits, -1.0)
    g = torch.Generator().manual_seed(0)
    for t in (0.5, 2.0):
        draws = sample_logits(logits.expand(1, 40000, -1), temperature=t, generator=g)
        freq = torch.bincount(draws.flatten(), minlength=4).double() / 40000
        assert_close(freq, (logits.double() / t).softmax(-1), atol=0.012, rtol=0)


def test_cfg_combine_formula():
    c, u = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    assert_close(cfg_combine(c, u, 1.0), c)
    assert_close(cfg_combine(c, u, 0.0), u)
    assert_close(cfg_combine(c, u, 2.5), 2.5 * c - 1.5 * u)


# --- guidance and caching inside the sampler ----------------------------------------------------
def test_guidance_scale_one_equals_conditional_model():
    "With the batch doubled (class | null) and s = 1, every scale's logits are the conditional model's."
    tok, model = toy()
    labels = torch.tensor([0, 2, 1])
    idx = [torch.randint(0, 32, (3, s)) for s in tok.scales]
    teacher = tok.teacher_inputs(idx)
    cg, cc, cu = model.new_cache(), model.new_cache(), model.new_cache()
    for k in range(len(tok.scales)):
        inp = () if k == 0 else teacher[k - 1]
        guided1 = scale_logits(model, k, inp, labels, cg, cfg_scale=1.0)
        cond = scale_logits(model, k, inp, labels, cc)
        uncond = scale_logits(model, k, inp, torch.full_like(labels, model.null_class), cu)
        assert_close(guided1, cond, atol=1e-5, rtol=1e-5)
        assert (cond - uncond).abs().max() > 1e-4       # the class does matter, so the test can fail
    assert cg.length == sum(tok.scales) and cg.k[0].shape[0] == 6   # the doubled batch


def test_prefix_recompute_equals_kv_cache():
    tok, model = toy(soft_mask=True)
    labels = torch.tensor([1, 2])
    teacher = tok.teacher_inputs([torch.randint(0, 32, (2, s)) for s in tok.scales])
    kv, re = model.new_cache(), PrefixRecompute()
    for k in range(len(tok.scales)):
        inp = () if k == 0 else teacher[k - 1]
        assert_close(_run_step(model, k, inp, labels, kv), _run_step(model, k, inp, labels, re), atol=1e-5, rtol=1e-5)


# --- sample() ---------------------------------------------------------------------------------
def test_sample_shapes_and_determinism():
    tok, model = toy()
    out = sample(model, tok, n=5, labels=1, top_k=8, top_p=0.9, cfg_scale=2.0, seed=3, batch_size=2)
    assert out['points'].shape == (5, 256, 3)
    assert [p.shape for p in out['scale_points']] == [(5, s, 3) for s in tok.scales]
    assert [i.shape for i in out['indices']] == [(5, s) for s in tok.scales] and out['labels'].tolist() == [1] * 5
    again = sample(model, tok, n=5, labels=1, top_k=8, top_p=0.9, cfg_scale=2.0, seed=3, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(out['indices'], again['indices']))
    other = sample(model, tok, n=5, labels=1, top_k=8, top_p=0.9, cfg_scale=2.0, seed=4, batch_size=2)
    assert not all(torch.equal(a, b) for a, b in zip(out['indices'], other['indices']))
    # the returned points are the tokenizer's decoding of the returned tokens
    dec = tok.decode(out['indices'])
    assert_close(dec['points'], out['points'])
    assert model.training is False


def test_sample_greedy_cache_free_and_chunking_agree():
    tok, model = toy()
    labels = torch.tensor([0, 1, 2, 0, 1])
    a = sample(model, tok, labels=labels, top_k=1, batch_size=5)
    b = sample(model, tok, labels=labels, top_k=1, batch_size=2, use_cache=False)
    assert all(torch.equal(x, y) for x, y in zip(a['indices'], b['indices']))


def test_sample_fixed_indices_kept():
    tok, model = toy()
    src, _ = tok.encode(torch.randn(1, 256, 3))
    out = sample(model, tok, n=4, labels=0, fixed_indices=src[:2], seed=0)
    for k in range(2): assert torch.equal(out['indices'][k], src[k].expand(4, -1))
    assert_close(out['scale_points'][1], tok.decode(src)['scale_points'][1].expand(4, -1, -1))
    with pytest.raises(ValueError, match=r'fixed_indices\[1\]'):
        sample(model, tok, n=4, labels=0, fixed_indices=[src[0], src[2]])
    with pytest.raises(ValueError, match='leaving none'):
        sample(model, tok, n=4, labels=0, fixed_indices=src)


def test_sample_bad_arguments():
    tok, model = toy()
    with pytest.raises(ValueError, match='give the number'): sample(model, tok)
    with pytest.raises(ValueError, match='3 labels for n=2'): sample(model, tok, n=2, labels=[0, 1, 2])
    with pytest.raises(ValueError, match='labels must be in'): sample(model, tok, labels=[7])
    tok_u, uncond = toy(n_classes=0)
    with pytest.raises(ValueError, match='unconditional'): sample(uncond, tok_u, n=2, labels=0)
    with pytest.raises(ValueError, match='class-conditional'): sample(uncond, tok_u, n=2, cfg_scale=2.0)
    out = sample(uncond, tok_u, n=2)
    assert out['points'].shape == (2, 256, 3)
    with pytest.raises(ValueError, match='does not match'):
        sample(model, ToyTokenizer((1, 4, 16), token_dim=16, codebook_size=32), n=1)


# --- loss and token caching -------------------------------------------------------------------
class _ToyData(torch.utils.data.Dataset):
    categories = ['a', 'b']
    def __init__(self, n=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 256, 3, generator=g)
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return dict(points=self.x[i], label=torch.tensor(i % 2))


def test_cache_tokens_and_batches():
    tok, model = toy(n_classes=2)
    ds = _ToyData()
    seqs = cache_tokens(tok, ds, batch_size=4)
    idx, _ = tok.encode(ds.x)
    assert all(torch.equal(a, b) for a, b in zip(seqs.indices, idx)) and seqs.labels.tolist() == [0, 1] * 3
    assert seqs.has_teacher and seqs.categories == ['a', 'b']
    b = seqs.batch([1, 4])
    f, p, s = flatten_teacher(tok.teacher_inputs([i[[1, 4]] for i in idx]))
    assert_close(b['feat'], f); assert_close(b['pos'], p); assert torch.equal(b['slot'], s)
    assert torch.equal(b['tokens'], torch.cat([i[[1, 4]] for i in idx], 1))
    get = seqs.sampler(3, seed=1)
    assert torch.equal(get(7)['tokens'], get(7)['tokens']) and not torch.equal(get(7)['tokens'], get(8)['tokens'])
    lean = cache_tokens(tok, ds, teacher=False)
    assert not lean.has_teacher
    # the loss is the same with cached teacher inputs and with the tokenizer computing them
    model.eval()
    assert_close(next_scale_loss(model, lean.batch([1, 4]), tokenizer=tok)['loss'], next_scale_loss(model, b)['loss'])
    with pytest.raises(ValueError, match='pass the tokenizer'): next_scale_loss(model, lean.batch([0]))


def test_token_sequences_to_device_keeps_batches():
    "`to(device)` moves every tensor; batches and the sampler's rows are unchanged (here CPU to CPU: the copy path)."
    tok, _ = toy(n_classes=2)
    seqs = cache_tokens(tok, _ToyData(), batch_size=4)
    moved = seqs.to('cpu')
    assert moved is not seqs and moved.scales == seqs.scales and moved.categories == seqs.categories
    a, b = seqs.sampler(4, seed=3)(5), moved.sampler(4, seed=3)(5)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(moved.batch(torch.tensor([2, 0]))['tokens'], seqs.batch([2, 0])['tokens'])


def test_loss_is_mean_of_per_scale_means():
    tok, model = toy(n_classes=2)
    seqs = cache_tokens(tok, _ToyData())
    batch = seqs.batch(torch.arange(6))
    out = next_scale_loss(model, batch)
    logits = model(batch['feat'], batch['pos'], batch['slot'], batch['label']).double()
    per = []
    a = 0
    for k, s in enumerate(tok.scales):
        lk = torch.nn.functional.cross_entropy(logits[:, a:a + s].reshape(-1, 32), batch['tokens'][:, a:a + s].reshape(-1))
        per.append(lk)
        assert_close(out[f'loss_{k}'].double(), lk, rtol=1e-5, atol=1e-5)
        acc = (logits[:, a:a + s].argmax(-1) == batch['tokens'][:, a:a + s]).double().mean()
        assert_close(out[f'acc_{k}'].double(), acc)
        a += s
    assert_close(out['loss'].double(), torch.stack(per).mean(), rtol=1e-5, atol=1e-5)
    flat = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), batch['tokens'].reshape(-1))
    assert (flat - torch.stack(per).mean()).abs() > 1e-4     # differs from the plain token average
    assert abs(out['loss'].item() - math.log(32)) < 0.5       # untrained: close to uniform


def test_permutation_invariant_loss_toy():
    "Permuting each input cloud before tokenization leaves every per-scale loss unchanged."
    tok, model = toy(n_classes=2)
    ds = _ToyData()
    perm = _ToyData(); perm.x = torch.stack([x[torch.randperm(256)] for x in ds.x])
    a = next_scale_loss(model, cache_tokens(tok, ds).batch(torch.arange(6)))
    b = next_scale_loss(model, cache_tokens(tok, perm).batch(torch.arange(6)))
    for k in a: assert_close(a[k], b[k], rtol=0, atol=0)


def test_train_generator_learns_and_round_trips(tmp_path):
    tok, _ = toy()
    ds = _ToyData(n=8)
    tcfg = generator_train_config('nano', steps=30, batch_size=8, log_every=5, warmup_steps=3, lr=5e-3)
    model, hist = train_generator(tok, ds, TransformerConfig.preset('nano', n_layer=1, d_model=32, n_head=2), train_cfg=tcfg,
                                  device='cpu', ckpt_path=tmp_path / 'gen.pt', progress_bar=False)
    first, last = hist.rows[0], hist.rows[-1]
    assert last['loss'] < first['loss'] - 0.3, (first['loss'], last['loss'])
    assert {'loss_0', 'acc_3', 'loss_3'} <= set(last)
    again = load_generator(tmp_path / 'gen.pt')
    for (n, p), q in zip(model.state_dict().items(), again.state_dict().values()): assert torch.equal(p, q), n
    out = sample(again, tok, labels=[0, 1], seed=0)
    assert out['points'].shape == (2, 256, 3)


def test_load_generator_rejects_other_checkpoints(tmp_path):
    from nsp_explore.train import CheckpointError, save_checkpoint
    save_checkpoint(tmp_path / 'tok.pt', ToyTokenizer())
    with pytest.raises(CheckpointError, match='not a ScaleTransformer'): load_generator(tmp_path / 'tok.pt')
    (tmp_path / 'bad.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError): load_generator(tmp_path / 'bad.pt')


# --- completion and views ----------------------------------------------------------------------
def test_complete_keeps_coarse_scales():
    tok, model = toy()
    src = torch.randn(256, 3)
    out = complete(model, tok, src, n_fixed=2, n_samples=3, labels=2, seed=1)
    enc, _ = tok.encode(src[None])
    for k in range(2): assert torch.equal(out['indices'][k], enc[k].expand(3, -1))
    assert out['points'].shape == (3, 256, 3) and out['n_fixed'] == 2
    sparse = complete(model, tok, src[:40], n_fixed=1, n_samples=2)      # upsampling from 40 points
    assert sparse['points'].shape == (2, 256, 3)
    with pytest.raises(ValueError, match='n_fixed'): complete(model, tok, src, n_fixed=4)
    with pytest.raises(ValueError, match='NaN'): complete(model, tok, torch.full((10, 3), float('nan')))
    fig = completion_fig(out)
    assert len(fig.data) == 2 + 3


def test_views():
    tok, model = toy()
    out = sample(model, tok, labels=[0, 1, 2], seed=0)
    s = sampling_slider(out, 1)
    assert len(s.frames) == len(tok.scales) + 1
    assert len(s.frames[0].data[1].x) == 1 and len(s.frames[-1].data[1].x) == 256
    t = token_map_fig(out, 2)
    assert len(t.data) == len(tok.scales)
    ids, cols = out['indices'][2][2].tolist(), list(t.data[2].marker.color)    # a categorical palette: one colour per id
    assert all((ids[i] == ids[j]) == (cols[i] == cols[j]) for i in range(len(ids)) for j in range(len(ids)))
    fig, gal = class_gallery(model, tok, ['x', 'y', 'z'], n_per_class=2, top_k=4)
    assert len(fig.data) == 6 and gal['labels'].tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match='category names'): class_gallery(model, tok, ['x'], n_per_class=1)


def test_permutation_invariant_loss_pointnsp_tokenizer():
    "Issue test: permuting the input cloud leaves the real tokenizer's tokens and the model's per-scale losses unchanged."
    from nsp_explore.tokenizer import PointNSPTokenizer
    torch.manual_seed(0)
    tok = PointNSPTokenizer('nano').eval()
    ds = _ToyData(n=3, seed=5)
    perm = _ToyData(n=3, seed=5); perm.x = torch.stack([x[torch.randperm(len(x))] for x in ds.x])
    a_seq, b_seq = cache_tokens(tok, ds), cache_tokens(tok, perm)
    for a, b in zip(a_seq.indices, b_seq.indices): assert torch.equal(a, b)
    model = ScaleTransformer.for_tokenizer(TransformerConfig.preset('nano', n_layer=2), tok, 2).eval()
    la, lb = next_scale_loss(model, a_seq.batch(torch.arange(3))), next_scale_loss(model, b_seq.batch(torch.arange(3)))
    for k in la: assert_close(la[k], lb[k], atol=1e-5, rtol=1e-5)
    # and it is not trivially constant: a different cloud gives different losses
    other = next_scale_loss(model, cache_tokens(tok, _ToyData(n=3, seed=6)).batch(torch.arange(3)))
    assert (other['loss'] - la['loss']).abs() > 1e-4


@pytest.mark.cuda
def test_sample_and_train_on_cuda(tmp_path):
    tok, _ = toy()
    tok = tok.cuda()
    tcfg = generator_train_config('nano', steps=10, batch_size=8, log_every=5)
    model, hist = train_generator(tok, _ToyData(n=8), TransformerConfig.preset('nano'), train_cfg=tcfg, device='cuda',
                                  ckpt_path=tmp_path / 'g.pt', progress_bar=False)
    assert model.backend('cuda') == 'flex' and torch.isfinite(torch.tensor(hist.last('loss')))
    out = sample(model, tok, labels=[0, 1, 0], cfg_scale=2.0, top_p=0.9, seed=0)
    assert out['points'].is_cuda and out['points'].shape == (3, 256, 3)
    greedy_kv = sample(model, tok, labels=[0, 1], top_k=1)
    greedy_full = sample(model, tok, labels=[0, 1], top_k=1, use_cache=False)
    agree = torch.cat([(a == b).float().flatten() for a, b in zip(greedy_kv['indices'], greedy_full['indices'])]).mean()
    assert agree > 0.95     # bf16 autocast on CUDA: near-ties may flip a few argmaxes
    with pytest.raises(ValueError, match='move both'): sample(model, tok.cpu(), n=1, labels=0)


def test_sample_n_scales_stops_early_with_the_same_draws():
    "sample(n_scales=m): the first m scales drawn exactly as by the full call (same seed, one batch); points = X̂_m."
    tok, model = toy()
    full = sample(model, tok, n=5, labels=1, top_p=0.9, seed=3)
    for m in range(1, len(tok.scales)):
        part = sample(model, tok, n=5, labels=1, top_p=0.9, seed=3, n_scales=m)
        assert len(part['indices']) == m and all(torch.equal(a, b) for a, b in zip(part['indices'], full['indices']))
        assert torch.equal(part['points'], full['scale_points'][m - 1])
    with pytest.raises(ValueError, match='n_scales must be'): sample(model, tok, n=2, labels=1, n_scales=len(tok.scales) + 1)
    with pytest.raises(ValueError, match='leaves nothing'):
        sample(model, tok, n=5, labels=1, n_scales=1, fixed_indices=full['indices'][:1])
