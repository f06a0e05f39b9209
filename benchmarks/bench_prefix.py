"""Which scale limits the samples? Give the generator the true tokens of the first m scales, let it sample the rest.

    python benchmarks/bench_prefix.py                      # the shipped nano pair, 50 per category (~3 min, 1 thread)
    python benchmarks/bench_prefix.py --dir D --n 8        # another pair folder (train_pretrained.py), smaller

For each category: the tokens of `--n` validation shapes; for m = 0 .. K the first m scales are kept and the
generator samples the rest at the pair's own sampling setting (m = 0: plain samples; m = K: the tokenizer's
reconstructions, nothing sampled). Each set is scored against `--n` test shapes of the class with 1-NNA-CD
(de-normalized, 256 points), the per-category protocol of scripts/eval_pretrained.py, with 1-NNA's two halves and
MMD-CD (lesson 05: once acc_ref is 1, a lower 1-NNA is a gain only if MMD-CD falls too). Where the score jumps
between m and m + 1, the generator's guesses at scale m + 1 cost the most. Writes
benchmarks/results/prefix_<device>.json (or --results).
"""
from __future__ import annotations
import argparse, json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, print_table   # noqa: E402  (puts the repo on sys.path)
import torch

from nsp_explore.data import SyntheticShapes
from nsp_explore.generate import load_pretrained, sample
from nsp_explore.metrics import compute_all_metrics


def prefix_scores(tok, gen, n: int) -> list[dict]:
    "Rows {category, m, 1-NNA-CD} for m = 0..K (m fixed true scales of validation shapes, the rest sampled)."
    cats, N, K = tok.info['categories'], tok.n_points, len(tok.scales)
    own = dict(tok.info.get('sampling', {}))                                   # the pair's own setting (temperature, top_p)
    frame = tok.normalizer()                                                   # the training data's statistics
    mean, std = frame.mean, frame.std
    rows = []
    for c, cat in enumerate(cats):
        val, test = (SyntheticShapes(s, [cat], n, n_points=N, resample=False, normalizer=frame) for s in ('val', 'test'))
        refs = torch.stack([test[i]['points'] for i in range(len(test))])
        with torch.no_grad(): idx, _ = tok.encode(torch.stack([val[i]['points'] for i in range(len(val))]))
        ref_m = None
        for m in range(K + 1):
            X = tok.decode(idx)['points'] if m == K else \
                sample(gen, tok, labels=torch.full((len(val),), c), **own, seed=c, fixed_indices=idx[:m] or None)['points']
            r = compute_all_metrics(X, refs, mean, std, metrics=('cd',), jsd=False, return_matrices=True, ref_matrices=ref_m)
            ref_m = r.pop('matrices')                                   # the test-vs-test distances are computed once
            rows.append(dict(category=cat, m=m, **{k: round(float(r[k]), 6 if k == 'MMD-CD' else 4) for k in
                                                   ('1-NNA-CD', '1-NNA-CD-acc_sample', '1-NNA-CD-acc_ref', 'MMD-CD')}))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dir', default=None, help='a pair folder (default: the shipped pair)')
    ap.add_argument('--n', type=int, default=50, help='validation and test shapes per category')
    ap.add_argument('--results', default=None)
    a = ap.parse_args()
    t0 = time.time()
    tok, gen = load_pretrained('nano', directory=a.dir)
    rows = prefix_scores(tok, gen, a.n)
    K, cats = len(tok.scales), tok.info['categories']
    table = [dict(m=m, fixed=f'scales 1..{m}' if m else 'none (samples)',
                  **{f'mean {k}': round(sum(r[k] for r in rows if r['m'] == m) / len(cats), 6 if k == 'MMD-CD' else 4)
                     for k in ('1-NNA-CD', '1-NNA-CD-acc_sample', '1-NNA-CD-acc_ref', 'MMD-CD')},
                  **{c: next(r['1-NNA-CD'] for r in rows if r['m'] == m and r['category'] == c) for c in cats})
             for m in range(K + 1)]
    print_table(table, f'true tokens of the first m scales, the rest sampled ({a.n} vs {a.n} per category, 1-NNA-CD)')
    path = Path(a.results) if a.results else RESULTS / f"prefix_{machine()['device']}.json"
    res = dict(benchmark='prefix', command=' '.join(sys.argv), date=time.strftime('%Y-%m-%d %H:%M:%S'), machine=machine(),
               pair=a.dir or 'shipped', scales=list(tok.scales), sampling=tok.info.get('sampling'), n_per_category=a.n,
               wall_s=round(time.time() - t0, 1), rows=table, per_category_rows=rows)
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(res, indent=1, default=str))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
