"""nsp_explore.live: scenes from tensors and meshes, the offline HTML (no network), pyvista off-screen views.
The browser half (every scene draws pixels, the WebGL budget holds) is in test_browser.py."""
import base64, io, json, re, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from nsp_explore import live
from nsp_explore.live import Scene, scene_spec, scene_html, add_scene
from nsp_explore.viz import Report, RenderUnavailable, pyvista_status

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r'https?://|//[a-z0-9.-]+\.[a-z]{2,}/', re.I)


def random_scene(g, n_layers=3, mesh=False):
    if mesh:
        ms = [trimesh.creation.icosphere(subdivisions=k, radius=0.3 + 0.1 * k) for k in range(n_layers)]
        sc = {'r': [np.linalg.norm(m.vertices, axis=1) for m in ms], 'id': [np.arange(len(m.vertices)) % 5 for m in ms]}
        return Scene.from_meshes(ms, scalars=sc, categorical=['id']), ms
    clouds = [torch.as_tensor(g.normal(size=(int(g.integers(5, 300)), 3)), dtype=torch.float32) for _ in range(n_layers)]
    sc = {'x': [c[:, 0] for c in clouds], 'tok': [torch.as_tensor(g.integers(0, 7, len(c))) for c in clouds]}
    return Scene.from_clouds(clouds, scalars=sc, categorical=['tok']), clouds


def decode(s, dtype):
    return np.frombuffer(base64.b64decode(s), dtype)


@pytest.mark.parametrize('seed', range(3))
def test_spec_round_trips_points_faces_and_scalars(seed):
    g = np.random.default_rng(seed)
    for mesh in (False, True):
        scene, src = random_scene(g, n_layers=int(g.integers(1, 4)), mesh=mesh)
        spec = json.loads(json.dumps(scene_spec(scene)))           # what the page carries
        assert len(spec['layers']) == len(src)
        for l, s, orig in zip(spec['layers'], scene.layers, src):
            pts = np.asarray(orig.vertices if mesh else orig, np.float32)
            np.testing.assert_array_equal(decode(l['pos'], '<f4').reshape(-1, 3), pts)
            for name, v in s['scalars'].items():
                np.testing.assert_array_equal(decode(l['scalars'][name], '<f4'), v)
            if mesh: np.testing.assert_array_equal(decode(l['faces'], '<u4').reshape(-1, 3), np.asarray(orig.faces))
            else: assert l['faces'] is None
        # the colour range is shared by every layer: the min / max over all of them, in float64
        for name in scene.scalar_names:
            allv = np.concatenate([np.asarray(s['scalars'][name], np.float64) for s in scene.layers])
            np.testing.assert_allclose(spec['ranges'][name], [allv.min(), allv.max()], rtol=1e-6)
        pts = np.concatenate([s['points'] for s in scene.layers]).astype(np.float64)
        np.testing.assert_allclose(spec['lo'], pts.min(0), rtol=1e-6); np.testing.assert_allclose(spec['hi'], pts.max(0), rtol=1e-6)


def test_bad_inputs_say_what_is_wrong():
    c = [torch.zeros(10, 3), torch.zeros(20, 3)]
    with pytest.raises(ValueError, match=r'\(N, 3\)'): Scene.from_clouds([torch.zeros(4, 2)])
    with pytest.raises(ValueError, match='NaN'): Scene.from_clouds([torch.full((4, 3), float('nan'))])
    with pytest.raises(ValueError, match='has 1 entries for 2 clouds'): Scene.from_clouds(c, scalars={'e': [torch.zeros(10)]})
    with pytest.raises(ValueError, match='5 values for 20 points'): Scene.from_clouds(c, scalars={'e': [torch.zeros(10), torch.zeros(5)]})
    with pytest.raises(ValueError, match='index vertices'): Scene.from_meshes([(np.zeros((3, 3)), [[0, 1, 3]])])
    with pytest.raises(TypeError, match='a mesh must be'): Scene.from_meshes([42])
    with pytest.raises(ValueError, match='color_by'): Scene.from_clouds(c, color_by='nope')
    with pytest.raises(ValueError, match='2 titles for 1'): Scene.from_clouds(c[:1], titles=['a', 'b'])


