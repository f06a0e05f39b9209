"""What limits the nano tokenizer? One change at a time, equal steps, scored like the pretrained pair.

    python benchmarks/ablate_tokenizer.py --steps 1500              # every variant, in parallel processes
    python benchmarks/ablate_tokenizer.py --steps 4 --n 4 --only default,leaf1   # a quick check (CPU)
    python benchmarks/ablate_tokenizer.py --n 20 --metrics cd --score old=data_samples/pretrained/nano_tokenizer.pt --results-name X
                                                         # score saved tokenizers with the same protocol

Each variant trains the nano tokenizer from the same seed for the same steps (batch 32, the recipe of
scripts/train_pretrained.py) with ONE change against the current default, then scores its reconstructions of
`--n` validation shapes per category against `--n` test shapes of that category, unpaired
(`compute_all_metrics`, 1-NNA/COV/MMD for CD and exact EMD; de-normalized): the tokenizer's ceiling on what
any generator trained on its tokens can reach. Also the paired reconstruction CD/EMD and per-scale codebook
usage. The real validation shapes against the same test shapes give the floor (`real_val`).
Variants run as separate processes (one per variant; on a GPU they share it), so the wall time is about one
variant's. Writes benchmarks/results/tokenizer_ablation_<device>.json.
"""
from __future__ import annotations
import argparse, json, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, run_workers, RESULTS   # noqa: E402  (puts the repo on sys.path)
import torch

# name -> (TokenizerConfig overrides, what it tests)
VARIANTS = {
    'default': ({}, 'the current nano preset: matching EMD, 4 FPS trajectories, per-scale commitment, data init, decay 0.96'),
    'sinkhorn': (dict(emd_method='sinkhorn'), 'training EMD = debiased Sinkhorn divergence instead of the exact matching'),
    'cd_only': (dict(w_emd=0.0), 'no EMD term (Chamfer + node losses only)'),
    'traj1': (dict(fps_trajectories=1), 'no FPS augmentation (one LoD tree per shape)'),
    'no_data_init': ({}, 'codebook not initialized from data at the first step'),
    'decay099': ({}, 'codebook EMA decay 0.99 instead of 0.96'),
    'leaf1': (dict(scales=(1, 4, 16, 64, 256)), 'finest token scale = the full cloud (1 point per leaf, as the paper)'),
    'leaf1_slots': (dict(scales=(1, 4, 16, 64, 256), sibling_slots=True), 'leaf1 + a learned vector per family slot in the decoder'),
    'leaf1_slots_fixnorm': (dict(scales=(1, 4, 16, 64, 256), sibling_slots=True, norm_affine=False),
                            'leaf1_slots + no learned gain on the encoder output (its growth inflates the commitment loss)'),
    'leaf1_fixnorm': (dict(scales=(1, 4, 16, 64, 256), norm_affine=False), 'leaf1 + no learned gain on the encoder output'),
    'slots_fixnorm': (dict(sibling_slots=True, norm_affine=False),
                      'the nano preset (64 leaves of 4 points) + sibling slots + no learned encoder-output gain'),
    'leaf1_traj1': (dict(scales=(1, 4, 16, 64, 256), fps_trajectories=1), 'leaf1 without FPS augmentation'),
    'wide': (dict(dim=128, hidden=256, dec_hidden=256), 'twice the widths'),
    'hierarchical': (dict(hierarchical=True), 'positions decoded as parent + offset'),
    'codebook1024': (dict(codebook_size=1024), 'a 4x larger codebook (2 more bits per token)'),
    'long': ({}, 'the default trained 3x as many steps'),
}


def score_rows(tok, name: str, norm, cats, n: int, dev, cache_dir, metrics=('cd', 'emd'), with_real: bool = False) -> list[dict]:
    """Per category: `tok`'s reconstructions of `n` validation shapes against `n` test shapes, unpaired (1-NNA/COV/MMD),
    plus the paired CD/EMD and the duplicate fraction; `with_real`: also the real validation shapes (the floor)."""
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.metrics import compute_all_metrics, chamfer_distance, duplicate_fraction, emd_exact
    rows = []
    for cat in cats:
        test = SyntheticShapes('test', [cat], n, n_points=tok.n_points, resample=False, normalizer=norm, cache_dir=cache_dir)
        vs = SyntheticShapes('val', [cat], n, n_points=tok.n_points, resample=False, normalizer=norm, cache_dir=cache_dir)
        refs = torch.stack([test[i]['points'] for i in range(len(test))])
        X = torch.stack([vs[i]['points'] for i in range(len(vs))])
        with torch.no_grad(): rec = tok(X.to(dev)).x_hat.float().cpu()
        m = compute_all_metrics(rec, refs, norm.mean, norm.std, metrics, emd='exact', jsd=False, device=dev, return_matrices=True)
        mats = m.pop('matrices')
        rows.append(dict(variant=name, category=cat, kind='recon',
                         **{k: round(float(v), 4) for k, v in m.items() if k.startswith(('1-NNA', 'COV', 'MMD')) and 'acc' not in k},
                         pair_cd=round(float(chamfer_distance(rec, X).mean()), 5), pair_emd=round(float(emd_exact(rec, X).mean()), 5),
                         dup_frac=round(float(duplicate_fraction(rec).mean()), 4)))
        if with_real:
            r = compute_all_metrics(X, refs, norm.mean, norm.std, metrics, emd='exact', jsd=False, device=dev, ref_matrices=mats)
            rows.append(dict(variant='real_val', category=cat, kind='real',
                             **{k: round(float(v), 4) for k, v in r.items() if k.startswith(('1-NNA', 'COV', 'MMD')) and 'acc' not in k}))
    return rows


