"""When does 1-NNA stop ranking models? Its two halves, and a decoding that lowers it while moving samples away.

    python benchmarks/bench_nna_split.py                       # the shipped nano pair, 50 per category (~6 min, 2 cores)
    python benchmarks/bench_nna_split.py --n 8 --categories chair,car --results /tmp/r   # smaller

1-NNA pools samples and references and asks, for every cloud, whether its nearest other cloud has its own label.
It averages two halves: `acc_sample` (samples whose nearest cloud is a sample) and `acc_ref` (references whose
nearest cloud is a reference). When `acc_ref` is 1 every reference already tells every sample apart, and
1-NNA = (1 + acc_sample) / 2 only says how the samples sit among themselves: samples that drift away from the data
*and* from each other score better. This benchmark measures, per category against `--n` held-out shapes:

* `real val`: validation shapes (the ideal: both halves near 0.5);
* `recon val`: the tokenizer's reconstructions of them (the ceiling of the issue's protocol);
* `samples`: the pair's own sampling setting (what eval_pretrained.py scores);
* `expected-code λ`: the same draws, but the finest scale adds λ E_p[code] + (1 - λ) (drawn code) to f̂, the
  expectation under the sampling distribution (temperature, top-k, top-p applied) of the scale's code embedding.
  Exact, as the residual quantizer's lookup phi(upsample(e)) is affine in e. Not a sampling option of the package:
  it is here because it lowers 1-NNA-CD while every distance to the data grows.

Columns: 1-NNA-CD with acc_sample / acc_ref, MMD-CD (mean over references of the CD to the nearest cloud of the
set: fidelity), COV-CD, and median nearest-neighbour CDs set->set, set->refs, refs->set (normalized frame).
Writes benchmarks/results/nna_split_<device>.json (or --results).
"""
from __future__ import annotations
import argparse, json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, print_table, save_results   # noqa: E402  (puts the repo on sys.path)
import torch

from nsp_explore.core import autocast
from nsp_explore.data import SyntheticShapes
from nsp_explore.generate import (load_pretrained, sample, sample_logits, sampling_probs, scale_logits, scale_temperatures,
                                  scale_top_p)
from nsp_explore.lod import upsample
from nsp_explore.metrics import compute_all_metrics, pairwise_distances


