"""Tests for nsp_explore.shapes: procedural categories, union-surface sampling, occupancy, mesh loading."""
import numpy as np
import pytest
import trimesh

from nsp_explore.shapes import (CATEGORIES, PARAM_SPACES, _inside_part, _Parts, inside_mesh, load_mesh, make_shape, mesh_parts,
                                occupancy_slice, sample_occupancy, sample_params, sample_surface, winding_number,
                                winding_number_naive)


@pytest.mark.parametrize('category', CATEGORIES)
def test_shapes_watertight_normalized_deterministic(category):
    assert len(CATEGORIES) >= 8
    for seed in range(4):
        m = make_shape(category, seed)
        assert m.is_watertight, (category, seed)
        parts = m.metadata['nsp_parts']
        assert len(parts) >= 2
        for q in parts:
            assert trimesh.Trimesh(m.vertices, m.faces[q['faces']]).is_watertight
        lo, hi = m.bounds
        np.testing.assert_allclose(np.linalg.norm(hi - lo), 1.0, atol=1e-9)
        np.testing.assert_allclose(lo + hi, 0.0, atol=1e-9)
        assert m.metadata['category'] == category and m.metadata['label'] == CATEGORIES.index(category)
        m2 = make_shape(category, seed)
        assert np.array_equal(m.vertices, m2.vertices) and np.array_equal(m.faces, m2.faces)
    # different seeds give different shapes
    a, b = make_shape(category, 0), make_shape(category, 1)
    assert a.vertices.shape != b.vertices.shape or not np.allclose(a.vertices, b.vertices)


def _n_connected(m, eps=1e-6):
    "Connected components of the part-overlap graph (parts touch or overlap: a vertex or surface sample inside the other)."
    import scipy.sparse.csgraph as cg
    parts, tri, V = m.metadata['nsp_parts'], m.triangles, m.vertices
    adj = np.zeros((len(parts),) * 2, bool)
    for i, p in enumerate(parts):
        sub = trimesh.Trimesh(V, m.faces[p['faces']], process=False)
        pts = np.concatenate([V[np.unique(sub.faces)], trimesh.sample.sample_surface(sub, 1000, seed=0)[0]])
        for j, q in enumerate(parts):
            if i != j and _inside_part(tri[q['faces']], q, pts, -eps, vertices=V).any(): adj[i, j] = adj[j, i] = True
    return cg.connected_components(adj)[0]


@pytest.mark.parametrize('category', CATEGORIES)
def test_shapes_are_one_connected_solid(category):
    "No floating parts: every part overlaps or touches the rest (checked on 8 seeds; 30 seeds were checked offline)."
    for seed in range(8):
        assert _n_connected(make_shape(category, seed)) == 1, (category, seed)
    b = _Parts(); b.box([1, 1, 1], [0, 0, 0]); b.box([1, 1, 1], [3, 0, 0])
    assert _n_connected(b.mesh()) == 2                                 # the check can fail


def test_param_space_draws_cover_space():
    for c, space in PARAM_SPACES.items():
        draws = [sample_params(c, s) for s in range(60)]
        for k, spec in space.items():
            vals = [d[k] for d in draws]
            if spec[0] == 'float':
                assert spec[1] <= min(vals) and max(vals) <= spec[2]
                assert max(vals) - min(vals) > 0.5 * (spec[2] - spec[1]), (c, k)
            elif spec[0] == 'int':
                assert set(vals) == set(range(spec[1], spec[2] + 1)), (c, k)
            elif spec[0] == 'choice':
                assert set(vals) == set(spec[1]), (c, k)


def test_params_override_and_errors():
    p = sample_params('airplane', 5)
    q = sample_params('airplane', 5, engines_per_wing=2)
    assert q['engines_per_wing'] == 2 and {k: v for k, v in q.items() if k != 'engines_per_wing'} == \
        {k: v for k, v in p.items() if k != 'engines_per_wing'}
    with pytest.raises(TypeError, match='no parameter'):
        make_shape('airplane', 0, n_wings=3)
    with pytest.raises(ValueError, match='outside its space'):
        make_shape('chair', 0, n_slats=40)
    with pytest.raises(ValueError, match='outside its space'):
        make_shape('chair', 0, leg_style='tripod')
    with pytest.raises(ValueError, match='unknown category'):
        make_shape('dragon')


def test_discrete_parameters_change_structure():
    n = lambda **kw: len(make_shape('airplane', 3, **kw).metadata['nsp_parts'])
    assert n(engines_per_wing=2) - n(engines_per_wing=0) == 4          # two engines on each wing
    s = lambda k: len(make_shape('chair', 3, back_style='slats', n_slats=k).metadata['nsp_parts'])
    assert s(5) - s(2) == 3
    b = lambda k: len(make_shape('bookshelf', 3, n_shelves=k).metadata['nsp_parts'])
    assert b(6) - b(2) == 4


