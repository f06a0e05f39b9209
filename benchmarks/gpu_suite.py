"""The GPU suite: everything a lent GPU should measure, in one command that fits one short call.

    python benchmarks/gpu_suite.py               # on a CUDA machine: ~6 minutes on one H100/H200
    python benchmarks/gpu_suite.py --dry-run     # on a CPU: nano sizes, seconds (what the tests run)

Sections (each timed, each failure recorded rather than fatal, results rewritten after every section):
  lod             FPS (every backend) and the full LoD tree, 64 x 2048 points
  metrics         Chamfer matrix and auction EMD at 2048 points
  transformer     PointNSP-s (`small`): sampling at batch 1 and 64 (2048 points), bf16 training step and MFU
  pointnsp_s      a short PointNSP-s training of both networks, per-scale reconstruction CD
  nano_pretrained the pretrained nano pair (scripts/train_pretrained.py), checkpoints written to --pretrained-out
  soft_mask       ablation none / fixed / learned soft mask on the nano pair's tokens (validation loss)
  cuda_tests      pytest's `cuda`-marked tests (the CUDA paths against their CPU references)
Writes benchmarks/results/gpu_suite_<device>.json (and a copy under $OUT when that is set).
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
    t = time.perf_counter(); fit(m, data, loss_fn, TrainConfig(**{**cfg, 'steps': probe, 'warmup_steps': 1, 'log_every': probe}),
                                 device=device, progress_bar=False)
    per_step = (time.perf_counter() - t) / probe
    steps = max(probe, int(budget_s / per_step))
    m = make_model()
    t = time.perf_counter()
    hist = fit(m, data, loss_fn, TrainConfig(**{**cfg, 'steps': steps, 'warmup_steps': max(1, steps // 10),
                                                'log_every': max(1, steps // 10)}), device=device, progress_bar=False)
    return m.eval(), hist, dict(steps=steps, train_s=time.perf_counter() - t, probe_ms_per_step=1000 * per_step)


def sec_cuda_tests(a, dev):
    if dev.type != 'cuda': return [dict(note='no CUDA: skipped')]
    r = subprocess.run([sys.executable, '-m', 'pytest', 'tests', '-q', '-m', 'cuda', '-p', 'no:cacheprovider'],
                       cwd=ROOT, capture_output=True, text=True, timeout=a.test_timeout)
    tail = (r.stdout + r.stderr).strip().splitlines()[-15:]
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
    seqs = cache_tokens(tok, train, device=dev)
    mkg = lambda: ScaleTransformer.for_tokenizer(TransformerConfig.preset(preset), tok, len(train.dataset.categories))
    gen, hg, info = timed_fit(mkg, seqs.sampler(8 if a.dry_run else 32, 0), next_scale_loss, a.budget * 0.3, dev,
                              batch_size=8 if a.dry_run else 32, lr=4e-4)
    t = time.perf_counter(); out = sample(gen.to(dev), tok, labels=torch.arange(4) % gen.n_classes, seed=0)
    rows.append(dict(stage='generator', preset=preset, **info, final_loss=hg.last('loss'),
                     sample4_s=time.perf_counter() - t, points=tuple(out['points'].shape)))
    return rows


def sec_nano_pretrained(a, dev):
    sys.path.insert(0, str(ROOT / 'scripts'))
    from train_pretrained import train_pair
    from nsp_explore.tokenizer import PointNSPTokenizer, TokenizerConfig
    from nsp_explore.train_tokenizer import tokenizer_datasets, tokenizer_loss
    # probe the speeds, then give each network its share of the budget
    cfg = TokenizerConfig.preset('nano')
    train, _ = tokenizer_datasets(cfg, n_train=2 if a.dry_run else None, cache_dir=a.cache_dir)
    probe = PointNSPTokenizer(cfg); t = time.perf_counter()
    fit(probe, train, tokenizer_loss, TrainConfig(steps=8, batch_size=32, warmup_steps=1, log_every=8), device=dev, progress_bar=False)
    tok_ms = (time.perf_counter() - t) / 8
    tsteps = 20 if a.dry_run else int(a.budget * 0.6 / tok_ms)
    gsteps = 20 if a.dry_run else int(a.budget * 0.3 / 0.012)      # nano generator: ~10-15 ms/step on a GPU (measured below)
    rec = train_pair(tsteps, gsteps, Path(a.pretrained_out), dev, n_train=2 if a.dry_run else None, cache_dir=a.cache_dir)
    return [dict(tokenizer_steps=tsteps, generator_steps=gsteps, tokenizer_s=rec['tokenizer_s'], generator_s=rec['generator_s'],
                 tokenizer_val_cd=rec['tokenizer_val_cd'], generator_loss=rec['generator_loss'], out=str(a.pretrained_out))]


def sec_soft_mask(a, dev):
    from nsp_explore.train_tokenizer import load_tokenizer, tokenizer_datasets
    from nsp_explore.transformer import ScaleTransformer, TransformerConfig
    from nsp_explore.generate import cache_tokens, next_scale_loss
    tok = load_tokenizer(Path(a.pretrained_out) / 'nano_tokenizer.pt').to(dev)
    train, val = tokenizer_datasets(tok.cfg, n_train=2 if a.dry_run else None, n_val=1 if a.dry_run else None, cache_dir=a.cache_dir)
    tr, va = cache_tokens(tok, train, device=dev, passes=tok.cfg.fps_trajectories), cache_tokens(tok, val, device=dev)
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


# order: the cheap measurements, then the pretrained pair (the artifact worth most), its ablation, PointNSP-s, the tests
SECTIONS = dict(lod=(sec_lod, 0), metrics=(sec_metrics, 0), nano_pretrained=(sec_nano_pretrained, 90),
                soft_mask=(sec_soft_mask, 36), transformer=(sec_transformer, 0), pointnsp_s=(sec_pointnsp_s, 60),
                cuda_tests=(sec_cuda_tests, 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dry-run', action='store_true', help='nano sizes, a few steps: a CPU check of the whole suite')
    ap.add_argument('--only', nargs='*', default=None, help=f'sections to run (default all): {list(SECTIONS)}')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--cache-dir', default=os.environ.get('NSP_CACHE_DIR'), help='SyntheticShapes cache (pre-built data)')
    ap.add_argument('--pretrained-out', default=None, help='where the nano pair goes (default: data_samples/pretrained, '
                                                           'or a temporary folder with --dry-run)')
    ap.add_argument('--results', default=None, help='JSON path (default benchmarks/results/gpu_suite_<device>.json)')
    ap.add_argument('--test-timeout', type=int, default=45)
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
        a.budget = 2 if a.dry_run else budget
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
