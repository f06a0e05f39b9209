"""Tests for nsp_explore.data: normalization, items/collate/loader, SyntheticShapes, PC15k, folders, bad files."""
import hashlib
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from nsp_explore.core import data_samples_dir
from nsp_explore.data import (NORMALIZE_MODES, SYNSETS, Augment, MeshFolder, Normalizer, PC15k, PointFolder,
                              SyntheticShapes, collate, denormalize, example_mesh_paths, load_points, make_loader,
                              pc15k_split_points, shape_seed)
from nsp_explore.shapes import CATEGORIES

ROOT = Path(__file__).resolve().parents[1]


def _ref_stats(mode, x):
    "float64 reference of each normalization mode for one cloud (N, 3)."
    x = np.asarray(x, np.float64)
    if mode in ('global', 'per_shape'): return x.mean(0), x.reshape(-1).std()
    if mode == 'unit_sphere':
        m = x.mean(0); return m, np.linalg.norm(x - m, axis=1).max()
    if mode == 'unit_box':
        lo, hi = x.min(0), x.max(0); return (lo + hi) / 2, ((hi - lo) / 2).max()
    return np.zeros(3), 1.0


@pytest.mark.parametrize('mode', NORMALIZE_MODES)
def test_normalizer_modes_against_float64(mode):
    g = np.random.default_rng(7)
    x = (g.normal(size=(777, 3)) * [0.5, 2, 1] + [3, -2, 1]).astype(np.float32)
    nz = Normalizer(mode).fit([x])
    m, s = nz.stats(x)
    rm, rs = _ref_stats(mode, x)
    assert m.shape == (1, 3) and s.shape == (1, 1)
    assert_close(m.double(), torch.tensor(rm).reshape(1, 3), rtol=1e-5, atol=1e-5)
    assert_close(s.double(), torch.tensor(rs, dtype=torch.float64).reshape(1, 1), rtol=1e-5, atol=1e-6)
    y = nz.normalize(x)
    assert_close(denormalize(y, m, s), torch.from_numpy(x), rtol=1e-5, atol=1e-5)


def test_global_normalizer_is_pointflow_statistics():
    g = np.random.default_rng(0)
    clouds = [g.normal(size=(100 + 10 * i, 3)) * (i + 1) + i for i in range(5)]
    nz = Normalizer('global').fit(clouds)
    allp = np.concatenate(clouds)
    assert_close(nz.mean.double(), torch.tensor(allp.mean(0)).reshape(1, 3), rtol=1e-5, atol=1e-6)
    assert_close(nz.std.double(), torch.tensor(allp.reshape(-1).std()).reshape(1, 1), rtol=1e-5, atol=1e-6)
    # the same statistics whatever cloud is normalized
    assert torch.equal(nz.stats(clouds[0])[0], nz.stats(clouds[3])[0])
    nz2 = Normalizer.from_state_dict(nz.state_dict())
    assert torch.equal(nz2.mean, nz.mean) and torch.equal(nz2.std, nz.std)
    with pytest.raises(ValueError, match='per shape'):
        Normalizer('per_shape').denormalize(torch.zeros(4, 3))
    with pytest.raises(ValueError, match='zero extent'):
        Normalizer('unit_box').stats(np.ones((10, 3)))


def test_synthetic_items_contract_and_roundtrip():
    ds = SyntheticShapes('train', categories=['table', 'lamp', 'car'], n_per_category=3, n_points=300)
    assert ds.categories == ['table', 'lamp', 'car'] and ds.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert len(ds) == 9 and ds.normalizer.mode == 'global'
    it = ds[4]
    assert set(it) >= {'points', 'label', 'category', 'mean', 'std', 'name'}
    assert it['points'].shape == (300, 3) and it['points'].dtype == torch.float32
    assert it['label'].dtype == torch.int64 and it['label'].shape == () and it['category'] == 'lamp'
    assert it['mean'].shape == (1, 3) and it['std'].shape == (1, 1)
    raw = denormalize(it['points'], it['mean'], it['std'])
    # raw points are points of the pool (the surface samples), recovered exactly
    pool = torch.from_numpy(ds.pools[4])
    d = torch.cdist(raw.double(), pool.double()).min(1).values
    assert d.max() < 1e-5
    # the global statistics are those of all pools of the split
    allp = np.concatenate(ds.pools).astype(np.float64)
    assert_close(ds.normalizer.std.double().reshape(()), torch.tensor(allp.reshape(-1).std()), rtol=1e-5, atol=1e-6)