def test_winding_number_matches_naive_and_closed_meshes():
    g = np.random.default_rng(1)
    tor = trimesh.creation.torus(0.5, 0.2, 10, 6)
    pts = g.uniform(-0.9, 0.9, (257, 3))
    np.testing.assert_allclose(winding_number(tor.triangles, pts, chunk=50), winding_number_naive(tor.triangles, pts),
                               atol=1e-10)
    w = winding_number(tor.triangles, pts)
    np.testing.assert_allclose(np.minimum(np.abs(w), np.abs(w - 1)), 0, atol=1e-8)   # closed: exactly 0 or 1


def test_sample_surface_basic_and_deterministic():
    m = make_shape('car', 2)
    x = sample_surface(m, 2048, seed=3)
    assert x.shape == (2048, 3) and x.dtype == np.float32
    assert np.array_equal(x, sample_surface(m, 2048, seed=3))
    assert not np.array_equal(x, sample_surface(m, 2048, seed=4))
    for n in (1, 17, 15000):
        assert sample_surface(m, n).shape == (n, 3)
    with pytest.raises(ValueError, match='n must be'):
        sample_surface(m, 0)
    # points lie on the mesh surface
    _, dist, _ = trimesh.proximity.closest_point(m, x[:300])
    assert dist.max() < 1e-5


def test_sample_surface_area_weighted_on_box():
    box = trimesh.creation.box(extents=[1, 2, 3])
    x, nrm = sample_surface(box, 30000, seed=0, normals=True)
    # fraction of points on the +-x faces = area(2*3*2) / total(2*(2+3+6))
    on_x = np.isclose(np.abs(x[:, 0]), 0.5, atol=1e-6).mean()
    assert abs(on_x - 12 / 22) < 0.015
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1, atol=1e-5)
    assert (np.einsum('ij,ij->i', nrm, x) > 0).all()            # outward normals of a centred convex box


def _two_boxes(dx):
    b = _Parts(); b.box([1, 1, 1], [0.5, 0.5, 0.5]); b.box([1, 1, 1], [0.5 + dx, 0.5, 0.5]); return b.mesh()


@pytest.mark.parametrize('dx', [0.5, 1.0])
def test_union_surface_sampling_exact_for_overlapping_and_touching_parts(dx):
    "Two unit cubes overlapping (dx=0.5) or touching (dx=1): the union is a (1+dx) x 1 x 1 box."
    m = _two_boxes(dx)
    x = sample_surface(m, 40000, seed=1)
    L = 1 + dx; area = 2 + 4 * L; e = 1e-6
    interior = ((x > e) & (x < np.array([L, 1, 1]) - e)).all(1)
    assert interior.sum() == 0                                   # hidden faces never sampled
    on_x = ((x[:, 0] < e) | (x[:, 0] > L - e)).mean()
    assert abs(on_x - 2 / area) < 0.01
    # flush coplanar top faces over the overlap are not sampled twice
    top_mid = ((x[:, 1] > 1 - e) & (x[:, 0] > 0.5) & (x[:, 0] < 1)).mean()
    assert abs(top_mid - 0.5 / area) < 0.006


@pytest.mark.parametrize('category', CATEGORIES)
def test_samples_never_inside_the_solid(category):
    for seed in range(2):
        m = make_shape(category, seed)
        x = sample_surface(m, 1500, seed=seed)
        assert not inside_mesh(m, x, eps=1e-6).any()


def test_inside_mesh_partwise_equals_winding_number_of_union():
    g = np.random.default_rng(2)
    for c in ('mug', 'chair', 'airplane'):
        m = make_shape(c, 1)
        q = g.uniform(-0.55, 0.55, (600, 3))
        np.testing.assert_array_equal(inside_mesh(m, q), winding_number(m.triangles, q) > 0.5)


def test_occupancy_queries():
    m = make_shape('mug', 2)
    pts, occ = sample_occupancy(m, 3000, near_frac=0.5, sigma=0.02, seed=0)
    assert pts.shape == (3000, 3) and pts.dtype == np.float32 and occ.shape == (3000,) and occ.dtype == bool
    p2, o2 = sample_occupancy(m, 3000, seed=0)
    assert np.array_equal(pts, p2) and np.array_equal(occ, o2)
    assert 0.02 < occ.mean() < 0.6
    # near points are near the surface, uniform ones fill the padded box
    _, d, _ = trimesh.proximity.closest_point(m, pts[:200])
    assert np.median(d) < 0.05
    uni = pts[1500:]
    lo, hi = m.bounds; pad = 0.1 * (hi - lo).max()
    assert (uni >= lo - pad - 1e-6).all() and (uni <= hi + pad + 1e-6).all()
    assert (uni.min(0) < lo).all() and (uni.max(0) > hi).all()      # the padding is used on every side
    with pytest.raises(ValueError, match='near_frac'):
        sample_occupancy(m, 10, near_frac=1.5)
    s = occupancy_slice(m, axis=2, res=32)
    assert s.shape == (32, 32) and s[16, 16] == 0 and s.max() == 1    # hollow centre, solid wall


