"""Dense checks of nsp_explore.train: schedule, parameter groups, logging, exact resume, checkpoint
errors, atomic writes, validation isolation, NaN guard, and a 2-process DDP run on CPU (gloo)."""
import math
import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

import nsp_explore.core as core
from nsp_explore.core import Config
from nsp_explore.quantize import VectorQuantizer
from nsp_explore.train import (TrainConfig, History, fit, save_checkpoint, load_checkpoint, CheckpointError,
                               WarmupCosine, param_groups, SeededBatches, unwrap_model, rng_state, set_rng_state)


# ---------------------------------------------------------------- toy pieces
class Toy(nn.Module):
    "MLP with dropout (consumes RNG) and a vector quantizer (buffers updated in training)."
    def __init__(self, width=16, p=0.2):
        super().__init__()
        self.inp = nn.Linear(3, width)
        self.drop = nn.Dropout(p)
        self.vq = VectorQuantizer(8, width, decay=0.8, dead_threshold=0.3)
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        q = self.vq(self.drop(torch.tanh(self.inp(x)))[:, None])
        return self.out(q.quantized[:, 0]).squeeze(-1), q


def toy_loss(model, batch):
    x, y = batch
    pred, q = model(x)
    mse = F.mse_loss(pred, y)
    return dict(loss=mse + q.loss, mse=mse)


class ToyDS(torch.utils.data.Dataset):
    def __init__(self, n=40, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]


def fresh(width=16, p=0.2, restart=True):
    torch.manual_seed(123)
    m = Toy(width, p)
    m.vq.restart_dead = restart
    return m


def stop_at(n):
    def cb(step, out, history):
        if step == n: raise KeyboardInterrupt
    return cb


CFG = dict(steps=24, batch_size=8, lr=1e-2, warmup_steps=4, log_every=3, ema_decay=0.9)


# ---------------------------------------------------------------- config, schedule, groups
def test_config_presets_and_validation():
    c = TrainConfig.preset('nano')
    assert isinstance(c, Config) and c.steps >= 1
    for name in ('nano', 'small', 'medium'): TrainConfig.preset(name)
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match='batch_size'): TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match='min_lr_ratio'): TrainConfig(min_lr_ratio=2)
    with pytest.raises(TypeError, match='no field'): TrainConfig.preset('nano', stepz=3)


def test_warmup_cosine_formula():
    s = WarmupCosine(5, 25, 0.2)
    for t in range(5): assert math.isclose(s(t), (t + 1) / 5)
    for t in range(5, 26):
        ref = 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (t - 5) / 20))
        assert math.isclose(s(t), ref, rel_tol=1e-12)
    assert math.isclose(s(1000), 0.2)


def test_param_groups_exclude_bias_norm_codebook_and_frozen():
    m = nn.ModuleDict(dict(lin=nn.Linear(4, 4), norm=nn.LayerNorm(4), emb=nn.Embedding(5, 4),
                           vq=VectorQuantizer(8, 4, ema=False), vq_ema=VectorQuantizer(8, 4)))
    decay, no_decay = param_groups(m, 0.1)
    ids = lambda g: {id(p) for p in g['params']}
    assert ids(decay) == {id(m['lin'].weight)}
    assert {id(m['lin'].bias), id(m['norm'].weight), id(m['emb'].weight), id(m['vq'].codebook)} <= ids(no_decay)
    assert id(m['vq_ema'].codebook) not in ids(decay) | ids(no_decay)          # requires_grad=False: left out
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0


def test_seeded_batches_pure_and_covering():
    sb = SeededBatches(10, 3, seed=5)
    seq = sum((sb(t) for t in range(10)), [])
    for e in range(3):                                        # every epoch is a permutation
        assert sorted(seq[10 * e:10 * e + 10]) == list(range(10))
    assert SeededBatches(10, 3, seed=5)(7) == sb(7)
    assert SeededBatches(10, 3, seed=6)(0) != sb(0)
    ranks = [SeededBatches(10, 3, seed=5, rank=r, world=2) for r in range(2)]
    g6 = SeededBatches(10, 6, seed=5)
    for t in range(4): assert ranks[0](t) + ranks[1](t) == g6(t)
    with pytest.raises(ValueError, match='empty'): SeededBatches(0, 3)


