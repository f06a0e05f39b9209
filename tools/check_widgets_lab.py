"""Check the live widgets (`cloud_explorer`: ipywidgets + plotly FigureWidget) in a real JupyterLab.

    .venv/bin/python tools/check_widgets_lab.py [--out /tmp/nsp_widgets]

Needs the `lab` extra (jupyterlab, ipywidgets, anywidget: plotly >= 6 draws `FigureWidget` through
anywidget), playwright and the system Chromium. It starts JupyterLab on a scratch notebook, opens it
in Chromium, runs the cell, and checks that (1) the slider and the figure appear, (2) the figure shows
its points, (3) moving the slider (keyboard, as a user would) swaps the cloud and the title.
Screenshots and a summary go to --out. Exit status 0 only when all three hold.
"""
import argparse, contextlib, io, json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELL = """import numpy as np
from nsp_explore.viz import cloud_explorer
clouds = [np.random.default_rng(i).normal(size=(n, 3)) * [1, 0.6, 0.3] for i, n in enumerate((64, 256, 1000))]
w = cloud_explorer(clouds, titles=['64 points', '256 points', '1000 points'])
w"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def coloured(png: bytes) -> int:
    import numpy as np
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(png)).convert('RGB')).astype(int)
    return int(((a.max(-1) - a.min(-1)) > 60).sum())


@contextlib.contextmanager
def lab_page(cells: list, name: str, out: Path, timeout: int, errors: list, height: int = 1000):
    """A scratch notebook `name` holding `cells`, opened in a real JupyterLab in Chromium: yields the page
    (the kernel idle, nothing run yet); page errors and console errors are appended to `errors`."""
    work = Path(tempfile.mkdtemp(prefix='nsp_lab_'))
    nb = dict(cells=[dict(cell_type='code', metadata={}, execution_count=None, outputs=[], source=c) for c in cells],
              metadata=dict(kernelspec=dict(name='python3', display_name='Python 3', language='python')),
              nbformat=4, nbformat_minor=5)
    (work / name).write_text(json.dumps(nb))
    port, token = free_port(), 'nsp-check'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
               JUPYTER_CONFIG_DIR=str(work / '.jupyter'), OMP_NUM_THREADS='1')
    lab = subprocess.Popen([str(Path(sys.executable).parent / 'jupyter'), 'lab', '--no-browser', f'--port={port}',
                            f'--ServerApp.token={token}', f'--ServerApp.root_dir={work}', '--ServerApp.ip=127.0.0.1',
                            '--LabApp.news_url=', '--allow-root'],
                           env=env, stdout=open(out / 'lab.log', 'w'), stderr=subprocess.STDOUT)
    try:
        base = f'http://127.0.0.1:{port}'
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{base}/api?token={token}', timeout=2); break
            except OSError: time.sleep(1)
        else:
            raise SystemExit('JupyterLab did not start: see ' + str(out / 'lab.log'))
        from playwright.sync_api import sync_playwright
        exe = shutil.which('chromium') or shutil.which('chromium-browser')
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=exe, args=['--no-sandbox', '--enable-unsafe-swiftshader'])
            page = b.new_page(viewport=dict(width=1300, height=height))
            page.on('pageerror', lambda e: errors.append(f'pageerror: {e}'))
            page.on('console', lambda m: errors.append(f'console: {m.text[:200]}') if m.type == 'error' else None)
            page.goto(f'{base}/lab/tree/{name}?token={token}')
            page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=timeout * 1000)
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"], .jp-mod-idle', timeout=timeout * 1000)
            yield page
            b.close()
    finally:
        lab.terminate()
        try: lab.wait(timeout=20)
        except subprocess.TimeoutExpired: lab.kill()


def run_first_cell(page, tries: int = 4):
    "Shift+Enter on the first cell until its prompt shows it ran (a kernel not yet connected only moves on)."
    for _ in range(tries):
        dialog = page.locator('.jp-Dialog')
        if dialog.count():          # e.g. a kernel choice that JupyterLab asks on a fresh config: take the default
            print('[lab] dialog:', dialog.first.text_content()[:200].replace('\n', ' '), flush=True)
            page.keyboard.press('Enter'); page.wait_for_timeout(1500)
        page.locator('.jp-Cell .cm-content').first.click(timeout=20_000)
        page.keyboard.press('Shift+Enter')
        try:
            page.wait_for_function("() => /\\[(\\*|1)\\]/.test(document.querySelector('.jp-Cell .jp-InputArea-prompt').textContent)",
                                   timeout=20_000)
            return
        except Exception: pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(tempfile.gettempdir(), 'nsp_widgets'))
    ap.add_argument('--timeout', type=int, default=180)
    a = ap.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    result = dict(widget=False, points=0, slider_moves_figure=False, errors=[])
    with lab_page([CELL], 'widgets.ipynb', out, a.timeout, result['errors']) as page:
        run_first_cell(page)
        page.wait_for_selector('.jp-OutputArea .widget-slider, .jp-OutputArea .jupyter-widgets', timeout=a.timeout * 1000)
        page.wait_for_selector('.jp-OutputArea .js-plotly-plot .gl-container canvas', timeout=a.timeout * 1000)
        result['widget'] = True
        page.wait_for_timeout(2500)
        plot = page.locator('.jp-OutputArea .js-plotly-plot').first
        before = plot.screenshot(); (out / 'widget_before.png').write_bytes(before)
        result['points'] = coloured(before)
        title0 = page.locator('.jp-OutputArea .gtitle').first.text_content()
        handle = page.locator('.jp-OutputArea .noUi-handle, .jp-OutputArea .ui-slider-handle').first
        handle.focus(); page.keyboard.press('ArrowRight'); page.keyboard.press('ArrowRight')
        page.wait_for_timeout(2500)
        title1 = page.locator('.jp-OutputArea .gtitle').first.text_content()
        after = plot.screenshot(); (out / 'widget_after.png').write_bytes(after)
        result.update(title_before=title0, title_after=title1, points_after=coloured(after),
                      slider_moves_figure=(title0 != title1 and coloured(after) > 0))
        page.screenshot(path=str(out / 'lab.png'))
    (out / 'summary.json').write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = result['widget'] and result['points'] > 100 and result['slider_moves_figure']
    print(f'[widgets] {"OK" if ok else "FAILED"}: screenshots and summary in {out}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
