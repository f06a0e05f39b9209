"""Dense checks of nsp_explore.occupancy: query pools, metrics vs float64 references, mesh extraction on
analytic fields (marching cubes and the voxel fallback), F-score properties, the dataset cache, bad inputs."""
import numpy as np
import pytest
import torch
import trimesh
from torch.testing import assert_close

from nsp_explore.occupancy import (HAS_SKIMAGE, OccupancyShapes, cross_scale_iou, cubify, evaluate_grid, extract_mesh,
                                   fscore, grid_points, mesh_metrics, near_surface_acc, occ_acc, occ_iou, query_pool,
                                   signed_distance, slice_points, slices_fig, meshes_fig, volume_to_mesh)
from nsp_explore.shapes import inside_mesh, make_shape, occupancy_slice

METHODS = (['mc'] if HAS_SKIMAGE else []) + ['cubes']


# ---------------------------------------------------------------- query pools
def test_query_pool_labels_split_and_determinism():
    m = make_shape('mug', seed=2)
    a, b = query_pool(m, 1001, near_frac=0.3, seed=5, sdf=True), query_pool(m, 1001, near_frac=0.3, seed=5)
    assert a['points'].shape == (1001, 3) and a['points'].dtype == np.float32
    assert a['near'].sum() == round(1001 * 0.3) and a['near'][:300].all() and not a['near'][300:].any()
    np.testing.assert_array_equal(a['points'], b['points'])
    np.testing.assert_array_equal(a['occ'], inside_mesh(m, a['points']))
    assert (np.abs(a['points'][~a['near']]) <= 0.55).all()
    assert ((a['sdf'] < 0) == a['occ']).all()
    c = query_pool(m, 1001, near_frac=0.3, seed=6)
    assert not np.array_equal(a['points'], c['points'])


def test_signed_distance_matches_analytic_box():
    m = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    p = np.array([[0.5, 0, 0], [0, 0, 0], [0.1, 0.05, 0], [0, -0.35, 0]], np.float32)
    assert_close(torch.from_numpy(signed_distance(m, p)), torch.tensor([0.3, -0.2, -0.1, 0.15]), atol=1e-6, rtol=0)


def test_query_pool_bad_input():
    m = make_shape('chair')
    with pytest.raises(ValueError, match='near_frac'): query_pool(m, 10, near_frac=-0.1)
    with pytest.raises(ValueError, match='n must be'): query_pool(m, 0)
    with pytest.raises(ValueError, match='sigma'): query_pool(m, 10, sigma=-1)


def test_dataset_items_cache_and_resample(tmp_path):
    kw = dict(categories=['bottle', 'bench'], n_per_category=2, n_points=64, n_queries=256)
    a = OccupancyShapes('train', cache_dir=tmp_path, **kw)
    assert len(list(tmp_path.glob('occupancy_*.npz'))) == 1
    b = OccupancyShapes('train', cache_dir=tmp_path, **kw)        # read back from disk
    for k in ('queries', 'occ', 'near', 'label'): assert torch.equal(a[3][k], b[3][k])
    it = a[1]
    assert it['points'].shape == (64, 3) and it['occ'].dtype == torch.float32 and int(it['label']) == 0
    assert int(a[2]['label']) == 1
    m = a.mesh(1)
    assert_close(torch.from_numpy(inside_mesh(m, it['queries']).astype(np.float32)), it['occ'])
    # surface points lie on the mesh
    _, d, _ = trimesh.proximity.closest_point(m, it['points'].double().numpy())
    assert d.max() < 1e-5
    p0 = a[0]['points']; a.set_epoch(1)
    assert not torch.equal(p0, a[0]['points'])                     # train split resamples per epoch
    v = OccupancyShapes('val', **kw)
    assert torch.equal(v[0]['points'], v[0]['points']) and v.all_points().shape == (4, 64, 3)
    with pytest.raises(ValueError, match='unknown categories'): OccupancyShapes('val', categories=['dragon'])


# ---------------------------------------------------------------- metrics
def _iou_naive(z, o):
    inter = sum(1 for a, b in zip(z, o) if a > 0 and b > 0.5)
    union = sum(1 for a, b in zip(z, o) if a > 0 or b > 0.5)
    return inter / union if union else 1.0