# ---------------------------------------------------------------- fit basics
def test_fit_learns_logs_and_returns_models():
    h = fit(fresh(p=0.0), ToyDS(), toy_loss, TrainConfig(**{**CFG, 'steps': 60}))
    steps, mse = h.series('mse')
    assert list(steps) == list(range(3, 61, 3))
    assert mse[-1] < 0.6 * mse[0]
    row = h.last()
    assert {'loss', 'mse', 'lr', 'grad_norm', 'step_time', 'items_per_s'} <= set(row)
    assert math.isclose(row['lr'], 1e-2 * WarmupCosine(4, 60, 0.1)(60), rel_tol=1e-9)
    assert h.ema_model is not None and h.model is not None
    assert not torch.equal(h.ema_model.inp.weight, h.model.inp.weight)
    fig = h.plot()
    assert {t.name for t in fig.data} >= {'loss', 'mse'}


def test_logged_grad_norm_is_the_true_norm():
    model = fresh(p=0.0)
    ref = fresh(p=0.0)
    cfg = TrainConfig(**{**CFG, 'steps': 1, 'log_every': 1, 'grad_clip': 1e-3})
    # the same batch as step 0 of the seeded stream
    idx = SeededBatches(40, 8, seed=0)(0); ds = ToyDS()
    batch = torch.utils.data.default_collate([ds[i] for i in idx])
    core.seed_everything(0)
    toy_loss(ref, batch)['loss'].backward()
    true = torch.sqrt(sum((p.grad ** 2).sum() for p in ref.parameters() if p.grad is not None))
    h = fit(model, ds, toy_loss, cfg)
    assert math.isclose(h.last('grad_norm'), float(true), rel_tol=1e-5)


def test_ema_is_the_moving_average():
    torch.manual_seed(0)
    lin = nn.Linear(2, 1)
    seen = []
    h = fit(lin, lambda t: torch.randn(4, 2), lambda m, x: dict(loss=m(x).pow(2).mean()),
            TrainConfig(steps=3, lr=0.1, warmup_steps=0, ema_decay=0.5, log_every=1),
            callbacks=[lambda s, o, hist: seen.append(lin.weight.detach().clone())])
    w0 = h.ema_model.weight  # after 3 steps: ((w_init/2 + w1/2)/2 + w2/2)/2 + w3/2 ...
    torch.manual_seed(0); init = nn.Linear(2, 1).weight.detach()
    ref = init
    for w in seen: ref = 0.5 * ref + 0.5 * w
    assert_close(w0, ref)


def test_nan_loss_raises_with_step():
    def bad(model, batch):
        x, y = batch
        return dict(loss=model(x)[0].mean() * float('nan'))
    with pytest.raises(FloatingPointError, match='at step 0'):
        fit(fresh(), ToyDS(), bad, TrainConfig(**CFG))


def test_callable_data_and_dict_items():
    class DictDS(ToyDS):
        def __getitem__(self, i): return dict(points=self.x[i], target=self.y[i], name=f'item{i}')
    seen = []
    def loss(m, b):
        seen.append(b['name'][:2])
        return toy_loss(m, (b['points'], b['target']))
    fit(fresh(), DictDS(), loss, TrainConfig(**{**CFG, 'steps': 2}))
    assert all(isinstance(n, list) and n[0].startswith('item') for n in seen)
    calls = []
    fit(fresh(), lambda t: calls.append(t) or ToyDS()[t:t + 4], toy_loss, TrainConfig(**{**CFG, 'steps': 5}))
    assert calls == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- resume
def test_resume_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(**CFG)
    straight = fit(fresh(), ToyDS(), toy_loss, cfg)
    ck = tmp_path / 'run.pt'
    with pytest.raises(KeyboardInterrupt):
        fit(fresh(), ToyDS(), toy_loss, cfg, ckpt_path=ck, callbacks=[stop_at(11)])
    assert load_checkpoint(ck)['step'] == 11
    other = Toy(); other.load_state_dict(fresh().state_dict())          # a fresh object with the initial weights
    resumed = fit(other, ToyDS(), toy_loss, cfg, ckpt_path=ck)
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k                                      # incl. VQ buffers and codebook
    for a, b in zip(straight.ema_model.parameters(), resumed.ema_model.parameters()): assert torch.equal(a, b)
    assert [r['loss'] for r in straight.rows] == [r['loss'] for r in resumed.rows]
    assert [r['step'] for r in resumed.rows] == list(range(3, 25, 3))
    # resuming a finished run does nothing
    again = fit(Toy(), ToyDS(), toy_loss, cfg, ckpt_path=ck)
    assert torch.equal(again.model.inp.weight, straight.model.inp.weight)


