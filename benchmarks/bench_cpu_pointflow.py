"""The PointFlow protocol on the CPU at 2048 points: projected wall time of 100 vs 100 and 405 vs 405 shapes.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_cpu_pointflow.py [--cd-sets 24] [--emd-pairs 16]

The protocol (`compute_all_metrics`) needs, per distance, the S x R matrix plus both triangles of S x S and
R x R: S*R + S(S-1)/2 + R(R-1)/2 pairs (19,900 at 100 vs 100; 327,645 at 405 vs 405). This script MEASURES a
subset with progress bars and EXTRAPOLATES linearly (the cost is per pair): CD exactly (the package's CPU
path, one KD-tree per cloud), EMD by the batched auction (`emd='auction'`, the protocol's solver at 2048
points) and, for comparison, by the exact Hungarian. The numbers are projections, not runs of the protocol;
the 1-minute load average is recorded (the machine is shared).
"""
import argparse, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results

import torch
from nsp_explore import metrics as M
from nsp_explore.core import progress


def shapes(B, n, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, n, 3, generator=g, dtype=torch.float64)
    p = p / p.norm(dim=-1, keepdim=True)
    ax = 0.6 + 0.4 * torch.rand(B, 1, 3, generator=g, dtype=torch.float64)
    return (0.5 * p * ax + 0.005 * torch.randn(B, n, 3, generator=g, dtype=torch.float64)).float()


def protocol_pairs(S, R): return S * R + S * (S - 1) // 2 + R * (R - 1) // 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=2048)
    ap.add_argument('--cd-sets', type=int, default=24, help='CD: an S x S matrix of this many clouds per set is timed')
    ap.add_argument('--emd-pairs', type=int, default=16, help='EMD: this many pairs are timed per solver')
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    N, S = a.n, a.cd_sets
    A, B = shapes(S, N, 1), shapes(S, N, 2)
    t = time.perf_counter()
    M.pairwise_distances(A, B, 'cd', device='cpu', show_progress=True)
    cd_s = (time.perf_counter() - t) / (S * S)
    x, y = shapes(a.emd_pairs, N, 3), shapes(a.emd_pairs, N, 4)
    bsz = max(1, min(a.emd_pairs, 2**26 // (N * N)))                      # the auction's block in pairwise_distances
    t = time.perf_counter()
    for b0 in progress(range(0, a.emd_pairs, bsz), desc=f'emd auction ({bsz} pairs a block)'): M.emd_auction(x[b0:b0 + bsz], y[b0:b0 + bsz])
    au_s = (time.perf_counter() - t) / a.emd_pairs
    n_ex = max(1, a.emd_pairs // 4)
    t = time.perf_counter()
    for i in progress(range(n_ex), desc='emd exact (Hungarian)'): M.emd_exact(x[i], y[i])
    ex_s = (time.perf_counter() - t) / n_ex
    load1 = os.getloadavg()[0]
    rows = []
    for SR in (100, 405):
        P = protocol_pairs(SR, SR)
        rows.append(dict(protocol=f'{SR} vs {SR}', N=N, pairs_per_metric=P,
                         cd_s_per_pair=cd_s, cd_hours=P * cd_s / 3600,
                         emd_auction_s_per_pair=au_s, emd_auction_hours=P * au_s / 3600,
                         emd_exact_s_per_pair=ex_s, emd_exact_hours=P * ex_s / 3600,
                         total_hours_cd_plus_auction=P * (cd_s + au_s) / 3600))
    print_table(rows, f'PointFlow protocol on this CPU at {N} points: PROJECTED from {S}x{S} CD pairs, '
                      f'{a.emd_pairs} auction and {n_ex} exact EMD pairs (linear extrapolation)')
    save_results('cpu_pointflow', rows, loadavg_1min_start=load0, loadavg_1min_end=load1, torch_threads=torch.get_num_threads(),
                 measured=dict(cd_pairs=S * S, emd_auction_pairs=a.emd_pairs, emd_exact_pairs=n_ex),
                 kdtree_backend=M.kdtree_backend(), note='EXTRAPOLATED from the measured subset; the machine is shared')


if __name__ == '__main__':
    main()
