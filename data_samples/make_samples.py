"""Regenerate nsp_explore's sample data, byte for byte:  python data_samples/make_samples.py [--out DIR]

- meshes/<category>/<category>_0.ply and <category>_1.obj: two procedural shapes per category
  (nsp_explore.shapes.make_shape, the first two 'train' shapes of SyntheticShapes(seed=0)).
- pc15k/<synset>/<train|val|test>/<name>.npy: (15000, 3) float32 surface samples in the
  ShapeNetCore.v2.PC15k layout (one shape per category and split, two train shapes for
  airplane, chair and car), the same shapes SyntheticShapes(split, seed=0) lists first.

Everything is a pure function of the code (seeds fixed), so running this again writes identical
bytes (on the same platform and library versions; float rounding in qhull/trigonometry may differ
across platforms). The test suite regenerates a few files into a temporary folder and compares.
"""
from __future__ import annotations
import argparse
from pathlib import Path

import numpy as np

from nsp_explore.shapes import CATEGORIES, make_shape, sample_surface
from nsp_explore.data import SYNSETS, shape_seed

HERE = Path(__file__).resolve().parent
N_TRAIN = dict(airplane=2, chair=2, car=2)          # PC15k train shapes (default 1)
N_PC15K_POINTS = 15000


def mesh_files(out: Path, categories=CATEGORIES) -> list[Path]:
    "Write the sample meshes; return their paths."
    paths = []
    for ci, c in enumerate(CATEGORIES):
        if c not in categories: continue
        for i, ext in enumerate(('ply', 'obj')):
            m = make_shape(c, seed=shape_seed(0, 'train', ci, i))
            p = out / 'meshes' / c / f'{c}_{i}.{ext}'
            p.parent.mkdir(parents=True, exist_ok=True)
            data = m.export(file_type=ext, **({'encoding': 'binary'} if ext == 'ply' else {'include_texture': False}))
            p.write_bytes(data if isinstance(data, bytes) else data.encode())
            paths.append(p)
    return paths


def pc15k_files(out: Path, categories=CATEGORIES) -> list[Path]:
    "Write the PC15k-layout sample clouds; return their paths."
    paths = []
    for ci, c in enumerate(CATEGORIES):
        if c not in categories: continue
        for split in ('train', 'val', 'test'):
            for i in range(N_TRAIN.get(c, 1) if split == 'train' else 1):
                s = shape_seed(0, split, ci, i)
                pts = sample_surface(make_shape(c, seed=s), N_PC15K_POINTS, seed=s).astype(np.float32)
                p = out / 'pc15k' / SYNSETS[c] / split / f'{c}_{split}_{i:02d}.npy'
                p.parent.mkdir(parents=True, exist_ok=True)
                np.save(p, pts)
                paths.append(p)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', type=Path, default=HERE, help='output folder (default: this data_samples folder)')
    ap.add_argument('--categories', nargs='*', default=list(CATEGORIES))
    a = ap.parse_args(argv)
    files = mesh_files(a.out, a.categories) + pc15k_files(a.out, a.categories)
    total = sum(f.stat().st_size for f in files)
    print(f'wrote {len(files)} files, {total / 1e6:.2f} MB under {a.out}')


if __name__ == '__main__':
    main()