def test_ctrl_c_mid_step_stops_at_the_step_boundary_and_resumes_exactly(tmp_path):
    import signal
    before = signal.getsignal(signal.SIGINT)       # default, or SIG_IGN when run in a background job
    cfg = TrainConfig(**CFG)
    straight = fit(fresh(), ToyDS(), toy_loss, cfg)
    calls = []
    def loss_with_sigint(model, batch):
        calls.append(1)
        if len(calls) == 12: os.kill(os.getpid(), signal.SIGINT)      # Ctrl-C in the middle of step 12 (index 11)
        return toy_loss(model, batch)
    ck = tmp_path / 'run.pt'
    with pytest.raises(KeyboardInterrupt):
        fit(fresh(), ToyDS(), loss_with_sigint, cfg, ckpt_path=ck)
    assert load_checkpoint(ck)['step'] == 12                           # the step in progress was finished
    assert signal.getsignal(signal.SIGINT) is before                    # handler restored
    resumed = fit(fresh(), ToyDS(), toy_loss, cfg, ckpt_path=ck)
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_would_differ_without_restoring_rng(tmp_path):
    "Guard that the exactness test can fail: dropout draws differ if the RNG state is not restored."
    cfg = TrainConfig(**CFG)
    straight = fit(fresh(), ToyDS(), toy_loss, cfg)
    ck = tmp_path / 'run.pt'
    with pytest.raises(KeyboardInterrupt):
        fit(fresh(), ToyDS(), toy_loss, cfg, ckpt_path=ck, callbacks=[stop_at(11)])
    data = torch.load(ck, weights_only=True)
    data['rng'] = rng_state() | dict(torch=torch.Generator().manual_seed(999).get_state())
    core.atomic_save(data, ck)
    resumed = fit(fresh(), ToyDS(), toy_loss, cfg, ckpt_path=ck)
    assert not torch.equal(straight.model.inp.weight, resumed.model.inp.weight)


def test_periodic_checkpoints_and_validation_do_not_perturb(tmp_path):
    cfg = TrainConfig(**{**CFG, 'ckpt_every': 5, 'val_every': 4})
    steps_in_file = []
    def look(step, out, h):
        if step in (6, 11): steps_in_file.append(load_checkpoint(tmp_path / 'c.pt')['step'])
    def val_fn(m):
        torch.rand(100); import random; random.random()          # consumes every RNG
        assert not m.training
        return dict(val_mse=1.0)
    a = fit(fresh(), ToyDS(), toy_loss, cfg, ckpt_path=tmp_path / 'c.pt', val_fn=val_fn, callbacks=[look])
    b = fit(fresh(), ToyDS(), toy_loss, TrainConfig(**CFG))
    assert steps_in_file == [5, 10]
    assert [r['step'] for r in a.val] == [4, 8, 12, 16, 20, 24]
    assert torch.equal(a.model.inp.weight, b.model.inp.weight)
    ck = load_checkpoint(tmp_path / 'c.pt')
    assert ck['step'] == 24 and ck['train_config']['ckpt_every'] == 5
    assert set(ck['versions']) >= {'torch', 'python', 'nsp_explore'} and 'torch' in ck['rng']
    assert ck['extra']['sampler']['n'] == 40


# ---------------------------------------------------------------- checkpoint errors
@pytest.fixture
def real_ckpt(tmp_path):
    m = fresh()
    return save_checkpoint(tmp_path / 'ok.pt', m, step=3, config=TrainConfig()), m


def test_checkpoint_round_trip_and_contents(real_ckpt):
    path, m = real_ckpt
    m2 = Toy()
    ck = load_checkpoint(path, m2)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()): assert torch.equal(a, b), k
    assert ck['step'] == 3 and ck['model_class'].endswith('Toy') and ck['train_config'] == TrainConfig().to_dict()
    torch.load(path, weights_only=True)                                  # plain tensors and containers only


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'): load_checkpoint(tmp_path / 'nope.pt')
    with pytest.raises(CheckpointError, match='directory'): load_checkpoint(tmp_path)


@pytest.mark.parametrize('cut', [0, 10, 0.5, -20])
def test_truncated_checkpoint(real_ckpt, cut):
    path, _ = real_ckpt
    data = path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match='corrupt or truncated'): load_checkpoint(path)


def test_garbage_checkpoint(tmp_path):
    p = tmp_path / 'junk.pt'
    p.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CheckpointError, match='corrupt'): load_checkpoint(p)


