"""What 1-NNA-CD sees: real validation shapes made worse in known ways, scored like the tokenizer's reconstructions.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_recon_calibration.py [--n 50]

Issue 11 asks the nano tokenizer's reconstructions of validation shapes to score a mean per-category 1-NNA-CD
of at most 0.58 against the test shapes (unpaired, 50 vs 50 per category; real validation shapes score about
0.47). How far is that in Chamfer distance? Here each category's validation shapes are changed in one
controlled way and scored by the same protocol as `scripts/eval_pretrained.py` (CD only, de-normalized with the
training statistics):

  real val          the shapes themselves (the floor)
  tokenizer raw     the shipped nano tokenizer's reconstructions by its raw decoder (`recon_scale` = 1)
  tokenizer calibrated  the same, scaled by its calibrated `cfg.recon_scale` (`calibrate_recon_scale`, fitted on
                    the training shapes): the reconstructions `load_pretrained('nano')` gives
  jitter s          Gaussian noise of std s on every coordinate (in the normalized frame): error without structure
  smooth k          every point replaced by the mean of its k nearest neighbours (self included): a blur, which
                    pulls thin parts and edges inward
  shrink f          every point moved toward its cloud's centroid, to f of its distance
  duplicate f       a fraction f of the points replaced by copies of other points of the same cloud

`paired_cd` is the mean Chamfer distance (normalized frame, `metrics.chamfer_distance`) of the changed
clouds to the real ones: how large the change is. Rows: one per variant (means over categories); the
per-category rows are in `meta.per_category`. Seeded (`--seed`); one torch thread.
"""
from __future__ import annotations
import argparse, copy, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results   # noqa: E402  (puts the repo on sys.path)
import torch

from nsp_explore.data import SyntheticShapes
from nsp_explore.generate import load_pretrained
from nsp_explore.metrics import chamfer_distance, compute_all_metrics


def smooth(X, k: int):
    "Each point -> the mean of its k nearest neighbours in its own cloud (self included): `(B, N, 3)`."
    idx = torch.cdist(X, X).topk(k, largest=False).indices                                   # (B, N, k)
    B, N, _ = X.shape
    return torch.gather(X[:, None].expand(B, N, N, 3), 2, idx[..., None].expand(-1, -1, -1, 3)).mean(2)


def duplicate(X, f: float, g: torch.Generator):
    "A fraction f of each cloud's points replaced by copies of other random points of it."
    X, k = X.clone(), int(round(f * X.shape[1]))
    for b in range(len(X)):
        i = torch.randperm(X.shape[1], generator=g)
        X[b, i[:k]] = X[b, i[k:2 * k]]
    return X


def variants(V, raw, cal, g):
    c = V.mean(1, keepdim=True)
    out = {'real val': V, 'tokenizer raw': raw, 'tokenizer calibrated': cal}
    for s in (0.05, 0.1, 0.15, 0.2): out[f'jitter {s}'] = V + s * torch.randn(V.shape, generator=g)
    for k in (4, 8, 16): out[f'smooth {k}'] = smooth(V, k)
    for f in (0.95, 0.9): out[f'shrink {f}'] = c + f * (V - c)
    out['duplicate 0.11'] = duplicate(V, 0.11, g)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=50, help='validation and test shapes per category')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    load0, t0 = os.getloadavg()[0], time.time()
    tok, _ = load_pretrained('nano')
    cats, N = tok.info['categories'], tok.n_points
    raw_tok = copy.deepcopy(tok); raw_tok.cfg = tok.cfg.override(recon_scale=1.0)
    train = SyntheticShapes('train', cats, None, n_points=N, resample=False)          # the training statistics
    mean, std = train.normalizer.mean, train.normalizer.std
    g = torch.Generator().manual_seed(a.seed)
    per_cat = []
    for cat in cats:
        test = SyntheticShapes('test', [cat], a.n, n_points=N, resample=False, normalizer=train.normalizer)
        val = SyntheticShapes('val', [cat], a.n, n_points=N, resample=False, normalizer=train.normalizer)
        refs = torch.stack([test[i]['points'] for i in range(len(test))])
        V = torch.stack([val[i]['points'] for i in range(len(val))])
        with torch.no_grad(): cal = tok(V).x_hat; raw = raw_tok(V).x_hat
        ref_m = None
        for name, X in variants(V, raw, cal, g).items():
            m = compute_all_metrics(X, refs, mean, std, metrics=('cd',), jsd=False, return_matrices=True, ref_matrices=ref_m)
            ref_m = m.pop('matrices')                                                   # test vs test: once per category
            per_cat.append(dict(category=cat, variant=name, nna_cd=round(float(m['1-NNA-CD']), 4),
                                cov_cd=round(float(m['COV-CD']), 4),
                                paired_cd=round(float(chamfer_distance(X.double(), V.double()).mean()), 5)))
        print(f'{cat}: {time.time() - t0:.0f} s', flush=True)
    rows = []
    for name in dict.fromkeys(r['variant'] for r in per_cat):
        sel = [r for r in per_cat if r['variant'] == name]
        rows.append(dict(variant=name, **{k: round(sum(r[k] for r in sel) / len(sel), 4 if k != 'paired_cd' else 5)
                                         for k in ('nna_cd', 'cov_cd', 'paired_cd')},
                         worst_category_nna_cd=max(r['nna_cd'] for r in sel)))
    print_table(rows, f'1-NNA-CD of changed validation shapes against the test shapes ({a.n} vs {a.n} per category, mean over categories)')
    save_results('recon_calibration', rows, n_per_category=a.n, seed=a.seed, recon_scale=tok.cfg.recon_scale, wall_s=round(time.time() - t0, 1),
                 loadavg_1min=[round(load0, 2), round(os.getloadavg()[0], 2)], torch_threads=1,
                 goal='tokenizer recon mean per-category 1-NNA-CD <= 0.58 (issue 11)', per_category=per_cat)


if __name__ == '__main__':
    main()