def score_checkpoint(name: str, path: str, n: int, device, cache_dir, metrics) -> dict:
    "Score a saved tokenizer (e.g. a pretrained pair's) with the same protocol as the trained variants."
    from nsp_explore.core import default_device
    from nsp_explore.data import SyntheticShapes
    from nsp_explore.train_tokenizer import load_tokenizer
    dev = default_device(device)
    tok = load_tokenizer(path).to(dev).eval()
    info = {}
    jp = Path(path).with_name(Path(path).name.replace('_tokenizer.pt', '.json'))
    if jp.exists(): info = json.loads(jp.read_text())
    from nsp_explore.shapes import CATEGORIES
    cats = list(info.get('categories') or CATEGORIES)
    norm = SyntheticShapes('train', cats, None, n_points=tok.n_points, resample=False, cache_dir=cache_dir).normalizer
    t0 = time.time()
    rows = score_rows(tok, name, norm, cats, n, dev, cache_dir, metrics)
    return dict(variant=name, what=f'saved checkpoint {path}', steps=info.get('tokenizer_steps'), train_s=info.get('tokenizer_s'),
                val_cd=info.get('tokenizer_val_cd'), eval_s=round(time.time() - t0, 1), device=str(dev),
                config=info.get('tokenizer_config'), rows=rows)


