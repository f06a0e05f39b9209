"""Every paradigm on the same data: next-scale (PointNSP), masked (SMART-3D) and flat autoregression, `nano`, CPU.

    python benchmarks/bench_compare.py [--flat-steps 1500] [--masked-steps 1000] [--vq-steps 400] [--emd exact]

Same held-out shapes (the test split of the pretrained pair's 10 categories, 10 each: 100 shapes), same
256 points, same global normalization (the pretrained pair's statistics), one class-conditional sample per
test shape (same labels), the same `compute_all_metrics` (de-normalized, `--emd` solver), same device.
PointNSP is the shipped pretrained pair (`load_pretrained('nano')`, its training time is the one recorded
when it was made), scored at T = 1 and at its recorded sampling setting (per-scale temperatures, top-p); the masked and flat models are
trained here, briefly (at T = 1). `--next-scale-only` redoes only the pair's rows in the existing results file
(after the shipped pair changed), keeping the other rows and saying so in the file. A 'real shapes' row (validation
shapes against the test shapes) is the ideal. Also: transformer calls per shape, sampling wall time at
batch 1 (median of 3) and 64 (per shape), training time and parameters.
Writes benchmarks/results/compare_cpu.json (rows + a few samples per model for the lesson's figure).
"""
from __future__ import annotations
import argparse, base64, json, os, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
import torch

from _common import print_table, save_results
from nsp_explore.core import seed_everything
from nsp_explore.data import Normalizer, SyntheticShapes
from nsp_explore.flat_ar import FLAT_AR_TRAIN, flat_ar_sample, train_flat_ar
from nsp_explore.generate import load_pretrained, sample
from nsp_explore.masked import MASKED_TRAIN, VQ_TRAIN, encode_dataset, sample_clouds, train_masked, train_voxel_vq
from nsp_explore.metrics import compute_all_metrics
from nsp_explore.train import TrainConfig

FIG_CATS = (0, 1, 3, 6, 9)        # categories shown in the lesson's figure (the first test shape of each)


def timed(fn, repeat=1):
    ts, out = [], None
    for _ in range(repeat):
        t = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


def pack(x) -> str:
    "A few clouds `(S, N, 3)` as base64 of float16 bytes (the lesson decodes them with `np.frombuffer`): small JSON."
    return base64.b64encode(x.detach().cpu().numpy().astype('float16').tobytes()).decode()


def n_params(*mods) -> int: return sum(p.numel() for m in mods for p in m.parameters())


def token_ar_row(a, tok, gen, cats, N, norm, labels) -> dict:
    "Train `TokenAR` on the pretrained tokenizer's tokens with the pretrained generator's recipe; sample and time it."
    from nsp_explore.flat_ar import TokenAR, token_ar_loss, token_ar_sample
    from nsp_explore.generate import cache_tokens, generator_train_config
    from nsp_explore.train import fit
    from nsp_explore.transformer import TransformerConfig
    train = SyntheticShapes('train', cats, None, n_points=N, normalizer=norm)
    t0 = time.perf_counter()
    seqs = cache_tokens(tok, train, passes=tok.cfg.fps_trajectories)
    gi = gen.info['generator_train']
    gcfg = generator_train_config('nano', steps=a.token_ar_steps, batch_size=gi['batch_size'], seed=0, warmup_steps=gi['warmup_steps'],
                                  log_every=100)
    torch.manual_seed(0)
    model = TokenAR(TransformerConfig.from_dict(gen.cfg.to_dict()), tok.token_dim, tok.scales, len(cats), tok.codebook_size)
    h = fit(model, seqs.sampler(gcfg.batch_size, gcfg.seed), token_ar_loss, gcfg, progress_bar=False)
    model = h.model.eval()
    tt = time.perf_counter() - t0
    print(f'token AR trained in {tt:.0f} s, loss {h.last("loss"):.3f}', flush=True)
    smp, _ = timed(lambda: torch.cat([token_ar_sample(model, tok, labels[i:i + 64], seed=i)['points'] for i in range(0, len(labels), 64)]))
    _, t1 = timed(lambda: token_ar_sample(model, tok, labels[:1], seed=1), repeat=3)
    _, t64b = timed(lambda: token_ar_sample(model, tok, labels[:64], seed=2))
    return dict(points=smp, evals=model.L, evals_note=f'{model.L} transformer calls (+ {len(tok.scales)} tokenizer decodes)',
                sample_s_b1=t1, sample_s_b64_per_shape=t64b / 64, train_s=gen.info['tokenizer_s'] + tt,
                train_note=f"the pretrained tokenizer's recorded time + {a.token_ar_steps} TokenAR steps measured here (token caching included)",
                params=n_params(tok, model), params_generator=n_params(model), loss=float(h.last('loss')))


