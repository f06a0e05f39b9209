"""Issue 17, "Nothing silently wrong": one regression test (or more) per item, each a reproduction that
failed before the fix, plus the property test that tour runs never reuse what they should not.
Imports sit inside the tests so each item fails (or passes) on its own."""
import json, math, os, random, signal, threading, warnings

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

os.environ.setdefault('NSP_PROGRESS', '0')


# ---------------------------------------------------------------- shared toys
class Toy(nn.Module):
    "Linear model with dropout (consumes the RNG)."
    def __init__(self):
        super().__init__()
        self.inp, self.drop, self.out = nn.Linear(3, 16), nn.Dropout(0.2), nn.Linear(16, 1)
    def forward(self, x): return self.out(self.drop(torch.tanh(self.inp(x)))).squeeze(-1)


def toy_data(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5])


def toy_loss(model, batch):
    x, y = batch
    return dict(loss=F.mse_loss(model(x), y))


def fresh():
    torch.manual_seed(123)
    return Toy()


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def tiny_tok_cfg(**kw):
    from nsp_explore.tokenizer import TokenizerConfig
    return TokenizerConfig.preset('nano', **{**dict(n_points=64, scales=(1, 4, 16), dim=16, codebook_size=16, hidden=16,
                                                    dec_hidden=16, edge_layers=1, knn=4, w_emd=0.0), **kw})


# ---------------------------------------------------------------- 1. tour run folder keyed by everything
QUICK_FIELDS_CHANGING_BOTH = ('categories', 'n_train', 'n_val', 'seed', 'tokenizer_steps', 'model')
QUICK_FIELDS_CHANGING_GENERATOR = ('generator_steps',)
QUICK_FIELDS_CHANGING_NOTHING = ('n_test', 'emd', 'temperature', 'top_p')   # sampling / scoring: no checkpoint


def _changed(cfg, field, rng):
    from nsp_explore.shapes import CATEGORIES
    v = getattr(cfg, field)
    if field == 'categories':
        while True:
            new = tuple(rng.sample(CATEGORIES, rng.randint(1, 4)))
            if new != v: return new
    if field == 'model': return 'small' if v != 'small' else 'nano'
    if field == 'emd': return 'auction' if v == 'exact' else 'exact'
    if field == 'temperature': return (1.0 if v is None else v) + 0.5
    if field == 'top_p': return 0.9 if v is None else None
    return v + rng.randint(1, 5)


def test_tour_quick_and_nano_get_different_run_folders():
    "The reproduction: quick and nano (other categories, other steps) shared runs/tour/nano_seed0."
    from nsp_explore.tour import TourConfig, run_paths
    q, n = run_paths(TourConfig.preset('quick'), 'runs/tour'), run_paths(TourConfig.preset('nano'), 'runs/tour')
    assert q['dir'] != n['dir'] and q['tokenizer'] != n['tokenizer'] and q['generator'] != n['generator']


def test_property_quick_configs_reuse_nothing_they_should_not():
    "Random quick-preset configs, one setting changed: checkpoints are shared exactly when the trained models cannot differ."
    from nsp_explore.tour import TourConfig, run_paths
    from nsp_explore.shapes import CATEGORIES
    rng = random.Random(17)
    fields = QUICK_FIELDS_CHANGING_BOTH + QUICK_FIELDS_CHANGING_GENERATOR + QUICK_FIELDS_CHANGING_NOTHING
    for _ in range(150):
        base = TourConfig.preset('quick', categories=tuple(rng.sample(CATEGORIES, rng.randint(1, 4))),
                                 n_train=rng.randint(1, 6), n_val=rng.randint(1, 3), n_test=rng.randint(1, 3),
                                 seed=rng.randint(0, 3), tokenizer_steps=rng.randint(1, 40), generator_steps=rng.randint(1, 40))
        field = rng.choice(fields)
        other = base.override(**{field: _changed(base, field, rng)})
        a, b = run_paths(base, 'w'), run_paths(other, 'w')
        assert (a['tokenizer'] == b['tokenizer']) == (field not in QUICK_FIELDS_CHANGING_BOTH), field
        assert (a['generator'] == b['generator']) == (field in QUICK_FIELDS_CHANGING_NOTHING), field
        assert a['generator'].parent == a['tokenizer'].parent                  # a generator lives beside its tokenizer


