"""CPU speed of the metrics: Chamfer per pair and as a matrix (brute force vs KD-trees), EMD exact vs auction.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_cpu_metrics.py [--quick]

Every ratio in the output comes from this one run (same process, same load; the 1-minute load average is
recorded before and after). Rows:
  chamfer_pair    `chamfer_distance` on a batch of pairs: the old package path (brute force in blocks of
                  2^24 distances), brute force in cache-sized blocks (`CPU_MAX_ELEMENTS`), and the KD-tree
                  path with scipy's cKDTree and with pykdtree (when installed); pairs per second.
  chamfer_matrix  `pairwise_distances(A, B, 'cd')` of S x S clouds: the old path, brute force in cache-sized
                  blocks, one KD-tree per cloud (cKDTree / pykdtree), and what the package now does ('auto').
  emd             one pair at a time: exact Hungarian vs the batched auction (the two `emd` choices on CPU).
The thresholds `KDTREE_MIN_POINTS`, `KDTREE_MATRIX_MIN_POINTS` and `HUNGARIAN_CPU_MAX_POINTS` in metrics.py
were chosen from these rows.
"""
import argparse, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results

import numpy as np
import torch
from nsp_explore import metrics as M


def shapes(B, n, seed):
    "Random ellipsoid surfaces with a little noise, scale ~0.5 (float32)."
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, n, 3, generator=g, dtype=torch.float64)
    p = p / p.norm(dim=-1, keepdim=True)
    ax = 0.6 + 0.4 * torch.rand(B, 1, 3, generator=g, dtype=torch.float64)
    return (0.5 * p * ax + 0.005 * torch.randn(B, n, 3, generator=g, dtype=torch.float64)).float()


def best_of(fn, repeats=2):
    "Warm up once, then the fastest of `repeats` runs (seconds) and the last result."
    out = fn(); ts = []
    for _ in range(repeats):
        t = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t)
    return min(ts), out


def kd_backends():
    return ['ckdtree'] + (['pykdtree'] if M.kdtree_backend() == 'pykdtree' else [])


def chamfer_pair_rows(sizes, pairs):
    rows = []
    for N in sizes:
        x, y = shapes(pairs, N, 1), shapes(pairs, N, 2)
        ref = M.chamfer_distance(x.double(), y.double(), method='brute')
        meth = {'brute 2^24 (old)': lambda: M.chamfer_distance(x, y, method='brute', max_elements=2**24),
                f'brute 2^{int(np.log2(M.CPU_MAX_ELEMENTS))} (chunked)': lambda: M.chamfer_distance(x, y, method='brute'),
                'brute 2^18 (chunked)': lambda: M.chamfer_distance(x, y, method='brute', max_elements=2**18)}
        for b in kd_backends():
            def kd(b=b):
                jx, jy = M.nn_index(x, y, backend=b)
                return M._gather_sq(x, y, jx).mean(1) + M._gather_sq(y, x, jy).mean(1)
            meth[f'kdtree {b}'] = kd
        meth['package auto'] = lambda: M.chamfer_distance(x, y)
        for name, fn in meth.items():
            t, v = best_of(fn)
            rows.append(dict(op='chamfer_pair', N=N, pairs=pairs, method=name, pairs_per_s=pairs / t,
                             max_rel_err_vs_f64=float(((v.double() - ref) / ref).abs().max())))
            print(rows[-1], flush=True)
    return rows


def chamfer_matrix_rows(configs):
    rows = []
    for S, N in configs:
        A, B = shapes(S, N, 3), shapes(S, N, 4)
        ref = M.pairwise_distances(A.double(), B.double(), 'cd', cd_method='brute', device='cpu')
        old = lambda: M.pairwise_distances(A, B, 'cd', cd_method='brute', device='cpu')
        meth = {}
        saved = M.CPU_MAX_ELEMENTS
        def old_path():
            M.CPU_MAX_ELEMENTS = 2**24
            try: return old()
            finally: M.CPU_MAX_ELEMENTS = saved
        meth['brute 2^24 (old)'] = old_path
        meth['brute chunked'] = lambda: M.pairwise_distances(A, B, 'cd', cd_method='brute', device='cpu')   # brute in the pair loop
        for b in kd_backends(): meth[f'kdtree per cloud {b}'] = lambda b=b: M._cd_matrix_kdtree(A, B, backend=b)
        meth['package auto'] = lambda: M.pairwise_distances(A, B, 'cd', device='cpu')
        for name, fn in meth.items():
            t, D = best_of(fn, 1)
            rows.append(dict(op='chamfer_matrix', N=N, S=S, R=S, pairs=S * S, method=name, pairs_per_s=S * S / t,
                             max_rel_err_vs_f64=float(((D - ref) / ref).abs().max())))
            print(rows[-1], flush=True)
    return rows


def emd_rows(sizes, pairs):
    rows = []
    for N in sizes:
        x, y = shapes(pairs, N, 5), shapes(pairs, N, 6)
        ex_t, ex = best_of(lambda: torch.cat([M.emd_exact(x[i:i + 1], y[i:i + 1]) for i in range(pairs)]), 1)
        au_t, au = best_of(lambda: torch.cat([M.emd_auction(x[i:i + 1], y[i:i + 1]) for i in range(pairs)]), 1)
        ab_t, _ = best_of(lambda: M.emd_auction(x, y), 1)
        rows.append(dict(op='emd', N=N, pairs=pairs, s_per_pair_exact=ex_t / pairs, s_per_pair_auction=au_t / pairs,
                         s_per_pair_auction_batched=ab_t / pairs, auction_over_exact=au_t / ex_t,
                         auction_rel_err_mean=float(((au - ex) / ex).mean()), package_auto=M.emd_solver('cpu', N)))
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    if a.quick:
        rows = chamfer_pair_rows([256, 1024], 8) + chamfer_matrix_rows([(8, 256), (6, 2048)]) + emd_rows([256], 2)
    else:
        rows = (chamfer_pair_rows([128, 256, 512, 1024, 2048], 32)
                + chamfer_matrix_rows([(32, 128), (32, 256), (24, 512), (16, 1024), (12, 2048)])
                + emd_rows([256, 512, 1024], 4) + emd_rows([2048], 1))
    load1 = os.getloadavg()[0]
    for op in ('chamfer_pair', 'chamfer_matrix', 'emd'):
        print_table([{k: v for k, v in r.items() if k != 'op'} for r in rows if r['op'] == op], op)
    save_results('cpu_metrics', rows, loadavg_1min_start=load0, loadavg_1min_end=load1,
                 torch_threads=torch.get_num_threads(), kdtree_backend=M.kdtree_backend(),
                 note='all ratios measured in this one run; the machine is shared, see the load averages')


if __name__ == '__main__':
    main()