def test_foreign_checkpoints(tmp_path):
    torch.save({'state_dict': {'w': torch.zeros(2)}}, tmp_path / 'a.pt')
    with pytest.raises(CheckpointError, match='not an nsp_explore checkpoint'): load_checkpoint(tmp_path / 'a.pt')
    torch.save([1, 2, 3], tmp_path / 'b.pt')
    with pytest.raises(CheckpointError, match='not an nsp_explore checkpoint'): load_checkpoint(tmp_path / 'b.pt')
    torch.save({'x': Path('/tmp')}, tmp_path / 'c.pt')                  # a pickled Python object
    with pytest.raises(CheckpointError, match='weights_only=False'): load_checkpoint(tmp_path / 'c.pt')


def test_mismatched_model(real_ckpt):
    path, _ = real_ckpt
    with pytest.raises(CheckpointError, match=r'inp.weight: checkpoint \(16, 3\) vs model \(32, 3\)'):
        load_checkpoint(path, Toy(width=32))
    class Extra(Toy):
        def __init__(self):
            super().__init__(); self.head = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint.*head.weight"):
        load_checkpoint(path, Extra())
    with pytest.raises(CheckpointError, match=r"unexpected key.*out.weight"):
        load_checkpoint(path, nn.ModuleDict(dict(inp=nn.Linear(3, 16))))
    m = nn.ModuleDict(dict(inp=nn.Linear(3, 16)))
    load_checkpoint(path, m, strict=False)                                 # non-strict loads the common keys
    assert torch.equal(m['inp'].weight, fresh().inp.weight)


def test_mismatched_model_config(tmp_path):
    from dataclasses import dataclass
    @dataclass
    class NetCfg(Config):
        width: int = 8
        depth: int = 2
    class Net(nn.Module):
        def __init__(self, cfg):
            super().__init__(); self.cfg = cfg; self.lin = nn.Linear(3, 3)
    p = save_checkpoint(tmp_path / 'n.pt', Net(NetCfg()))
    assert load_checkpoint(p)['model_config'] == dict(width=8, depth=2)
    load_checkpoint(p, Net(NetCfg()))
    with pytest.raises(CheckpointError, match=r"different config.*'depth': \(2, 3\)"):
        load_checkpoint(p, Net(NetCfg(depth=3)))


def test_atomic_write_keeps_old_checkpoint_on_crash(tmp_path, monkeypatch):
    m = fresh()
    p = save_checkpoint(tmp_path / 'c.pt', m, step=1)
    before = p.read_bytes()
    real_save = torch.save
    def crash(obj, f, *a, **k):
        real_save({'partial': torch.zeros(3)}, f)
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError, match='disk full'): save_checkpoint(p, m, step=2)
    monkeypatch.setattr(torch, 'save', real_save)
    assert p.read_bytes() == before and load_checkpoint(p)['step'] == 1
    assert [f.name for f in tmp_path.iterdir()] == ['c.pt']             # no temporary file left


def test_rng_state_round_trip():
    s = rng_state()
    a = (torch.rand(3), __import__('random').random(), __import__('numpy').random.rand())
    set_rng_state(s)
    b = (torch.rand(3), __import__('random').random(), __import__('numpy').random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# ---------------------------------------------------------------- DDP on CPU (gloo)
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), NSP_PROGRESS='0')
    torch.set_num_threads(1)
    cfg = TrainConfig(**{**CFG, 'batch_size': 4, 'ema_decay': 0.0, 'steps': 12})
    h = fit(fresh(p=0.0, restart=False), ToyDS(), toy_loss, cfg, device='cpu', ckpt_path=out + '.pt')
    torch.save({k: v.clone() for k, v in h.model.state_dict().items()}, f'{out}.{rank}')
    torch.save(len(h.rows), f'{out}.rows{rank}')


def test_ddp_two_processes_equal_single_process_with_double_batch(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / 'ddp')
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    sd0, sd1 = torch.load(out + '.0'), torch.load(out + '.1')
    for k in sd0: assert torch.equal(sd0[k], sd1[k]), k                 # ranks agree
    assert torch.load(out + '.rows0') == 4 and torch.load(out + '.rows1') == 0   # only rank 0 logs
    assert load_checkpoint(out + '.pt')['step'] == 12
    # restarts pick random vectors from the local batch, so they are off for this comparison
    single = fit(fresh(p=0.0, restart=False), ToyDS(), toy_loss, TrainConfig(**{**CFG, 'batch_size': 8, 'ema_decay': 0.0, 'steps': 12}))
    for k, v in single.model.state_dict().items():
        if v.is_floating_point(): assert_close(sd0[k], v, rtol=1e-4, atol=1e-5, msg=k)