@pytest.mark.slow
def test_tour_rerun_with_other_categories_in_the_same_workdir(tmp_path):
    "The reproduction end to end (tiniest config): the second run trains afresh instead of dying on n_classes."
    from nsp_explore.tour import TourConfig, run_tour
    base = TourConfig(categories=('mug',), n_train=1, n_val=1, n_test=1, tokenizer_steps=2, generator_steps=2)
    runs = []
    for i, cfg in enumerate((base, base.override(categories=('mug', 'chair')), base)):
        p = run_tour(cfg, out=tmp_path / f'r{i}.html', workdir=tmp_path / 'runs', device='cpu')
        runs.append(json.loads(p.with_suffix('.json').read_text()))
    assert runs[1]['tokenizer']['resumed_from'] == 0 and runs[1]['generator']['resumed_from'] == 0
    assert runs[1]['tokenizer']['checkpoint'] != runs[0]['tokenizer']['checkpoint']
    assert runs[2]['tokenizer']['checkpoint'] == runs[0]['tokenizer']['checkpoint']       # the same settings resume
    assert runs[2]['tokenizer']['steps_this_run'] == 0 and runs[2]['tokenizer']['steps'] == 2
    html = (tmp_path / 'r2.html').read_text()
    assert 'Trained 2 steps in total' in html and 'in an earlier run' in html


# ---------------------------------------------------------------- 2. LoD cache keyed by the content
def test_lod_cache_follows_the_data_seed(tmp_path):
    "The reproduction: seed=1 with the same cache_dir must not get the seed-0 trees."
    from nsp_explore.train_tokenizer import tokenizer_datasets
    from nsp_explore.lod import build_lod
    kw = dict(n_train=2, n_val=1, categories=['chair'], cache_dir=tmp_path)
    tr0, _ = tokenizer_datasets('nano', seed=0, **kw)
    tr1, _ = tokenizer_datasets('nano', seed=1, **kw)
    assert not torch.equal(tr0[0]['points'], tr1[0]['points'])
    for i in range(len(tr1)):
        ref = build_lod(tr1[i]['points'][None], tr1.scales).index[0]
        assert torch.equal(tr1.index[i, 0].long(), ref), i
    tr0b, _ = tokenizer_datasets('nano', seed=0, **kw)                      # and the cache still serves seed 0
    assert torch.equal(tr0b.index, tr0.index)


def test_lod_cache_key_covers_points_and_tree_settings(tmp_path, monkeypatch):
    import nsp_explore.lod as L

    class Clouds(torch.utils.data.Dataset):
        names = ['a', 'b']                                                  # same names, same length, other points
        def __init__(self, seed): self.x = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(seed))
        def __len__(self): return 2
        def __getitem__(self, i): return dict(points=self.x[i])
    built = []
    real = L.LoDDataset._build
    monkeypatch.setattr(L.LoDDataset, '_build', lambda self, *a, **k: built.append(1) or real(self, *a, **k))
    f = tmp_path / 'lod.pt'
    L.LoDDataset(Clouds(0), (1, 4, 16, 64), cache_path=f, verbose=False)
    L.LoDDataset(Clouds(0), (1, 4, 16, 64), cache_path=f, verbose=False)
    assert len(built) == 1                                                  # same content: served from the cache
    other = L.LoDDataset(Clouds(1), (1, 4, 16, 64), cache_path=f, verbose=False)
    assert len(built) == 2
    assert torch.equal(other.index[:, 0].long(), L.build_lod(Clouds(1).x, (1, 4, 16, 64)).index)
    for kw in (dict(start=0), dict(assign='optimal'), dict(seed=3, n_trajectories=2), dict(scales=(1, 4, 64))):
        n = len(built)
        L.LoDDataset(Clouds(1), kw.pop('scales', (1, 4, 16, 64)), cache_path=f, verbose=False, **kw)
        assert len(built) == n + 1, kw