def test_empty_mesh_layer_is_allowed():
    "An occupancy model's coarsest field may have no surface: extract_mesh gives 0 faces; the layer draws nothing."
    empty = trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), process=False)
    s = Scene.from_meshes([empty, trimesh.creation.box()])
    assert s.layers[0]['faces'].shape == (0, 3) and s.kind == 'mesh'
    assert 'data-nsp-scene' in s.to_html()


def test_html_is_self_contained_no_network_url(tmp_path):
    g = np.random.default_rng(1)
    scene, _ = random_scene(g, mesh=True)
    h = scene.to_html()
    assert not URL.findall(h), URL.findall(h)[:5]
    assert not re.search(r'<(script|link|img|iframe)[^>]+(src|href)=', h)         # nothing loaded from anywhere
    p = scene.save_html(tmp_path / 's.html')
    assert not URL.findall(p.read_text())
    # the report: the viewer script once, one placeholder per scene, scene parts free of URLs
    rep = Report('t')
    for _ in range(3): add_scene(rep, scene, caption='c')
    page = rep.to_html()
    assert page.count(live.SCENE_JS) == 1 and page.count('data-nsp-scene=') == 3
    assert len(set(re.findall(r'id="(nsp-scene-\d+)"', page))) == 3                # distinct ids
    assert not URL.findall(''.join(rep.parts))


def test_import_does_not_need_pyvista_or_trame():
    code = ("import sys; sys.modules['pyvista'] = None; sys.modules['trame'] = None\n"
            "import nsp_explore.live as L, torch\n"
            "s = L.Scene.from_clouds([torch.rand(9, 3)])\n"
            "assert 'data-nsp-scene' in s.to_html()\n"
            "ok, msg = L.live_status(); assert not ok and 'live' in msg, msg\n"
            "try: L.scene_png(s)\n"
            "except L.RenderUnavailable as e: print('unavailable:', e)\n"
            "r = L.live_view(s); assert r is s, r\n"              # no pyvista at all: the offline viewer itself
            "assert 'pyvista' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'})
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'unavailable: pyvista is not installed' in r.stdout
    assert "nsp_explore[live]" in r.stdout                    # the message names the extra


# ---- pyvista, off-screen ------------------------------------------------------------------------
needs_pv = pytest.mark.skipif(not pyvista_status()[0], reason="pyvista is not installed (extra 'render')")


def ink(img) -> int:
    "Pixels that differ from the white background."
    return int(((255 - np.asarray(img).astype(int)).max(-1) > 30).sum())


def png_array(png):
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))


@needs_pv
def test_to_pyvista_keeps_points_faces_scalars():
    g = np.random.default_rng(2)
    for mesh in (False, True):
        scene, src = random_scene(g, mesh=mesh)
        for k in range(len(scene)):
            m = live.to_pyvista(scene, k)
            np.testing.assert_allclose(np.asarray(m.points), scene.layers[k]['points'], rtol=1e-6)
            if mesh: np.testing.assert_array_equal(m.regular_faces, scene.layers[k]['faces'])
            else: assert m.n_cells == m.n_points or m.n_cells == 0 or m.n_verts == m.n_points
            for n in scene.scalar_names: np.testing.assert_array_equal(m.point_data[n], scene.layers[k]['scalars'][n])


@needs_pv
def test_scene_png_off_screen_draws_the_shape():
    s = Scene.from_meshes([trimesh.creation.icosphere(2, radius=0.5)], scalars={'z': [trimesh.creation.icosphere(2).vertices[:, 2]]})
    try: a = png_array(live.scene_png(s, window_size=(200, 160)))
    except RenderUnavailable as e: pytest.skip(f'no off-screen OpenGL here: {e}')
    assert a.shape == (160, 200, 3)
    assert 0.1 * a.size / 3 < ink(a) < 0.95 * a.size / 3          # a sphere: some of the frame, not all of it
    blank = png_array(live.scene_png(Scene.from_clouds([np.zeros((0, 3), np.float32)]), window_size=(200, 160)))
    assert ink(blank) == 0                                        # the check can fail: nothing drawn, no ink


