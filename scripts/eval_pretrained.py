"""Score a pretrained pair per category, the literature's protocol: for each class, `--n` samples of that class
against `--n` held-out test shapes of it (compute_all_metrics: MMD, COV, 1-NNA for CD and EMD), plus the
tokenizer's ceiling (its reconstructions of validation shapes against the same test shapes, unpaired) and a
mixed-class row. 1-NNA comes with its two halves (`-acc_sample`, `-acc_ref`): with acc_ref near 1 it no longer
ranks models (lesson 05). Beside the scores, two things they cannot see: `dup_frac` (points piled on others) and
`copy_ratio` (how near the clouds are to their class's training shapes, relative to held-out shapes: ~1 new,
<< 1 copies). Writes benchmarks/results/pretrained_<name>_cpu.json and updates data_samples/pretrained/<name>.json.

    python scripts/eval_pretrained.py --name nano --n 50

`--coarse-dir D --coarse-scales M` scores two generators on one tokenizer (generate.sample_two_stage): D's generator
draws scales 1..M and --dir's the rest; those scores are never written into a pair's json.
"""
from __future__ import annotations
import argparse, json, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
import torch

from _common import print_table, save_results
from nsp_explore.data import SyntheticShapes
from nsp_explore.generate import FINEST_ORDERS, load_pretrained, sample, sample_two_stage
from nsp_explore.metrics import compute_all_metrics, copy_ratio, duplicate_fraction