def run_variant(name: str, steps: int, n: int, device: str, cache_dir, out: Path, metrics=('cd', 'emd')):
    from nsp_explore.core import default_device
    from nsp_explore.tokenizer import PointNSPTokenizer, TokenizerConfig
    from nsp_explore.train import fit
    from nsp_explore.train_tokenizer import tokenizer_datasets, tokenizer_loss, tokenizer_train_config, _val_cd
    dev = default_device(device)
    over, what = VARIANTS[name]
    steps = steps * 3 if name == 'long' else steps
    base = json.loads(os.environ.get('ABLATE_BASE', '{}'))     # overrides shared by every variant (e.g. a faster EMD)
    cfg = TokenizerConfig.preset('nano', **{**base, **over})
    t0 = time.time()
    train, val = tokenizer_datasets(cfg, seed=0, cache_dir=cache_dir)
    data_s = time.time() - t0
    torch.manual_seed(0)
    tok = PointNSPTokenizer(cfg).set_frame(train.dataset.normalizer)
    if name == 'no_data_init': tok.quantizer.initialized.fill_(True)
    if name == 'decay099': tok.quantizer.vq.decay = 0.99
    tcfg = tokenizer_train_config('nano', steps=steps, batch_size=32, seed=0, warmup_steps=min(200, steps // 10 + 1),
                                  log_every=max(1, steps // 10))
    t0 = time.time()
    h = fit(tok, train, tokenizer_loss, tcfg, device=dev, val_fn=_val_cd(val), progress_bar=False)
    train_s = time.time() - t0
    tok = tok.eval()
    t0 = time.time()
    rows = score_rows(tok, name, train.dataset.normalizer, list(train.dataset.categories), n, dev, cache_dir, metrics,
                      with_real=name == 'default')
    last = h.rows[-1] if h.rows else {}
    rec = dict(variant=name, what=what, steps=steps, data_s=round(data_s, 1), train_s=round(train_s, 1),
               eval_s=round(time.time() - t0, 1), val_cd=h.val[-1]['cd'] if h.val else None,
               usage={k: round(float(v), 3) for k, v in last.items() if str(k).startswith('use_')},
               params=sum(p.numel() for p in tok.parameters()), device=str(dev), rows=rows)
    out.write_text(json.dumps(rec, indent=1, default=str))
    return rec


def summarize(recs: list[dict]) -> list[dict]:
    "One row per variant: means over categories (and the worst category) of the recon scores."
    table = []
    for name in [r['variant'] for r in recs] + ['real_val']:
        rows = [x for r in recs for x in r['rows'] if x['variant'] == name]
        if not rows: continue
        mean = lambda k: round(sum(x[k] for x in rows) / len(rows), 4) if k in rows[0] else None
        if 'variant' not in rows[0]: continue
        rec = next((r for r in recs if r['variant'] == name), {})
        table.append(dict(variant=name, steps=rec.get('steps'), nna_cd=mean('1-NNA-CD'),
                          worst_nna_cd=max(x['1-NNA-CD'] for x in rows), nna_emd=mean('1-NNA-EMD'),
                          cov_cd=mean('COV-CD'), pair_cd=mean('pair_cd'), dup_frac=mean('dup_frac'), pair_emd=mean('pair_emd'),
                          val_cd=None if rec.get('val_cd') is None else round(rec['val_cd'], 4),
                          train_s=rec.get('train_s')))
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=1500)
    ap.add_argument('--n', type=int, default=50, help='validation reconstructions and test shapes per category')
    ap.add_argument('--only', default=None, help='comma-separated variant names (default: all)')
    ap.add_argument('--device', default=None)
    ap.add_argument('--cache-dir', default=os.environ.get('NSP_CACHE_DIR'))
    ap.add_argument('--variant', default=None, help=argparse.SUPPRESS)   # a worker process
    ap.add_argument('--work', default='runs/ablate_tokenizer')
    ap.add_argument('--metrics', default='cd,emd', help="'cd' alone skips the exact EMD (its Hungarian solves dominate the scoring)")
    ap.add_argument('--jobs', type=int, default=0, help='variants run at once (0: all at once; 1 on a 2-core CPU)')
    ap.add_argument('--deadline-s', type=float, default=None, help='kill variants still running after this many seconds')
    ap.add_argument('--score', action='append', default=[], metavar='NAME=PATH',
                    help='also score this saved tokenizer checkpoint (repeatable), e.g. shipped=data_samples/pretrained/nano_tokenizer.pt')
    ap.add_argument('--results-name', default='tokenizer_ablation', help='results file stem (<stem>_<device>.json)')
    a = ap.parse_args()
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    if a.variant:
        run_variant(a.variant, a.steps, a.n, a.device, a.cache_dir, work / f'{a.variant}.json', tuple(a.metrics.split(','))); return
    names = [] if (a.score and not a.only) else (a.only.split(',') if a.only else list(VARIANTS))
    bad = [v for v in names if v not in VARIANTS]
    if bad: ap.error(f'unknown variant(s) {bad}; choose from {list(VARIANTS)}')
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'NSP_QUIET': '1'}
    t0 = time.time()
    cmds = {}
    for v in names:
        (work / f'{v}.json').unlink(missing_ok=True)
        cmds[v] = [sys.executable, __file__, '--variant', v, '--steps', str(a.steps), '--n', str(a.n), '--work', str(work),
                   '--metrics', a.metrics] + (['--device', a.device] if a.device else []) \
            + (['--cache-dir', a.cache_dir] if a.cache_dir else [])
    run_workers(cmds, {v: work / f'{v}.log' for v in names}, env, a.jobs, a.deadline_s)
    recs = [json.loads((work / f'{v}.json').read_text()) for v in names if (work / f'{v}.json').exists()]
    for spec in a.score:
        nm, path = spec.split('=', 1)
        recs.append(score_checkpoint(nm, path, a.n, a.device, a.cache_dir, tuple(a.metrics.split(','))))
    missing = [v for v in names if not (work / f'{v}.json').exists()]
    for v in missing: print(f'--- {v} failed; log tail:\n' + '\n'.join((work / f'{v}.log').read_text().splitlines()[-8:]))
    table = summarize(recs)
    dev = recs[0]['device'] if recs else 'cpu'
    print_table(table, f'nano tokenizer ablation: recon of {a.n} val vs {a.n} test shapes per category (means; lower 1-NNA is better)')
    res = dict(benchmark=a.results_name, command=' '.join(sys.argv), date=time.strftime('%Y-%m-%d %H:%M:%S'), machine=machine(), steps=a.steps,
               n_per_category=a.n, wall_s=round(time.time() - t0, 1), missing=missing, table=table,
               variants={r['variant']: {k: v for k, v in r.items() if k != 'rows'} for r in recs},
               rows=[x for r in recs for x in r['rows']])
    name = f"{a.results_name}_{'cuda' if dev.startswith('cuda') else 'cpu'}.json"
    for d in [RESULTS] + ([Path(os.environ['OUT'])] if os.environ.get('OUT') else []):
        Path(d).mkdir(parents=True, exist_ok=True); (Path(d) / name).write_text(json.dumps(res, indent=1, default=str))
    print(f'wrote {RESULTS / name}')


if __name__ == '__main__':
    main()
