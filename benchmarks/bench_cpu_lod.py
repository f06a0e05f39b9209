"""CPU speed of FPS and of build_lod, side by side in one run.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_cpu_lod.py [--quick]

fps rows: ms per 2048-point cloud for `fps_order` (the package: fpsample's exact loop from the asked start),
fpsample's loop called directly, its bucket variants (QuickFPS kdline h=3/5/7, kdtree; from *their own*
first point, since fpsample 0.3.3 does not honour `start_idx` there) and the batched torch loop with 1 and 2
threads. `exact` says whether each method gave exactly the reference order (the vanilla loop from the same
first point) on every fresh cloud of the run. build_lod rows: its time against its own FPS time, with the
parent assignment split out. The 1-minute load average is recorded (the machine is shared).
"""
import argparse, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results

import numpy as np
import torch
import fpsample
import nsp_explore.lod as L


def fps_rows(B, N, seeds):
    rng = np.random.default_rng(seeds)
    clouds = [rng.standard_normal((B, N, 3)).astype(np.float32) for _ in range(2)]
    meth = {
        'fps_order (package)': lambda p, s: L.fps_order(torch.from_numpy(p), start=s).numpy(),
        'fpsample.fps_sampling': lambda p, s: fpsample.fps_sampling(p, N, start_idx=s),
        'bucket kdline h=3': lambda p, s: fpsample.bucket_fps_kdline_sampling(p, N, h=3, start_idx=s),
        'bucket kdline h=5': lambda p, s: fpsample.bucket_fps_kdline_sampling(p, N, h=5, start_idx=s),
        'bucket kdline h=7': lambda p, s: fpsample.bucket_fps_kdline_sampling(p, N, h=7, start_idx=s),
        'bucket kdtree': lambda p, s: fpsample.bucket_fps_kdtree_sampling(p, N, start_idx=s),
    }
    rows = []
    for name, fn in meth.items():
        exact, starts_where_asked, ts = True, True, []
        for X in clouds:
            t = time.perf_counter()
            outs = [np.asarray(fn(p, int(L.fps_start(torch.from_numpy(p))))).astype(np.int64) for p in X]
            ts.append((time.perf_counter() - t) / B)
            for p, o in zip(X, outs):
                s = int(L.fps_start(torch.from_numpy(p)))
                starts_where_asked &= int(o[0]) == s
                ref = L.fps_order(torch.from_numpy(p), start=int(o[0]), backend='naive').numpy()   # float64 reference
                exact &= L.orders_agree(torch.from_numpy(p), ref, o)
        rows.append(dict(op='fps', B=B, N=N, method=name, ms_per_cloud=1e3 * min(ts), exact_order=exact,
                         starts_where_asked=starts_where_asked))
        print(rows[-1], flush=True)
    x = torch.from_numpy(clouds[0]); first = L.fps_start(x)
    for th in (1, 2):
        old = torch.get_num_threads(); torch.set_num_threads(th)
        L._fps_torch(x, N, first); t = time.perf_counter(); L._fps_torch(x, N, first)
        rows.append(dict(op='fps', B=B, N=N, method=f'torch loop, {th} thread(s)', ms_per_cloud=1e3 * (time.perf_counter() - t) / B,
                         exact_order=True, starts_where_asked=True))
        torch.set_num_threads(old); print(rows[-1], flush=True)
    return rows


def lod_rows(B, N):
    torch.manual_seed(0)
    x = torch.randn(B, N, 3); sc = L.make_scales(N)
    L.build_lod(x[:2], sc)
    t = time.perf_counter(); L.fps_order(x, N); t_fps = time.perf_counter() - t
    t = time.perf_counter(); L.build_lod(x, sc); t_lod = time.perf_counter() - t
    row = dict(op='build_lod', B=B, N=N, scales=str(sc), fps_ms_per_cloud=1e3 * t_fps / B, build_lod_ms_per_cloud=1e3 * t_lod / B,
               assignment_ms_per_cloud=1e3 * (t_lod - t_fps) / B, build_lod_over_fps=t_lod / t_fps)
    print(row, flush=True)
    return [row]


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--quick', action='store_true'); a = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = fps_rows(4, 2048, 0) if a.quick else fps_rows(16, 2048, 0) + fps_rows(16, 256, 1)
    rows += lod_rows(16 if a.quick else 64, 2048)
    load1 = os.getloadavg()[0]
    print_table([{k: v for k, v in r.items() if k != 'op'} for r in rows if r['op'] == 'fps'], 'fps (ms per cloud)')
    print_table([{k: v for k, v in r.items() if k != 'op'} for r in rows if r['op'] == 'build_lod'], 'build_lod vs its FPS')
    save_results('cpu_lod', rows, loadavg_1min_start=load0, loadavg_1min_end=load1, torch_threads=torch.get_num_threads(),
                 fpsample=getattr(fpsample, '__version__', '0.3.3'),
                 note='all ratios measured in this one run; the machine is shared, see the load averages')


if __name__ == '__main__':
    main()