def next_scale_rows(a, tok, gen, labels, refs, norm, FIG_IDX) -> tuple[list, dict]:
    "The shipped pair's rows (at T = 1 and at its recorded sampling setting): sampled, timed and scored here."
    rows, figs, ref_m = [], {}, None
    settings = {'T = 1': dict(temperature=1.0)}
    own = gen.info.get('sampling', {})                              # {'temperature': one per scale, 'top_p': one per scale}
    if own.get('temperature', 1.0) != 1.0 or own.get('top_p') is not None: settings['tuned sampling'] = dict(own)
    for tag, kw in settings.items():
        smp, _ = timed(lambda: sample(gen, tok, labels=labels, seed=0, **kw)['points'])
        _, t1 = timed(lambda: sample(gen, tok, labels=labels[:1], seed=1, **kw), repeat=3)
        _, t64b = timed(lambda: sample(gen, tok, labels=labels[:64], seed=2, **kw))
        m = compute_all_metrics(smp, refs, norm.mean, norm.std, emd=a.emd, jsd=False, return_matrices=True, ref_matrices=ref_m)
        ref_m = m.pop('matrices')
        name = f'next-scale (PointNSP, {tag})'
        rows.append(dict(model=name, **{k: round(float(m[k]), 4) for k in QUALITY_KEYS}, evals_per_shape=len(tok.scales),
                         sample_s_b1=round(t1, 4), sample_s_b64_per_shape=round(t64b / 64, 5),
                         train_s=round(gen.info['tokenizer_s'] + gen.info['generator_s'], 1), params=n_params(tok, gen),
                         params_generator=n_params(gen), final_loss=gen.info.get('generator_loss'),
                         evals_note=f'{len(tok.scales)} transformer calls (+ {len(tok.scales)} tokenizer decodes); sampling {kw}',
                         train_note=f"recorded when made ({gen.info['tokenizer_steps']} tokenizer + {gen.info['generator_steps']} "
                                    f"generator steps, {gen.info.get('device', 'cpu')}; token scales {tuple(tok.scales)})"))
        figs[name] = pack(smp[FIG_IDX])
        print(rows[-1], flush=True)
    return rows, figs


def retire_rows(meta: dict, models: list[str]):
    "Earlier updates' rows that are no longer in the table (dropped or renamed since) move to their `rows_retired`."
    for u in meta.get('updates', []):
        gone = [m for m in u['rows'] if m not in models]
        if gone: u['rows'] = [m for m in u['rows'] if m in models]; u['rows_retired'] = u.get('rows_retired', []) + gone


def update_next_scale(a, tok, gen, labels, refs, norm, FIG_IDX):
    "`--next-scale-only`: redo the shipped pair's rows in an existing results file, keep the other rows as they are."
    path = ROOT / 'benchmarks' / 'results' / 'compare_cpu.json'
    old = json.loads(path.read_text())
    load0 = os.getloadavg()[0]
    new_rows, figs = next_scale_rows(a, tok, gen, labels, refs, norm, FIG_IDX)
    kept = []
    for r in old['rows']:
        if r['model'] == 'next-scale (PointNSP)':                 # the row of the pair that shipped before: keep, renamed
            fig = old['meta']['fig_samples'].pop(r['model'])
            r = {**r, 'model': 'next-scale (PointNSP, previous 64-leaf pair, T = 1)'}
            old['meta']['fig_samples'][r['model']] = fig
        elif r['model'] == 'next-scale (PointNSP, T = 1)' and a.previous_label:   # the pair shipped until now: keep its T = 1 row
            fig = old['meta']['fig_samples'].pop(r['model'])
            r = {**r, 'model': f'next-scale (PointNSP, {a.previous_label}, T = 1)'}
            old['meta']['fig_samples'][r['model']] = fig
        elif r['model'].startswith(tuple(f'next-scale (PointNSP, {t}' for t in ('T', 'per-scale T', 'tuned'))):
            old['meta']['fig_samples'].pop(r['model'], None); continue
        kept.append(r)
    old['rows'] = new_rows + kept
    old['meta']['fig_samples'].update(figs)
    retire_rows(old['meta'], [r['model'] for r in old['rows']])
    old['meta'].setdefault('updates', []).append(dict(
        date=time.strftime('%Y-%m-%d %H:%M:%S'), rows=[r['model'] for r in new_rows], loadavg_start=load0, loadavg_end=os.getloadavg()[0],
        note='bench_compare.py --next-scale-only: the shipped pair\'s rows sampled and scored again (same test shapes, labels, '
             'seeds and protocol); every other row is from the full run above, the token AR row on the previous pair\'s tokens'))
    path.write_text(json.dumps(old, indent=2))
    print(f'updated {path}')