@needs_pv
def test_live_plotter_widgets_off_screen():
    "What the slider, the plane + checkbox and the colour menu do, driven off-screen through their callbacks."
    g = torch.Generator().manual_seed(0)
    clouds = [torch.rand(n, 3, generator=g) * 2 - 1 for n in (16, 128, 1024)]
    s = Scene.from_clouds(clouds, scalars={'x': [c[:, 0] for c in clouds]}, point_size=5)
    try: lp = live.live_plotter(s, off_screen=True, window_size=(240, 200))
    except RenderUnavailable as e: pytest.skip(f'no off-screen OpenGL here: {e}')
    try:
        n_pts = lambda: lp.actor.mapper.dataset.n_points
        assert lp.k == 2 and n_pts() == 1024
        full = ink(lp.screenshot())
        for k, n in ((0, 16), (1, 128), (2, 1024)):
            lp.set_scale(k); assert n_pts() == n and lp.title.GetText(2) == s.layers[k]['name']
        lp.set_clip(True, normal=(1, 0, 0), origin=(0, 0, 0))          # half the cube away
        half = ink(lp.screenshot())
        lp.set_scale(1).set_scale(2)                                    # the clip survives the slider
        assert round(lp.slider.GetRepresentation().GetValue()) == 2
        assert lp.actor.GetMapper().GetNumberOfClippingPlanes() == 1
        lp.set_clip(False)
        assert lp.actor.GetMapper().GetNumberOfClippingPlanes() == 0 and abs(ink(lp.screenshot()) - full) < 0.05 * full
        assert 0.25 * full < half < 0.8 * full, (full, half)
        lp.set_color('solid'); lp.set_color('x')
        with pytest.raises(ValueError, match='no scalar'): lp.set_color('nope')
    finally:
        lp.pl.close()


@needs_pv
def test_live_view_outside_a_kernel_says_why_and_shows_a_picture(capsys):
    s = Scene.from_clouds([torch.rand(50, 3)])
    out = live.live_view(s)
    msg = capsys.readouterr().out
    assert 'Jupyter kernel' in msg or 'nsp_explore[live]' in msg
    from IPython.display import Image
    assert isinstance(out, (Image, Scene))
    if isinstance(out, Image): assert ink(png_array(out.data)) > 50


def test_sample_scene_layers_and_token_ids():
    "A sampler's output (scales 1, 4, 16 and 64 decoded points): one layer per scale + the decoded cloud, leaf tokens repeated."
    g = torch.Generator().manual_seed(3)
    B, scales, N = 2, (1, 4, 16), 64
    out = dict(points=torch.randn(B, N, 3, generator=g), scale_points=[torch.randn(B, s, 3, generator=g) for s in scales],
               indices=[torch.randint(0, 50, (B, s), generator=g) for s in scales])
    s = live.sample_scene(out, i=1)
    assert [len(l['points']) for l in s.layers] == [1, 4, 16, 64]
    np.testing.assert_array_equal(s.layers[2]['points'], out['scale_points'][2][1].numpy())
    np.testing.assert_array_equal(s.layers[3]['points'], out['points'][1].numpy())
    tok = s.layers[3]['scalars']['token id']
    for j in range(64): assert tok[j] == out['indices'][-1][1, j // 4]      # decoded point j comes from leaf j // 4
    np.testing.assert_array_equal(s.layers[1]['scalars']['height'], out['scale_points'][1][1, :, 1].numpy())
    assert s.categorical == ['token id']
    no_ids = live.sample_scene({k: v for k, v in out.items() if k != 'indices'})
    assert no_ids.scalar_names == ['height']


@needs_pv
def test_pyvista_polydata_in_and_out():
    import pyvista as pv
    sph = pv.Sphere(theta_resolution=8, phi_resolution=6)
    s = Scene.from_meshes([sph, (sph.points, sph.regular_faces)])
    np.testing.assert_array_equal(s.layers[0]['faces'], s.layers[1]['faces'])
    back = live.to_pyvista(s, 0)
    assert back.n_points == sph.n_points and back.n_cells == sph.n_cells
    with pytest.raises(ValueError, match='layer 0: faces index'):
        Scene([dict(points=np.zeros((3, 3)), faces=np.array([[0, 1, 7]]))])
