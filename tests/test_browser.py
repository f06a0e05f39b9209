"""Every figure is visible in a real browser: the report, a crowded page and every book page.

Drives the system Chromium with Playwright (never a downloaded browser). For each page it scrolls
every figure into view and asserts that, while on screen, the figure has coloured pixels (points,
lines, heatmap cells: not only white background and grey text), and that the page logged no
error and no "Too many active WebGL contexts" warning. A control page drawn the naive way (every
figure created at load, one WebGL context per 3-D scene) must fail the same check: it proves the
check can see a blank figure.

Skipped, saying why, when playwright or chromium is missing:
    apt-get install chromium && pip install playwright      (no `playwright install` needed)
Book pages are checked when `_book/` exists (`make docs`); the tour report when `reports/tour.html` exists
(`make tour`), or pass other files with NSP_BROWSER_PAGES=a.html:b.html.
"""
import io, os, shutil
from pathlib import Path

import numpy as np
import pytest

from nsp_explore import viz

ROOT = Path(__file__).resolve().parents[1]
VIEW = dict(width=1280, height=900)
MIN_DRAWN = 4              # pixels a figure's data draws at least (one marker; a cloud draws thousands)


def _chromium() -> str | None:
    for name in ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable'):
        if shutil.which(name): return shutil.which(name)
    return None


@pytest.fixture(scope='module')
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip('browser test skipped: playwright is not installed (`pip install playwright`, part of the `dev` extra '
                    'that `make test` installs); no browser download is needed')
    pytest.importorskip('PIL', reason='browser test skipped: pillow is not installed (`pip install pillow`)')
    exe = _chromium()
    if exe is None:
        pytest.skip('browser test skipped: no system Chromium on PATH (`apt-get install chromium`; .ci/run installs it)')
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=['--no-sandbox', '--enable-unsafe-swiftshader',
                                                          '--use-angle=swiftshader', '--ignore-gpu-blocklist'])
        yield b
        b.close()


def _rgb(png: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert('RGB')).astype(int)


# the layers that hold a figure's data: WebGL canvases (3-D scenes, scattergl) and the SVG trace layers (2-D)
_DATA_LAYERS = "canvas, g.overplot, g.polarlayer, g.ternarylayer, g.pielayer"


def drawn_pixels(page, clip: dict, fig_id: str) -> int:
    """Pixels of the figure that its data draws: a screenshot with the data layers shown, minus one with them
    hidden. A figure whose WebGL context was lost (an empty box) draws 0, whatever its title and axes show."""
    shown = _rgb(page.screenshot(clip=clip))
    page.evaluate(f"""() => document.getElementById({fig_id!r}).querySelectorAll({_DATA_LAYERS!r})
                              .forEach(e => {{ e.dataset.nspVis = e.style.opacity; e.style.opacity = '0'; }})""")
    hidden = _rgb(page.screenshot(clip=clip))
    page.evaluate(f"""() => document.getElementById({fig_id!r}).querySelectorAll({_DATA_LAYERS!r})
                              .forEach(e => {{ e.style.opacity = e.dataset.nspVis || ''; }})""")
    return int((np.abs(shown - hidden).max(-1) > 30).sum())


# every WebGL context a page creates, so the check can ask it whether it was lost (Chromium then shows
# a small "sad canvas" icon instead of the points, which a pixel count alone could take for data)
_RECORD_GL = """(() => { const get = HTMLCanvasElement.prototype.getContext;
  HTMLCanvasElement.prototype.getContext = function(type) { const c = get.apply(this, arguments);
    if (c && /webgl/.test(String(type))) this._testGL = c; return c; }; })();"""

_READY = """els => els.every(el => el._nspLive === true && el._fullLayout !== undefined &&
                                 el.querySelector('.main-svg') !== null)"""
