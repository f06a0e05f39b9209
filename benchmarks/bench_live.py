"""Live 3-D scenes (nsp_explore.live): page size, build time, and time to first draw / to redraw in Chromium.

    .venv/bin/python benchmarks/bench_live.py

For clouds of N points and meshes of F faces (one layer each): the HTML bytes of `scene_html`, the Python
time to build it, the time from scrolling a scene into view to its first drawn frame and the time of a redraw
(the colour menu: new colours uploaded), in the system Chromium (software WebGL, swiftshader, on this CPU),
and the time of a pyvista off-screen PNG. Skips the browser columns without playwright / chromium.
"""
import shutil, sys, tempfile, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results   # noqa: E402
import trimesh   # noqa: E402
from nsp_explore.live import Scene, scene_html, add_scene, scene_png   # noqa: E402
from nsp_explore.viz import Report, pyvista_status   # noqa: E402


def cases():
    g = np.random.default_rng(0)
    for n in (1_000, 10_000, 100_000):
        p = g.normal(size=(n, 3)).astype(np.float32)
        yield f'cloud {n} pts', Scene.from_clouds([p], scalars={'x': [p[:, 0]]})
    for sub in (3, 5, 6):
        m = trimesh.creation.icosphere(subdivisions=sub)
        yield f'mesh {len(m.faces)} faces', Scene.from_meshes([m], scalars={'z': [m.vertices[:, 2]]})


def browser_times(path: Path, n: int) -> list[tuple[float, float]]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return [(float('nan'), float('nan'))] * n
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None: return [(float('nan'), float('nan'))] * n
    out = []
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=['--no-sandbox', '--enable-unsafe-swiftshader',
                                                          '--use-angle=swiftshader', '--ignore-gpu-blocklist'])
        page = b.new_page(viewport=dict(width=1200, height=800))
        page.goto(path.resolve().as_uri())
        for i in range(n):
            el = page.locator('div[data-nsp-scene]').nth(i)
            # first draw: make() builds the context, decodes nothing new (decoded at load), uploads and draws
            t = el.evaluate("""el => { el.scrollIntoView({block: 'center'});
                window.nspScenes.drop(el);       /* the observer may have made it already: time a fresh make */
                const t0 = performance.now(); window.nspScenes.make(el);
                const gl = el._nspGL.gl, px = new Uint8Array(4); gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
                return performance.now() - t0; }""")
            page.wait_for_function("el => +(el.dataset.nspDrawn || 0) > 0", arg=el.element_handle(), timeout=120_000)
            # redraw with new colours: what the colour menu does (synchronous draw, then a pixel read to wait for the GPU)
            r = el.evaluate("""el => { const st = el._nspState, opts = ['solid'].concat(Object.keys(el._nspData.layers[0].scalars));
                st.by = opts[(opts.indexOf(st.by) + 1) % opts.length]; el._nspLayer = null;
                const gl = el._nspGL.gl, px = new Uint8Array(4), t0 = performance.now();
                window.nspScenes.draw(el); gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px); return performance.now() - t0; }""")
            out.append((t, r))
        b.close()
    return out


def main():
    rows, scenes = [], list(cases())
    rep = Report('bench')
    if pyvista_status()[0]: scene_png(scenes[0][1], window_size=(64, 64))          # warm-up: the first GL context
    for name, s in scenes:
        t0 = time.perf_counter(); h = scene_html(s); dt = time.perf_counter() - t0
        add_scene(rep, s)
        row = dict(scene=name, html_kB=len(h) / 1e3, build_ms=1e3 * dt)
        if pyvista_status()[0]:
            t0 = time.perf_counter(); scene_png(s, window_size=(400, 300)); row['pyvista_png_ms'] = 1e3 * (time.perf_counter() - t0)
        rows.append(row)
    with tempfile.TemporaryDirectory() as d:
        p = rep.save(Path(d) / 'bench.html')
        for row, (first, redraw) in zip(rows, browser_times(p, len(scenes))):
            row.update(first_draw_ms=first, recolour_redraw_ms=redraw)
    print_table(rows, 'live scenes: HTML size, build time, Chromium (swiftshader) draw times, pyvista PNG')
    save_results('live', rows, note='one layer per scene; Chromium with software WebGL (swiftshader) on the CPU; '
                                    'first_draw = make(): context + shaders + upload + draw; recolour = colours + upload + draw')


if __name__ == '__main__':
    main()
