"""CPU speed of FPS and of build_lod, side by side in one run (issue 18).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_cpu_lod.py [--quick]

fps rows: ms per cloud, every method from the same asked start (`fps_start`, the farthest point from the
centroid): `fps_order` (the package's `auto`: the numba KD-tree kernel where numba is installed), the
`'fpsample'` backend (fpsample's bucket method from the asked start, run twice to catch exact ties, vanilla
loop as fallback), fpsample's vanilla loop called directly, one bucket run called directly from the asked
start (the replayed tree slot included) and from its own first point (the raw speed), and the batched torch
loop with one thread. `exact` says whether each method gave exactly the float32 naive order
(the torch loop's, tested equal to `fps_order_naive(dtype=float32)`) on every fresh cloud; the package is
also checked against the float64 reference with `orders_agree`. `fallbacks` counts the package's clouds
that took the vanilla loop. build_lod rows: its time against its own FPS time and against the vanilla FPS
time of the same clouds (one torch thread, and again with two), the assignment per level by the package
(`assign_greedy`, numba where installed) against the batched torch path of the same greedy (`same_as_torch`:
clouds with identical choices) and the previous dense greedy, and the mean child-parent distance per level of
the greedy, the dense greedy and the exact (Hungarian) assignment.
The 1-minute load average is recorded (the machine may be shared).
"""
import argparse, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results

import numpy as np
import torch
import fpsample
import nsp_explore.lod as L


def _version(name):
    try: return __import__(name).__version__
    except ImportError: return None


def best_of(fn, repeats=2):
    "Best wall time of `repeats` calls (seconds) and the last result."
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t)
    return min(ts), out


def fps_rows(B, N, seed, check64=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g) * torch.rand(B, 1, 3, generator=g).add(0.2)   # anisotropic clouds
    pts, first = x.numpy(), L.fps_start(x)
    s_list = first.tolist()
    ref32 = L._fps_torch(x, N, first)                                   # float32 naive order (tested equal)
    one = lambda p, s: fpsample.bucket_fps_kdline_sampling(p, N, h=L.BUCKET_H, start_idx=L._kdline_slot(np.ascontiguousarray(p.T), s))
    meth = {
        'fps_order (package)': lambda: L.fps_order(x).numpy(),
        "'fpsample' backend (2 bucket runs)": lambda: L.fps_order(x, backend='fpsample').numpy(),
        'fpsample vanilla': lambda: np.stack([L._fps_fpsample_vanilla(p, N, s) for p, s in zip(pts, s_list)]),
        'bucket h=3, one run from asked start': lambda: np.stack([one(p, s) for p, s in zip(pts, s_list)]),
        'bucket h=3, one run from its own start': lambda: np.stack([fpsample.bucket_fps_kdline_sampling(p, N, h=L.BUCKET_H, start_idx=0) for p in pts]),
        'torch loop, 1 thread': lambda: L._fps_torch(x, N, first).numpy(),
    }
    rows = []
    for name, fn in meth.items():
        fn()                                                            # warm up
        t, out = best_of(fn, 3)
        out = torch.from_numpy(np.asarray(out).astype(np.int64))
        exact = [torch.equal(out[b], ref32[b]) for b in range(B)]
        row = dict(op='fps', B=B, N=N, method=name, ms_per_cloud=1e3 * t / B, exact=int(sum(exact)),
                   starts_where_asked=int(sum(int(out[b, 0]) == s_list[b] for b in range(B))))
        if name.startswith("'fpsample'"):
            row['fallbacks'] = sum(L._fps_bucket_one(p, N, s) is None for p, s in zip(pts, s_list))
        if name.startswith('fps_order') and check64:
            ref64 = L.fps_order(x, backend='naive')
            row['agree_float64'] = int(sum(L.orders_agree(x[b], out[b], ref64[b]) for b in range(B)))
        rows.append(row); print(row, flush=True)
    by = {r['method']: r['ms_per_cloud'] for r in rows}
    pkg = by['fps_order (package)']
    for r in rows: r['package_over_this'] = pkg / r['ms_per_cloud']
    others = [r for r in rows[1:] if r['exact'] == B]                   # exact from the asked start, not the package
    best = min(others, key=lambda r: r['ms_per_cloud'])
    rows[0].update(fastest_exact_other=best['method'], package_over_fastest_exact_other=pkg / best['ms_per_cloud'])
    return rows


def mean_dist(kids, pars, slot):
    return (kids.double() - pars.double().gather(1, slot[..., None].expand(-1, -1, 3))).norm(dim=-1).mean().item()