def _digits(key: str) -> int:
    "Decimals kept: MMD (~1e-3 here) needs 6 to separate settings; fractions 4."
    return 6 if key.startswith('MMD') else 4


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--name', default='nano')
    ap.add_argument('--n', type=int, default=50, help='samples and test shapes per category')
    ap.add_argument('--emd', default='exact', help="EMD solver of compute_all_metrics ('exact' at 256 points)")
    ap.add_argument('--dir', default=None, help='score a pair in this folder (as written by train_pretrained.py) '
                    'instead of the shipped one; its scores go to <dir>/<name>.json and pretrained_<name>_<tag>_cpu.json')
    ap.add_argument('--tag', default=None, help='suffix of the results file name (with --dir, or with sampling settings)')
    ap.add_argument('--metrics', default='cd,emd', help="distances to score: 'cd,emd' (the protocol) or 'cd' (fast sweeps)")
    ap.add_argument('--temperature', default=None, help="sampling temperature, one number or one per scale "
                    "(comma-separated; default: the pair's own setting, else 1)")
    ap.add_argument('--top-k', type=int, default=None)
    ap.add_argument('--top-p', default=None, help="nucleus mass, one number or one per scale (comma-separated, 'none' "
                    "= no filtering at that scale; default: the pair's own setting, else none)")
    ap.add_argument('--finest-passes', type=int, default=None, help="draw the finest scale in this many passes (a generator "
                    "trained with --generator-mask-finest; default: the pair's sampling setting, else 1)")
    ap.add_argument('--finest-order', default=None, choices=FINEST_ORDERS, help="with --finest-passes: which "
                    "codes each pass keeps first (default: the pair's sampling setting, else 'confidence')")
    ap.add_argument('--cfg', type=float, default=None, help='classifier-free guidance scale (None: plain conditional)')
    ap.add_argument('--no-recon', action='store_true', help="skip the tokenizer's reconstructions (sampling sweeps)")
    ap.add_argument('--no-samples', action='store_true', help="score only the tokenizer's reconstructions (the folder "
                    "may hold a tokenizer alone, as train_pretrained.py --tokenizer-init writes it)")
    ap.add_argument('--refs', default='test', choices=('test', 'val'), help="reference split: 'val' to tune sampling "
                    "settings without looking at the test shapes (needs --no-recon), 'test' to report")
    ap.add_argument('--seed', type=int, default=0, help='sample seed: class c samples with seed c + 1000 * SEED '
                    '(0: the recorded scores; other seeds measure how much one draw of samples moves the scores)')
    ap.add_argument('--no-write', action='store_true', help='do not write the scores into the pair\'s json')
    ap.add_argument('--coarse-dir', default=None, help="a pair folder whose generator draws the first --coarse-scales "
                    "scales (sample_two_stage; --dir's generator draws the rest); both folders must hold the same tokenizer")
    ap.add_argument('--coarse-scales', type=int, default=None, help='with --coarse-dir: how many scales its generator draws')
    a = ap.parse_args()
    if a.refs == 'val' and not a.no_recon: ap.error('--refs val scores samples only: add --no-recon')
    if a.no_samples and a.no_recon: ap.error('--no-samples with --no-recon leaves nothing to score')
    if (a.coarse_dir is None) != (a.coarse_scales is None): ap.error('--coarse-dir and --coarse-scales go together')
    if a.coarse_dir is not None and a.no_samples: ap.error('--coarse-dir draws samples: not with --no-samples')
    if a.no_samples:                                                  # the tokenizer alone: no generator needed
        from nsp_explore.train_tokenizer import load_tokenizer
        d = Path(a.dir) if a.dir else ROOT / 'data_samples' / 'pretrained'
        tok, gen = load_tokenizer(d / f'{a.name}_tokenizer.pt'), None
        tok.info = json.loads((d / f'{a.name}.json').read_text()) if (d / f'{a.name}.json').exists() else {}
    else:
        tok, gen = load_pretrained(a.name, directory=a.dir)
    coarse = None
    if a.coarse_dir is not None:                                      # a second generator for the coarse scales
        tok_c, coarse = load_pretrained(a.name, directory=a.coarse_dir)
        if tok_c.state_dict().keys() != tok.state_dict().keys() or not all(
                torch.equal(u, v) for u, v in zip(tok_c.state_dict().values(), tok.state_dict().values())):
            raise ValueError(f"--coarse-dir {a.coarse_dir}: its tokenizer differs from --dir's; both generators must be "
                             "trained on the same tokenizer's tokens")
    cats, N = tok.info.get('categories'), tok.n_points
    frame = tok.normalizer()                                          # the training data's statistics, from the checkpoint
    mean, std = frame.mean, frame.std
    # the training shapes (all classes) of the generator, or of a tokenizer scored alone, if recorded
    n_gen = tok.info.get('n_train_shapes' if gen is not None else 'tokenizer_n_train_shapes')
    n_gen = None if n_gen is None else int(n_gen) // len(cats)       # per class (None: the data default)
    rows, t0 = [], time.time()
    mixed_s, mixed_r = [], []
    metrics = tuple(a.metrics.split(','))
    temp = [float(t) for t in a.temperature.split(',')] if a.temperature else tok.info.get('sampling', {}).get('temperature', 1.0)
    top_p = ([None if p.strip().lower() == 'none' else float(p) for p in a.top_p.split(',')] if a.top_p
             else tok.info.get('sampling', {}).get('top_p'))
    one = lambda v: v[0] if isinstance(v, list) and len(v) == 1 else v
    kw = dict(temperature=one(temp), top_k=a.top_k, top_p=one(top_p), cfg_scale=1.0 if a.cfg is None else a.cfg)
    passes = a.finest_passes if a.finest_passes is not None else tok.info.get('sampling', {}).get('finest_passes', 1)
    order = a.finest_order or tok.info.get('sampling', {}).get('finest_order', 'confidence')
    if passes != 1: kw.update(finest_passes=passes, finest_order=order)   # (only then: older records have no such keys)
    print('sampling:', kw, flush=True)
    for c, cat in enumerate(cats):
        test = SyntheticShapes(a.refs, [cat], a.n, n_points=N, resample=False, normalizer=frame)
        val = SyntheticShapes('val', [cat], a.n, n_points=N, resample=False, normalizer=frame)
        refs = torch.stack([test[i]['points'] for i in range(len(test))])
        tr_c = SyntheticShapes('train', [cat], n_gen, n_points=N, resample=False, normalizer=frame)
        tr_c = torch.stack([tr_c[i]['points'] for i in range(len(tr_c))])          # this class's generator training shapes
        lab, sd = torch.full((a.n,), c), c + 1000 * a.seed
        smp = (None if gen is None else sample(gen, tok, labels=lab, seed=sd, **kw)['points'] if coarse is None
               else sample_two_stage(coarse, gen, tok, a.coarse_scales, labels=lab, seed=sd, **kw)['points'])
        with torch.no_grad(): rec = None if a.no_recon else tok(torch.stack([val[i]['points'] for i in range(len(val))])).x_hat
        ref_m = None
        kinds = ((('samples', smp),) if gen is not None else ()) + ((('tokenizer_recon', rec),) if not a.no_recon else ())
        for kind, X in kinds:
            m = compute_all_metrics(X, refs, mean, std, metrics=metrics, emd=a.emd, jsd=False, return_matrices=True, ref_matrices=ref_m)
            ref_m = m.pop('matrices')                                  # the test-vs-test distances are computed once
            rows.append(dict(category=cat, kind=kind, n=a.n, **{k: round(float(v), _digits(k)) for k, v in m.items()
                                                                 if k.split('-')[0] in ('1', 'COV', 'MMD')},
                             dup_frac=round(float(duplicate_fraction(X).mean()), 4),    # repeated points: the scores cannot see them
                             copy_ratio=round(copy_ratio(X, refs, tr_c)['ratio'], 4)))    # copies of training shapes: nor these
        if gen is not None: mixed_s.append(smp[: max(1, a.n // len(cats) * 2)]); mixed_r.append(refs[: max(1, a.n // len(cats) * 2)])
        print(f'{cat}: done ({time.time() - t0:.0f} s)', flush=True)
    if gen is not None:
        m = compute_all_metrics(torch.cat(mixed_s), torch.cat(mixed_r), mean, std, metrics=metrics, emd=a.emd, jsd=False)
        rows.append(dict(category='mixed', kind='samples', n=len(torch.cat(mixed_s)),
                         **{k: round(float(v), _digits(k)) for k, v in m.items() if k.split('-')[0] in ('1', 'COV', 'MMD')},
                         dup_frac=round(float(duplicate_fraction(torch.cat(mixed_s)).mean()), 4)))
    for kind in (('samples',) if gen is not None else ()) + (('tokenizer_recon',) if not a.no_recon else ()):
        sel = [r for r in rows if r['kind'] == kind and r['category'] != 'mixed']
        rows.append(dict(category='mean per category', kind=kind, n=a.n,
                         **{k: round(sum(r[k] for r in sel) / len(sel), _digits(k)) for k in sel[0] if k.startswith(('1-NNA', 'COV', 'MMD', 'dup', 'copy'))}))
    print_table(rows, f'pretrained {a.name}: per category ({a.n} vs {a.n}, {a.emd} EMD, de-normalized)')
    for r in rows:                                                   # 1-NNA's two halves (lesson 05): is it still ranking?
        if r['category'] == 'mean per category' and r.get('1-NNA-CD-acc_ref', 0) >= 0.95:
            print(f"note: {r['kind']}: acc_ref {r['1-NNA-CD-acc_ref']:.3f}: the test shapes already tell these clouds apart, so "
                  f"1-NNA-CD = (1 + acc_sample) / 2 only says how the clouds sit among themselves (lower can mean farther "
                  f"from the data); read MMD-CD and COV-CD beside it (lesson 05; benchmarks/bench_nna_split.py)")
    tag = f'_{a.tag}' if a.tag else ''
    save_results(f'pretrained_{a.name}{tag}', rows, n_per_category=a.n, emd=a.emd, metrics=metrics, sampling=kw, sample_seed=a.seed, refs=a.refs,
                 eval_s=time.time() - t0, info=tok.info, coarse_dir=a.coarse_dir, coarse_scales=a.coarse_scales)
    if a.no_write: return
    if coarse is not None: print("--coarse-dir: two generators' scores, not written into the pair's json"); return
    if a.seed: print(f"--seed {a.seed}: not written into the pair's json (its scores are the seed-0 draw)"); return
    p = (Path(a.dir) if a.dir else ROOT / 'data_samples' / 'pretrained') / f'{a.name}.json'
    rec = json.loads(p.read_text()); rec['scores'] = rows; rec['scores_sampling'] = kw
    p.write_text(json.dumps(rec, indent=2, default=str))


if __name__ == '__main__':
    main()