_VISIBLE = """() => { const h = window.innerHeight, out = [];
  document.querySelectorAll('div[data-nsp-fig]').forEach((el, i) => {
    const r = el.getBoundingClientRect(); const top = Math.max(r.top, 0), bot = Math.min(r.bottom, h);
    if (bot - top > Math.min(0.6 * r.height, 0.6 * h))
      out.push({i, id: el.id, x: Math.max(r.left, 0), y: top, w: Math.min(r.width, window.innerWidth - Math.max(r.left, 0)), h: bot - top});
  }); return out; }"""


def check_page(browser, path: Path, lazy: bool = True, limit: int | None = None) -> dict:
    """Open `path`, bring every figure on screen in turn; return {'blank': [ids], 'errors': [...], 'n': n_figures}.
    `lazy=False`: the page draws its plotly figures itself (class plotly-graph-div), the naive way."""
    page = browser.new_page(viewport=VIEW)
    page.add_init_script(_RECORD_GL)
    errors = []
    page.on('pageerror', lambda e: errors.append(f'pageerror: {e}'))
    page.on('console', lambda m: errors.append(f'console {m.type}: {m.text}')
            if m.type == 'error' or 'Too many active WebGL' in m.text or 'CONTEXT_LOST' in m.text else None)
    page.goto(path.resolve().as_uri(), wait_until='load', timeout=180_000)
    sel = 'div[data-nsp-fig]' if lazy else 'div.plotly-graph-div'
    if not lazy:   # mark the naive figures so the same visibility code finds them
        page.evaluate("() => document.querySelectorAll('div.plotly-graph-div').forEach((el, i) => { el.dataset.nspFig = 'x'; el._nspLive = true; if (!el.id) el.id = 'naive-' + i; })")
    n = page.locator(sel).count()
    blank, checked = set(), set()
    for i in range(n if limit is None else min(n, limit)):
        page.locator(sel).nth(i).evaluate("el => el.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(150)
        vis = page.evaluate(_VISIBLE)
        ids = [v['id'] for v in vis]
        page.wait_for_function(f"() => ({_READY})([...document.querySelectorAll('div[data-nsp-fig]')].filter(el => {ids!r}.includes(el.id)))",
                               timeout=60_000)
        page.wait_for_timeout(500)                # let WebGL draw a frame
        for v in vis:
            checked.add(v['id'])
            lost = page.evaluate(f"() => [...document.getElementById({v['id']!r}).querySelectorAll('canvas')]"
                                 ".some(c => c._testGL && c._testGL.isContextLost())")
            if lost or drawn_pixels(page, dict(x=v['x'], y=v['y'], width=v['w'], height=v['h']), v['id']) < MIN_DRAWN:
                blank.add(v['id'])
    live = page.evaluate('() => window.nspLazy ? window.nspLazy.used() : -1') if lazy else -1
    page.close()
    return dict(blank=sorted(blank), errors=errors, n=n, checked=len(checked), live_gl=live)


def crowded_figures():
    "24 figures, 21 of them 3-D (one a 6-cloud gallery, a few sliders), 3 two-dimensional."
    g = np.random.default_rng(0)
    clouds = [g.normal(size=(400, 3)).astype(np.float32) * [1, 0.5 + 0.1 * i, 0.3] for i in range(6)]
    figs = []
    for i in range(24):
        if i % 8 == 3: figs.append(viz.cloud_grid(clouds, titles=[f'c{j}' for j in range(6)], cols=3))
        elif i % 8 == 5: figs.append(viz.cloud_slider(clouds[:3], titles=['a', 'b', 'c']))
        elif i % 8 == 7: figs.append(viz.curves_fig({'loss': np.exp(-np.arange(30) / 9)}, title=f'curve {i}'))
        else: figs.append(viz.cloud_fig(clouds[i % 6], color=clouds[i % 6][:, 2], title=f'cloud {i}'))
    return figs


@pytest.fixture(scope='module')
def crowded(tmp_path_factory):
    d = tmp_path_factory.mktemp('crowded')
    rep = viz.Report('crowded')
    for i, f in enumerate(crowded_figures()): rep.heading(f'figure {i}').figure(f, caption='x')
    return rep.save(d / 'crowded.html')


def test_crowded_report_every_figure_visible(browser, crowded):
    r = check_page(browser, crowded)
    assert r['n'] == 24 and r['checked'] == 24, r
    assert not r['blank'], f"figures blank while on screen: {r['blank']}"
    assert not r['errors'], r['errors']
    assert 0 < r['live_gl'] <= 10        # the budget held: never near Chromium's 16


def test_naive_page_loses_figures_so_the_check_can_fail(browser, tmp_path):
    "The control: the same figures drawn eagerly (31+ WebGL contexts) leave blank figures, and the check sees them."
    figs = crowded_figures()
    body = ''.join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs))
    p = tmp_path / 'naive.html'
    p.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{body}</body></html>')
    r = check_page(browser, p, lazy=False, limit=3)      # the first figures are the ones Chromium drops
    assert r['n'] == 24
    assert r['blank'], 'the naive page should lose early figures; if not, the check cannot tell a blank figure'
    assert any('WebGL' in e for e in r['errors'])