def test_synthetic_splits_seeds_and_cache(tmp_path):
    tr = SyntheticShapes('train', categories=['mug'], n_per_category=3, n_points=128)
    te = SyntheticShapes('test', categories=['mug'], n_per_category=3, n_points=128, normalizer=tr.normalizer)
    assert te.normalizer is tr.normalizer and not set(tr.shape_seeds) & set(te.shape_seeds)
    assert tr.shape_seeds[0] == shape_seed(0, 'train', CATEGORIES.index('mug'), 0)
    more = SyntheticShapes('train', categories=['mug'], n_per_category=5, n_points=128)
    assert more.shape_seeds[:3] == tr.shape_seeds                      # growing n keeps the first shapes
    other = SyntheticShapes('train', categories=['mug'], n_per_category=3, n_points=128, seed=1)
    assert not set(other.shape_seeds) & set(tr.shape_seeds)
    # eval items deterministic; train items fresh random subsets
    assert torch.equal(te[0]['points'], te[0]['points'])
    assert not torch.equal(tr[0]['points'], tr[0]['points'])
    # on-disk cache returns the same pools
    a = SyntheticShapes('val', categories=['bench'], n_per_category=2, n_points=64, cache_dir=tmp_path)
    files = list(tmp_path.glob('synthetic_*.npy'))
    assert len(files) == 1
    b = SyntheticShapes('val', categories=['bench'], n_per_category=2, n_points=64, cache_dir=tmp_path)
    assert all(np.array_equal(p, q) for p, q in zip(a.pools, b.pools))
    files[0].write_bytes(b'garbage')                                   # a broken cache is rebuilt
    c = SyntheticShapes('val', categories=['bench'], n_per_category=2, n_points=64, cache_dir=tmp_path)
    assert all(np.array_equal(p, q) for p, q in zip(a.pools, c.pools))


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match='unknown split'):
        SyntheticShapes('training')
    with pytest.raises(ValueError, match='unknown categories'):
        SyntheticShapes('train', categories=['chair', 'dragon'])
    with pytest.raises(ValueError, match='fewer than n_points'):
        SyntheticShapes('val', categories=['mug'], n_per_category=1, n_points=5000, pool_size=1000)
    tr = SyntheticShapes('val', categories=['mug'], n_per_category=1, n_points=64)
    with pytest.raises(ValueError, match='given normalizer has mode'):
        SyntheticShapes('val', categories=['mug'], n_per_category=1, n_points=64, normalize='unit_box',
                        normalizer=tr.normalizer)


