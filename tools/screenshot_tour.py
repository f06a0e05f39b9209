"""The landing page's picture of the tour report: nbs/images/tour_report.png, from a real run.

    .venv/bin/python tools/screenshot_tour.py [--report reports/tour.html] [--preset quick]

Without an existing report it first runs the tour (`nsp-tour --preset quick`: a few minutes on a
CPU; `nano` gives the better-trained picture). Then it opens the report in the system Chromium
(Playwright, never a downloaded browser), scrolls to a section (default: the levels of detail), moves the sliders on screen to a later
frame, lets the lazily created figures draw, and saves a screenshot of it, reduced to a small palette PNG.
"""
import argparse, io, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--report', default=str(ROOT / 'reports' / 'tour.html'))
    ap.add_argument('--preset', default='quick', help='tour preset to run when the report does not exist')
    ap.add_argument('--section', default='2. Levels', help='start of the heading to show at the top')
    ap.add_argument('--frame', type=int, default=-2, help='slider frame to show in the figures on screen (-1: last)')
    ap.add_argument('--out', default=str(ROOT / 'nbs' / 'images' / 'tour_report.png'))
    a = ap.parse_args(argv)
    report = Path(a.report)
    if not report.exists():
        print(f'[shot] no {report}: running the tour ({a.preset}) first', flush=True)
        subprocess.run([sys.executable, '-c', 'import sys; from nsp_explore.tour import main; sys.exit(main(sys.argv[1:]))', '--preset', a.preset, '--out', str(report),
                        '--workdir', str(ROOT / 'runs' / 'tour_shot')], check=True, cwd=ROOT)
    from playwright.sync_api import sync_playwright
    from PIL import Image
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None: sys.exit('no system chromium on PATH: apt-get install chromium')
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=['--no-sandbox', '--enable-unsafe-swiftshader'])
        page = b.new_page(viewport=dict(width=1150, height=1050))
        page.goto(report.resolve().as_uri())
        page.evaluate("""s => { const h = [...document.querySelectorAll('h2')].find(h => h.textContent.startsWith(s));
                               if (!h) throw new Error('no section ' + s); window.scrollTo(0, h.offsetTop - 10); }""", a.section)
        page.wait_for_function("() => [...document.querySelectorAll('div[data-nsp-fig]')].filter(el => { const r = el.getBoundingClientRect(); "
                               "return r.top < innerHeight && r.bottom > 0; }).every(el => el._nspLive && el.querySelector('.main-svg'))",
                               timeout=120_000)
        page.evaluate("""f => Promise.all([...document.querySelectorAll('div[data-nsp-fig]')].filter(el => el._nspLive &&
                           el._transitionData && el._transitionData._frames && el._transitionData._frames.length).map(el => {
                           const fr = el._transitionData._frames; const name = fr[(fr.length + f) % fr.length].name;
                           const st = el.layout.sliders && el.layout.sliders[0];
                           return Plotly.animate(el, [name], {mode: 'immediate', frame: {duration: 0, redraw: true},
                                                              transition: {duration: 0}}).then(() => st &&
                               Plotly.relayout(el, {'sliders[0].active': fr.findIndex(x => x.name === name)})); }))""", a.frame)
        page.wait_for_timeout(2000)
        png = page.screenshot()
        b.close()
    img = Image.open(io.BytesIO(png)).convert('RGB')
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS).quantize(colors=128)
    out = Path(a.out); img.save(out, optimize=True)
    print(f'[shot] wrote {out} ({out.stat().st_size // 1024} KB) from {report}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
