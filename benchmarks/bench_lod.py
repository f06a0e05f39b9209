"""FPS and LoD-tree timings: ms per cloud for every FPS backend (full order at N=2048, and the
first 2048 of 15000 points), batch 1 and 64; the full LoD tree (FPS + capacity-constrained
assignment) of 64 x 2048 clouds; and the capacity cost of each assignment method.

    python benchmarks/bench_lod.py            # full run (several minutes on 2 busy cores)
    python benchmarks/bench_lod.py --quick    # batch 8 instead of 64, fewer repeats

Writes benchmarks/results/lod_<device>.json. The 1-minute load average is recorded at start and
end: on a shared machine every number is inflated by the other processes.
"""
from __future__ import annotations
import argparse, os, time

import numpy as np
import torch

from _common import print_table, save_results
from nsp_explore.core import Timer, versions
from nsp_explore.lod import (fps_order, fps_backends, build_lod, make_scales, capacity_cost)


def clouds(B, N, seed=0):
    "Surface-like clouds: Gaussian points pushed onto a few random ellipsoids (non-uniform density)."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g)
    x = x / x.norm(dim=-1, keepdim=True) * torch.tensor([1.0, 0.6, 0.3])
    return x + 0.05 * torch.randn(B, N, 3, generator=g)


def loadavg():
    try: return round(os.getloadavg()[0], 2)
    except OSError: return None


def time_fps(x, n, backend, repeats):
    dev = x.device
    r = Timer.measure(lambda: fps_order(x, n, backend=backend), repeats=repeats, warmup=1 if repeats > 1 else 0, device=dev)
    return r['median_ms'] / x.shape[0], r['min_ms'] / x.shape[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    args = ap.parse_args()
    big_b = 8 if args.quick else 64
    reps = lambda B, N: 1 if (B > 1 and N > 2048) or args.quick else 3
    load0, t0 = loadavg(), time.time()
    rows = []
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for dev in devices:
        for N, n in [(2048, None), (15000, 2048)]:
            for B in (1, big_b):
                x = clouds(B, N, seed=B + N).to(dev)
                bes = ['auto'] + fps_backends(dev) + (['naive'] if dev == 'cpu' and B == 1 else [])
                for be in bes:
                    if be == 'torch' and dev == 'cpu' and B > 1 and N > 2048 and not args.quick:
                        B_t = 8                                 # the pure-torch loop is slow on CPU: time 8 clouds
                        med, mn = time_fps(x[:B_t], n, be, 1)
                    else:
                        med, mn = time_fps(x, n, be, reps(B, N) if be != 'naive' else 1)
                    rows.append(dict(what='fps', device=dev, backend=be, N=N, n=n or N, B=B, ms_per_cloud=med,
                                     min_ms_per_cloud=mn, loadavg=loadavg()))
                    print(rows[-1], flush=True)
                if dev == 'cpu' and 'fpsample' in bes:  # noqa
                    # the raw library call, to measure the wrapper's overhead (goal: auto within 1.2x of fastest)
                    import fpsample
                    pts = x.cpu().numpy()
                    f = lambda: [fpsample.fps_sampling(p, n or N, start_idx=0) for p in pts]
                    r = Timer.measure(f, repeats=reps(B, N), warmup=1 if reps(B, N) > 1 else 0)
                    rows.append(dict(what='fps', device=dev, backend='fpsample-raw', N=N, n=n or N, B=B,
                                     ms_per_cloud=r['median_ms'] / B, min_ms_per_cloud=r['min_ms'] / B, loadavg=loadavg()))
                    print(rows[-1], flush=True)
    # the full tree: FPS + assignment, 64 x 2048 (scales 1, 4, ..., 1024, 2048)
    scales = make_scales(2048)
    for dev in devices:
        x = clouds(big_b, 2048, seed=5).to(dev)
        for assign in (['optimal', 'greedy'] if dev == 'cpu' else ['greedy']):
            r = Timer.measure(lambda: build_lod(x, scales, assign=assign), repeats=1 if dev == 'cpu' else 5,
                              warmup=0 if dev == 'cpu' else 1, device=dev)
            rows.append(dict(what='build_lod', device=dev, backend='auto', assign=assign, N=2048, n=2048, B=big_b,
                             ms_per_cloud=r['median_ms'] / big_b, ms_batch=r['median_ms'], loadavg=loadavg()))
            print(rows[-1], flush=True)
    # capacity cost: mean child-parent distance / mean nearest-parent distance, per level
    x = clouds(4, 2048, seed=7)
    cost_rows = []
    for assign in ('optimal', 'greedy'):
        for c in capacity_cost(x, build_lod(x, scales, assign=assign)):
            cost_rows.append(dict(assign=assign, **c))
    print_table([{k: v for k, v in r.items() if k != 'min_ms_per_cloud'} for r in rows], 'LoD timings (ms per cloud)')
    print_table(cost_rows, 'capacity cost (tree / nearest-parent mean distance)')
    save_results('lod', rows, capacity_cost=cost_rows, quick=args.quick, loadavg_start=load0, loadavg_end=loadavg(),
                 seconds=round(time.time() - t0, 1), torch_threads=torch.get_num_threads(),
                 note='2 shared CPU cores, other processes running: timings are inflated; see loadavg')


if __name__ == '__main__':
    main()