def test_mesh_parts_from_components_of_a_saved_shape(tmp_path):
    m = make_shape('chair', 4)
    f = tmp_path / 'chair.ply'
    f.write_bytes(m.export(file_type='ply', encoding='binary'))
    back = load_mesh(f)
    assert 'nsp_parts' not in back.metadata
    assert len(mesh_parts(back)) == len(m.metadata['nsp_parts'])
    x = sample_surface(back, 2000, seed=0)
    assert not inside_mesh(m, x, eps=1e-6).any()                 # same union surface as the procedural mesh


def test_bad_meshes(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.obj'):
        load_mesh(tmp_path / 'missing.obj')
    garbage = tmp_path / 'garbage.obj'
    garbage.write_text('this is not\nan obj file at all\n\x00\x01')
    with pytest.raises(ValueError, match='garbage.obj'):
        load_mesh(garbage)
    good = tmp_path / 'good.ply'
    good.write_bytes(make_shape('table', 0).export(file_type='ply', encoding='binary'))
    trunc = tmp_path / 'trunc.ply'
    trunc.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match='trunc.ply'):
        load_mesh(trunc)
    nan = tmp_path / 'nan.obj'
    nan.write_text('v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n')
    with pytest.raises(ValueError, match='nan.obj.*NaN/inf'):
        load_mesh(nan)
    flat = tmp_path / 'flat.obj'
    flat.write_text('v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n')
    with pytest.raises(ValueError, match='flat.obj.*degenerate'):
        load_mesh(flat)
    empty = trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int))
    with pytest.raises(ValueError, match='empty'):
        sample_surface(empty, 10)
    bad = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, np.inf, 0]], [[0, 1, 2]], process=False)
    with pytest.raises(ValueError, match='NaN/inf'):
        sample_surface(bad, 10)
    with pytest.raises(ValueError, match='shape'):
        inside_mesh(make_shape('mug'), np.zeros((5, 2)))


def test_real_meshes_load_sample_and_inside(real_meshes):
    for rel in ('plane/plane.obj', 'plane/plane_holes.obj', 'penguin/penguin.obj', 'torus/torus.obj',
                'cube/cube_no_bottom.obj', 'wingnut/wingnut.obj'):
        m = load_mesh(real_meshes / rel)
        x = sample_surface(m, 2048, seed=0)
        assert x.shape == (2048, 3) and np.isfinite(x).all()
        _, d, _ = trimesh.proximity.closest_point(m, x[:100])
        assert d.max() < 1e-4 * np.linalg.norm(np.ptp(m.vertices, 0))


def test_open_box_robust_inside(real_meshes):
    box = load_mesh(real_meshes / 'cube/cube_no_bottom.obj')
    assert not box.is_watertight
    lo, hi = box.bounds
    c = (lo + hi) / 2
    np.testing.assert_allclose(winding_number(box.triangles, [c]), [5 / 6], atol=1e-6)
    far = c + 3 * (hi - lo)
    ins = inside_mesh(box, np.stack([c, far]))
    assert ins.tolist() == [True, False]
    # the winding number falls towards the missing bottom (y = lo) and stays high near the closed top
    w = winding_number(box.triangles, [c + [0, s * 0.45 * (hi - lo)[1], 0] for s in (-1, 1)])
    assert w[0] < w[1] - 0.3 and w[1] > 0.9
    with pytest.raises(ValueError, match='not watertight'):
        inside_mesh(box, np.stack([c]), require_watertight=True)
    pts, occ = sample_occupancy(box, 500, seed=0)
    assert occ.any() and not occ.all()
    # the bounding-box shortcut of inside_mesh agrees with the full winding-number sum
    np.testing.assert_array_equal(occ, winding_number(box.triangles, pts) > 0.5)
    assert (~occ[(np.abs(pts - c) > (hi - lo) / 2).any(1)]).all()


def test_torus_real_mesh_inside(real_meshes):
    tor = load_mesh(real_meshes / 'torus/torus.obj')
    pts, occ = sample_occupancy(tor, 400, near_frac=0.0, seed=0)
    if tor.is_watertight:
        np.testing.assert_array_equal(occ, tor.contains(pts))
    assert 0 < occ.mean() < 0.8