def test_iou_acc_near_acc_match_naive_float64():
    g = torch.Generator().manual_seed(0)
    z, o = torch.randn(5, 200, generator=g, dtype=torch.float64), (torch.rand(5, 200, generator=g) > 0.7).double()
    near = torch.rand(5, 200, generator=g) > 0.5
    assert_close(occ_iou(z, o), torch.tensor([_iou_naive(a.tolist(), b.tolist()) for a, b in zip(z, o)], dtype=torch.float64))
    assert_close(occ_acc(z, o), torch.tensor([np.mean([(a > 0) == (b > 0.5) for a, b in zip(r, s)]) for r, s in zip(z.tolist(), o.tolist())], dtype=torch.float64))
    ref = [np.mean([(a > 0) == (b > 0.5) for a, b, m in zip(r, s, n) if m]) for r, s, n in zip(z.tolist(), o.tolist(), near.tolist())]
    assert_close(near_surface_acc(z, o, near), torch.tensor(ref, dtype=torch.float64))
    # properties: symmetric in (pred, true) as sets, in [0, 1], 1 for a perfect prediction
    assert_close(occ_iou(o * 2 - 1, (z > 0).double()), occ_iou(z, o))
    assert ((occ_iou(z, o) >= 0) & (occ_iou(z, o) <= 1)).all()
    assert torch.equal(occ_iou(o * 2 - 1, o), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match='same shape'): occ_iou(z, o[:, :10])


def test_fscore_naive_and_properties():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 150, 3, generator=g), torch.rand(3, 90, 3, generator=g)
    out = fscore(x, y, 0.07)
    D = torch.cdist(x.double(), y.double())
    p, r = (D.min(2).values <= 0.07).double().mean(1), (D.min(1).values <= 0.07).double().mean(1)
    assert_close(out['precision'], p); assert_close(out['recall'], r); assert_close(out['f'], 2 * p * r / (p + r))
    assert torch.equal(fscore(x, x, 1e-6)['f'], torch.ones(3, dtype=torch.float64))       # F(x, x) = 1
    swapped = fscore(y, x, 0.07)
    assert_close(swapped['precision'], out['recall']); assert_close(swapped['f'], out['f'])
    far = fscore(x, y + 10, 0.07)
    assert torch.equal(far['f'], torch.zeros(3, dtype=torch.float64))
    assert fscore(x[0], y[0], 0.07)['f'].ndim == 0
    with pytest.raises(ValueError, match='tau'): fscore(x, y, 0)


def test_cross_scale_iou_is_mean_of_prefix_ious():
    g = torch.Generator().manual_seed(2)
    o = (torch.rand(4, 60, generator=g) > 0.5).float()
    fields = [torch.randn(4, 60, generator=g) for _ in range(3)]
    cs = cross_scale_iou(fields, o)
    ref = [float(np.mean([_iou_naive(a.tolist(), b.tolist()) for a, b in zip(f, o)])) for f in fields]
    assert_close(cs['per_scale'], torch.tensor(ref, dtype=torch.float64))
    assert abs(cs['cs_iou'] - np.mean(ref)) < 1e-12 and cs['final'] == pytest.approx(ref[-1])
    with pytest.raises(ValueError, match='no scales'): cross_scale_iou([], o)


# ---------------------------------------------------------------- mesh extraction
@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('r,center', [(0.3, (0, 0, 0)), (0.17, (0.1, -0.05, 0.2))])
def test_extract_mesh_recovers_sphere_radius_within_a_voxel(method, r, center):
    c = torch.tensor(center, dtype=torch.float32)
    res = 28
    m = extract_mesh(lambda q: r - (q - c).norm(dim=-1), res, method=method, chunk=1000)
    h = 2 * 0.55 / (res - 1)
    rad = np.linalg.norm(m.vertices - np.asarray(center), axis=1)
    assert np.abs(rad - r).max() < h
    assert m.is_watertight and m.volume > 0                     # closed and outward oriented
    assert abs(m.volume - 4 / 3 * np.pi * r ** 3) < 0.15 * 4 / 3 * np.pi * r ** 3


