"""The GPU suite: everything a lent GPU should measure, in one command that fits one short call.

    python benchmarks/gpu_suite.py               # on a CUDA machine: ~7 minutes on one H100 (see below)
    python benchmarks/gpu_suite.py --dry-run     # on a CPU: nano sizes, seconds (what the tests run)

Sections, in this order (each timed, each failure recorded rather than fatal, results rewritten after every section):
  cuda_tests      pytest's `cuda`-marked tests (the CUDA paths against their CPU references)
  lod             FPS (every backend) and the full LoD tree, 64 x 2048 points
  metrics         Chamfer matrix and auction EMD at 2048 points
  transformer     PointNSP-s (`small`): sampling at batch 1 and 64 (2048 points), bf16 training step and MFU
  profile         where a nano tokenizer and generator training step spends its time (data, forward, backward,
                  optimizer; the top operators by device and host time, written to profile_<device>.txt)
  nano_pretrained the shipped nano pair's recipe (data_samples/pretrained/nano.json: its tokenizer config and step
                  counts, capped by the budget) trained here with scripts/train_pretrained.py, written to --pretrained-out
  soft_mask       ablation none / fixed / learned soft mask on the nano pair's tokens (validation loss)
  pointnsp_s      a short PointNSP-s training of both networks, per-scale reconstruction CD
Writes benchmarks/results/gpu_suite_<device>.json (and a copy under $OUT when that is set).
Device time left after it: `scripts/gpu_generators.py` trains larger generators on the shipped tokenizer (d_model
192-256, 640 shapes per class, 4 000-8 000 steps) and brings them back as pair folders to score on the CPU.

Time on the last H100 (2026-11-27, gpu_suite_cuda.json + gpu_suite_pointnsp_s_cuda.json): 512 s in all, with training
budgets 150 / 36 / 60 s (nano_pretrained / soft_mask / pointnsp_s); the four CUDA tests took 106 s, the transformer
section 86 s. The budgets are now 90 / 24 / 40 s, about 90 s less by that run's overheads (not yet measured on a GPU);
`--budget-scale 0.5` halves them for a rerun. The pytest call reports its slowest tests, to find the rest.
"""
from __future__ import annotations
import argparse, copy, json, os, shutil, subprocess, sys, time, traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, print_table   # noqa: E402  (puts the repo on sys.path)
import torch

from nsp_explore.core import Timer, seed_everything
from nsp_explore.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
PEAKS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}   # bf16 dense tensor-core TFLOP/s