QUALITY_KEYS = ('1-NNA-CD', '1-NNA-EMD', 'COV-CD', 'COV-EMD', 'MMD-CD', 'MMD-EMD')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--flat-steps', type=int, default=1500)
    ap.add_argument('--masked-steps', type=int, default=MASKED_TRAIN['nano']['steps'])
    ap.add_argument('--vq-steps', type=int, default=VQ_TRAIN['nano']['steps'])
    ap.add_argument('--emd', default='exact', help="EMD solver of compute_all_metrics ('exact' is the fastest at 256 points)")
    ap.add_argument('--n-per-category', type=int, default=10, help='test shapes per category (10 categories)')
    ap.add_argument('--cache', default='/tmp/compare_samples.pt', help='samples and timings are kept here (--resume reads them)')
    ap.add_argument('--resume', action='store_true')
    ap.add_argument('--token-ar-steps', type=int, default=2000, help="TokenAR (PointNSP's tokens one at a time) steps; 0 leaves it out")
    ap.add_argument('--previous-label', default=None, help="with --next-scale-only: keep the replaced pair's T = 1 row, "
                    "renamed 'next-scale (PointNSP, <label>, T = 1)' (its tuned-sampling row is dropped)")
    ap.add_argument('--next-scale-only', action='store_true', help="redo only the shipped pair's rows in the existing "
                    "compare_cpu.json (after the pair changed), keeping the other rows")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())))
    load0 = os.getloadavg()[0]
    tok, gen = load_pretrained('nano')
    cats, N = gen.info['categories'], tok.n_points
    norm = Normalizer('global', tok.norm_mean, tok.norm_std)                 # the pretrained pair's frame, for everyone
    test = SyntheticShapes('test', cats, a.n_per_category, n_points=N, resample=False, normalizer=norm)
    val = SyntheticShapes('val', cats, a.n_per_category, n_points=N, resample=False, normalizer=norm)
    refs = torch.stack([test[i]['points'] for i in range(len(test))])           # (M, N, 3)
    labels = torch.tensor([int(test[i]['label']) for i in range(len(test))])
    M = len(refs)
    FIG_IDX = [c * a.n_per_category for c in FIG_CATS]
    print(f'{M} test shapes, {len(cats)} categories, load {load0:.2f}', flush=True)
    if a.next_scale_only: return update_next_scale(a, tok, gen, labels, refs, norm, FIG_IDX)

    if a.resume and Path(a.cache).exists():
        res = torch.load(a.cache)
    else:
        res = {}
        # --- next-scale: the shipped pretrained pair is sampled and scored by next_scale_rows, after the others
        # --- masked: SMART-3D, trained here ---------------------------------------------------------------
        train = SyntheticShapes('train', cats, None, n_points=N, normalizer=norm)
        seed_everything(0)
        t0 = time.perf_counter()
        vq, hv = train_voxel_vq(train, 'nano', TrainConfig.preset('nano', **{**VQ_TRAIN['nano'], 'steps': a.vq_steps}), progress_bar=False)
        seqs = encode_dataset(vq, train, passes=4)
        mk, hm = train_masked(vq, seqs, 'nano', TrainConfig.preset('nano', **{**MASKED_TRAIN['nano'], 'steps': a.masked_steps}),
                              progress_bar=False)
        tm = time.perf_counter() - t0
        print(f'masked trained in {tm:.0f} s', flush=True)
        smp, _ = timed(lambda: sample_clouds(mk, vq, labels=labels, seed=0)['points'])
        _, t1 = timed(lambda: sample_clouds(mk, vq, labels=labels[:1], seed=1), repeat=3)
        _, t64b = timed(lambda: sample_clouds(mk, vq, labels=labels[:64], seed=2))
        res['masked (SMART-3D)'] = dict(
            points=smp, evals=mk.cfg.steps, evals_note=f'{mk.cfg.steps} transformer calls (+ 1 tokenizer decode)',
            sample_s_b1=t1, sample_s_b64_per_shape=t64b / 64, train_s=tm,
            train_note=f'measured here ({a.vq_steps} tokenizer + {a.masked_steps} generator steps)',
            params=n_params(vq, mk), params_generator=n_params(mk), loss=float(hm.last('loss')))
        # --- flat AR, trained here ------------------------------------------------------------------------
        seed_everything(0)
        fcfg = TrainConfig.preset('nano', **{**FLAT_AR_TRAIN['nano'], 'steps': a.flat_steps})
        t0 = time.perf_counter()
        fa, hf = train_flat_ar(train, 'nano', fcfg, passes=4, progress_bar=False)
        tf = time.perf_counter() - t0
        print(f'flat AR trained in {tf:.0f} s, loss {hf.last("loss"):.3f}', flush=True)
        smp, _ = timed(lambda: flat_ar_sample(fa, labels=labels, seed=0)['points'])
        _, t1 = timed(lambda: flat_ar_sample(fa, labels=labels[:1], seed=1), repeat=3)
        _, t64b = timed(lambda: flat_ar_sample(fa, labels=labels[:64], seed=2))
        res['flat AR (fps order)'] = dict(
            points=smp, evals=fa.cfg.n_points, evals_note=f'{fa.cfg.n_points} transformer calls (3 head calls each)',
            sample_s_b1=t1, sample_s_b64_per_shape=t64b / 64, train_s=tf,
            train_note=f'measured here ({a.flat_steps} steps, batch {fcfg.batch_size})',
            params=n_params(fa), params_generator=n_params(fa), loss=float(hf.last('loss')))
        res['real shapes (val vs test)'] = dict(points=torch.stack([val[i]['points'] for i in range(len(val))]),
                                                evals=None, evals_note='the ideal', sample_s_b1=None, sample_s_b64_per_shape=None,
                                                train_s=None, train_note='', params=None, params_generator=None, loss=None)
        torch.save(res, a.cache)
    if a.token_ar_steps > 0 and 'token AR (PointNSP tokens)' not in res:
        res = {**{k: v for k, v in res.items() if not k.startswith('real')}, 'token AR (PointNSP tokens)': token_ar_row(a, tok, gen, cats, N, norm, labels),
               **{k: v for k, v in res.items() if k.startswith('real')}}
        torch.save(res, a.cache)
    load1 = os.getloadavg()[0]

    # --- scores: one protocol for everyone ---------------------------------------------------------------
    rows, figs, ref_m = [], {}, None
    t0 = time.perf_counter()
    for name, r in res.items():
        if r.get('metrics', {}).get('emd') == a.emd and r['metrics'].get('n') == M: m = r['metrics']
        else:
            m = compute_all_metrics(r['points'], refs, norm.mean, norm.std, emd=a.emd, jsd=False, return_matrices=True, ref_matrices=ref_m)
            ref_m = m.pop('matrices')
            r['metrics'] = {**{k: float(v) for k, v in m.items()}, 'emd': a.emd, 'n': M}
            torch.save(res, a.cache)
        rows.append(dict(model=name, **{k: round(float(m[k]), 4) for k in ('1-NNA-CD', '1-NNA-EMD', 'COV-CD', 'COV-EMD', 'MMD-CD', 'MMD-EMD')},
                         evals_per_shape=r['evals'], sample_s_b1=None if r['sample_s_b1'] is None else round(r['sample_s_b1'], 4),
                         sample_s_b64_per_shape=None if r['sample_s_b64_per_shape'] is None else round(r['sample_s_b64_per_shape'], 5),
                         train_s=None if r['train_s'] is None else round(r['train_s'], 1), params=r['params'],
                         params_generator=r['params_generator'], final_loss=r['loss'], evals_note=r['evals_note'], train_note=r['train_note']))
        figs[name] = pack(r['points'][FIG_IDX])
        print(f'{name}: scored ({time.perf_counter() - t0:.0f} s)', flush=True)
    ns_rows, ns_figs = next_scale_rows(a, tok, gen, labels, refs, norm, FIG_IDX)
    rows, figs = ns_rows + rows, {**ns_figs, **figs}
    figs['test shapes'] = pack(refs[FIG_IDX])
    print_table([{k: v for k, v in r.items() if not k.endswith('note')} for r in rows],
                f'compare nano: {M} test shapes vs one class-conditional sample each ({a.emd} EMD, de-normalized)')
    save_results('compare', rows, n_test=M, n_per_category=a.n_per_category, categories=cats, n_points=N, emd=a.emd,
                 protocol='mixed classes: one sample per test shape with its label, compute_all_metrics de-normalized with the '
                          'pretrained pair\'s global mean/std; real shapes = validation shapes vs test shapes',
                 loadavg_start=load0, loadavg_before_scoring=load1, loadavg_end=os.getloadavg()[0],
                 score_s=time.perf_counter() - t0, torch_threads=torch.get_num_threads(),
                 fig_categories=[cats[int(labels[i])] for i in FIG_IDX], fig_shape=[len(FIG_IDX), N, 3],
                 fig_samples=figs)


if __name__ == '__main__':
    main()