# ---------------------------------------------------------------- 3. extending a finished run
def test_extending_a_finished_run_rebuilds_the_schedule(tmp_path):
    "The reproduction: steps=4 then steps=9 on the same checkpoint ran steps 5-9 at the minimum LR."
    from nsp_explore.train import TrainConfig, WarmupCosine, fit
    ck = tmp_path / 'run.pt'
    cfg4 = TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=2, log_every=1)
    fit(fresh(), toy_data, toy_loss, cfg4, ckpt_path=ck, progress_bar=False)
    cfg9 = cfg4.override(steps=9)
    with pytest.warns(UserWarning, match='schedule is rebuilt for 9 steps'):
        h = fit(fresh(), toy_data, toy_loss, cfg9, ckpt_path=ck, progress_bar=False)
    sched = WarmupCosine(2, 9, cfg9.min_lr_ratio)
    got = {r['step']: r['lr'] for r in h.rows}
    for step in range(5, 10):
        assert math.isclose(got[step], cfg9.lr * sched(step), rel_tol=1e-9), (step, got[step])
    assert got[5] > 2 * cfg9.lr * cfg9.min_lr_ratio                        # not stuck at the minimum
    assert h.start_step == 4


def test_resume_with_unchanged_steps_is_still_exact_and_shrinking_is_refused(tmp_path):
    from nsp_explore.train import TrainConfig, fit
    cfg = TrainConfig(steps=9, batch_size=8, lr=1e-2, warmup_steps=2, log_every=1)
    straight = fit(fresh(), toy_data, toy_loss, cfg, progress_bar=False)
    ck = tmp_path / 'r.pt'
    stop = lambda step, out, h: (_ for _ in ()).throw(KeyboardInterrupt) if step == 4 else None
    with pytest.raises(KeyboardInterrupt):
        fit(fresh(), toy_data, toy_loss, cfg, ckpt_path=ck, callbacks=[stop], progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                       # no schedule warning: nothing changed
        resumed = fit(fresh(), toy_data, toy_loss, cfg, ckpt_path=ck, progress_bar=False)
    assert same_weights(straight.model, resumed.model)
    with pytest.raises(ValueError, match='at step 9, beyond TrainConfig.steps=4'):
        fit(fresh(), toy_data, toy_loss, cfg.override(steps=4), ckpt_path=ck, progress_bar=False)


# ---------------------------------------------------------------- 4. a second Ctrl-C inside opt.step
def test_second_ctrl_c_inside_optimizer_step_leaves_no_inconsistent_checkpoint(tmp_path):
    "The reproduction: the checkpoint said step 5 and held step-6 weights. Now the last consistent one stays."
    from nsp_explore.train import TrainConfig, TrainingInterrupted, fit, load_checkpoint
    before = signal.getsignal(signal.SIGINT)       # default, or SIG_IGN when run in a background job
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, log_every=1, ckpt_every=2)
    straight = fit(fresh(), toy_data, toy_loss, cfg, progress_bar=False)
    calls = []
    def loss_sigint(model, batch):
        calls.append(1)
        if len(calls) == 6: os.kill(os.getpid(), signal.SIGINT)            # first Ctrl-C during step 6 (index 5)
        return toy_loss(model, batch)
    def in_step(opt, args, kwargs):
        if len(calls) == 6: os.kill(os.getpid(), signal.SIGINT)            # second one inside opt.step, after the update
    hook = register_optimizer_step_post_hook(in_step)
    ck = tmp_path / 'run.pt'
    try:
        with pytest.raises(TrainingInterrupted, match='nothing saved') as e:
            fit(fresh(), toy_data, loss_sigint, cfg, ckpt_path=ck, progress_bar=False)
    finally: hook.remove()
    assert e.value.checkpoint is None and 'keeps step 4' in str(e.value)
    assert signal.getsignal(signal.SIGINT) is before                        # the caller's handler restored
    assert load_checkpoint(ck)['step'] == 4                                 # the last periodic one, consistent
    resumed = fit(fresh(), toy_data, toy_loss, cfg, ckpt_path=ck, progress_bar=False)
    assert same_weights(straight.model, resumed.model)                      # the resume is exact


