"""Check the live 3-D view (`nsp_explore.live.live_view`: pyvista + trame) in a real JupyterLab.

    .venv/bin/python tools/check_live_lab.py [--out /tmp/nsp_live]

Needs the `live` and `lab` extras (pyvista, trame, trame-vtk, trame-vuetify, trame-pyvista, jupyterlab,
ipywidgets), playwright and the system Chromium; pyvista renders in the kernel off-screen (EGL/OSMesa, no
display). It starts JupyterLab on a scratch notebook with per-scale meshes, runs the cells in Chromium and
checks that (1) the trame view appears with the colour menu and shows the mesh (coloured pixels),
(2) dragging the mouse over the view turns the mesh (the picture changes), (3) the scale slider's job
(`set_scale`, run from a second cell) and the colour menu change the picture, (4) the offline WebGL viewer
(a `Scene` as a cell's output, no trame) draws in the notebook too.
Screenshots and a summary go to --out. Exit status 0 only when all hold.
"""
import argparse, io, json, os, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_widgets_lab import coloured, lab_page, run_first_cell   # noqa: E402

CELLS = ["""import numpy as np, trimesh
from nsp_explore.live import Scene, live_view
ms = [trimesh.creation.icosphere(subdivisions=k, radius=0.5) for k in (1, 2, 4)]
ms = [trimesh.Trimesh(m.vertices * [1, 0.7, 0.5], m.faces) for m in ms]
w = live_view(Scene.from_meshes(ms, titles=[f'{len(m.faces)} faces' for m in ms],
                                scalars={'height': [m.vertices[:, 1] for m in ms]}), window_size=(600, 420))
w""", "w.plotter.set_scale(0); w.plotter.k",
         "Scene.from_meshes(ms, scalars={'height': [m.vertices[:, 1] for m in ms]})   # the offline viewer, no trame"]


def diff(a: bytes, b: bytes) -> int:
    import numpy as np
    from PIL import Image
    x, y = (np.asarray(Image.open(io.BytesIO(p)).convert('RGB')).astype(int) for p in (a, b))
    if x.shape != y.shape: return x.size
    return int((np.abs(x - y).max(-1) > 30).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(tempfile.gettempdir(), 'nsp_live'))
    ap.add_argument('--timeout', type=int, default=180)
    a = ap.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    result = dict(view=False, pixels=0, drag_turns=0, scale_changes=0, colour_changes=0, offline_scene_pixels=0, errors=[])
    with lab_page(CELLS, 'live.ipynb', out, a.timeout, result['errors'], height=1100) as page:
        run_first_cell(page)
        try: frame_el = page.wait_for_selector('.jp-OutputArea iframe', timeout=a.timeout * 1000)
        except Exception:
            page.screenshot(path=str(out / 'lab_failed.png')); raise
        page.wait_for_selector('.jp-OutputArea select', timeout=a.timeout * 1000)
        result['view'] = True
        shot = lambda: frame_el.screenshot()
        for _ in range(60):                               # the trame client loads, the first image arrives
            page.wait_for_timeout(1000)
            if coloured(shot()) > 1000: break
        page.wait_for_timeout(1000)
        s0 = shot(); (out / 'live_0.png').write_bytes(s0)
        result['pixels'] = coloured(s0)
        box = frame_el.bounding_box()
        cx, cy = box['x'] + box['width'] * 0.12, box['y'] + box['height'] * 0.45     # off the widgets: the camera turns
        page.mouse.move(cx, cy); page.mouse.down(); page.mouse.move(cx + 200, cy + 40, steps=10); page.mouse.up()
        page.wait_for_timeout(3000)
        s1 = shot(); (out / 'live_1_turned.png').write_bytes(s1)
        result['drag_turns'] = diff(s0, s1)
        page.locator('.jp-OutputArea select').first.select_option('solid')
        page.wait_for_timeout(3000)
        s2 = shot(); (out / 'live_2_solid.png').write_bytes(s2)
        result['colour_changes'] = diff(s1, s2)
        page.locator('.jp-Cell .cm-content').nth(1).click()
        page.keyboard.press('Shift+Enter')
        page.wait_for_timeout(4000)
        s3 = shot(); (out / 'live_3_scale0.png').write_bytes(s3)
        result['scale_changes'] = diff(s2, s3)
        page.locator('.jp-Cell .cm-content').nth(2).click()             # the offline WebGL viewer as a cell output
        page.keyboard.press('Shift+Enter')
        try:
            page.wait_for_function("() => { const el = document.querySelector('.jp-OutputArea div[data-nsp-scene]');"
                                   " return el && el._nspLive && +(el.dataset.nspDrawn || 0) > 0; }", timeout=60_000)
            sc = page.locator('.jp-OutputArea div[data-nsp-scene]').first
            sc.scroll_into_view_if_needed(); page.wait_for_timeout(500)
            s4 = sc.screenshot(); (out / 'offline_scene.png').write_bytes(s4)
            result['offline_scene_pixels'] = coloured(s4)
        except Exception as e:
            result['offline_scene_pixels'] = 0; result['errors'].append(f'offline scene: {e}'[:300])
        page.screenshot(path=str(out / 'lab.png'))
        result['stderr'] = [t[-3000:] for t in page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_text_contents()]
    result['network'] = [t for t in result.get('stderr', []) if 'Cannot connect to host' in t or 'Downloaded WASM' in t]
    fetched = result['network']
    (out / 'summary.json').write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = not fetched and result['view'] and result['offline_scene_pixels'] > 1000 and result['pixels'] > 1000 and min(result['drag_turns'], result['colour_changes'], result['scale_changes']) > 2000
    print(f'[live] {"OK" if ok else "FAILED"}: screenshots and summary in {out}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