def timed_fit(make_model, data, loss_fn, budget_s: float, device, probe: int = 8, **cfg):
    "Train a fresh `make_model()` for as many steps as fit in `budget_s` (speed probed on `probe` steps first)."
    m = make_model()
    per_step = _step_s(m, data, loss_fn, device, cfg.get('batch_size', 32), probe, **{k: v for k, v in cfg.items() if k != 'batch_size'})
    steps = max(probe, int(budget_s / per_step))
    m = make_model()
    t = time.perf_counter()
    hist = fit(m, data, loss_fn, TrainConfig(**{**cfg, 'steps': steps, 'warmup_steps': max(1, steps // 10),
                                                'log_every': max(1, steps // 10)}), device=device, progress_bar=False)
    return m.eval(), hist, dict(steps=steps, train_s=time.perf_counter() - t, probe_ms_per_step=1000 * per_step)


def sec_cuda_tests(a, dev):
    if dev.type != 'cuda': return [dict(note='no CUDA: skipped')]
    r = subprocess.run([sys.executable, '-m', 'pytest', 'tests', '-q', '-m', 'cuda', '-p', 'no:cacheprovider', '--durations=6'],
                       cwd=ROOT, capture_output=True, text=True, timeout=a.test_timeout)
    tail = (r.stdout + r.stderr).strip().splitlines()[-25:]               # with the slowest tests' durations
    return [dict(returncode=r.returncode, summary=tail[-1] if tail else '', tail='\n'.join(tail))]


def sec_lod(a, dev):
    from nsp_explore.lod import fps_order, build_lod
    import importlib.util
    HAS_TRITON = importlib.util.find_spec('triton') is not None
    B, N = (4, 256) if a.dry_run else (64, 2048)
    x = torch.rand(B, N, 3, device=dev)
    rows = []
    for backend in ['torch'] + (['triton'] if dev.type == 'cuda' and HAS_TRITON else []):
        t = Timer.measure(lambda: fps_order(x, backend=backend), repeats=5, warmup=2, device=dev)
        rows.append(dict(op='fps_order', backend=backend, B=B, N=N, ms=t['median_ms']))
    ref = fps_order(x.cpu(), backend='torch')
    for r in rows: r['equals_cpu'] = bool(torch.equal(fps_order(x, backend=r['backend']).cpu(), ref))
    scales = (1, 4, 16, 64, 256, 1024, 2048) if not a.dry_run else (1, 4, 16, 64, 256)
    t = Timer.measure(lambda: build_lod(x, scales), repeats=3, warmup=1, device=dev)
    rows.append(dict(op='build_lod', backend='auto', B=B, N=N, ms=t['median_ms'], ms_per_cloud=t['median_ms'] / B))
    return rows


def sec_metrics(a, dev):
    from nsp_explore import metrics as M
    S, N = (4, 256) if a.dry_run else (64, 2048)
    X, Y = torch.rand(S, N, 3, device=dev), torch.rand(S, N, 3, device=dev)
    t = Timer.measure(lambda: M.pairwise_distances(X, Y, 'cd', device=dev), repeats=2, warmup=1, device=dev)
    rows = [dict(op='chamfer matrix', S=S, R=S, N=N, s=t['median_ms'] / 1000, pairs_per_s=S * S / (t['median_ms'] / 1000))]
    P = 4 if a.dry_run else 16
    Yn = X[:P] + 0.02 * torch.randn_like(X[:P])
    t = Timer.measure(lambda: M.emd_auction(X[:P], Yn), repeats=2, warmup=1, device=dev)
    ex = M.emd_exact(X[:P].cpu(), Yn.cpu())
    au = M.emd_auction(X[:P], Yn).cpu()
    rows.append(dict(op='emd_auction (near pairs)', pairs=P, N=N, s=t['median_ms'] / 1000,
                     max_rel_err_vs_exact=float(((au - ex) / ex).abs().max())))
    return rows


def sec_transformer(a, dev):
    from bench_transformer import build, bench_sampling, bench_training
    preset = 'nano' if a.dry_run else 'small'
    tok, model = build(preset, dev, n_classes=10)
    peak = next((v for k, v in PEAKS.items() if dev.type == 'cuda' and k in torch.cuda.get_device_name(0)), None)
    rows = bench_sampling(tok, model, (1, 4) if a.dry_run else (1, 64), 1 if a.dry_run else 3, dev, preset)
    rows += bench_training(tok, model, 4 if a.dry_run else 32, 2 if a.dry_run else 8, dev, preset, peak)
    n_tok = sum(p.numel() for p in tok.parameters())
    rows.append(dict(bench='params', preset=preset, tokenizer_M=n_tok / 1e6, transformer_M=model.n_params() / 1e6,
                     total_M=(n_tok + model.n_params()) / 1e6))
    return rows


def sec_pointnsp_s(a, dev):
    from nsp_explore.train_tokenizer import tokenizer_datasets, tokenizer_loss, evaluate_tokenizer
    from nsp_explore.tokenizer import PointNSPTokenizer, TokenizerConfig
    from nsp_explore.transformer import ScaleTransformer, TransformerConfig
    from nsp_explore.generate import cache_tokens, next_scale_loss, sample
    preset = 'nano' if a.dry_run else 'small'
    cfg = TokenizerConfig.preset(preset)
    train, val = tokenizer_datasets(cfg, n_train=2 if a.dry_run else 20, n_val=1 if a.dry_run else 5, cache_dir=a.cache_dir)
    mk = lambda: PointNSPTokenizer(cfg).set_frame(train.dataset.normalizer)
    tok, h, info = timed_fit(mk, train, tokenizer_loss, a.budget * 0.55, dev, batch_size=4 if a.dry_run else 16, lr=5e-4)
    rows = [dict(stage='tokenizer', preset=preset, **info, final_loss=h.last('loss'))]
    for r in evaluate_tokenizer(tok, val): rows.append(dict(stage='tokenizer_val', **r))
    seqs = cache_tokens(tok, train, device=dev).to(dev)
    mkg = lambda: ScaleTransformer.for_tokenizer(TransformerConfig.preset(preset), tok, len(train.dataset.categories))
    gen, hg, info = timed_fit(mkg, seqs.sampler(8 if a.dry_run else 32, 0), next_scale_loss, a.budget * 0.3, dev,
                              batch_size=8 if a.dry_run else 32, lr=4e-4)
    t = time.perf_counter(); out = sample(gen.to(dev), tok, labels=torch.arange(4) % gen.n_classes, seed=0)
    rows.append(dict(stage='generator', preset=preset, **info, final_loss=hg.last('loss'),
                     sample4_s=time.perf_counter() - t, points=tuple(out['points'].shape)))
    return rows


def shipped_recipe():
    "The shipped nano pair's tokenizer config and step counts (from its record, data_samples/pretrained/nano.json)."
    from nsp_explore.tokenizer import TokenizerConfig
    rec = json.loads((ROOT / 'data_samples' / 'pretrained' / 'nano.json').read_text())
    return TokenizerConfig(**rec['tokenizer_config']), rec['tokenizer_steps'], rec['generator_steps']


def _step_s(model, data, loss_fn, dev, batch_size, steps=8, **cfg):
    "Seconds per training step of `model`, after 2 warm-up steps (measured on an H100: the first steps, with kernel\
    compilation, took 3-10x a step, and a probe that counted them gave PointNSP-s 22 steps where 70 fitted)."
    run = lambda n: fit(model, data, loss_fn, TrainConfig(**{**cfg, 'steps': n, 'batch_size': batch_size, 'warmup_steps': 1,
                                                             'log_every': n}), device=dev, progress_bar=False)
    run(2)
    t = time.perf_counter(); run(steps)
    return (time.perf_counter() - t) / steps


def sec_profile(a, dev):
    "Split one training step of the nano tokenizer and generator into data / forward / backward / optimizer time."
    from nsp_explore.tokenizer import PointNSPTokenizer
    from nsp_explore.train_tokenizer import tokenizer_datasets, tokenizer_loss
    from nsp_explore.transformer import ScaleTransformer, TransformerConfig
    from nsp_explore.generate import cache_tokens, next_scale_loss
    from nsp_explore.data import collate
    from nsp_explore.train import to_device
    cfg, _, _ = shipped_recipe()
    train, _ = tokenizer_datasets(cfg, n_train=2 if a.dry_run else None, cache_dir=a.cache_dir)
    torch.manual_seed(0)
    tok = PointNSPTokenizer(cfg).set_frame(train.dataset.normalizer).to(dev).train()
    gen = ScaleTransformer.for_tokenizer(TransformerConfig.preset('nano'), tok, len(train.dataset.categories)).to(dev)
    seqs = cache_tokens(tok.eval(), train, device=dev).to(dev); tok.train()
    sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)
    rows, texts = [], []
    for name, model, fetch, loss_fn in [
            ('tokenizer', tok, lambda: to_device(collate([train[i] for i in range(min(32, len(train)))]), dev),
             tokenizer_loss),
            ('generator', gen, lambda: to_device(seqs.batch(torch.arange(min(64, len(seqs)))), dev),
             next_scale_loss)]:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        parts = dict(data=[], forward=[], backward=[], optimizer=[])
        def step(record):
            sync(); t0 = time.perf_counter(); b = fetch(); sync(); t1 = time.perf_counter()
            loss = loss_fn(model, b)['loss']; sync(); t2 = time.perf_counter()
            loss.backward(); sync(); t3 = time.perf_counter()
            opt.step(); opt.zero_grad(set_to_none=True); sync(); t4 = time.perf_counter()
            if record:
                for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)): parts[k].append(1000 * v)
        for _ in range(2): step(False)
        for _ in range(2 if a.dry_run else 5): step(True)
        rows.append(dict(model=name, **{f'{k}_ms': sorted(v)[len(v) // 2] for k, v in parts.items()}))
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(2): step(False)
        for key in (['self_cuda_time_total'] if dev.type == 'cuda' else []) + ['self_cpu_time_total']:
            texts.append(f'== {name}, 2 steps, sorted by {key}\n' + prof.key_averages().table(sort_by=key, row_limit=15))
    txt = '\n\n'.join(texts)
    path = RESULTS / f"profile_{'dry' if a.dry_run else dev.type}.txt"
    path.write_text(txt)
    if os.environ.get('OUT'): (Path(os.environ['OUT']) / path.name).write_text(txt)
    return rows


def sec_nano_pretrained(a, dev):
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import train_pair
    from nsp_explore.tokenizer import PointNSPTokenizer
    from nsp_explore.transformer import ScaleTransformer, TransformerConfig
    from nsp_explore.train_tokenizer import tokenizer_datasets, tokenizer_loss
    from nsp_explore.generate import cache_tokens, next_scale_loss
    cfg, t_ship, g_ship = shipped_recipe()
    train, _ = tokenizer_datasets(cfg, n_train=2 if a.dry_run else None, cache_dir=a.cache_dir)
    # probe both speeds, then give each network its share of the budget (at most the shipped step counts)
    tok = PointNSPTokenizer(cfg)
    tok_s = _step_s(tok, train, tokenizer_loss, dev, 32)
    gen = ScaleTransformer.for_tokenizer(TransformerConfig.preset('nano'), tok, len(train.dataset.categories))
    gen_s = _step_s(gen, cache_tokens(tok.eval(), train, device=dev).to(dev).sampler(64, 0), next_scale_loss, dev, 64)
    tsteps = 20 if a.dry_run else min(t_ship, int(a.budget * 0.6 / tok_s))
    gsteps = 20 if a.dry_run else min(g_ship, int(a.budget * 0.3 / gen_s))
    rec = train_pair(tsteps, gsteps, Path(a.pretrained_out), dev, n_train=2 if a.dry_run else None, cache_dir=a.cache_dir,
                     tok_cfg=cfg)
    return [dict(tokenizer_steps=tsteps, shipped_tokenizer_steps=t_ship, generator_steps=gsteps,
                 shipped_generator_steps=g_ship, tokenizer_ms_per_step=1000 * tok_s, generator_ms_per_step=1000 * gen_s,
                 tokenizer_s=rec['tokenizer_s'], generator_s=rec['generator_s'],
                 tokenizer_val_cd=rec['tokenizer_val_cd'], generator_loss=rec['generator_loss'], out=str(a.pretrained_out))]


def sec_soft_mask(a, dev):
    from nsp_explore.train_tokenizer import load_tokenizer, tokenizer_datasets
    from nsp_explore.transformer import ScaleTransformer, TransformerConfig
    from nsp_explore.generate import cache_tokens, next_scale_loss
    tok = load_tokenizer(Path(a.pretrained_out) / 'nano_tokenizer.pt').to(dev)
    train, val = tokenizer_datasets(tok.cfg, n_train=2 if a.dry_run else None, n_val=1 if a.dry_run else None, cache_dir=a.cache_dir)
    tr, va = cache_tokens(tok, train, device=dev, passes=tok.cfg.fps_trajectories).to(dev), cache_tokens(tok, val, device=dev)
    rows = []
    for mode in ('none', 'fixed', 'learned'):
        seed_everything(0)
        # dense attention: FlexAttention recompiles a score_mod for every prefix length (measured: 2 s a step)
        mk = lambda: ScaleTransformer.for_tokenizer(TransformerConfig.preset('nano', soft_mask=mode, attn='dense'), tok,
                                                    len(train.dataset.categories))
        gen, h, info = timed_fit(mk, tr.sampler(64, 0), next_scale_loss, a.budget / 3, dev, batch_size=64, lr=2e-3)
        with torch.no_grad():
            vb = va.batch(torch.arange(len(va)))
            vl = next_scale_loss(gen, vb)
        rows.append(dict(soft_mask=mode, **info, train_loss=h.last('loss'), val_loss=float(vl['loss']),
                         **{f'val_acc_{k}': float(vl[f'acc_{k}']) for k in range(len(tok.scales))}))
    return rows


# order: the CUDA tests (the check worth most), the cheap measurements, the step profile, then the pretrained pair,
# its ablation, PointNSP-s
SECTIONS = dict(cuda_tests=(sec_cuda_tests, 0), lod=(sec_lod, 0), metrics=(sec_metrics, 0), transformer=(sec_transformer, 0),
                profile=(sec_profile, 0), nano_pretrained=(sec_nano_pretrained, 90),
                soft_mask=(sec_soft_mask, 24), pointnsp_s=(sec_pointnsp_s, 40))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dry-run', action='store_true', help='nano sizes, a few steps: a CPU check of the whole suite')
    ap.add_argument('--only', nargs='*', default=None, help=f'sections to run (default all): {list(SECTIONS)}')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--cache-dir', default=os.environ.get('NSP_CACHE_DIR'), help='SyntheticShapes cache (pre-built data)')
    ap.add_argument('--pretrained-out', default=None, help='where the nano pair goes (default: data_samples/pretrained, '
                                                           'or a temporary folder with --dry-run)')
    ap.add_argument('--results', default=None, help='JSON path (default benchmarks/results/gpu_suite_<device>.json)')
    ap.add_argument('--test-timeout', type=int, default=150)
    ap.add_argument('--budget-scale', type=float, default=1.0, help='multiply every training budget (a short rerun: 0.5)')
    a = ap.parse_args()
    dev = torch.device(a.device)
    if a.pretrained_out is None:
        a.pretrained_out = str(Path(os.environ.get('TMPDIR', '/tmp')) / 'nsp_pretrained_dry') if a.dry_run else str(ROOT / 'data_samples' / 'pretrained')
    m = machine(); m['device'] = dev.type
    if dev.type == 'cuda': m['gpu'] = torch.cuda.get_device_name(0)
    path = Path(a.results) if a.results else RESULTS / f"gpu_suite_{'dry' if a.dry_run else dev.type}.json"
    report = dict(benchmark='gpu_suite', date=time.strftime('%Y-%m-%d %H:%M:%S'), dry_run=a.dry_run, machine=m, sections={})
    t_all = time.perf_counter()
    for name, (fn, budget) in SECTIONS.items():
        if a.only and name not in a.only: continue
        a.budget = 2 if a.dry_run else budget * a.budget_scale
        t = time.perf_counter()
        try:
            rows, err = fn(a, dev), None
        except Exception as e:                       # one broken section must not cost the others
            rows, err = [], f'{type(e).__name__}: {e}\n' + traceback.format_exc()[-3000:]
        report['sections'][name] = dict(rows=rows, seconds=time.perf_counter() - t, error=err)
        print(f'== {name}: {time.perf_counter() - t:.1f} s' + (f'  ERROR {err.splitlines()[0]}' if err else ''), flush=True)
        if rows: print_table([{k: v for k, v in r.items() if k != 'tail'} for r in rows])
        report['total_s'] = time.perf_counter() - t_all
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        out = Path(os.environ['OUT']) / path.name if os.environ.get('OUT') else None
        if out is not None and out.resolve() != path.resolve(): shutil.copy(path, out)
    print(f'wrote {path} in {report.get("total_s", 0):.0f} s')
    return report


if __name__ == '__main__':
    main()