def expected_contribution(tok, probs_BsV: torch.Tensor, k: int) -> torch.Tensor:
    "E_p[lookup(code, k)] = phi_k(upsample(probs @ codebook)): (B, S, C); exact because phi_k is affine."
    rq = tok.quantizer
    codes = rq.vq.embed(torch.arange(rq.vq.codebook_size, device=probs_BsV.device))     # (V, C)
    return rq.phi(upsample(probs_BsV.to(codes.dtype) @ codes, rq.S // tok.scales[k]), k)


@torch.no_grad()
def sample_expected_finest(gen, tok, labels, lam: float, seed: int, temperature=1.0, top_k=None, top_p=None) -> dict:
    """`sample(gen, tok, labels=labels, seed=seed, ...)`, except that the finest scale adds
    `lam * E_p[code] + (1 - lam) * (drawn code)` to f̂. `lam = 0` is `sample` bit for bit (same random stream)."""
    if not 0 <= lam <= 1: raise ValueError(f"lam must be in [0, 1], got {lam}")
    K, B, device = len(tok.scales), len(labels), labels.device
    temps, tops = scale_temperatures(temperature, K), scale_top_p(top_p, K)
    g = torch.Generator(device).manual_seed(seed)
    gen.eval(); tok.eval()
    state, cache = tok.start_state(B, device), gen.new_cache()
    for k in range(K):
        inputs = () if k == 0 else tok.next_scale_inputs(state, k - 1)
        with autocast(device):
            logits = scale_logits(gen, k, inputs, labels, cache)                             # (B, s_k, V)
        idx = sample_logits(logits, temps[k], top_k, tops[k], g)                             # the drawn codes (B, s_k)
        if k < K - 1 or lam == 0: tok.add_scale(state, k, idx); continue
        probs = sampling_probs(logits, temps[k], top_k, tops[k])                            # what idx was drawn from
        state.f_hat = state.f_hat + lam * expected_contribution(tok, probs, k) + (1 - lam) * tok.quantizer.lookup(idx, k)
        state.positions.append(tok.structure(k, state.f_hat, state.positions[-1]))
        state.indices.append(idx)
    return dict(points=tok.decode_state(state).float(), indices=list(state.indices))


def split_row(X, refs, mean, std) -> dict:
    "1-NNA-CD with its halves, MMD/COV-CD (de-normalized), and median nearest-neighbour CDs (normalized frame)."
    m = compute_all_metrics(X, refs, mean, std, metrics=('cd',), jsd=False)
    D_XX, D_XR, D_RR = pairwise_distances(X).double(), pairwise_distances(X, refs).double(), pairwise_distances(refs).double()
    D_XX.fill_diagonal_(float('inf')); D_RR.fill_diagonal_(float('inf'))
    med = lambda D: round(D.min(1).values.median().item(), 5)
    return {'1-NNA-CD': round(m['1-NNA-CD'], 4), 'acc_sample': round(m['1-NNA-CD-acc_sample'], 4),
            'acc_ref': round(m['1-NNA-CD-acc_ref'], 4), 'MMD-CD': round(m['MMD-CD'], 5), 'COV-CD': round(m['COV-CD'], 4),
            'nn_set_set': med(D_XX), 'nn_set_refs': med(D_XR), 'nn_refs_set': med(D_XR.T), 'nn_refs_refs': med(D_RR)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dir', default=None, help='a pair folder (train_pretrained.py); default the shipped one')
    ap.add_argument('--n', type=int, default=50, help='shapes per category in each set and in the references')
    ap.add_argument('--refs', default='test', choices=('test', 'val'), help="held-out references ('val' drops the real-val row)")
    ap.add_argument('--lams', default='0.8,1', help='expected-code weights at the finest scale, comma-separated')
    ap.add_argument('--categories', default=None, help='comma-separated subset (default: all of the pair)')
    ap.add_argument('--seed', type=int, default=0, help='class c samples with seed c + 1000 * SEED (as eval_pretrained.py)')
    ap.add_argument('--results', default=str(RESULTS))
    a = ap.parse_args(argv)
    tok, gen = load_pretrained('nano', directory=a.dir)
    cats_all, N, frame = tok.info['categories'], tok.n_points, tok.normalizer()
    cats = a.categories.split(',') if a.categories else cats_all
    bad = [c for c in cats if c not in cats_all]
    if bad: ap.error(f'unknown categories {bad}; the pair has {cats_all}')
    own = dict(tok.info.get('sampling', {}))                          # the pair's own setting (temperature, top_p)
    lams = [float(x) for x in a.lams.split(',') if x.strip()]
    rows, t0 = [], time.time()
    for cat in cats:
        c = cats_all.index(cat)
        load = lambda split: torch.stack([d['points'] for d in SyntheticShapes(split, [cat], a.n, n_points=N, resample=False, normalizer=frame)])
        refs, val = load(a.refs), load('val')
        lab, sd = torch.full((a.n,), c), c + 1000 * a.seed
        with torch.no_grad(): rec = tok(val).x_hat
        sets = ({} if a.refs == 'val' else {'real val': val}) | {'recon val': rec}
        sets['samples'] = sample(gen, tok, labels=lab, seed=sd, **own)['points']
        for lam in lams: sets[f'expected-code {lam:g}'] = sample_expected_finest(gen, tok, lab, lam, sd, **own)['points']
        for name, X in sets.items():
            rows.append(dict(category=cat, set=name, **split_row(X, refs, frame.mean, frame.std)))
        print(f'{cat}: done ({time.time() - t0:.0f} s)', flush=True)
    names = list(dict.fromkeys(r['set'] for r in rows))
    means = []
    for name in names:
        sel = [r for r in rows if r['set'] == name]
        means.append(dict(category='mean per category', set=name,
                          **{k: round(sum(r[k] for r in sel) / len(sel), 5) for k in sel[0] if k not in ('category', 'set')}))
    print_table(means, f'1-NNA-CD and its halves, {a.n} per category vs {a.n} {a.refs} shapes ({len(cats)} categories)')
    path = save_results('nna_split', rows + means, results_dir=a.results, n=a.n, refs=a.refs, sampling=own, lams=lams,
                        seed=a.seed, pair=a.dir or 'shipped', categories=cats, eval_s=round(time.time() - t0, 1))
    return json.loads(path.read_text())


if __name__ == '__main__':
    main()
