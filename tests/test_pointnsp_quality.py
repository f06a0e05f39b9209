"""PointNSP, faithful: the checks that would have caught the bf16 losses, the biased training EMD, a mutating
encode(), the per-scale commitment / EMA update, and the presets and tokenizer frame of the paper's setting."""
import copy, json, math, os, subprocess, sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nsp_explore import metrics as M
from nsp_explore.data import Normalizer
from nsp_explore.lod import pool
from nsp_explore.quantize import ResidualMultiScaleQuantizer
from nsp_explore.tokenizer import PointNSPTokenizer, TokenizerConfig
from nsp_explore.transformer import ScaleTransformer, TransformerConfig, ToyTokenizer, flatten_teacher

ROOT = Path(__file__).resolve().parents[1]


def clouds(B=4, N=256, seed=0, noise=0.02):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(B, N, 3, generator=g)
    x = d / d.norm(dim=-1, keepdim=True) * torch.tensor([1.0, 0.6, 0.8])
    return x, x + noise * torch.randn(B, N, 3, generator=g)


# ---- 1. bf16 autocast: the losses are the fp32 losses --------------------------------------------------
def test_chamfer_under_bf16_autocast_equals_fp32():
    x, y = clouds()
    ref = M.chamfer_distance(x, y)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = M.chamfer_distance(x, y)
        self_cd = M.chamfer_distance(x, x)
        bf = M.chamfer_distance(x.bfloat16(), y)                     # a bf16 prediction against an fp32 target
    assert got.dtype == torch.float32 and bf.dtype == torch.float32
    assert_close(got, ref, rtol=1e-5, atol=1e-7)
    assert self_cd.abs().max() < 1e-6                                 # was 2-4e-3 with baddbmm in bf16


def test_tokenizer_losses_under_autocast_equal_fp32():
    torch.manual_seed(0)
    tok = PointNSPTokenizer('nano').eval()
    x, _ = clouds(2)
    with torch.no_grad():
        ref = tok(x).losses
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = tok(x).losses
            ti = tok.teacher_inputs(tok.encode(x)[0])
    for k in ref: assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    assert all(t.dtype == torch.float32 for t in ti[0][:2])           # teacher inputs are built in fp32, as in sampling


# ---- 2. the training EMD ------------------------------------------------------------------------------------
@pytest.mark.parametrize('N', [256, 512])
def test_training_emd_is_zero_at_target_and_equals_exact(N):
    x, y = clouds(3, N, seed=N)
    assert M.emd_train(x, x).abs().max() == 0
    assert_close(M.emd_train(x, y), M.emd_exact(x, y), rtol=1e-6, atol=1e-8)
    assert M.sinkhorn_divergence(x, x).abs().max() < 1e-6


def test_cuda_training_emd_path_is_within_a_percent_of_exact():
    "The GPU path (auction with the training eps schedule) measured on CPU tensors: within 1 % of the exact EMD."
    x, y = clouds(2, 256, seed=3)
    au = M.emd_auction(x, y, eps_schedule=(1e-1, 1e-2, 3e-3))
    ex = M.emd_exact(x, y)
    assert ((au - ex) / ex).abs().max() < 0.01


def test_descending_on_the_training_emd_from_the_target_does_not_drift():
    x, _ = clouds(2, 256, seed=5)
    def drift(loss_fn):
        p = x.clone().requires_grad_()
        opt = torch.optim.SGD([p], lr=0.5)
        for _ in range(30):
            opt.zero_grad(); loss_fn(p, x).sum().backward(); opt.step()
        return float((p.detach() - x).norm(dim=-1).mean()), float(p.detach().std() / x.std())
    moved, spread = drift(M.emd_train)
    assert moved < 1e-6 and abs(spread - 1) < 1e-6
    moved_b, spread_b = drift(lambda a, b: M.emd_approx(a, b, eps_final=0.05, scaling=0.5, n_final=3))   # the old loss
    assert moved_b > 5e-4 and spread_b < spread                       # it moves the cloud and shrinks it