def lod_rows(B, N, n_opt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, 3, generator=g); sc = L.make_scales(N)
    L.build_lod(x[:2], sc)                                               # warm up (imports)
    t_fps, fps = best_of(lambda: L.fps_order(x, N), 2)
    t_van, _ = best_of(lambda: L._fps_fpsample(x, N, L.fps_start(x), bucket=False), 1)
    t_lod, _ = best_of(lambda: L.build_lod(x, sc), 2)
    threads = torch.get_num_threads(); torch.set_num_threads(min(2, os.cpu_count() or 1))
    t_fps2, _ = best_of(lambda: L.fps_order(x, N), 1)
    t_lod2, _ = best_of(lambda: L.build_lod(x, sc), 1)
    torch.set_num_threads(threads)
    pts = x.gather(1, fps[..., None].expand(-1, -1, 3))
    levels, t_new, t_dense, t_torch = [], 0.0, 0.0, 0.0
    for a, b in zip(sc, sc[1:]):
        kids, pars, cap = pts[:, a:b], pts[:, :a], b // a - 1
        dt_n, s_new, dt_d, s_old, dt_t, s_t = 0.0, [], 0.0, [], 0.0, []
        for c in range(0, B, 16):                                        # build_lod's chunks
            t, s = best_of(lambda: L.assign_greedy(kids[c:c + 16], pars[c:c + 16], cap), 1); dt_n += t; s_new.append(s)
            t, s = best_of(lambda: L.assign_greedy(kids[c:c + 16], pars[c:c + 16], cap, backend='torch'), 1); dt_t += t; s_t.append(s)
            t, s = best_of(lambda: L.assign_greedy_dense(kids[c:c + 16], pars[c:c + 16], cap), 1); dt_d += t; s_old.append(s)
        s_new, s_old, s_t = torch.cat(s_new), torch.cat(s_old), torch.cat(s_t)
        t_new += dt_n; t_dense += dt_d; t_torch += dt_t
        lv = dict(op='level', N=N, level=f'{a}->{b}', assign_ms_per_cloud=1e3 * dt_n / B, torch_assign_ms_per_cloud=1e3 * dt_t / B,
                  same_as_torch=int(sum(torch.equal(s_new[i], s_t[i]) for i in range(B))), dense_assign_ms_per_cloud=1e3 * dt_d / B,
                  mean_dist_knn=mean_dist(kids, pars, s_new), mean_dist_dense=mean_dist(kids, pars, s_old))
        if n_opt:
            o = slice(0, n_opt)
            s_opt = L.assign_optimal(kids[o], pars[o], cap)
            lv.update(clouds_vs_optimal=n_opt, knn_over_optimal=mean_dist(kids[o], pars[o], s_new[o]) / mean_dist(kids[o], pars[o], s_opt),
                      dense_over_optimal=mean_dist(kids[o], pars[o], s_old[o]) / mean_dist(kids[o], pars[o], s_opt))
        levels.append(lv); print(lv, flush=True)
    row = dict(op='build_lod', B=B, N=N, scales=str(sc), fps_ms_per_cloud=1e3 * t_fps / B, vanilla_fps_ms_per_cloud=1e3 * t_van / B,
               build_lod_ms_per_cloud=1e3 * t_lod / B, assignment_ms_per_cloud=1e3 * (t_lod - t_fps) / B,
               assign_greedy_sum_ms_per_cloud=1e3 * t_new / B, torch_assign_sum_ms_per_cloud=1e3 * t_torch / B,
               dense_assign_sum_ms_per_cloud=1e3 * t_dense / B,
               build_lod_over_fps=t_lod / t_fps, build_lod_over_vanilla_fps=t_lod / t_van,
               two_threads=dict(fps_ms_per_cloud=1e3 * t_fps2 / B, build_lod_ms_per_cloud=1e3 * t_lod2 / B, build_lod_over_fps=t_lod2 / t_fps2))
    print(row, flush=True)
    return [row] + levels


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--quick', action='store_true'); a = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = fps_rows(4, 2048, 0, check64=False) if a.quick else fps_rows(16, 2048, 0) + fps_rows(16, 256, 1)
    rows += lod_rows(16, 2048, 0) if a.quick else lod_rows(64, 2048, 2) + lod_rows(64, 256, 2)
    load1 = os.getloadavg()[0]
    drop = lambda r, *ks: {k: v for k, v in r.items() if k not in ('op',) + ks}
    print_table([drop(r) for r in rows if r['op'] == 'fps'], 'fps (ms per cloud, all from the asked start)')
    print_table([drop(r, 'scales') for r in rows if r['op'] == 'build_lod'], 'build_lod vs its FPS')
    print_table([drop(r) for r in rows if r['op'] == 'level'], 'assignment per level: package (numba) vs torch path vs dense greedy vs optimal')
    save_results('cpu_lod', rows, numba=_version('numba'), loadavg_1min_start=load0, loadavg_1min_end=load1, torch_threads=torch.get_num_threads(),
                 fpsample=getattr(fpsample, '__version__', '0.3.3'),
                 note='all ratios measured in this one run; the machine may be shared, see the load averages')


if __name__ == '__main__':
    main()