@pytest.mark.parametrize('method', METHODS)
def test_extract_mesh_closes_at_the_box_and_handles_empty(method):
    full = extract_mesh(lambda q: torch.ones(len(q)), 8, method=method)    # everything inside: the padded box
    assert full.is_watertight and full.volume > 0 and np.abs(full.vertices).max() <= 0.55 + 2 * 1.1 / 7
    empty = extract_mesh(lambda q: -torch.ones(len(q)), 8, method=method)
    assert len(empty.faces) == 0
    assert mesh_metrics(empty, make_shape('chair'))['f'] == 0.0


def test_cubify_volume_counts_cells():
    g = np.random.default_rng(0)
    vox = g.random((6, 6, 6)) > 0.6
    m = cubify(vox, box=0.5)
    h = 1.0 / 5
    assert abs(m.volume - vox.sum() * h ** 3) < 1e-9
    assert len(cubify(np.zeros((4, 4, 4), bool)).faces) == 0


def test_grid_and_bad_inputs():
    g = grid_points(5, 0.5)
    assert g.shape == (125, 3) and torch.equal(g[0], torch.tensor([-0.5] * 3)) and torch.equal(g[1], torch.tensor([-0.5, -0.5, -0.25]))
    vol = evaluate_grid(lambda q: q[:, 0], 5, 0.5, chunk=7)
    assert vol.shape == (5, 5, 5) and np.allclose(vol[:, 0, 0], np.linspace(-0.5, 0.5, 5))
    with pytest.raises(ValueError, match='>= 2'): grid_points(1)
    with pytest.raises(ValueError, match='returned'): evaluate_grid(lambda q: q[:1, 0], 4)
    with pytest.raises(ValueError, match='R, R, R'): volume_to_mesh(np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match='NaN'): volume_to_mesh(np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError, match='method'): volume_to_mesh(np.zeros((4, 4, 4)), method='dual')


def test_mc_without_skimage_is_a_clear_error(monkeypatch):
    import nsp_explore.occupancy as occ
    monkeypatch.setattr(occ, 'HAS_SKIMAGE', False)
    with pytest.raises(ImportError, match='scikit-image'): occ.volume_to_mesh(np.zeros((4, 4, 4)), method='mc')
    m = occ.extract_mesh(lambda q: 0.3 - q.norm(dim=-1), 12)          # 'auto' falls back to voxel faces
    assert m.is_watertight and len(m.faces) > 0


def test_mesh_metrics_on_true_mesh_is_high():
    m = make_shape('table', seed=1)
    mm = mesh_metrics(m, m, n=8000, tau=0.02)
    assert mm['f'] > 0.95 and mm['chamfer_l1'] < 0.01


def test_slices_and_figures():
    m = make_shape('chair', seed=3)
    pts = slice_points(1, 0.1, 16)
    assert np.array_equal(inside_mesh(m, pts).reshape(16, 16).astype(np.float32), occupancy_slice(m, 1, 0.1, 16))
    fig = slices_fig([np.zeros((4, 4))] * 2, [np.ones((4, 4))] * 2)
    assert len(fig.data) == 4
    assert len(meshes_fig([m, trimesh.Trimesh()]).data) == 1
    with pytest.raises(ValueError, match='as many'): slices_fig([np.zeros((4, 4))], [])


def test_mesh_slider_frames_and_errors():
    from nsp_explore.occupancy import mesh_slider
    m = make_shape('bottle')
    fig = mesh_slider([m, trimesh.Trimesh(), m], titles=['a', 'empty', 'c'])
    assert len(fig.frames) == 3 and len(fig.layout.sliders[0].steps) == 3 and len(fig.frames[1].data[0].x) == 0
    with pytest.raises(ValueError, match='titles'): mesh_slider([m], titles=['a', 'b'])
    with pytest.raises(ValueError, match='no meshes'): mesh_slider([])


def test_mesh_slider_never_opens_on_an_empty_mesh():
    "A coarse prefix that decodes to no surface must not leave the figure blank when it first shows."
    from nsp_explore.occupancy import mesh_slider
    m = make_shape('bottle')
    fig = mesh_slider([trimesh.Trimesh(), trimesh.Trimesh(), m], titles=['s1', 's2', 's3'])
    assert fig.layout.sliders[0].active == 2 and len(fig.data[0].x) == len(m.vertices)
    assert fig.frames[0].layout.title.text == 's1 (no surface at this level)' and fig.frames[2].layout.title.text == 's3'
    assert fig.layout.title.text == 's3'