# ---- 3. encode never mutates the tokenizer --------------------------------------------------------------------
def test_encode_in_training_mode_changes_nothing_and_is_repeatable():
    torch.manual_seed(0)
    tok = PointNSPTokenizer('nano').train()
    x, _ = clouds(2)
    tok(x)                                                            # one training forward (codebook from data)
    before = copy.deepcopy(tok.state_dict())
    a, _ = tok.encode(x)
    b, _ = tok.encode(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
    assert tok.training                                               # and the mode is left alone


# ---- 4. per-scale commitment, one EMA update per step ---------------------------------------------------------
def test_commitment_is_the_mean_of_per_scale_terms_with_gradient_to_the_encoder():
    torch.manual_seed(0)
    rq = ResidualMultiScaleQuantizer(8, 16, (1, 4, 16)).eval()
    f = torch.randn(2, 16, 8, requires_grad=True)
    o = rq(f)
    prev = [torch.zeros_like(f)] + [c.detach() for c in o.cumulative[:-1]]
    terms = [((pool(f - p, 16 // s) - rq.vq.embed(i)) ** 2).mean() for p, i, s in zip(prev, o.indices, rq.scales)]
    assert_close(o.losses['commit'], rq.beta * torch.stack(terms).mean())
    g, = torch.autograd.grad(o.losses['commit'], f)
    assert g.abs().sum() > 0                                          # every scale's term reaches f


def test_one_ema_update_per_training_step_from_all_scales():
    torch.manual_seed(0)
    rq = ResidualMultiScaleQuantizer(8, 16, (1, 4, 16), restart_dead=False).train()
    f = torch.randn(3, 16, 8)
    rq(f)                                                             # initializes the codebook from data
    n0, s0 = rq.vq.cluster_size.clone(), rq.vq.embed_sum.clone()
    o = rq(f)
    d = rq.vq.decay
    z = torch.cat([pool(f - p, 16 // s).reshape(-1, 8) for p, s in
                   zip([torch.zeros_like(f)] + [c.detach() for c in o.cumulative[:-1]], rq.scales)])
    onehot = F.one_hot(torch.cat([i.reshape(-1) for i in o.indices]), 16).float()
    assert_close(rq.vq.cluster_size, d * n0 + (1 - d) * onehot.sum(0))                 # exactly one decay step
    assert_close(rq.vq.embed_sum, d * s0 + (1 - d) * onehot.T @ z, rtol=1e-5, atol=1e-6)


# ---- soft masks -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['none', 'fixed', 'learned'])
def test_soft_mask_modes_agree_between_cache_and_full_forward(mode):
    torch.manual_seed(0)
    tok = ToyTokenizer((1, 4, 16), token_dim=8, codebook_size=16)
    m = ScaleTransformer.for_tokenizer(TransformerConfig.preset('nano', soft_mask=mode, label_dropout=0.0), tok, 2).eval()
    idx = [torch.randint(0, 16, (2, s)) for s in tok.scales]
    labels = torch.tensor([0, 1])
    teacher = tok.teacher_inputs(idx)
    full = m(*flatten_teacher(teacher), labels)
    cache = m.new_cache()
    steps = [m.step(0, labels=labels, cache=cache)] + [m.step(k, *teacher[k - 1], labels=labels, cache=cache) for k in (1, 2)]
    assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_old_boolean_soft_mask_configs_still_load():
    assert TransformerConfig.from_dict(dict(TransformerConfig().to_dict(), soft_mask=True)).soft_mask == 'fixed'
    with pytest.raises(ValueError, match='soft_mask'): TransformerConfig(soft_mask='sometimes')


# ---- the paper's sizes ------------------------------------------------------------------------------------------------
def test_pointnsp_s_preset_is_the_papers_size():
    tok = PointNSPTokenizer('small')
    gen = ScaleTransformer.for_tokenizer('small', tok, n_classes=10)
    total = sum(p.numel() for p in tok.parameters()) + gen.n_params()
    assert tok.n_points == 2048 and tok.scales[-1] == 2048 and tok.points_per_leaf == 1   # finest scale = full cloud
    assert abs(total - 22e6) / 22e6 < 0.15, total


def test_fps_augmentation_is_on_in_the_presets():
    from nsp_explore.train_tokenizer import tokenizer_datasets
    assert TokenizerConfig.preset('nano').fps_trajectories > 1
    train, val = tokenizer_datasets('nano', n_train=1, n_val=1, categories=['chair'])
    assert train.n_trajectories == TokenizerConfig.preset('nano').fps_trajectories and val.n_trajectories == 1
    trees = {tuple(train.index[0, t].tolist()) for t in range(train.n_trajectories)}
    assert len(trees) == train.n_trajectories                                             # different LoD orders


# ---- the tokenizer knows its frame ------------------------------------------------------------------------------------
def test_tokenizer_checkpoint_carries_its_frame_and_tokenizes_raw_points(tmp_path):
    from nsp_explore.train import save_checkpoint
    from nsp_explore.train_tokenizer import load_tokenizer
    torch.manual_seed(0)
    raw = [torch.randn(256, 3) * 3 + torch.tensor([5.0, -2.0, 1.0]) for _ in range(4)]
    norm = Normalizer('global').fit(raw)
    tok = PointNSPTokenizer('nano').set_frame(norm).eval()
    save_checkpoint(tmp_path / 't.pt', tok)
    back = load_tokenizer(tmp_path / 't.pt')
    assert back.cfg.frame == 'global'
    assert_close(back.norm_mean, norm.mean); assert_close(back.norm_std, norm.std)
    x = torch.stack(raw)
    t = back.tokenize(x)                                                  # raw units in, the training frame inside
    ref, _ = back.encode(norm.normalize(x))
    assert all(torch.equal(a, b) for a, b in zip(t['indices'], ref))
    out = back.detokenize(t['indices'], t['mean'], t['std'])             # and back to the caller's units
    assert_close(out['points'].mean((0, 1)), x.mean((0, 1)), atol=3.0, rtol=0)
    per = PointNSPTokenizer('nano', frame='per_shape').eval()
    xa, _, _ = per.to_frame(x); xb, _, _ = per.to_frame(x * 10 + 7)                     # per-shape frame: invariant
    assert_close(xa, xb, rtol=1e-4, atol=1e-5)                     # (tokens then agree up to float rounding)


# ---- the GPU suite's CPU part ---------------------------------------------------------------------------------------
def test_gpu_suite_dry_run_on_cpu(tmp_path):
    out = tmp_path / 'suite.json'
    r = subprocess.run([sys.executable, 'benchmarks/gpu_suite.py', '--dry-run', '--device', 'cpu', '--only', 'lod', 'metrics',
                        'transformer', '--results', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, NSP_PROGRESS='0'))
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert set(rep['sections']) == {'lod', 'metrics', 'transformer'}
    assert all(s['error'] is None for s in rep['sections'].values()), rep['sections']
    assert any(row.get('bench') == 'train_step' for row in rep['sections']['transformer']['rows'])


@pytest.mark.slow
def test_gpu_suite_full_dry_run(tmp_path):
    out = tmp_path / 'suite.json'
    r = subprocess.run([sys.executable, 'benchmarks/gpu_suite.py', '--dry-run', '--device', 'cpu', '--results', str(out),
                        '--pretrained-out', str(tmp_path / 'pre')], cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert all(s['error'] is None for s in rep['sections'].values())
    assert (tmp_path / 'pre' / 'nano_tokenizer.pt').exists()


# ---- the shipped pretrained pair ---------------------------------------------------------------------------------
def test_load_pretrained_nano_pair_samples_every_class(tmp_path):
    from nsp_explore.generate import load_pretrained, sample
    tok, gen = load_pretrained('nano')
    assert not tok.training and not gen.training
    assert tok.cfg.frame == 'global' and float(tok.norm_std) != 1.0            # it knows the frame of its data
    info = tok.info
    assert info['tokenizer_steps'] > 0 and info['generator_steps'] > 0 and len(info['categories']) == gen.n_classes
    out = sample(gen, tok, labels=torch.arange(gen.n_classes), seed=0)
    assert out['points'].shape == (gen.n_classes, tok.n_points, 3) and torch.isfinite(out['points']).all()
    again = sample(gen, tok, labels=torch.arange(gen.n_classes), seed=0)
    assert torch.equal(out['points'], again['points'])                            # deterministic under a seed
    with pytest.raises(FileNotFoundError, match="available: \\['nano'\\]"): load_pretrained('huge')
    import shutil                                                                   # a pair folder of one's own
    shutil.copytree(ROOT / 'data_samples' / 'pretrained', tmp_path / 'pair', ignore=shutil.ignore_patterns('g3pt*'))
    tok2, gen2 = load_pretrained('nano', directory=tmp_path / 'pair')
    assert tok2.info == info and torch.equal(sample(gen2, tok2, labels=torch.arange(gen.n_classes), seed=0)['points'], out['points'])
    with pytest.raises(FileNotFoundError, match="available: none"): load_pretrained('nano', directory=tmp_path / 'nothing')


def test_checkpoints_from_before_a_config_field_was_added_still_load(tmp_path):
    "A field added to a config later (e.g. learned_pos) counts as its default when an older checkpoint lacks it."
    from nsp_explore.train import load_checkpoint, save_checkpoint
    from nsp_explore.generate import load_generator
    tok = ToyTokenizer((1, 4, 16), token_dim=8, codebook_size=16)
    m = ScaleTransformer.for_tokenizer('nano', tok, 2)
    save_checkpoint(tmp_path / 'g.pt', m)
    ck = torch.load(tmp_path / 'g.pt', weights_only=True)
    del ck['model_config']['learned_pos'], ck['model_config']['qk_norm']             # as written before those fields
    torch.save(ck, tmp_path / 'old.pt')
    assert load_generator(tmp_path / 'old.pt').cfg.learned_pos is False
    ck['model_config']['d_model'] = 32                                               # a real difference still fails
    torch.save(ck, tmp_path / 'bad.pt')
    with pytest.raises(Exception, match='different'): load_checkpoint(tmp_path / 'bad.pt', m)


def test_generator_steps_benchmark_writes_loadable_pairs(tmp_path):
    "bench_generator_steps (the under-training check): each count gives a pair folder that loads and a finite val loss."
    from nsp_explore.generate import load_generator
    from nsp_explore.train_tokenizer import load_tokenizer
    out, res = tmp_path / 'runs', tmp_path / 'gs.json'
    r = subprocess.run([sys.executable, 'benchmarks/bench_generator_steps.py', '--steps', '2,3', '--jobs', '1', '--n-train', '1',
                        '--n-val', '1', '--device', 'cpu', '--out', str(out), '--results', str(res)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, NSP_PROGRESS='0'))
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    rows = json.loads(res.read_text())['rows']
    assert [row['steps'] for row in rows] == [2, 3]
    for row in rows:
        assert math.isfinite(row['val_loss']) and row['val_loss'] > 0 and row['n_train_shapes'] == 10
        assert row['tokenizer_steps'] == json.loads((ROOT / 'data_samples' / 'pretrained' / 'nano.json').read_text())['tokenizer_steps']
        d = out / f"steps_{row['steps']}"
        rec = json.loads((d / 'nano.json').read_text())
        assert rec['generator_steps'] == row['steps'] and 'scores' not in rec
        tok, gen = load_tokenizer(d / 'nano_tokenizer.pt'), load_generator(d / 'nano_generator.pt')
        assert gen.n_classes == len(rec['categories']) and tok.cfg.recon_scale == rec['recon_scale']


def test_retrain_generator_keeps_the_tokenizer_and_records_the_generator(tmp_path):
    "train_pretrained.py --tokenizer-from: a new generator (here 32 wide) beside the pair's own tokenizer, old scores dropped."
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import retrain_generator
    from nsp_explore.generate import load_generator
    from nsp_explore.transformer import TransformerConfig
    src = ROOT / 'data_samples' / 'pretrained'
    tok, gen, val, rec = retrain_generator(src, 2, tmp_path / 'pair', 'cpu', generator_batch=4, n_train=1, n_val=1,
                                           gen_cfg=TransformerConfig.preset('nano', d_model=32))
    d = tmp_path / 'pair'
    assert (d / 'nano_tokenizer.pt').read_bytes() == (src / 'nano_tokenizer.pt').read_bytes()
    saved = json.loads((d / 'nano.json').read_text())
    assert 'scores' not in saved and saved['generator_steps'] == 2 and saved['generator_config']['d_model'] == 32
    assert 'generator_note' in json.loads((src / 'nano.json').read_text()) and 'generator_note' not in saved  # the old one's words
    assert saved['tokenizer_steps'] == json.loads((src / 'nano.json').read_text())['tokenizer_steps']
    assert load_generator(d / 'nano_generator.pt').cfg.d_model == 32 and len(val) == 10
    # the data is built in the tokenizer's frame, not refitted on the (here 10) training shapes
    assert torch.equal(val.dataset.normalizer.mean, tok.norm_mean.cpu()) and torch.equal(val.dataset.normalizer.std, tok.norm_std.cpu())
    assert saved['generator_seed'] == json.loads((src / 'nano.json').read_text())['seed']
    retrain_generator(d, 2, d, 'cpu', generator_batch=4, n_train=1, n_val=1, seed=3)   # in place: the tokenizer file stays
    g = load_generator(d / 'nano_generator.pt')
    assert g.cfg.d_model == 64 and (d / 'nano_tokenizer.pt').exists()
    assert json.loads((d / 'nano.json').read_text())['generator_seed'] == 3


def test_retrain_generator_warm_start(tmp_path):
    """train_pretrained.py --generator-init / --generator-lr: the new generator starts from the given checkpoint (its
    width, not the preset's), trains at the given learning rate, and the record names the start."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import retrain_generator
    from nsp_explore.generate import load_generator
    src = ROOT / 'data_samples' / 'pretrained'
    init = load_generator(src / 'nano_generator.pt')
    _, gen, _, rec = retrain_generator(src, 1, tmp_path / 'warm', 'cpu', generator_batch=4, n_train=1, n_val=1, seed=1,
                                       init=src / 'nano_generator.pt', lr=1e-7)
    assert rec['generator_init'] == str(src / 'nano_generator.pt') and rec['generator_train']['lr'] == 1e-7
    assert gen.cfg.d_model == init.cfg.d_model != 64
    a, b = init.state_dict(), load_generator(tmp_path / 'warm' / 'nano_generator.pt').state_dict()
    moved = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert 0 < moved < 1e-4                                            # one step at lr 1e-7 from the checkpoint
    _, cold, _, _ = retrain_generator(src, 1, tmp_path / 'cold', 'cpu', generator_batch=4, n_train=1, n_val=1, seed=1,
                                      gen_cfg=init.cfg)
    assert max(float((a[k].float() - v.float()).abs().max()) for k, v in cold.state_dict().items()) > 0.01
    from train_pretrained import _save
    from nsp_explore.generate import load_pretrained
    from nsp_explore.transformer import ScaleTransformer
    _save(ScaleTransformer.for_tokenizer(init.cfg, load_pretrained('nano')[0], 3), tmp_path / 'three_classes.pt')
    with pytest.raises(ValueError, match='3 classes'):                # a start that does not fit the data: a clear error
        retrain_generator(src, 1, tmp_path / 'bad', 'cpu', generator_batch=4, n_train=1, n_val=1, init=tmp_path / 'three_classes.pt')


def test_retrain_generator_loss_weighting_reaches_the_loss_and_the_record(tmp_path):
    """train_pretrained.py --generator-loss: 'scale' trains on the mean of the per-scale losses, 'token' on their mean
    weighted by tokens per scale, 'mixed' on the average of those two weightings; the record says which, with the
    per-scale losses; an unknown name is refused."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import retrain_generator
    from nsp_explore.transformer import TransformerConfig
    src, cfg = ROOT / 'data_samples' / 'pretrained', TransformerConfig.preset('nano', d_model=32)
    scales = json.loads((src / 'nano.json').read_text())['tokenizer_config']['scales']
    recs = {w: retrain_generator(src, 1, tmp_path / w, 'cpu', generator_batch=4, n_train=1, n_val=1, gen_cfg=cfg,
                                 loss_weighting=w)[3] for w in ('scale', 'token', 'mixed')}
    K, L = len(scales), sum(scales)
    weights = dict(scale=[1 / K] * K, token=[s / L for s in scales], mixed=[(1 / K + s / L) / 2 for s in scales])
    for w, rec in recs.items():
        per = rec['generator_loss_per_scale']
        assert rec['generator_loss_weighting'] == w and len(per) == len(scales)
        assert rec['generator_loss'] == pytest.approx(sum(a * b for a, b in zip(weights[w], per)), abs=2e-4)
    for w in ('token', 'mixed'):                                       # same first step: same per-scale losses
        assert recs['scale']['generator_loss_per_scale'] == pytest.approx(recs[w]['generator_loss_per_scale'], abs=1e-4)
    assert recs['token']['generator_loss'] != pytest.approx(recs['mixed']['generator_loss'], abs=1e-3)
    with pytest.raises(ValueError, match="must be one of"):
        retrain_generator(src, 1, tmp_path / 'bad', 'cpu', generator_batch=4, n_train=1, n_val=1, gen_cfg=cfg, loss_weighting='tokens')


def test_retrain_generator_checkpoint_resumes_exactly(tmp_path):
    """train_pretrained.py --generator-ckpt: a generator run cut at a step boundary (Ctrl-C) leaves a checkpoint, and the
    same call again finishes it with exactly the weights of an uninterrupted run; the record says where it resumed."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import retrain_generator
    from nsp_explore.train import TrainingInterrupted
    from nsp_explore.transformer import TransformerConfig
    src, cfg = ROOT / 'data_samples' / 'pretrained', TransformerConfig.preset('nano', d_model=32)
    kw = dict(generator_batch=4, n_train=1, n_val=1, gen_cfg=cfg, seed=3, loss_weighting='mixed')
    whole = retrain_generator(src, 6, tmp_path / 'whole', 'cpu', **kw)[1].state_dict()

    def cut(step, out, hist):
        if step == 3: raise KeyboardInterrupt                       # what Ctrl-C does, at the end of step 3
    ckpt = tmp_path / 'gen_ckpt.pt'
    with pytest.raises(TrainingInterrupted, match='at step 3 of 6'):
        retrain_generator(src, 6, tmp_path / 'cut', 'cpu', ckpt_path=ckpt, ckpt_every=2, callbacks=[cut], **kw)
    assert ckpt.exists() and not (tmp_path / 'cut' / 'nano_generator.pt').exists()
    _, gen, _, rec = retrain_generator(src, 6, tmp_path / 'cut', 'cpu', ckpt_path=ckpt, ckpt_every=2, **kw)
    assert rec['generator_resumed_at_step'] == 3 and 'generator_resumed_at_step' not in json.loads(
        (tmp_path / 'whole' / 'nano.json').read_text())
    resumed = gen.state_dict()
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole), max(float((resumed[k] - whole[k]).abs().max()) for k in whole)
    fresh = retrain_generator(src, 6, tmp_path / 'other_seed', 'cpu', **{**kw, 'seed': 4})[1].state_dict()
    assert not all(torch.equal(fresh[k], whole[k]) for k in whole)     # the comparison can tell runs apart
    bad = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'train_pretrained.py'), '--generator-ckpt', str(ckpt)],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and '--generator-ckpt needs --tokenizer-from' in bad.stderr


def test_retrain_generator_corrective_training_reaches_the_loss_and_resumes_exactly(tmp_path):
    """train_pretrained.py --generator-corrective P: the loss sees corrected rows (logged share; another loss than plain
    teacher forcing from the same start), the record says P, and a run cut at step 3 resumes to the weights of an
    uninterrupted run (the draws come from torch's random stream, which the checkpoint keeps); P outside [0, 1] and a
    tokenizer without a residual VQ are refused."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import retrain_generator
    from nsp_explore.generate import generator_loss_fn
    from nsp_explore.train import TrainingInterrupted
    from nsp_explore.transformer import TransformerConfig
    src, cfg = ROOT / 'data_samples' / 'pretrained', TransformerConfig.preset('nano', d_model=32)
    kw = dict(generator_batch=8, n_train=1, n_val=1, gen_cfg=cfg, seed=3)
    plain = retrain_generator(src, 1, tmp_path / 'plain', 'cpu', **kw)[3]
    corr = retrain_generator(src, 1, tmp_path / 'corr', 'cpu', corrective=1.0, **kw)[3]
    assert plain['generator_corrective'] == 0.0 and corr['generator_corrective'] == 1.0
    assert corr['generator_loss'] != pytest.approx(plain['generator_loss'], abs=1e-3)
    whole = retrain_generator(src, 6, tmp_path / 'whole', 'cpu', corrective=0.5, **kw)[1].state_dict()

    def cut(step, out, hist):
        if step == 3: raise KeyboardInterrupt
    ckpt = tmp_path / 'ckpt.pt'
    with pytest.raises(TrainingInterrupted):
        retrain_generator(src, 6, tmp_path / 'cut', 'cpu', corrective=0.5, ckpt_path=ckpt, ckpt_every=2, callbacks=[cut], **kw)
    resumed = retrain_generator(src, 6, tmp_path / 'cut', 'cpu', corrective=0.5, ckpt_path=ckpt, ckpt_every=2, **kw)[1].state_dict()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.generate import cache_tokens, load_pretrained
    tok, gen = load_pretrained('nano')
    val = SyntheticShapes('val', tok.info['categories'][:1], 4, n_points=tok.n_points, normalizer=tok.normalizer())
    b = cache_tokens(tok, val).batch(torch.arange(4))
    out = generator_loss_fn(tok, True, 'scale', 1.0)(gen, b)                   # every row corrected, a finite loss
    assert float(out['corrected']) == 1.0 and math.isfinite(out['loss'].item())
    assert 'corrected' not in generator_loss_fn(tok, True, 'scale', 0.0)(gen, b)   # 0: plain teacher forcing
    with pytest.raises(ValueError, match='corrective must be in'):
        generator_loss_fn(None, True, 'scale', 1.5)
    with pytest.raises(TypeError, match='residual VQ tokenizer'):
        generator_loss_fn(torch.nn.Linear(1, 1), True, 'scale', 0.5)
    bad = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'train_pretrained.py'), '--tokenizer-from', str(src),
                          '--generator-corrective', '2'], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and '--generator-corrective must be in [0, 1]' in bad.stderr


def test_retrain_generator_mask_finest_warm_starts_records_and_resumes_exactly(tmp_path):
    """train_pretrained.py --generator-mask-finest: a fresh generator gets the code embedding and the record says so;
    from --generator-init the shipped plain generator is upgraded (its other weights are the start); the hidden codes
    come from torch's random stream, so a run cut at step 3 resumes to the weights of an uninterrupted run; the
    result samples in passes, and the flag needs --tokenizer-from."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import retrain_generator
    from nsp_explore.generate import load_generator, sample
    from nsp_explore.train import TrainingInterrupted
    from nsp_explore.transformer import TransformerConfig
    src, cfg = ROOT / 'data_samples' / 'pretrained', TransformerConfig.preset('nano', d_model=32)
    kw = dict(generator_batch=8, n_train=1, n_val=1, gen_cfg=cfg, seed=3)
    tok, gen, _, rec = retrain_generator(src, 2, tmp_path / 'mf', 'cpu', mask_finest=True, **kw)
    assert rec['generator_mask_finest'] is True and gen.cfg.mask_finest and rec['generator_config']['mask_finest']
    assert gen.code_emb.weight.abs().sum() > 0                                        # trained away from its zero start
    assert load_generator(tmp_path / 'mf' / 'nano_generator.pt').cfg.mask_finest      # the saved config rebuilds it
    out = sample(gen, tok, labels=torch.arange(2), seed=0, finest_passes=3)
    assert out['points'].shape == (2, tok.n_points, 3) and torch.isfinite(out['points']).all()
    plain = retrain_generator(src, 2, tmp_path / 'plain', 'cpu', **kw)[3]
    assert plain['generator_mask_finest'] is False and not plain['generator_config']['mask_finest']
    warm = retrain_generator(src, 1, tmp_path / 'warm', 'cpu', init=src / 'nano_generator.pt', lr=1e-9, mask_finest=True,
                             **{k: v for k, v in kw.items() if k != 'gen_cfg'})[1]
    shipped = load_generator(src / 'nano_generator.pt').state_dict()
    assert warm.cfg.mask_finest and warm.cfg.d_model == load_generator(src / 'nano_generator.pt').cfg.d_model
    assert all(torch.allclose(warm.state_dict()[k], v, atol=1e-6) for k, v in shipped.items())   # lr ~0: the start kept
    whole = retrain_generator(src, 6, tmp_path / 'whole', 'cpu', mask_finest=True, **kw)[1].state_dict()

    def cut(step, out, hist):
        if step == 3: raise KeyboardInterrupt
    ckpt = tmp_path / 'ckpt.pt'
    with pytest.raises(TrainingInterrupted):
        retrain_generator(src, 6, tmp_path / 'cut', 'cpu', mask_finest=True, ckpt_path=ckpt, ckpt_every=2, callbacks=[cut], **kw)
    resumed = retrain_generator(src, 6, tmp_path / 'cut', 'cpu', mask_finest=True, ckpt_path=ckpt, ckpt_every=2, **kw)[1].state_dict()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    bad = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'train_pretrained.py'), '--generator-mask-finest'],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and '--generator-mask-finest needs --tokenizer-from' in bad.stderr


def test_continue_tokenizer_then_warm_generator_makes_a_pair(tmp_path):
    """train_pretrained.py --tokenizer-init: the pair's tokenizer trains on from its weights, in its frame (raw decoder,
    calibrated again), saved alone (the old generator no longer fits its codes); --tokenizer-from that folder with
    --generator-init then makes a loadable pair."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import continue_tokenizer, retrain_generator
    from nsp_explore.train_tokenizer import load_tokenizer
    from nsp_explore.generate import load_pretrained
    src, d = ROOT / 'data_samples' / 'pretrained', tmp_path / 'tok'
    old = load_tokenizer(src / 'nano_tokenizer.pt')
    tok, rec = continue_tokenizer(src, 1, d, 'cpu', batch_size=4, n_train=1, lr=1e-7)
    assert sorted(p.name for p in d.iterdir()) == ['nano.json', 'nano_tokenizer.pt']
    saved = json.loads((d / 'nano.json').read_text())
    assert saved['tokenizer_init'] == str(src / 'nano_tokenizer.pt') and saved['tokenizer_train']['lr'] == 1e-7
    assert saved['tokenizer_steps'] == 1 and saved['tokenizer_init_steps'] == json.loads((src / 'nano.json').read_text())['tokenizer_steps']
    assert saved['tokenizer_seed'] == saved['seed'] + 1 and not any(k.startswith(('generator', 'scores', 'sampling')) for k in saved)
    new = load_tokenizer(d / 'nano_tokenizer.pt')
    assert torch.equal(new.norm_mean, old.norm_mean) and torch.equal(new.norm_std, old.norm_std)      # its frame kept
    assert new.cfg.recon_scale == saved['recon_scale'] != 1.0 and abs(saved['recon_scale'] - old.cfg.recon_scale) < 0.05   # refitted (on 10 shapes)
    a, b = dict(old.named_parameters()), dict(new.named_parameters())   # the codebook is not trained by the optimizer:
    moved = max(float((a[k] - b[k]).detach().abs().max()) for k in a if a[k].requires_grad)   # EMA and restarts move it
    assert 0 < moved < 1e-4                                             # one step at lr 1e-7 from the pair's weights
    tok_bytes = (d / 'nano_tokenizer.pt').read_bytes()
    retrain_generator(d, 1, d, 'cpu', generator_batch=4, n_train=1, n_val=1, seed=2, init=src / 'nano_generator.pt', lr=1e-7)
    t, g = load_pretrained('nano', directory=d)
    assert g.info['generator_init'] == str(src / 'nano_generator.pt') and g.info['tokenizer_init'] == str(src / 'nano_tokenizer.pt')
    assert (d / 'nano_tokenizer.pt').read_bytes() == tok_bytes and t.cfg.recon_scale == saved['recon_scale']


def test_eval_pretrained_scores_a_lone_tokenizer(tmp_path, monkeypatch):
    """eval_pretrained.py --no-samples: a folder with a tokenizer and no generator gets reconstruction rows only (the
    protocol's mean row included); without --no-samples such a folder is refused with the pairs it has."""
    sys.path.insert(0, str(ROOT / 'scripts')); sys.path.insert(0, str(ROOT / 'benchmarks'))
    import shutil, _common, eval_pretrained
    src, d = ROOT / 'data_samples' / 'pretrained', tmp_path / 'tok'
    d.mkdir(); shutil.copy(src / 'nano_tokenizer.pt', d); shutil.copy(src / 'nano.json', d)
    monkeypatch.setattr(_common, 'RESULTS', tmp_path / 'results')
    argv = ['eval_pretrained.py', '--dir', str(d), '--n', '2', '--metrics', 'cd', '--tag', 'lone', '--no-write']
    monkeypatch.setattr(sys, 'argv', argv + ['--no-samples'])
    eval_pretrained.main()
    rows = json.loads(next((tmp_path / 'results').glob('pretrained_nano_lone_*.json')).read_text())['rows']
    assert {r['kind'] for r in rows} == {'tokenizer_recon'} and len(rows) == 11 and rows[-1]['category'] == 'mean per category'
    assert all(0 <= r['1-NNA-CD'] <= 1 for r in rows)
    for r in rows:                                                        # 1-NNA comes with its two halves (equal set sizes)
        assert r['1-NNA-CD'] == pytest.approx((r['1-NNA-CD-acc_sample'] + r['1-NNA-CD-acc_ref']) / 2, abs=2e-4)
    monkeypatch.setattr(sys, 'argv', argv)
    with pytest.raises(FileNotFoundError, match='no pretrained pair'): eval_pretrained.main()


def test_eval_pretrained_two_generators(tmp_path, monkeypatch):
    """eval_pretrained.py --coarse-dir D --coarse-scales M: each class's samples come from sample_two_stage (D's generator
    for scales 1..M, --dir's for the rest) under the protocol's seed; the meta records both; the pair's json is not
    overwritten; a coarse folder with another tokenizer is refused."""
    sys.path.insert(0, str(ROOT / 'scripts')); sys.path.insert(0, str(ROOT / 'benchmarks'))
    import shutil, _common, eval_pretrained
    from nsp_explore.generate import load_pretrained as real_load
    src, d = ROOT / 'data_samples' / 'pretrained', tmp_path / 'pair'
    shutil.copytree(src, d)
    before = (d / 'nano.json').read_bytes()
    monkeypatch.setattr(_common, 'RESULTS', tmp_path / 'results')
    calls, real_two = [], eval_pretrained.sample_two_stage
    def spy(coarse, fine, tok, m, **kw):
        calls.append((m, kw['seed'], coarse is fine)); return real_two(coarse, fine, tok, m, **kw)
    monkeypatch.setattr(eval_pretrained, 'sample_two_stage', spy)
    argv = ['eval_pretrained.py', '--dir', str(d), '--n', '2', '--metrics', 'cd', '--no-recon', '--tag', 'two', '--seed', '1']
    monkeypatch.setattr(sys, 'argv', argv + ['--coarse-dir', str(src), '--coarse-scales', '3'])
    eval_pretrained.main()
    assert calls == [(3, c + 1000, False) for c in range(10)]            # two loaded generators, the protocol's seeds
    res = json.loads(next((tmp_path / 'results').glob('pretrained_nano_two_*.json')).read_text())
    assert res['meta']['coarse_dir'] == str(src) and res['meta']['coarse_scales'] == 3
    assert all(0 <= r['1-NNA-CD'] <= 1 for r in res['rows']) and (d / 'nano.json').read_bytes() == before
    def other_tokenizer(name, directory=None):
        tok, gen = real_load(name, directory=directory)
        if Path(directory) == src:
            with torch.no_grad(): next(tok.parameters()).add_(1e-3)
        return tok, gen
    monkeypatch.setattr(eval_pretrained, 'load_pretrained', other_tokenizer)
    with pytest.raises(ValueError, match='its tokenizer differs'): eval_pretrained.main()
    monkeypatch.setattr(sys, 'argv', argv + ['--coarse-dir', str(src)])
    with pytest.raises(SystemExit): eval_pretrained.main()


def test_generator_stage_without_cached_teacher_inputs_trains_the_same_generator():
    """The pair's generator stage when the transformer inputs do not fit the cache (640 shapes per class once did:
    the script crashed with 'the batch has no teacher inputs'): each batch decodes them from the tokenizer, and the
    generator ends where the cached run ends."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import train_generator_stage
    from nsp_explore.generate import load_pretrained
    from nsp_explore.train_tokenizer import tokenizer_datasets
    from nsp_explore.transformer import TransformerConfig
    tok = load_pretrained('nano')[0]
    train, _ = tokenizer_datasets(tok.cfg, seed=0, n_train=1, n_val=1, normalizer=tok.normalizer())
    cfg = TransformerConfig.preset('nano', d_model=32)
    gens = [train_generator_stage(tok, train, 3, 'cpu', seed=0, generator_batch=4, gen_cfg=cfg, max_teacher_gb=gb)
            for gb in (8.0, 0.0)]
    assert all(math.isfinite(rec['generator_loss']) for _, rec in gens)
    (a, _), (b, _) = gens
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa: torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)
    assert gens[0][1]['generator_loss'] == pytest.approx(gens[1][1]['generator_loss'], rel=1e-4)


def test_prefix_benchmark_ends_at_the_tokenizer_reconstructions():
    "bench_prefix: m = 0..K true scales per class; with all K given the set is the tokenizer's own reconstruction."
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from bench_prefix import prefix_scores
    from nsp_explore.generate import load_pretrained
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.metrics import compute_all_metrics
    tok, gen = load_pretrained('nano')
    cats, K, n = tok.info['categories'], len(tok.scales), 3
    rows = prefix_scores(tok, gen, n)
    assert [(r['category'], r['m']) for r in rows] == [(c, m) for c in cats for m in range(K + 1)]
    assert all(0 <= r['1-NNA-CD'] <= 1 for r in rows)
    tr = SyntheticShapes('train', cats, None, n_points=tok.n_points, resample=False)
    val, test = (SyntheticShapes(s, [cats[0]], n, n_points=tok.n_points, resample=False, normalizer=tr.normalizer) for s in ('val', 'test'))
    with torch.no_grad(): rec = tok(torch.stack([val[i]['points'] for i in range(n)])).x_hat    # the forward pass, not decode
    direct = compute_all_metrics(rec, torch.stack([test[i]['points'] for i in range(n)]), tr.normalizer.mean, tr.normalizer.std,
                                 metrics=('cd',), jsd=False)['1-NNA-CD']
    assert rows[K]['1-NNA-CD'] == round(float(direct), 4)


def test_generator_fit_benchmark_matches_a_float64_reference():
    """bench_generator_fit: the per-scale CE / accuracy summed over uneven batches equal a float64 log-softmax over every
    sequence at once, the held-out sequences carry every FPS tree of every shape, and the unigram CE is the smoothed
    frequencies' own cross-entropy."""
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from bench_generator_fit import scale_fit, split_sequences, unigram_ce
    from nsp_explore.generate import load_pretrained
    tok, gen = load_pretrained('nano')
    K, V, T, C = len(tok.scales), tok.codebook_size, tok.cfg.fps_trajectories, len(tok.info['categories'])
    train, val = split_sequences(tok, 'train', 1), split_sequences(tok, 'val', 1)
    assert len(val) == len(train) == C * T and val.has_teacher
    assert sorted(val.labels.tolist()) == sorted(list(range(C)) * T)
    assert len({tuple(t.tolist()) for t in val.tokens}) > C          # the trees differ, so do their token maps
    fit = scale_fit(gen, val, batch_size=3)                          # T = 4 rows per class: batches of 3 and 1
    with torch.no_grad():
        b = val.batch(torch.arange(len(val)))
        logp = gen(b['feat'], b['pos'], b['slot'], b['label']).double().log_softmax(-1)      # (M, L, V)
    ce = -logp.gather(-1, b['tokens'][..., None])[..., 0]                                     # (M, L)
    hit = (logp.argmax(-1) == b['tokens']).double()
    for c in range(C):
        rows = val.labels == c
        for k, (ce_k, hit_k) in enumerate(zip(ce[rows].split(tok.scales, 1), hit[rows].split(tok.scales, 1))):
            assert fit[c]['loss'][k] == pytest.approx(float(ce_k.mean()), rel=1e-4)
            assert fit[c]['acc'][k] == pytest.approx(float(hit_k.mean()), abs=1 / hit_k.numel() + 1e-9)   # a float32 near-tie may flip
    uni = unigram_ce(train, val, V)
    for k in range(K):
        counts = [1.0] * V
        for t in train.indices[k].flatten().tolist(): counts[t] += 1
        ref = -sum(math.log(counts[t] / sum(counts)) for t in val.indices[k].flatten().tolist()) / val.indices[k].numel()
        assert uni[k] == pytest.approx(ref, rel=1e-9)


def test_run_workers_limits_jobs_and_kills_at_the_deadline(tmp_path):
    "The benchmarks' process pool: every command runs with its own log, and one still running at the deadline is killed."
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from _common import run_workers
    py = sys.executable
    cmds = {'quick': [py, '-c', "print('done')"], 'slow': [py, '-c', 'import time; time.sleep(60)']}
    killed = run_workers(cmds, {k: tmp_path / f'{k}.log' for k in cmds}, dict(os.environ), jobs=1, deadline_s=3)
    assert killed == ['slow']
    assert (tmp_path / 'quick.log').read_text().strip() == 'done'


def test_finetune_decoder_changes_only_the_finest_decoder(tmp_path):
    """scripts/finetune_decoder.py: after training the finest decoder, every token, every generator input (the teacher
    inputs: cumulative features and the coarser decoded positions) and every other weight and buffer of the tokenizer
    is bit-identical; the finest head and the leaf expansion moved, and the decoded scale was calibrated again."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    from finetune_decoder import finetune_decoder, finest_decoder_names
    from nsp_explore.generate import load_pretrained
    from nsp_explore.train_tokenizer import tokenizer_datasets
    tok = load_pretrained('nano')[0]
    train, val = tokenizer_datasets(tok.cfg, n_train=2, n_val=1, normalizer=tok.normalizer())
    x = torch.stack([val[i]['points'] for i in range(4)])
    before = copy.deepcopy(tok.state_dict())
    idx0, lod = tok.encode(x)
    teach0 = tok.teacher_inputs(idx0)
    tok, rec = finetune_decoder(tok, train, steps=3, device='cpu', lr=1e-2, batch_size=4, val=val)
    assert not tok.training and all(p.requires_grad for p in tok.parameters())
    idx1, _ = tok.encode(x, lod)
    for a, b in zip(idx0, idx1): assert torch.equal(a, b)
    for t0, t1 in zip(teach0, tok.teacher_inputs(idx1)):
        for a, b in zip(t0, t1): assert torch.equal(a, b)
    prefixes = finest_decoder_names(tok)
    after = tok.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(prefixes) for k in moved), sorted(k for k in moved if not k.startswith(prefixes))
    assert any(k.startswith('expand.') for k in moved) and any(k.startswith(f'structure.heads.{tok.K - 1}.') for k in moved)
    assert rec['n_trainable'] == sum(v.numel() for k, v in after.items() if k.startswith(prefixes))
    assert tok.cfg.recon_scale == rec['recon_scale'] != 1.0 and rec['steps'] == 3 and rec['val_cd_after'] is not None


def test_expected_code_contribution_is_the_probability_weighted_lookup_in_float64():
    "bench_nna_split's expected-code decoding: phi(upsample(p @ codebook)) equals sum_v p_v lookup(v), a naive float64 loop."
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from bench_nna_split import expected_contribution
    from nsp_explore.generate import load_pretrained
    from nsp_explore.lod import upsample
    tok, _ = load_pretrained('nano')
    tok = copy.deepcopy(tok).double()
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))                     # fresh inputs each run
    for k in (1, len(tok.scales) - 1):
        s, S, V = tok.scales[k], tok.scales[-1], tok.codebook_size
        p = torch.rand(2, s, V, generator=g, dtype=torch.float64) ** 4
        p = p / p.sum(-1, keepdim=True)
        naive = sum(upsample(p[..., v:v + 1], S // s) * tok.quantizer.lookup(torch.full((2, s), v), k) for v in range(V))
        assert_close(expected_contribution(tok, p, k), naive, rtol=1e-10, atol=1e-12)
        one_hot = F.one_hot(torch.randint(0, V, (2, s), generator=g), V).double()              # a point mass: the code itself
        assert_close(expected_contribution(tok, one_hot, k), tok.quantizer.lookup(one_hot.argmax(-1), k), rtol=1e-12, atol=1e-12)


def test_nna_split_benchmark_halves_and_the_plain_draws(tmp_path):
    "bench_nna_split: 1-NNA is the mean of its halves (equal set sizes); lambda = 0 is the plain draw bit for bit."
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from bench_nna_split import main
    out = main(['--n', '4', '--categories', 'chair,car', '--lams', '0,1', '--results', str(tmp_path)])
    assert json.loads((tmp_path / 'nna_split_cpu.json').read_text())['rows'] == out['rows']
    rows = [r for r in out['rows'] if r['category'] != 'mean per category']
    assert [(r['category'], r['set']) for r in rows] == [(c, s) for c in ('chair', 'car') for s in
                                                         ('real val', 'recon val', 'samples', 'expected-code 0', 'expected-code 1')]
    for r in rows:
        assert r['1-NNA-CD'] == pytest.approx((r['acc_sample'] + r['acc_ref']) / 2, abs=2e-4)
        assert r['MMD-CD'] > 0 and r['nn_refs_refs'] > 0
    for c in ('chair', 'car'):
        by = {r['set']: r for r in rows if r['category'] == c}
        assert {k: v for k, v in by['expected-code 0'].items() if k != 'set'} == {k: v for k, v in by['samples'].items() if k != 'set'}
    with pytest.raises(SystemExit): main(['--categories', 'teapot', '--results', str(tmp_path)])


def test_corrective_benchmark_rows_on_the_shipped_pair():
    """bench_corrective: one row per category and drawable scale; the reconstruction's distance is the same for every
    drawn scale of a category and equals the Chamfer distance of the decoded true tokens; a redraw with the same seed
    gives the same rows."""
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from bench_corrective import corrective_rows
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.generate import load_pretrained
    from nsp_explore.metrics import chamfer
    tok, gen = load_pretrained('nano')
    tok.info = dict(tok.info, categories=tok.info['categories'][:2])      # two classes keep it quick
    rows = corrective_rows(tok, gen, 2, seed=5)
    K = len(tok.scales)
    assert [(r['category'], r['scale']) for r in rows] == [(c, j) for c in tok.info['categories'] for j in range(1, K)]
    for c in tok.info['categories']:
        rs = [r for r in rows if r['category'] == c]
        assert len({r['recon'] for r in rs}) == 1 and all(0 <= r['changed'] <= 1 for r in rs)
        assert all(math.isfinite(r[k]) and r[k] > 0 for r in rs for k in ('recon', 'kept', 'corrected'))
    val = SyntheticShapes('val', tok.info['categories'][:1], 2, n_points=tok.n_points, resample=False, normalizer=tok.normalizer())
    x = torch.stack([val[i]['points'] for i in range(2)])
    idx, _ = tok.encode(x)
    assert rows[0]['recon'] == pytest.approx(float(chamfer(tok.decode(idx)['points'], x).mean()), rel=1e-5)
    assert corrective_rows(tok, gen, 2, seed=5) == rows


def test_mask_finest_benchmark_hidden_ce_against_the_loss():
    """bench_mask_finest.hidden_ce: with nothing shown it is the finest scale's eval loss of `next_scale_loss` (every
    code hidden; float64 against float32); on a warm-started mask_finest generator (zero code embedding) showing codes
    changes nothing until it is trained, so the CE of the hidden ones equals the plain generator's CE of those same
    codes; a plain generator cannot be shown codes."""
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from bench_mask_finest import hidden_ce
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.generate import cache_tokens, load_pretrained, next_scale_loss, with_masked_finest
    tok, gen = load_pretrained('nano')
    val = SyntheticShapes('val', tok.info['categories'][:2], 3, n_points=tok.n_points, resample=False, normalizer=tok.normalizer())
    seqs = cache_tokens(tok, val)
    mf = with_masked_finest(gen).eval()
    K = len(tok.scales)
    loss = next_scale_loss(gen.eval(), seqs.batch(torch.arange(len(seqs))))[f'loss_{K - 1}'].item()
    r0 = hidden_ce(mf, seqs, 0.0, batch=4)
    assert r0['hidden'] == len(seqs) * tok.scales[-1] and r0['ce'] == pytest.approx(loss, rel=1e-5)
    r_half = hidden_ce(mf, seqs, 0.5, seed=1)
    assert 0.3 < r_half['hidden'] / r0['hidden'] < 0.7
    # the same hidden codes scored by the plain generator (the share's draw is the first of the seeded stream)
    sK, g = tok.scales[-1], torch.Generator().manual_seed(1)
    b = seqs.batch(torch.arange(len(seqs)))
    shown = torch.rand(b['tokens'][:, -sK:].shape, generator=g) < 0.5
    with torch.no_grad(): lg = gen(b['feat'], b['pos'], b['slot'], b['label'])[:, -sK:].double()
    ce = torch.nn.functional.cross_entropy(lg.flatten(0, 1), b['tokens'][:, -sK:].flatten(), reduction='none').view(shown.shape)
    assert r_half['ce'] == pytest.approx(float(ce[~shown].mean()), rel=1e-5)
    with pytest.raises(ValueError, match='mask_finest generator'):
        hidden_ce(gen, seqs, 0.5)


def test_gpu_generators_dry_run_brings_back_scorable_pair_folders(tmp_path):
    """scripts/gpu_generators.py --dry-run: every variant becomes a folder with the generator and its record but no
    tokenizer copy; with the shipped tokenizer copied back in, load_pretrained gives a pair that samples; the summary
    JSON lists each variant; a spent budget skips variants; malformed variants are refused."""
    import shutil
    sys.path.insert(0, str(ROOT / 'scripts'))
    from gpu_generators import main, parse_variants
    from nsp_explore.generate import load_pretrained, sample
    rows = main(['--dry-run', '--device', 'cpu', '--out', str(tmp_path), '--variants', 'w192=192:640:4000,w256=256:640:8000'])
    assert [(r['name'], r['status'], r['d_model'], r['n_train'], r['steps']) for r in rows] == \
        [('w192', 'done', 32, 1, 3), ('w256', 'done', 32, 1, 3)]
    summary = json.loads((tmp_path / 'gpu_generators.json').read_text())
    assert summary['dry_run'] and [r['name'] for r in summary['rows']] == ['w192', 'w256']
    folder = tmp_path / 'w192'
    assert sorted(p.name for p in folder.iterdir()) == ['nano.json', 'nano_generator.pt']
    rec = json.loads((folder / 'nano.json').read_text())
    assert rec['generator_steps'] == 3 and '--generator-width 32' in rec['generator_command']
    shutil.copy(ROOT / 'data_samples' / 'pretrained' / 'nano_tokenizer.pt', folder)
    tok, gen = load_pretrained('nano', directory=folder)
    assert gen.cfg.d_model == 32 and sample(gen, tok, labels=torch.arange(2), seed=0)['points'].shape == (2, tok.n_points, 3)
    skipped = main(['--dry-run', '--device', 'cpu', '--out', str(tmp_path / 'late'), '--max-s', '-1', '--variants', 'a=64:1:1'])
    assert skipped[0]['status'].startswith('skipped') and not (tmp_path / 'late' / 'a').exists()
    assert parse_variants('a=1:2:3,b-2=4:5:6') == [('a', 1, 2, 3), ('b-2', 4, 5, 6)]
    for bad, msg in (('a=1:2', 'NAME=WIDTH:SHAPES:STEPS'), ('a/b=1:2:3', 'letters, digits'), ('a=0:2:3', '>= 1'),
                     ('a=1:2:3,a=4:5:6', 'repeat')):
        with pytest.raises(ValueError, match=msg):
            parse_variants(bad)