def test_slider_still_works_after_scrolling_away_and_back(browser, crowded):
    page = browser.new_page(viewport=VIEW)
    errors = []
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.goto(crowded.resolve().as_uri())
    sl = page.locator('div[data-nsp-fig]').nth(5)             # figure 5 is a slider over 3 clouds
    live = []
    for target in (5, 23, 5):                                 # there, to the end (it is released), back
        page.locator('div[data-nsp-fig]').nth(target).evaluate("el => el.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(600)
        live.append(sl.evaluate('el => el._nspLive'))
    assert live == [True, False, True]
    page.wait_for_function("el => el._nspLive && el._fullLayout", arg=sl.element_handle(), timeout=60_000)
    assert sl.evaluate('el => el.layout.title.text') == 'a'
    sl.locator('.updatemenu-button').first.click()          # play: runs through the frames
    page.wait_for_function("el => el.layout.title.text === 'c'", arg=sl.element_handle(), timeout=30_000)
    page.wait_for_timeout(500)
    box = sl.bounding_box()
    assert drawn_pixels(page, box, sl.evaluate('el => el.id')) > 1000
    assert not errors, errors
    page.close()


def _pages():
    pages = []
    if os.environ.get('NSP_BROWSER_PAGES'):
        pages += [Path(p) for p in os.environ['NSP_BROWSER_PAGES'].split(':') if p]
    tour = ROOT / 'reports' / 'tour.html'
    if tour.exists(): pages.append(tour)
    book = ROOT / '_book'
    if book.is_dir(): pages += sorted(book.glob('*.html'))
    return pages


@pytest.mark.parametrize('path', _pages() or [None], ids=lambda p: p.name if p else 'none')
def test_real_pages_every_figure_visible(browser, path):
    if path is None:
        pytest.skip('no tour report or book here: run `make tour` (reports/tour.html) or `make docs` (_book/) first')
    r = check_page(browser, path)
    assert not r['blank'], f"{path.name}: figures blank while on screen: {r['blank']}"
    assert not r['errors'], f'{path.name}: {r["errors"]}'
    assert r['checked'] == r['n'], r


# ---- live 3-D scenes (nsp_explore.live): the offline WebGL viewer --------------------------------------

def scene_ink(page, el) -> int:
    "Pixels of a scene's drawing box that differ from its white background (0 when no canvas is drawn)."
    box = el.evaluate("el => { const r = el._nspBox.getBoundingClientRect(); return {x: r.left, y: r.top, width: r.width, height: r.height}; }")
    return int((_rgb(page.screenshot(clip=box)) < 225).any(-1).sum())


def scene_figures():
    "6 point scenes (3 scales each) and 4 mesh scenes (3 meshes each), with scalars."
    import trimesh
    from nsp_explore.live import Scene
    g = np.random.default_rng(0)
    scenes = []
    for i in range(10):
        if i % 5 in (1, 3):
            ms = [trimesh.creation.icosphere(subdivisions=k + 1, radius=0.4) for k in range(3)]
            ms = [trimesh.Trimesh(m.vertices * [1, 0.6 + 0.1 * i, 0.8], m.faces) for m in ms]
            scenes.append(Scene.from_meshes(ms, scalars={'z': [m.vertices[:, 2] for m in ms]}, title=f'mesh scene {i}'))
        else:
            base = g.normal(size=(1024, 3)).astype(np.float32) * [1, 0.4 + 0.05 * i, 0.3]
            cl = [base[:n] for n in (16, 128, 1024)]
            scenes.append(Scene.from_clouds(cl, scalars={'x': [c[:, 0] for c in cl], 'id': [np.arange(len(c)) % 7 for c in cl]},
                                            categorical=['id'], title=f'cloud scene {i}'))
    return scenes


@pytest.fixture(scope='module')
def scene_page(tmp_path_factory):
    "A report of 10 scenes interleaved with 8 plotly 3-D figures: 18 WebGL users on one page."
    from nsp_explore.live import add_scene
    d = tmp_path_factory.mktemp('scenes')
    rep, figs = viz.Report('scenes'), crowded_figures()
    for i, s in enumerate(scene_figures()):
        add_scene(rep.heading(f'scene {i}'), s, caption='drag to turn')
        if i < 8: rep.figure(figs[i], caption='plotly')
    return rep.save(d / 'scenes.html')


def check_scenes(browser, path: Path) -> dict:
    "Scroll each scene into view; {'n', 'blank': [i], 'max_live', 'errors'}."
    page = browser.new_page(viewport=VIEW)
    page.add_init_script(_RECORD_GL)
    errors = []
    page.on('pageerror', lambda e: errors.append(f'pageerror: {e}'))
    page.on('console', lambda m: errors.append(f'console {m.type}: {m.text}')
            if m.type == 'error' or 'WebGL' in m.text else None)
    page.on('request', lambda r: errors.append(f'fetched {r.url[:80]}') if r.url.startswith('http') else None)
    page.goto(path.resolve().as_uri(), wait_until='load', timeout=180_000)
    sel = page.locator('div[data-nsp-scene]')
    n, blank, max_live = sel.count(), [], 0
    for i in range(n):
        el = sel.nth(i)
        el.evaluate("el => el.scrollIntoView({block: 'center'})")
        page.wait_for_function("el => el._nspLive === true && +(el.dataset.nspDrawn || 0) > 0", arg=el.element_handle(), timeout=60_000)
        page.wait_for_timeout(200)
        lost = el.evaluate("el => !el._nspGL || el._nspGL.gl.isContextLost()")
        if lost or scene_ink(page, el) < 200: blank.append(i)
        max_live = max(max_live, page.evaluate('() => window.nspScenes.live().length'))
    gl_total = page.evaluate('() => window.nspScenes.live().length + (window.nspLazy ? window.nspLazy.used() : 0)')
    page.close()
    return dict(n=n, blank=blank, max_live=max_live, gl_total=gl_total, errors=errors)


def test_every_scene_draws_and_the_webgl_budget_holds(browser, scene_page):
    r = check_scenes(browser, scene_page)
    assert r['n'] == 10 and not r['blank'], r
    assert not r['errors'], r['errors']
    assert 1 <= r['max_live'] <= 4                    # live_scenes' MAX_SCENES
    assert r['gl_total'] <= 14                        # scenes + plotly figures together: under Chromium's 16
    p = check_page(browser, scene_page)              # and the plotly figures beside them still draw
    assert p['n'] == 8 and not p['blank'] and not p['errors'], p


def test_scene_controls_slider_clip_colour_and_release(browser, scene_page):
    page = browser.new_page(viewport=VIEW)
    errors = []
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.goto(scene_page.resolve().as_uri())
    el = page.locator('div[data-nsp-scene]').nth(0)              # a cloud scene: 16, 128, 1024 points
    el.evaluate("el => el.scrollIntoView({block: 'center'})")
    drawn = lambda: int(el.evaluate('el => +(el.dataset.nspDrawn || 0)'))
    def settle(before):
        page.wait_for_function(f"el => +(el.dataset.nspDrawn || 0) > {before}", arg=el.element_handle(), timeout=30_000)
        page.wait_for_timeout(100)
        return scene_ink(page, el)
    page.wait_for_function("el => +(el.dataset.nspDrawn || 0) > 0", arg=el.element_handle(), timeout=60_000)
    full = scene_ink(page, el)
    b = drawn(); el.locator('input.nsp-k').fill('0'); coarse = settle(b)          # the slider to 16 points
    assert coarse < 0.3 * full, (coarse, full)
    assert el.locator('b').first.text_content() == '16 points'
    b = drawn(); el.locator('input.nsp-k').fill('2'); assert abs(settle(b) - full) < 0.05 * full
    b = drawn(); el.locator('select.nsp-axis').select_option('x'); clipped = settle(b)   # clip at the middle of x
    assert 0.2 * full < clipped < 0.8 * full, (clipped, full)
    b = drawn(); el.locator('select.nsp-axis').select_option('off'); settle(b)
    b = drawn(); el.locator('select.nsp-by').select_option('id')
    settle(b)
    # drag to turn: the picture changes, the point count does not
    before = _rgb(page.screenshot(clip=el.bounding_box()))
    box = el.evaluate("el => { const r = el._nspBox.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; }")
    b = drawn()
    page.mouse.move(*box); page.mouse.down(); page.mouse.move(box[0] + 120, box[1] + 40, steps=4); page.mouse.up()
    settle(b)
    assert (np.abs(_rgb(page.screenshot(clip=el.bounding_box())) - before).max(-1) > 30).sum() > 500
    # scrolled far away, the scene gives its context back; back on screen it draws again, same scale and colour
    page.locator('div[data-nsp-scene]').nth(9).evaluate("el => el.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(600)
    assert el.evaluate('el => el._nspLive') is False and el.evaluate("el => el._nspBox.querySelector('canvas')") is None
    el.evaluate("el => el.scrollIntoView({block: 'center'})")
    page.wait_for_function("el => el._nspLive === true", arg=el.element_handle(), timeout=30_000)
    page.wait_for_timeout(300)
    assert el.evaluate('el => [el._nspState.k, el._nspState.by]') == [2, 'id']
    assert scene_ink(page, el) > 0.5 * full
    assert not errors, errors
    page.close()


@pytest.mark.parametrize('path', [p for p in _pages() if 'data-nsp-scene' in p.read_text(errors='ignore')] or [None],
                         ids=lambda p: p.name if p else 'none')
def test_real_pages_every_scene_draws(browser, path):
    if path is None:
        pytest.skip('no page with live scenes here: `tools/build_book.py --only 01a_live` or `make docs` writes one')
    r = check_scenes(browser, path)
    assert not r['blank'], f"{path.name}: scenes blank while on screen: {r['blank']}"
    assert not r['errors'], f'{path.name}: {r["errors"]}'
    assert r['max_live'] <= 4


def test_scene_made_again_right_after_release_stays_live(browser, scene_page):
    "Releasing loses the old context; its late 'webglcontextlost' event must not release the scene made again meanwhile."
    page = browser.new_page(viewport=VIEW)
    page.goto(scene_page.resolve().as_uri())
    el = page.locator('div[data-nsp-scene]').nth(1)
    el.evaluate("el => el.scrollIntoView({block: 'center'})")
    page.wait_for_function("el => el._nspLive === true", arg=el.element_handle(), timeout=60_000)
    el.evaluate("el => { window.nspScenes.drop(el); window.nspScenes.make(el); }")
    page.wait_for_timeout(800)                                  # the old canvas's lost event has fired by now
    assert el.evaluate("el => el._nspLive === true && el._nspGL !== null && !el._nspGL.gl.isContextLost()")
    assert scene_ink(page, el) > 200
    page.close()
