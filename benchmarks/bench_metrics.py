"""Benchmark of nsp_explore.metrics: EMD approximation error vs exact, and compute_all_metrics wall time.

    python benchmarks/bench_metrics.py [--quick]

Rows: (1) exact (Hungarian) vs auction vs Sinkhorn EMD on pairs of 256/1024/2048-point clouds,
relative error and time per pair; (2) wall time of compute_all_metrics (CD; EMD exact and auction)
on small CPU sets, the pair throughput, and the EXTRAPOLATED time of the 405 vs 405 protocol
(327,645 pairs: S x R plus both triangles). Timings on a shared CPU are inflated (see loadavg).
"""
import argparse, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results

import torch
from nsp_explore import metrics as M
from nsp_explore.core import default_device

PROTOCOL_PAIRS = 405 * 405 + 405 * 404   # S x R, plus the S x S and R x R upper triangles


def shapes(B, n, seed, kind):
    "Random ellipsoid surfaces (axes drawn per cloud) with a little noise, scale ~0.5."
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, n, 3, generator=g, dtype=torch.float64)
    p = p / p.norm(dim=-1, keepdim=True)
    ax = 0.6 + 0.4 * torch.rand(B, 1, 3, generator=g, dtype=torch.float64)
    if kind == 'flat': ax = ax * torch.tensor([1.0, 0.5, 0.8], dtype=torch.float64)
    return (0.5 * p * ax + 0.005 * torch.randn(B, n, 3, generator=g, dtype=torch.float64)).float()


def timed(fn):
    t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t


def error_rows(sizes, n_pairs):
    rows = []
    for n in sizes:
        for case, kb in (('same shape family', 'round'), ('other family', 'flat')):
            x, y = shapes(n_pairs, n, 1, 'round'), shapes(n_pairs, n, 2, kb)
            ex, t_ex = timed(lambda: M.emd_exact(x, y))
            au, t_au = timed(lambda: M.emd_auction(x, y))
            sk, t_sk = timed(lambda: M.emd_approx(x, y))
            rel = lambda v: ((v.double() - ex.double()) / ex.double())
            rows.append(dict(N=n, pairs=n_pairs, case=case, emd_exact_mean=float(ex.mean()),
                             auction_rel_err_mean=float(rel(au).mean()), auction_rel_err_max=float(rel(au).max()),
                             sinkhorn_rel_err_mean=float(rel(sk).mean()),
                             s_per_pair_exact=t_ex / n_pairs, s_per_pair_auction=t_au / n_pairs,
                             s_per_pair_sinkhorn=t_sk / n_pairs), )
            print(rows[-1], flush=True)
    return rows


def all_metrics_rows(configs):
    rows = []
    for S, n, metric, emd in configs:
        A, B = shapes(S, n, 3, 'round'), shapes(S, n, 4, 'round')
        res, t = timed(lambda: M.compute_all_metrics(A, B, metrics=(metric,), emd=emd, jsd=False))
        pairs = S * S + S * (S - 1)
        rows.append(dict(S=S, R=S, N=n, metric=metric, emd=emd if metric == 'emd' else '', pairs=pairs,
                         wall_s=t, pairs_per_s=pairs / t,
                         extrapolated_405x405_s=PROTOCOL_PAIRS * t / pairs,
                         **{k: v for k, v in res.items() if k.startswith(('1-NNA-CD', '1-NNA-EMD', 'MMD-', 'COV-'))
                            and 'acc_' not in k}))
        print(rows[-1], flush=True)
    return rows


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='small sizes, a minute or two')
    ap.add_argument('--sizes', type=int, nargs='*', help='cloud sizes of the error table (default 256 1024 2048)')
    ap.add_argument('--prev-log', help='stdout of an earlier run: its error rows for sizes not measured now are '
                                        'added, marked source=previous run')
    args = ap.parse_args()
    dev = default_device()
    t0 = time.perf_counter()
    if args.quick:
        err = error_rows([256, 1024], 2)
        cfg = [(16, 2048, 'cd', 'auction'), (6, 1024, 'emd', 'exact'), (6, 1024, 'emd', 'auction')]
    else:
        err = error_rows(args.sizes or [256, 1024, 2048], 2)
        cfg = [(32, 2048, 'cd', 'auction'), (8, 1024, 'emd', 'exact'), (6, 1024, 'emd', 'auction')]
    if args.prev_log:
        import ast
        have = {r['N'] for r in err}
        for line in Path(args.prev_log).read_text().splitlines():
            if line.startswith("{'N'"):
                r = ast.literal_eval(line)
                if r['N'] not in have: err.append(dict(r, source='previous run of this script'))
    tab = all_metrics_rows(cfg)
    print_table(err, 'EMD approximation error vs exact (Hungarian), float64 reference')
    print_table(tab, f'compute_all_metrics on {dev} (extrapolated_405x405_s = linear EXTRAPOLATION)')
    save_results('metrics', err + tab, quick=args.quick, device=str(dev), total_s=time.perf_counter() - t0,
                 note='timings on a shared 2-core CPU; 405x405 numbers are linear extrapolations, not measurements')
