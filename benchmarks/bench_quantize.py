"""Quantizer speed and quality: nearest-code lookup (chunked matmul vs naive), the vector quantizer in
training mode, and the residual multi-scale quantizer at tokenizer-like sizes (forward+backward,
exact index round trip, residual norm per scale after a short fit on structured toy features).

    python benchmarks/bench_quantize.py [--quick]
"""
from __future__ import annotations
import argparse

import torch

from _common import print_table, save_results
from nsp_explore.core import Timer, default_device, seed_everything
from nsp_explore.lod import upsample
from nsp_explore.quantize import (VectorQuantizer, ResidualMultiScaleQuantizer, LookupFreeQuantizer,
                                  nearest_code, nearest_code_naive)


def toy_tree_features(B, scales, C, seed, device):
    g = torch.Generator().manual_seed(seed)
    f = 0
    for k, s in enumerate(scales): f = f + upsample(torch.randn(B, s, C, generator=g) * 0.6 ** k, scales[-1] // s)
    return f.to(device)


def main(quick: bool):
    dev = default_device()
    seed_everything(0)
    rows = []
    reps = 3 if quick else 7
    # 1. lookup
    for N, K, C in ([(16384, 512, 32)] if quick else [(16384, 512, 32), (65536, 4096, 64)]):
        z, e = torch.randn(N, C, device=dev), torch.randn(K, C, device=dev)
        t_fast = Timer.measure(lambda: nearest_code(z, e), repeats=reps, device=dev)
        n_naive = min(N, 4096)
        t_naive = Timer.measure(lambda: nearest_code_naive(z[:n_naive], e), repeats=reps, device=dev)
        agree = bool(torch.equal(nearest_code(z[:n_naive], e), nearest_code_naive(z[:n_naive], e)))
        rows.append(dict(case=f'lookup N={N} K={K} C={C}', ms=t_fast['median_ms'],
                         naive_ms_per_same_N=t_naive['median_ms'] * N / n_naive, agree=agree))
    # 2. VQ train-mode forward (EMA + restarts)
    vq = VectorQuantizer(512, 64).to(dev).train()
    z = torch.randn(16, 1024, 64, device=dev)
    t = Timer.measure(lambda: vq(z), repeats=reps, device=dev)
    rows.append(dict(case='VQ train fwd B=16 L=1024 C=64 K=512', ms=t['median_ms']))
    lfq = LookupFreeQuantizer(64, n_bits=10).to(dev)
    t = Timer.measure(lambda: lfq(z), repeats=reps, device=dev)
    rows.append(dict(case='LFQ fwd B=16 L=1024 C=64 bits=10 (exact entropy)', ms=t['median_ms']))
    # 3. residual multi-scale quantizer
    scales, C = (1, 4, 16, 64, 256), 64
    rq = ResidualMultiScaleQuantizer(C, 512, scales, decay=0.95, dead_threshold=0.02).to(dev)
    f = toy_tree_features(16, scales, C, 0, dev).requires_grad_()
    def fb():
        out = rq(f); (out.f_hat.square().mean() + out.loss).backward()
    t = Timer.measure(fb, repeats=reps, device=dev)
    rows.append(dict(case=f'RQ fwd+bwd B=16 S=256 scales={scales} C={C} K=512', ms=t['median_ms']))
    steps = 60 if quick else 200
    opt = torch.optim.Adam(rq.parameters(), lr=3e-3)
    with Timer(dev) as tt:
        for s in range(steps):
            out = rq.train()(toy_tree_features(16, scales, C, s, dev)); opt.zero_grad(); out.loss.backward(); opt.step()
    rq.eval()
    fe = toy_tree_features(32, scales, C, 10_000, dev)
    out = rq(fe)
    exact = bool(torch.equal(rq.indices_to_features(out.indices), out.f_hat))
    row = dict(case=f'RQ toy fit {steps} steps', ms=tt.ms, exact_round_trip=exact,
               ppl_finest=round(out.stats['perplexity'][-1], 1))
    row.update({f'res_k{k + 1}': round(r, 4) for k, r in enumerate(out.stats['residual_norm'])})
    rows.append(row)
    print_table(rows, title=f'quantize on {dev}')
    save_results('quantize', rows, quick=quick)


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (1 gives steadier numbers on a busy machine)')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    main(a.quick)