# ---------------------------------------------------------------- 5. FPS ties: one rule for every backend
def _tie_clouds():
    g = torch.stack(torch.meshgrid(*[torch.arange(5.)] * 3, indexing='ij'), -1).reshape(-1, 3)
    out = []
    for s in range(12):
        gen = torch.Generator().manual_seed(s)
        perm = torch.randperm(len(g), generator=gen)
        out += [g[perm], torch.cat([g[:10]] * 3)[torch.randperm(30, generator=gen)],                # grid, duplicates
                torch.randint(0, 3, (60, 3), generator=gen).float() * 0.37]                       # many exact ties
    return out


def test_every_fps_backend_takes_the_lowest_index_among_ties():
    from nsp_explore.lod import fps_backends, fps_order
    for x in _tie_clouds():
        ref = fps_order(x, start=0, backend='naive')
        for be in fps_backends('cpu'):
            assert torch.equal(fps_order(x, start=0, backend=be), ref), be


def test_a_grid_like_shape_gets_the_same_lod_and_tokens_alone_and_in_a_batch():
    "The reproduction: `auto` used fpsample alone and torch in a batch of 32, and they broke ties differently."
    from nsp_explore.lod import build_lod, fps_order
    from nsp_explore.tokenizer import PointNSPTokenizer
    g = torch.stack(torch.meshgrid(torch.arange(4.), torch.arange(8.), torch.arange(8.), indexing='ij'), -1).reshape(-1, 3)
    x = ((g - g.mean(0)) / g.std()).float()                                 # 256 points, near ties after normalizing
    batch = torch.cat([x[None], torch.randn(31, 256, 3, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(fps_order(x), fps_order(batch)[0])
    scales = (1, 4, 16, 64, 256)
    assert torch.equal(build_lod(x, scales).index[0], build_lod(batch, scales).index[0])
    torch.manual_seed(0)
    tok = PointNSPTokenizer(tiny_tok_cfg(n_points=256, scales=(1, 4, 16, 64))).eval()
    alone, _ = tok.encode(x[None])
    together, _ = tok.encode(batch)
    for a, b in zip(alone, together): assert torch.equal(a[0], b[0])


# ---------------------------------------------------------------- 6. train_generator seeds its weights
def test_train_generator_initial_weights_follow_the_seed():
    from nsp_explore.generate import TokenSequences, train_generator
    from nsp_explore.train import TrainConfig
    from nsp_explore.transformer import ToyTokenizer, TransformerConfig
    tok = ToyTokenizer((1, 4, 16), token_dim=8, codebook_size=8, seed=0)
    g = torch.Generator().manual_seed(0)
    seqs = TokenSequences([torch.randint(0, 8, (6, s), generator=g) for s in (1, 4, 16)], torch.arange(6) % 2, (1, 4, 16))
    cfg = TransformerConfig.preset('nano', n_layer=1, d_model=32, n_head=2)
    tcfg = TrainConfig(steps=1, batch_size=2, lr=1e-9, warmup_steps=0, seed=5)
    models = []
    for other_rng in (1, 2):                                                 # whatever the global RNG was before
        torch.manual_seed(other_rng)
        m, _ = train_generator(tok, seqs, cfg, tcfg, device='cpu', progress_bar=False)
        models.append(m)
    assert same_weights(*models)


# ---------------------------------------------------------------- 7. no racy thread-count switch
def test_lod_never_changes_the_process_thread_count(monkeypatch):
    import nsp_explore.lod as L
    seen, old = [], torch.get_num_threads()
    real = L.ASSIGNERS['greedy']
    monkeypatch.setitem(L.ASSIGNERS, 'greedy', lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    torch.set_num_threads(2)
    try:
        L.build_lod(torch.randn(2, 64, 3), (1, 4, 16, 64))
        L.fps_order(torch.randn(64, 3))
        assert set(seen) == {2} and torch.get_num_threads() == 2
        # two Python threads inside the LoD code at once leave the count as it was
        barrier = threading.Barrier(2)
        def work():
            barrier.wait()
            for _ in range(3): L.build_lod(torch.randn(4, 64, 3), (1, 4, 16, 64))
        ts = [threading.Thread(target=work) for _ in range(2)]
        for t in ts: t.start()
        for t in ts: t.join()
        after = []
        t = threading.Thread(target=lambda: after.append(torch.get_num_threads())); t.start(); t.join()
        assert torch.get_num_threads() == 2 and after == [2]
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------- 8. truncated files
def test_truncated_ascii_ply_cloud_is_an_error_naming_the_file(tmp_path):
    "The reproduction: an ASCII PLY of 3000 points cut in half loaded 1498 points."
    import trimesh
    from nsp_explore.data import load_points
    trimesh.PointCloud(np.random.default_rng(0).random((3000, 3))).export(tmp_path / 'full.ply', encoding='ascii')
    data = (tmp_path / 'full.ply').read_bytes()
    (tmp_path / 'half.ply').write_bytes(data[:len(data) // 2])
    assert load_points(tmp_path / 'full.ply').shape == (3000, 3)
    with pytest.raises(ValueError, match=r'half\.ply: truncated PLY: its header declares 3000 vertex'):
        load_points(tmp_path / 'half.ply')


def test_truncated_meshes_are_errors_naming_the_file(tmp_path):
    "The reproduction: an OBJ (and a PLY) cut in its face list loaded half its faces."
    from nsp_explore.shapes import load_mesh, make_shape
    m = make_shape('chair', seed=0)
    m.export(tmp_path / 'c.obj'); m.export(tmp_path / 'c.ply', encoding='ascii')
    obj = (tmp_path / 'c.obj').read_text()
    lines = obj.splitlines(keepends=True)
    first_f = next(i for i, l in enumerate(lines) if l.startswith('f '))
    mid = first_f + (len(lines) - first_f) // 2
    (tmp_path / 'cut.obj').write_text(''.join(lines[:mid]) + lines[mid][:len(lines[mid]) // 2])   # cut inside a face line
    with pytest.raises(ValueError, match=r'cut\.obj: truncated OBJ'): load_mesh(tmp_path / 'cut.obj')
    counted = f'# {sum(l.startswith("v ") for l in lines)} vertices\n# {sum(l.startswith("f ") for l in lines)} faces\n'
    (tmp_path / 'counted.obj').write_text(counted + obj)
    assert len(load_mesh(tmp_path / 'counted.obj').faces) == len(m.faces)
    (tmp_path / 'cut2.obj').write_text(counted + ''.join(lines[:mid]))      # cut at a line boundary
    with pytest.raises(ValueError, match=r'cut2\.obj: truncated OBJ: its header comment declares'): load_mesh(tmp_path / 'cut2.obj')
    ply = (tmp_path / 'c.ply').read_bytes()
    (tmp_path / 'cut.ply').write_bytes(ply[:int(len(ply) * 0.8)])           # inside the face list
    with pytest.raises(ValueError, match=r'cut\.ply: truncated PLY'): load_mesh(tmp_path / 'cut.ply')
    assert len(load_mesh(tmp_path / 'c.ply').faces) == len(m.faces) == len(load_mesh(tmp_path / 'c.obj').faces)


# ---------------------------------------------------------------- 9. NaN made by the model
def _tiny_tokenizer_data():
    from nsp_explore.train_tokenizer import tokenizer_datasets
    cfg = tiny_tok_cfg()
    tr, _ = tokenizer_datasets(cfg, n_train=1, n_val=1, categories=['chair', 'mug'])
    return cfg, tr


def test_nan_from_the_model_is_not_blamed_on_the_input_and_names_the_step():
    from nsp_explore.tokenizer import PointNSPTokenizer
    from nsp_explore.train import TrainConfig, fit
    from nsp_explore.train_tokenizer import tokenizer_loss
    cfg, tr = _tiny_tokenizer_data()
    tok = PointNSPTokenizer(cfg)
    with torch.no_grad():
        for p in tok.parameters(): p.fill_(float('nan'))
    x = tr[0]['points'][None]
    with pytest.raises(FloatingPointError, match='although the input x is finite'): tok(x)
    with pytest.raises(FloatingPointError, match=r'^step 0: PointNSPTokenizer'):
        fit(tok, tr, tokenizer_loss, TrainConfig(steps=2, batch_size=2, warmup_steps=1), progress_bar=False)
    diverging = PointNSPTokenizer(cfg)                                       # an absurd LR: NaN after the first update
    with pytest.raises(FloatingPointError, match=r'^step [1-9]'):
        fit(diverging, tr, tokenizer_loss, TrainConfig(steps=4, batch_size=2, warmup_steps=0, lr=1e30), progress_bar=False)
    bad = x.clone(); bad[0, 3, 1] = float('nan')                            # the user's NaN is still the user's
    with pytest.raises(ValueError, match='x: 1 point'): PointNSPTokenizer(cfg)(bad)


def test_fit_turns_a_nan_check_on_model_output_into_a_floating_point_error():
    "Any model: a NaN check (check_cloud) that meets the model's own output inside fit names the step."
    from nsp_explore.metrics import chamfer_distance
    from nsp_explore.train import TrainConfig, fit
    class Net(nn.Module):
        def __init__(self):
            super().__init__(); self.lin = nn.Linear(3, 3)
        def forward(self, x): return self.lin(x)
    net = Net()
    with torch.no_grad(): net.lin.weight.fill_(float('nan'))
    batch = lambda step: torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(step))
    loss = lambda m, x: dict(loss=chamfer_distance(m(x), x).mean())
    with pytest.raises(FloatingPointError, match=r'^step 0: the model produced NaN/inf from a finite batch'):
        fit(net, batch, loss, TrainConfig(steps=2, batch_size=2, warmup_steps=0), progress_bar=False)
    nan_batch = lambda step: torch.full((2, 16, 3), float('nan'))
    with pytest.raises(ValueError, match='NaN/inf'):                         # a NaN in the data stays a ValueError
        fit(Net(), nan_batch, loss, TrainConfig(steps=2, batch_size=2, warmup_steps=0), progress_bar=False)


# ---------------------------------------------------------------- 10. the CLI: usage errors first, one line
@pytest.mark.parametrize('bad, field', [
    (['--device', 'foo'], "--device 'foo'"),
    (['--seed', '-1'], '--seed must be >= 0'),
    (['--tokenizer-steps', '0'], '--tokenizer-steps must be >= 1'),
    (['--generator-steps', '-3'], '--generator-steps must be >= 0'),
    (['--out', '/dev/null/report/tour.html'], "'/dev/null' is a file"),
    (['--workdir', '/dev/null/runs'], "--workdir '/dev/null/runs' cannot be created"),
    (['--preset', 'huge'], "no preset 'huge'"),
])
def test_cli_usage_errors_exit_2_with_one_line_before_any_work(bad, field, capsys, monkeypatch):
    import time
    import nsp_explore.tour as T
    monkeypatch.setattr(T, 'run_tour', lambda *a, **k: pytest.fail('work started despite a bad argument'))
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e: T.main(['--preset', 'quick', *bad] if bad[0] != '--preset' else bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and time.perf_counter() - t0 < 2
    assert err.count('\n') == 1 and err.startswith('nsp-tour: error:') and field in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-GPU message')
def test_cli_cuda_without_a_gpu_is_a_usage_error(capsys):
    from nsp_explore.tour import main
    with pytest.raises(SystemExit) as e: main(['--preset', 'quick', '--device', 'cuda'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'no CUDA GPU' in err


@pytest.mark.parametrize('sig, code', [('SIGINT', 130), ('SIGTERM', 143)])
def test_cli_interrupt_prints_one_line(sig, code, capsys, monkeypatch, tmp_path):
    import nsp_explore.tour as T
    from nsp_explore.train import TrainingInterrupted
    msg = f"training interrupted ({sig}) at step 7 of 20: checkpoint written to 'x/tokenizer.pt'; run again to resume"
    def boom(*a, **k): raise TrainingInterrupted(msg, 7, 'x/tokenizer.pt', sig)
    monkeypatch.setattr(T, 'run_tour', boom)
    before = signal.getsignal(signal.SIGTERM)
    assert T.main(['--preset', 'quick', '--device', 'cpu', '--out', str(tmp_path / 'r.html'), '--workdir', str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'step 7 of 20' in err and 'Traceback' not in err
    monkeypatch.setattr(T, 'run_tour', lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert T.main(['--preset', 'quick', '--device', 'cpu', '--out', str(tmp_path / 'r.html'), '--workdir', str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'rerun the same command' in err
    assert signal.getsignal(signal.SIGTERM) is before                        # the CLI's SIGTERM handler is removed


def test_resumed_run_states_total_steps():
    from nsp_explore.tour import _steps_text
    assert _steps_text(20, 4, 0, 3.0, 'cpu') == 'Trained 20 steps (batch 4) in 3 s on cpu.'
    assert 'Trained 20 steps in total (batch 4): 12 in an earlier run' in _steps_text(20, 4, 12, 3.0, 'cpu')
    assert 'and 8 in 3 s' in _steps_text(20, 4, 12, 3.0, 'cpu')
    assert 'Trained 20 steps in total (batch 4) in an earlier run' in _steps_text(20, 4, 20, 0.1, 'cpu')


def test_fit_history_records_where_it_resumed(tmp_path):
    from nsp_explore.train import TrainConfig, fit
    cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=1)
    stop = lambda step, out, h: (_ for _ in ()).throw(KeyboardInterrupt) if step == 4 else None
    with pytest.raises(KeyboardInterrupt): fit(fresh(), toy_data, toy_loss, cfg, ckpt_path=tmp_path / 'c.pt', callbacks=[stop], progress_bar=False)
    assert fit(fresh(), toy_data, toy_loss, cfg, ckpt_path=tmp_path / 'c.pt', progress_bar=False).start_step == 4


# ---------------------------------------------------------------- 11. clear errors that name the field
def _toy_pair():
    from nsp_explore.transformer import ScaleTransformer, ToyTokenizer, TransformerConfig
    torch.manual_seed(0)
    tok = ToyTokenizer((1, 4, 16), token_dim=8, codebook_size=8, seed=0)
    return tok, ScaleTransformer.for_tokenizer(TransformerConfig.preset('nano', n_layer=1, d_model=32, n_head=2), tok, 2).eval()


@pytest.mark.parametrize('kw, match', [
    (dict(n=2, top_p=1.5), 'top_p must be'), (dict(labels=[0.5, 1.0]), 'labels must be integer'),
    (dict(n=2, top_k=2.5), 'top_k must be'), (dict(n=0), 'n must be a positive integer'),
    (dict(n=-2), 'n must be a positive integer'), (dict(n=2, batch_size=0), 'batch_size must be'),
    (dict(n=2, batch_size=-1), 'batch_size must be'), (dict(n=2, temperature=0.0), 'temperature must be'),
    (dict(n=2, cfg_scale=float('nan')), 'cfg_scale must be'), (dict(n=2.5), 'n must be a positive integer'),
])
def test_sample_refuses_impossible_arguments(kw, match):
    from nsp_explore.generate import sample
    tok, model = _toy_pair()
    with pytest.raises(ValueError, match=match): sample(model, tok, **kw)


def test_sample_still_accepts_good_arguments():
    from nsp_explore.generate import sample
    tok, model = _toy_pair()
    out = sample(model, tok, labels=[1.0, 0], top_p=1.0, top_k=np.int64(3), n=2, batch_size=1, temperature=np.float32(0.7))
    assert out['points'].shape[0] == 2 and out['labels'].tolist() == [1, 0]


def test_normalizer_fit_on_empty_clouds():
    from nsp_explore.data import Normalizer
    with pytest.raises(ValueError, match='Normalizer.fit'): Normalizer('global').fit([np.zeros((0, 3))])
    with pytest.raises(ValueError, match='Normalizer.fit'): Normalizer('global').fit([])


def test_bad_lod_index_is_an_error_naming_it():
    from nsp_explore.lod import LoDTree, build_lod
    from nsp_explore.tokenizer import PointNSPTokenizer
    tok = PointNSPTokenizer(tiny_tok_cfg())
    x = torch.randn(1, 64, 3)
    good = build_lod(x, tok.lod_scales).index
    tok(x, lod=good)
    out_of_range = good.clone(); out_of_range[0, 5] = 64
    with pytest.raises(ValueError, match=r'LoD index has values in \[0, 64\], outside \[0, 64\)'): tok(x, lod=out_of_range)
    negative = good.clone(); negative[0, 5] = -1
    with pytest.raises(ValueError, match='LoD index'): tok(x, lod=negative)
    repeated = good.clone(); repeated[0, 5] = repeated[0, 6]
    with pytest.raises(ValueError, match='repeats a point'): tok(x, lod=repeated)
    with pytest.raises(ValueError, match='integers'): LoDTree.from_index(good.float(), tok.lod_scales)


def test_checkpoint_without_model_and_legacy_format(tmp_path):
    from nsp_explore.train import CheckpointError, load_checkpoint, save_checkpoint
    m = Toy()
    ck = torch.load(save_checkpoint(tmp_path / 'ok.pt', m, step=1), weights_only=True)
    del ck['model']; torch.save(ck, tmp_path / 'nomodel.pt')
    with pytest.raises(CheckpointError, match="has no 'model' entry"): load_checkpoint(tmp_path / 'nomodel.pt', m)
    ck = torch.load(tmp_path / 'ok.pt', weights_only=True)
    torch.save(ck, tmp_path / 'legacy.pt', _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match='legacy') as e: load_checkpoint(tmp_path / 'legacy.pt', m)
    assert 'truncated' not in str(e.value)


@pytest.mark.parametrize('make, match', [
    (lambda: __import__('nsp_explore.train', fromlist=['x']).TrainConfig(lr=-1), 'TrainConfig.lr must be'),
    (lambda: __import__('nsp_explore.train', fromlist=['x']).TrainConfig(lr=0.0), 'TrainConfig.lr must be > 0'),
    (lambda: __import__('nsp_explore.train', fromlist=['x']).TrainConfig(steps=2.5), 'TrainConfig.steps must be an int'),
    (lambda: __import__('nsp_explore.train', fromlist=['x']).TrainConfig(steps='10'), 'TrainConfig.steps must be an int'),
    (lambda: __import__('nsp_explore.train', fromlist=['x']).TrainConfig(beta2=1.5), 'TrainConfig.beta2'),
    (lambda: __import__('nsp_explore.train', fromlist=['x']).TrainConfig(amp='yes'), 'TrainConfig.amp must be a bool'),
    (lambda: __import__('nsp_explore.tokenizer', fromlist=['x']).TokenizerConfig(n_points='256'), 'TokenizerConfig.n_points must be an int'),
    (lambda: __import__('nsp_explore.tokenizer', fromlist=['x']).TokenizerConfig(beta=float('inf')), 'TokenizerConfig.beta must be a finite'),
    (lambda: __import__('nsp_explore.transformer', fromlist=['x']).TransformerConfig(n_layer=-2), 'TransformerConfig.n_layer must be >= 0'),
    (lambda: __import__('nsp_explore.tour', fromlist=['x']).TourConfig(n_test=0), 'TourConfig.n_test must be >= 1'),
    (lambda: __import__('nsp_explore.train', fromlist=['x']).TrainConfig.from_dict(dict(steps='10')), 'TrainConfig.steps'),
])
def test_configs_with_wrong_types_or_impossible_values_name_the_field(make, match):
    with pytest.raises((TypeError, ValueError), match=match): make()


# ---------------------------------------------------------------- 12. SIGTERM behaves like Ctrl-C
def test_sigterm_checkpoints_at_a_step_boundary_and_resumes_exactly(tmp_path):
    from nsp_explore.train import TrainConfig, TrainingInterrupted, fit, load_checkpoint
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, log_every=1)
    straight = fit(fresh(), toy_data, toy_loss, cfg, progress_bar=False)
    calls = []
    def loss_sigterm(model, batch):
        calls.append(1)
        if len(calls) == 7: os.kill(os.getpid(), signal.SIGTERM)           # mid-step 7 (index 6)
        return toy_loss(model, batch)
    ck = tmp_path / 'run.pt'
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match=r'\(SIGTERM\) at step 7 of 12') as e:
        fit(fresh(), toy_data, loss_sigterm, cfg, ckpt_path=ck, progress_bar=False)
    assert e.value.signal == 'SIGTERM' and e.value.step == 7 and str(e.value.checkpoint) == str(ck)
    assert signal.getsignal(signal.SIGTERM) is before                       # handler restored
    assert load_checkpoint(ck)['step'] == 7                                 # the step in progress was finished
    resumed = fit(fresh(), toy_data, toy_loss, cfg, ckpt_path=ck, progress_bar=False)
    assert same_weights(straight.model, resumed.model)
    assert [r['loss'] for r in resumed.rows] == [r['loss'] for r in straight.rows]
