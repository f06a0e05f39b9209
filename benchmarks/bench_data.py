"""Shapes and data throughput on CPU: procedural shapes generated+sampled per second (per category),
occupancy queries per second, and dataset build / item / batch throughput for SyntheticShapes,
PC15k (data_samples/pc15k) and MeshFolder (data_samples/meshes).

    python benchmarks/bench_data.py [--quick]
"""
from __future__ import annotations
import argparse, os, time
from pathlib import Path

from _common import print_table, save_results  # noqa: E402  (adds the repo root to sys.path)

os.environ.setdefault('NSP_PROGRESS', '0')
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nsp_explore.core import data_samples_dir  # noqa: E402
from nsp_explore.shapes import CATEGORIES, load_mesh, make_shape, sample_occupancy, sample_surface  # noqa: E402
from nsp_explore import data as D  # noqa: E402


def timed(fn):
    t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t


def bench_shapes(n_seeds: int, n_points: int = 2048) -> list[dict]:
    rows = []
    for c in CATEGORIES:
        make_shape(c, 10_000)                                           # warm-up
        _, t_make = timed(lambda: [make_shape(c, s) for s in range(n_seeds)])
        _, t_all = timed(lambda: [sample_surface(make_shape(c, s), n_points, seed=s) for s in range(n_seeds)])
        faces = np.mean([len(make_shape(c, s).faces) for s in range(min(n_seeds, 5))])
        rows.append(dict(category=c, shapes=n_seeds, mean_faces=float(faces), make_ms=1000 * t_make / n_seeds,
                         make_sample_ms=1000 * t_all / n_seeds, shapes_per_s=n_seeds / t_all))
    tot = sum(r['shapes'] for r in rows) / sum(r['shapes'] / r['shapes_per_s'] for r in rows)
    rows.append(dict(category='ALL', shapes=n_seeds * len(CATEGORIES), mean_faces=float(np.mean([r['mean_faces'] for r in rows])),
                     make_ms=float(np.mean([r['make_ms'] for r in rows])),
                     make_sample_ms=float(np.mean([r['make_sample_ms'] for r in rows])), shapes_per_s=tot))
    return rows


def bench_occupancy(n: int) -> list[dict]:
    rows = []
    m = make_shape('chair', 0)
    _, t = timed(lambda: sample_occupancy(m, n, seed=0))
    rows.append(dict(mesh='chair (procedural, part-wise half-spaces)', faces=len(m.faces), queries=n, queries_per_s=n / t))
    m = make_shape('mug', 0)
    _, t = timed(lambda: sample_occupancy(m, n, seed=0))
    rows.append(dict(mesh='mug (procedural, tube = prism minus hole)', faces=len(m.faces), queries=n, queries_per_s=n / t))
    real = Path(os.environ.get('NSP_REAL_MESHES', Path(__file__).resolve().parents[2] / 'shared' / 'real_meshes'))
    for rel in ('plane/plane_holes.obj', 'penguin/penguin.obj'):
        if (real / rel).is_file():
            rm = load_mesh(real / rel)
            k = max(200, n // 10)
            _, t = timed(lambda: sample_occupancy(rm, k, seed=0))
            rows.append(dict(mesh=f'{rel} (real, winding number)', faces=len(rm.faces), queries=k, queries_per_s=k / t))
    return rows


def epoch(ds, batch_size: int) -> tuple[int, float]:
    loader = D.make_loader(ds, batch_size=batch_size, shuffle=True, seed=0)
    t = time.perf_counter(); nb = 0
    for b in loader: nb += 1; assert b['points'].shape[0] <= batch_size
    return nb, time.perf_counter() - t


def bench_datasets(n_per_category: int, n_points: int, batch_size: int) -> list[dict]:
    rows = []
    D._POOL_CACHE.clear()
    ds, t_build = timed(lambda: D.SyntheticShapes('train', n_per_category=n_per_category, n_points=n_points))
    _, t_items = timed(lambda: [ds[i] for i in range(len(ds))])
    nb, t_ep = epoch(ds, batch_size)
    rows.append(dict(dataset=f'SyntheticShapes train {len(CATEGORIES)}x{n_per_category}', items=len(ds), n_points=n_points,
                     build_s=t_build, build_shapes_per_s=len(ds) / t_build, items_per_s=len(ds) / t_items,
                     batches_per_s=nb / t_ep, batch_size=batch_size))
    _, t_cached = timed(lambda: D.SyntheticShapes('train', n_per_category=n_per_category, n_points=n_points))
    rows.append(dict(dataset='SyntheticShapes rebuilt from the in-memory cache', items=len(ds), n_points=n_points,
                     build_s=t_cached, build_shapes_per_s=len(ds) / t_cached))
    root = data_samples_dir()
    pc, t_build = timed(lambda: D.PC15k(root / 'pc15k', 'all', 'train', n_points=n_points, return_ref=True))
    reps = 20
    _, t_items = timed(lambda: [pc[i] for _ in range(reps) for i in range(len(pc))])
    nb, t_ep = 0, 0.0
    for _ in range(reps):
        a, b = epoch(pc, min(batch_size, 8)); nb += a; t_ep += b
    rows.append(dict(dataset='PC15k data_samples (all, train)', items=len(pc), n_points=n_points, build_s=t_build,
                     build_shapes_per_s=len(pc) / t_build, items_per_s=reps * len(pc) / t_items, batches_per_s=nb / t_ep,
                     batch_size=min(batch_size, 8)))
    mf, t_build = timed(lambda: D.MeshFolder(root / 'meshes', n_points=n_points))
    _, t_items = timed(lambda: [mf[i] for _ in range(reps) for i in range(len(mf))])
    rows.append(dict(dataset='MeshFolder data_samples/meshes', items=len(mf), n_points=n_points, build_s=t_build,
                     build_shapes_per_s=len(mf) / t_build, items_per_s=reps * len(mf) / t_items))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    n_seeds, n_occ, n_per_cat = (3, 2000, 4) if a.quick else (20, 20000, 40)
    rows_s = bench_shapes(n_seeds)
    print_table(rows_s, f'procedural shapes: make_shape + sample_surface(2048) (loadavg {load0:.2f})')
    rows_o = bench_occupancy(n_occ)
    print_table(rows_o, 'occupancy queries (half near-surface)')
    rows_d = bench_datasets(n_per_cat, 2048, 32)
    print_table(rows_d, 'datasets (num_workers=0)')
    rows = [dict(section='shapes', **r) for r in rows_s] + [dict(section='occupancy', **r) for r in rows_o] + \
           [dict(section='datasets', **r) for r in rows_d]
    save_results('data', rows, quick=a.quick, torch_threads=torch.get_num_threads(), loadavg_1min_start=load0,
                 loadavg_1min_end=os.getloadavg()[0])


if __name__ == '__main__':
    main()