@pytest.mark.parametrize('mode', ['per_shape', 'unit_sphere', 'unit_box'])
def test_per_shape_modes_in_dataset(mode):
    ds = SyntheticShapes('val', categories=['sofa', 'bottle'], n_per_category=2, n_points=512, normalize=mode)
    for i in range(len(ds)):
        it = ds[i]
        full = ds.normalizer.normalize(ds.pools[i], it['mean'], it['std'])
        if mode == 'unit_sphere': assert_close(full.norm(dim=1).max(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)
        if mode == 'unit_box': assert_close(full.abs().max(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)
        if mode == 'per_shape': assert_close(full.mean(0), torch.zeros(3), rtol=0, atol=1e-4)


def test_collate_and_loader():
    ds = SyntheticShapes('train', categories=['chair', 'bottle'], n_per_category=5, n_points=200)
    b = collate([ds[0], ds[7], ds[3]])
    assert b['points'].shape == (3, 200, 3) and b['label'].tolist() == [0, 1, 0]
    assert b['mean'].shape == (3, 1, 3) and b['std'].shape == (3, 1, 1)
    assert b['category'] == ['chair', 'bottle', 'chair'] and len(b['name']) == 3
    raw = denormalize(b['points'], b['mean'], b['std'])
    assert raw.shape == (3, 200, 3)
    with pytest.raises(ValueError, match='different shapes'):
        collate([ds[0], dict(ds[1], points=torch.zeros(10, 3))])
    with pytest.raises(ValueError, match='empty batch'):
        collate([])
    # extra keys (e.g. lod_index added by LoDDataset) are stacked too
    assert collate([dict(ds[0], lod_index=torch.arange(4))] * 2)['lod_index'].shape == (2, 4)
    run = lambda seed: [(bb['name'], bb['points']) for bb in make_loader(ds, batch_size=4, seed=seed)]
    torch.manual_seed(0); a = run(0)
    torch.manual_seed(0); c = run(0)
    assert [n for n, _ in a] == [n for n, _ in c] and all(torch.equal(p, q) for (_, p), (_, q) in zip(a, c))
    assert [n for n, _ in run(1)] != [n for n, _ in a]
    assert sum(len(n) for n, _ in a) == len(ds)


def test_loader_with_workers_is_reproducible():
    ds = SyntheticShapes('train', categories=['table'], n_per_category=4, n_points=64)
    run = lambda: [bb['points'] for bb in make_loader(ds, batch_size=2, seed=3, num_workers=2)]
    a, b = run(), run()
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_augment_seeded_and_shape_preserving():
    x = torch.randn(500, 3)
    aug = Augment(rotate=True, scale=(0.5, 2.0), jitter=0.01)
    y1 = aug(x, generator=torch.Generator().manual_seed(1))
    y2 = aug(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y1, y2) and y1.shape == x.shape and not torch.equal(y1, x)
    rot = Augment(rotate=True, scale=None)(x, generator=torch.Generator().manual_seed(2))
    assert_close(rot[:, 1], x[:, 1])                                  # rotation about y keeps heights
    assert_close(rot.norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=1e-5)
    ds = SyntheticShapes('val', categories=['mug'], n_per_category=1, n_points=64, augment=Augment(jitter=0.0))
    assert ds[0]['points'].shape == (64, 3)


# ---------------------------------------------------------------- files
def test_pc15k_on_data_samples():
    root = data_samples_dir() / 'pc15k'
    tr = PC15k(root, ['airplane', 'chair', SYNSETS['car']], 'train', n_points=2048, return_ref=True)
    assert tr.categories == ['airplane', 'chair', 'car'] and len(tr) == 6
    it = tr[0]
    assert it['points'].shape == (2048, 3) and it['ref_points'].shape == (2048, 3)
    assert len(tr.pools[0]) == 10000 and len(tr.ref_pools[0]) == 5000
    te = PC15k(root, ['airplane', 'chair', 'car'], 'test', normalizer=tr.normalizer)
    assert te.normalizer is tr.normalizer and not te.resample
    # global statistics: PointFlow's over all 15000 points of every train file
    allp = np.concatenate([np.load(f) for c in ('02691156', '03001627', '02958343')
                           for f in sorted((root / c / 'train').glob('*.npy'))]).astype(np.float64)
    assert_close(tr.normalizer.mean.double(), torch.tensor(allp.mean(0)).reshape(1, 3), rtol=1e-5, atol=1e-6)
    assert_close(tr.normalizer.std.double(), torch.tensor(allp.reshape(-1).std()).reshape(1, 1), rtol=1e-5, atol=1e-6)
    # train and test point subsets partition the file
    f = sorted((root / '02691156' / 'train').glob('*.npy'))[0]
    a, b = pc15k_split_points(np.load(f), 'x', seed=0)
    assert len(a) == 10000 and len(b) == 5000
    assert np.array_equal(np.sort(np.concatenate([a, b]), axis=0), np.sort(np.load(f), axis=0))
    ps = PC15k(root, 'chair', 'train', normalize='per_shape')       # per-shape statistics over the whole file
    f0 = np.load(sorted((root / SYNSETS['chair'] / 'train').glob('*.npy'))[0]).astype(np.float64)
    assert_close(ps[0]['mean'].double(), torch.tensor(f0.mean(0)).reshape(1, 3), rtol=1e-5, atol=1e-6)
    assert_close(ps[0]['std'].double(), torch.tensor(f0.reshape(-1).std()).reshape(1, 1), rtol=1e-5, atol=1e-6)
    allds = PC15k(root, 'all', 'val', n_points=512)
    assert len(allds.categories) == len(CATEGORIES)
    b = next(iter(make_loader(allds, batch_size=4)))
    assert b['points'].shape == (4, 512, 3)


def test_pc15k_errors(tmp_path):
    root = tmp_path / 'pc'
    (root / SYNSETS['airplane'] / 'train').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='no .npy files'):
        PC15k(root, 'airplane', 'train')
    with pytest.raises(FileNotFoundError, match=r"missing split folder.*found splits \['train'\]"):
        PC15k(root, 'airplane', 'test')
    with pytest.raises(FileNotFoundError, match='no such category folder'):
        PC15k(root, 'chair', 'train')
    with pytest.raises(FileNotFoundError, match='root folder not found'):
        PC15k(tmp_path / 'nope', 'chair')
    d = root / SYNSETS['airplane'] / 'train'
    np.save(d / 'bad_shape.npy', np.zeros((15000, 2), np.float32))
    with pytest.raises(ValueError, match=r'bad_shape.npy.*shape \(N, 3\)'):
        PC15k(root, 'airplane', 'train')
    (d / 'bad_shape.npy').unlink()
    x = np.random.default_rng(0).normal(size=(15000, 3)).astype(np.float32); x[123, 2] = np.inf
    np.save(d / 'inf.npy', x)
    with pytest.raises(ValueError, match='inf.npy.*NaN/inf.*row 123'):
        PC15k(root, 'airplane', 'train')
    (d / 'inf.npy').unlink()
    np.save(d / 'ok.npy', np.ones((15000, 3), np.float32) + np.random.default_rng(1).normal(size=(15000, 3)))
    (d / 'trunc.npy').write_bytes((d / 'ok.npy').read_bytes()[:5000])
    with pytest.raises(ValueError, match='trunc.npy: cannot read'):
        PC15k(root, 'airplane', 'train')
    (d / 'trunc.npy').unlink()
    np.save(d / 'small.npy', np.ones((100, 3), np.float32))
    with pytest.raises(ValueError, match='small.npy.*fewer than n_points=2048'):
        PC15k(root, 'airplane', 'train', n_points=2048)


def test_point_folder_formats_and_errors(tmp_path):
    g = np.random.default_rng(0)
    (tmp_path / 'a').mkdir(); (tmp_path / 'b').mkdir()
    x = g.normal(size=(600, 3)).astype(np.float32)
    np.save(tmp_path / 'a' / 'one.npy', x)
    np.savetxt(tmp_path / 'a' / 'two.xyz', np.concatenate([x, g.normal(size=(600, 3))], 1))   # xyz + normals
    import trimesh
    (tmp_path / 'b' / 'three.ply').write_bytes(trimesh.PointCloud(x).export(file_type='ply'))
    np.savetxt(tmp_path / 'b' / 'four.txt', x)
    ds = PointFolder(tmp_path, n_points=256, normalize='per_shape')
    assert ds.categories == ['a', 'b'] and len(ds) == 4 and ds.labels.tolist() == [0, 0, 1, 1]
    for i in range(4):
        assert_close(torch.from_numpy(np.sort(ds.pools[i], 0)), torch.from_numpy(np.sort(x, 0)), rtol=1e-5, atol=1e-5)
    assert collate([ds[i] for i in range(4)])['points'].shape == (4, 256, 3)
    np.savetxt(tmp_path / 'b' / 'five.txt', g.normal(size=(600, 4)))
    with pytest.raises(ValueError, match=r'five.txt.*shape \(N, 3\)'):
        PointFolder(tmp_path, n_points=256)
    with pytest.warns(UserWarning, match='five.txt'):
        assert len(PointFolder(tmp_path, n_points=256, skip_bad=True)) == 4
    with pytest.raises(FileNotFoundError, match='no files'):
        PointFolder(tmp_path / 'a', extensions=('.off',))
    with pytest.raises(ValueError, match='one.npy.*fewer than'):
        load_points(tmp_path / 'a' / 'one.npy', min_points=1000)


def test_mesh_folder_samples_and_bad_files(tmp_path):
    ds = MeshFolder(data_samples_dir() / 'meshes', n_points=512, pool_size=1024)
    assert ds.categories == sorted(CATEGORIES) and len(ds) == 2 * len(CATEGORIES)
    b = next(iter(make_loader(ds, batch_size=8)))
    assert b['points'].shape == (8, 512, 3) and torch.isfinite(b['points']).all()
    (tmp_path / 'x').mkdir()
    (tmp_path / 'x' / 'box.stl').write_bytes(__import__('trimesh').creation.box().export(file_type='stl'))
    (tmp_path / 'x' / 'broken.off').write_text('OFF\n3 1 0\n0 0 0\n1 0\n')
    with pytest.raises(ValueError, match='broken.off'):
        MeshFolder(tmp_path)
    with pytest.warns(UserWarning, match='broken.off'):
        assert len(MeshFolder(tmp_path, skip_bad=True)) == 1


def test_real_meshes_folder_normalized(real_meshes):
    ds = MeshFolder(real_meshes, n_points=1024, pool_size=2048, normalize='unit_sphere')
    assert len(ds) >= 8 and 'plane' in ds.categories
    b = collate([ds[i] for i in range(len(ds))])
    assert_close(b['points'].norm(dim=-1).amax(1), torch.ones(len(ds)), rtol=0, atol=0.05)   # subsets of unit-sphere pools
    raw = denormalize(b['points'], b['mean'], b['std'])
    assert torch.isfinite(raw).all()
    g = MeshFolder(real_meshes / 'plane', n_points=512, normalize='global')
    assert g.categories == ['plane'] and len(g) == 2


def test_pyvista_bundled_airplane_optional():
    paths = example_mesh_paths()
    if 'airplane' not in paths:
        pytest.skip('pyvista (with its bundled airplane.ply) is not installed')
    from nsp_explore.shapes import load_mesh, sample_surface
    assert sample_surface(load_mesh(paths['airplane']), 256).shape == (256, 3)


def _same_surface_sample(new: np.ndarray, old: np.ndarray, category: str, split: str, i: int) -> bool:
    """Whether two PC15k-style files are the same sampling of the same procedural surface.

    Convex parts come from qhull, whose triangle order can differ between machines (seen on the
    chair val shape: the same surface, 992 of 15 000 points drawn on two parts' triangles in
    another order). Then: at least 90 % of the rows are identical and every other row lies on the
    regenerated mesh's surface (within 1e-6)."""
    import trimesh
    from nsp_explore.shapes import make_shape
    if new.shape != old.shape or new.dtype != old.dtype: return False
    common = set(map(bytes, new)) & set(map(bytes, old))
    if len(common) < 0.9 * len(old): return False
    rest = np.array([r for r in old if bytes(r) not in common], np.float64)
    mesh = make_shape(category, seed=shape_seed(0, split, CATEGORIES.index(category), i))
    return len(rest) == 0 or float(trimesh.proximity.closest_point(mesh, rest)[1].max()) < 1e-6

def test_make_samples_regenerates_byte_for_byte(tmp_path):
    out = tmp_path / 'ds'
    r = subprocess.run([sys.executable, str(ROOT / 'data_samples' / 'make_samples.py'), '--out', str(out),
                        '--categories', 'chair', 'mug'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    files = sorted(p.relative_to(out) for p in out.rglob('*') if p.is_file())
    assert len(files) == 2 * 2 + 4 + 3                                # meshes + chair pc15k (2+1+1) + mug (1+1+1)
    md5 = lambda p: hashlib.md5(p.read_bytes()).hexdigest()
    for f in files:
        if md5(out / f) == md5(ROOT / 'data_samples' / f): continue
        assert f.suffix == '.npy', f                                  # meshes always match byte for byte
        category, _, i = f.stem.rsplit('_', 2)                        # e.g. chair_val_00
        assert _same_surface_sample(np.load(out / f), np.load(ROOT / 'data_samples' / f), category, f.parent.name, int(i)), f
        warnings.warn(f'{f}: the same surface sampled with another triangle order (qhull on this machine)')


def test_same_surface_sample_tells_other_shapes_apart():
    """The fallback above fails on a different shape, on rows moved off the surface and on a reversed, cut file."""
    f = ROOT / 'data_samples' / 'pc15k' / SYNSETS['chair'] / 'val' / 'chair_val_00.npy'
    x = np.load(f)
    assert _same_surface_sample(x, x.copy(), 'chair', 'val', 0)
    other = np.load(ROOT / 'data_samples' / 'pc15k' / SYNSETS['chair'] / 'test' / 'chair_test_00.npy')
    assert not _same_surface_sample(x, other, 'chair', 'val', 0)
    moved = x.copy(); moved[:500] += np.float32(0.01)                # 500 rows off the surface
    assert not _same_surface_sample(x, moved, 'chair', 'val', 0)
    assert not _same_surface_sample(x, x[::-1][:1000].copy(), 'chair', 'val', 0)


def test_data_samples_small():
    """The shipped data stays small: ~6.1 MB of shapes and PC15k samples, plus the pretrained models (the 4.9 MB nano
    pair, whose d_model 128 generator is 3.4 MB in float32; the 1.4 MB G3PT tokenizer): 6.3 MB, capped at 7 MB."""
    files = [p for p in data_samples_dir().rglob('*') if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    pretrained = sum(p.stat().st_size for p in files if 'pretrained' in p.parts)
    assert total - pretrained < 8e6 and pretrained < 7e6, (total, pretrained)


def test_normalizer_repr_is_short():
    "The tour report prints the normalizer: float32 statistics rounded in float64, not -0.02979999966919422."
    import torch
    from nsp_explore.data import Normalizer
    r = repr(Normalizer('global', mean=torch.tensor([[-0.0298, -0.0114, -0.0233]]), std=torch.tensor(0.1531)))
    assert r == "Normalizer('global', mean=[[-0.0298, -0.0114, -0.0233]], std=0.1531)", r
