"""`make docs`: execute every notebook top to bottom and write the offline book `_book/`.

    .venv/bin/python tools/build_book.py [--out _book] [--only 04_lod,05_metrics] [--workers 2] [--timeout 1200]

- Each notebook runs in a fresh kernel (nbclient), from `nbs/`, with one torch thread and quiet
  progress bars. Cells flagged `#| slow`, `#| cuda` or `#| widgets` (the flags nbdev_test skips)
  are not run: the page shows their code with a note saying why. Any other cell that raises
  fails the build, naming the notebook and the cell: this is also the "Run All works" check.
- One HTML page per notebook with its outputs; plotly figures stay interactive and are drawn
  lazily (`nsp_explore.viz.LAZY_PLOTLY_JS`: a browser keeps only ~16 WebGL contexts per page);
  plotly.js is shipped once as `_book/plotly.min.js` from the installed plotly package.
  Nothing is fetched from the network, when building or when reading.
- `index.html` is the landing page (nbs/index.ipynb) followed by the contents: the learning
  path, then the reference notebooks, then the architecture page (`nbs/architecture.md`).
  Every page has previous/next links and the contents in a side bar.
- `_book/build.json` records the wall time of each notebook and of the whole build.
"""
from __future__ import annotations
import argparse, base64, html, json, os, re, shutil, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
SKIP_FLAGS = ('slow', 'cuda', 'widgets')

# The learning path (read in this order) and the reference notebooks (look things up there).
PATH = [('02_shapes', 'the data: procedural shapes and surface samples'),
        ('04_lod', 'the core idea: FPS scales and the level-of-detail tree'),
        ('05_metrics', 'how generated shapes are scored'),
        ('06_quantize', 'tokens: vector quantization and the residual multi-scale loop'),
        ('07_tokenizer', 'the PointNSP tokenizer: a multi-scale VQ-VAE on the tree'),
        ('08a_train_tokenizer', 'training it and looking at its tokens'),
        ('09_transformer', 'the block-causal next-scale transformer'),
        ('10_generate', 'training the generator and sampling coarse to fine'),
        ('11_tour', 'everything end to end, in one report')]
REFERENCE = [('00_core', 'devices, seeds, progress bars, configs'),
             ('01_viz', 'the views every notebook draws with, and the offline report'),
             ('01a_live', 'live 3-D views: meshes and clouds you can turn, in JupyterLab and offline'),
             ('03_data', 'datasets, normalization, loaders'),
             ('08_train', 'the training loop shared by every model')]
OTHERS = [('12_occupancy', 'occupancy fields: query pools, meshes, IoU and F-score'),
          ('13_g3pt', 'G3PT: cross-scale querying tokens, lookup-free quantization, occupancy decoding'),
          ('14_vat', 'VAT: Gaussian latent tokens, variational residual quantization, bytes per shape'),
          ('15_masked', 'SMART-3D: masked parallel decoding with linear attention')]
OTHERS += [('16_flat_ar', 'flat autoregression: one point per network call, and the permutation test'),
           ('17_compare', 'every paradigm on the same 100 shapes: quality, network calls, time, size')]
EXTRA = [('architecture', 'how the package is put together: modules, tensors, invariants')]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;line-height:1.5}
#side{position:fixed;top:0;left:0;bottom:0;width:250px;overflow-y:auto;background:#f6f7f9;border-right:1px solid #ddd;
      padding:1em;font-size:14px;box-sizing:border-box}
#side a{color:#234;text-decoration:none;display:block;padding:2px 0}#side a.here{font-weight:bold;color:#c33}
#side h4{margin:1em 0 .3em;color:#666;font-size:12px;text-transform:uppercase;letter-spacing:.05em}
main{margin-left:270px;max-width:1000px;padding:1em 2em 4em}
.nav{display:flex;justify-content:space-between;border-bottom:1px solid #ddd;padding:.5em 0;margin-bottom:1em;font-size:14px}
.nav.bottom{border-top:1px solid #ddd;border-bottom:none;margin-top:3em}
pre{background:#f6f8fa;padding:.6em .8em;overflow-x:auto;border-radius:4px;font-size:13px;line-height:1.35}
.cell-in pre{border-left:3px solid #9ab}
.out pre{background:#fff;border-left:3px solid #ddd}
.out pre.err{border-left-color:#c33;background:#fff5f5}
.skipped{color:#855;font-size:13px;margin:.2em 0}
.out img{max-width:100%}
table{border-collapse:collapse;margin:.8em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px}th{background:#f3f3f3}
blockquote{color:#555;border-left:4px solid #ddd;margin-left:0;padding-left:1em}
code{background:#f2f2f2;padding:0 .2em;border-radius:3px}pre code{background:none;padding:0}
.contents li{margin:.3em 0}.role{color:#666;font-size:14px}
.nsp-idle{background:#fafafa}
.math{font-family:'Times New Roman',serif;font-size:1.1em}div.math{text-align:center;margin:1em 0;font-size:1.25em}
"""


def nb_title(nb) -> tuple[str, str]:
    "The H1 title and the `>` subtitle of a notebook."
    for c in nb['cells']:
        if c['cell_type'] == 'markdown':
            src = ''.join(c['source'])
            t = next((l[2:].strip() for l in src.splitlines() if l.startswith('# ')), '')
            sub = next((l[1:].strip() for l in src.splitlines() if l.startswith('>')), '')
            if t: return t, sub
    return '', ''


def cell_flags(src: str) -> set[str]:
    "nbdev directives of a cell: `#| slow` -> {'slow'}, `#| export` -> {'export'}, ..."
    out = set()
    for line in src.splitlines():
        m = re.match(r'\s*#\|\s*(.*)', line)
        if m: out.update(m.group(1).split())
        elif line.strip(): break
    return out


def execute(name: str, timeout: int) -> tuple[dict, float]:
    "Run nbs/<name>.ipynb in a fresh kernel; flagged cells become raw (not run). Returns (notebook, seconds)."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(NBS / f'{name}.ipynb', as_version=4)
    for c in nb.cells:
        if c.cell_type == 'code' and cell_flags(c.source) & set(SKIP_FLAGS):
            c.metadata['book_skipped'] = sorted(cell_flags(c.source) & set(SKIP_FLAGS))
            c.cell_type = 'raw'; c.pop('outputs', None); c.pop('execution_count', None)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=False,
                            resources={'metadata': {'path': str(NBS)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        raise SystemExit(f'[book] {name}.ipynb: a cell raised; the book is not built.\n{str(e)[-3000:]}')
    return nb, time.perf_counter() - t0


def md_renderer():
    from markdown_it import MarkdownIt
    return MarkdownIt('commonmark', {'html': True}).enable('table').enable('strikethrough')


TEX = {r'\prod': '∏', r'\sum': '∑', r'\mid': ' | ', r'\dots': '…', r'\ldots': '…', r'\cdots': '⋯',
       r'\subset': ' ⊂ ', r'\subseteq': ' ⊆ ', r'\qquad': '&emsp;&emsp;', r'\quad': '&emsp;', r'\leq': ' ≤ ',
       r'\le': ' ≤ ', r'\geq': ' ≥ ', r'\ge': ' ≥ ', r'\infty': '∞', r'\in': ' ∈ ', r'\times': ' × ',
       r'\cdot': '·', r'\approx': ' ≈ ', r'\to': ' → ', r'\alpha': 'α', r'\beta': 'β', r'\epsilon': 'ε',
       r'\lambda': 'λ', r'\sigma': 'σ', r'\mu': 'μ', r'\pi': 'π', r'\|': '‖', r'\,': ' ', r'\;': ' ',
       r'\left': '', r'\right': ''}


def tex_html(t: str) -> str:
    "A small LaTeX-to-HTML rendering (symbols, sub- and superscripts): enough for the notebooks' formulas, offline."
    t = html.escape(t.strip())
    for k in sorted(TEX, key=len, reverse=True): t = t.replace(k, TEX[k])
    for _ in range(2):
        t = re.sub(r'_\{([^{}]*)\}', r'<sub>\1</sub>', t); t = re.sub(r'\^\{([^{}]*)\}', r'<sup>\1</sup>', t)
    t = re.sub(r'_(\w)', r'<sub>\1</sub>', t); t = re.sub(r'\^(\w)', r'<sup>\1</sup>', t)
    t = re.sub(r'\\([A-Za-z]+)', r'\1', t.replace('{', '').replace('}', ''))
    return re.sub(r'(?<![<\w/])([A-Za-z])(?![\w>])', r'<i>\1</i>', t)    # single-letter variables in italics


def render_markdown(src: str) -> str:
    "Markdown to HTML, with $$...$$ and $...$ (outside code) rendered by `tex_html`."
    parts, store = re.split(r'(```.*?```|`[^`\n]*`)', src, flags=re.S), []
    def keep(h):
        store.append(h); return f'NSPMATH{len(store) - 1}X'
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r'\$\$(.+?)\$\$', lambda m: '\n\n' + keep(f'<div class="math">{tex_html(m.group(1))}</div>') + '\n\n',
                          parts[i], flags=re.S)
        parts[i] = re.sub(r'(?<![\\$\w])\$([^\s$](?:[^$\n]*?[^\s$\\])?)\$(?![\w$])',
                          lambda m: keep(f'<span class="math">{tex_html(m.group(1))}</span>'), parts[i])
    out = md_renderer().render(''.join(parts))
    for i, h in enumerate(store): out = out.replace(f'<p>NSPMATH{i}X</p>', h).replace(f'NSPMATH{i}X', h)
    return out


def highlight(code: str) -> str:
    try:
        from pygments import highlight as hl
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
        return hl(code, PythonLexer(), HtmlFormatter(nowrap=True))
    except ImportError:
        return html.escape(code)


_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def render_output(o, fig_id: str) -> str:
    from nsp_explore.viz import lazy_figure_html
    t = o.get('output_type')
    if t == 'stream':
        text = _ANSI.sub('', ''.join(o.get('text', '')))
        text = '\n'.join(l.rsplit('\r', 1)[-1] for l in text.split('\n'))    # progress bars: keep the last state
        return f'<pre>{html.escape(text)}</pre>'
    if t == 'error':
        return f'<pre class="err">{html.escape(_ANSI.sub("", chr(10).join(o.get("traceback", []))))}</pre>'
    data = o.get('data', {})
    if 'application/vnd.plotly.v1+json' in data:
        return lazy_figure_html(data['application/vnd.plotly.v1+json'], fig_id)
    if 'application/vnd.jupyter.widget-view+json' in data:
        return '<p class="skipped">(a live widget: open the notebook in JupyterLab to use it)</p>'
    if 'text/html' in data:
        h = ''.join(data['text/html'])
        if re.search(r'<script[^>]+src=["\']?https?:', h):           # never fetch from the network
            return '<p class="skipped">(an output that loads scripts from the network was left out)</p>'
        return h
    if 'image/svg+xml' in data: return ''.join(data['image/svg+xml'])
    for mime in ('image/png', 'image/jpeg'):
        if mime in data:
            b64 = data[mime] if isinstance(data[mime], str) else ''.join(data[mime])
            return f'<img src="data:{mime};base64,{b64.strip()}"/>'
    if 'text/markdown' in data: return render_markdown(''.join(data['text/markdown']))
    if 'text/plain' in data: return f'<pre>{html.escape(_ANSI.sub("", "".join(data["text/plain"])))}</pre>'
    return ''


def fix_links(h: str) -> str:
    "Links between notebooks point to the book's pages."
    return re.sub(r'href="(?:\./)?(?:nbs/)?([\w-]+)\.ipynb(#[^"]*)?"', lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', h)


def render_cells(nb, name: str) -> str:
    md, parts, nfig = md_renderer(), [], 0
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            parts.append(fix_links(render_markdown(src))); continue
        flags = cell_flags(src)
        if 'hide' in flags: continue
        code = '\n'.join(l for l in src.splitlines() if not re.match(r'\s*#\|', l)).strip('\n')
        if code: parts.append(f'<div class="cell-in"><pre><code>{highlight(code)}</code></pre></div>')
        skipped = c.get('metadata', {}).get('book_skipped')
        if skipped:
            why = {'slow': 'slow', 'cuda': 'needs a CUDA GPU', 'widgets': 'a live widget (needs JupyterLab)'}
            parts.append(f'<p class="skipped">Not run for the book ({", ".join(why[s] for s in skipped)}): '
                         'run it yourself in JupyterLab.</p>')
            continue
        outs = []
        for o in c.get('outputs', []):
            nfig += 1
            outs.append(render_output(o, f'{name}-fig-{nfig}'))
        if any(outs): parts.append('<div class="out">' + '\n'.join(x for x in outs if x) + '</div>')
    return '\n'.join(parts)


def pygments_css() -> str:
    try:
        from pygments.formatters import HtmlFormatter
        return HtmlFormatter(style='friendly').get_style_defs('.cell-in pre')
    except ImportError:
        return ''


def page(title: str, body: str, here: str, order: list[tuple[str, str]], titles: dict) -> str:
    i = [n for n, _ in order].index(here)
    prev = order[i - 1][0] if i > 0 else None
    nxt = order[i + 1][0] if i + 1 < len(order) else None
    link = lambda n, arrow: (f'<a href="{n}.html" rel="{"prev" if arrow == "←" else "next"}">'
                             f'{arrow + " " if arrow == "←" else ""}{html.escape(titles[n])}{" " + arrow if arrow == "→" else ""}</a>'
                             if n else '<span></span>')
    nav = lambda cls: f'<div class="nav {cls}">{link(prev, "←")}<a href="index.html#contents">contents</a>{link(nxt, "→")}</div>'
    side = ['<a href="index.html"><b>nsp_explore</b></a>']
    for head, group in (('Learning path', PATH), ('Other paradigms', OTHERS), ('Reference', REFERENCE), ('Also', EXTRA)):
        side.append(f'<h4>{head}</h4>')
        for j, (n, _) in enumerate(group):
            num = f'{j + 1}. ' if group is PATH else ''
            side.append(f'<a href="{n}.html" class="{"here" if n == here else ""}">{num}{html.escape(titles[n])}</a>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f'<title>{html.escape(title)} - nsp_explore</title><style>{CSS}{pygments_css()}</style></head><body>'
            f'<nav id="side">{"".join(side)}</nav><main>{nav("top")}{body}{nav("bottom")}</main>'
            '<script src="plotly.min.js"></script><script src="nsp_lazy.js"></script></body></html>')


def contents_html(titles: dict, subs: dict, times: dict) -> str:
    def li(n, role):
        t = f' <span class="role">({times[n]:.0f} s to run)</span>' if n in times else ''
        return (f'<li><a href="{n}.html"><b>{html.escape(titles[n])}</b></a>{t}<br><span class="role">{html.escape(role)}'
                f'{" - " + html.escape(subs[n]) if subs.get(n) else ""}</span></li>')
    return ('<h2 id="contents">Contents</h2><h3>The learning path: read in this order</h3><ol class="contents">'
            + ''.join(li(n, r) for n, r in PATH) + '</ol><h3>Other paradigms, on the same data and metrics</h3><ul class="contents">'
            + ''.join(li(n, r) for n, r in OTHERS) + '</ul><h3>Reference: look things up</h3><ul class="contents">'
            + ''.join(li(n, r) for n, r in REFERENCE) + '</ul><h3>Also</h3><ul class="contents">'
            + ''.join(li(n, r) for n, r in EXTRA) + '</ul>'
            '<p class="role">Each page is its notebook executed top to bottom on a CPU by <code>make docs</code>; '
            'cells flagged slow, cuda or widgets are shown but not run.</p>')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=str(ROOT / '_book'))
    ap.add_argument('--only', default='', help='comma list of notebooks to execute (others are rendered unexecuted)')
    ap.add_argument('--workers', type=int, default=int(os.environ.get('NSP_BOOK_WORKERS', 2)))
    ap.add_argument('--timeout', type=int, default=1200, help='seconds one cell may run')
    a = ap.parse_args(argv)
    os.environ.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', NSP_PROGRESS='0', PLOTLY_RENDERER='plotly_mimetype',
                      MPLBACKEND='Agg', PYTHONHASHSEED='0', PYTHONPATH=os.pathsep.join(
                          [str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    sys.path.insert(0, str(ROOT))
    from nsp_explore.viz import LAZY_PLOTLY_JS, plotly_js
    import nbformat
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    names = ['index'] + [n for n, _ in PATH + OTHERS + REFERENCE]
    missing = [n for n in names if not (NBS / f'{n}.ipynb').exists()]
    if missing: raise SystemExit(f'[book] missing notebooks: {missing}')
    left_out = sorted(p.stem for p in NBS.glob('*.ipynb') if not p.stem.startswith('_') and p.stem not in names)
    if left_out: raise SystemExit(f'[book] notebooks not in the book (add them to PATH, OTHERS or REFERENCE): {left_out}')
    only = {n for n in a.only.split(',') if n}
    run = [n for n in names if not only or n in only]
    t0 = time.perf_counter()
    done, times = {}, {}
    def job(n):
        nb, s = execute(n, a.timeout)
        print(f'[book] {n}: executed in {s:.0f} s', flush=True)
        return n, nb, s
    # the longest notebooks first, so two workers finish together
    with ThreadPoolExecutor(max(1, a.workers)) as ex:
        for n, nb, s in ex.map(job, sorted(run, key=lambda n: n not in ('15_masked', '13_g3pt', '11_tour', '10_generate', '08a_train_tokenizer'))):
            done[n], times[n] = nb, s
    titles, subs = {}, {}
    for n in names:
        nb = done.get(n) or nbformat.read(NBS / f'{n}.ipynb', as_version=4)
        done[n] = nb
        titles[n], subs[n] = nb_title(nb)
    titles['index'] = 'Start here'
    md = md_renderer()
    arch = (NBS / 'architecture.md').read_text(encoding='utf-8')
    titles['architecture'] = next((l[2:] for l in arch.splitlines() if l.startswith('# ')), 'Architecture')
    short = {n: re.split(r'[:.]', t)[0] if n != 'index' else t for n, t in titles.items()}
    order = [('index', '')] + PATH + OTHERS + REFERENCE + EXTRA
    for n in names:
        body = render_cells(done[n], n)
        if n == 'index': body += contents_html(short, subs, times)
        (out / f'{"index" if n == "index" else n}.html').write_text(page(titles[n], body, n, order, short), encoding='utf-8')
    (out / 'architecture.html').write_text(page(titles['architecture'], fix_links(render_markdown(arch)), 'architecture', order, short),
                                           encoding='utf-8')
    (out / 'plotly.min.js').write_text(plotly_js(), encoding='utf-8')
    (out / 'nsp_lazy.js').write_text(LAZY_PLOTLY_JS, encoding='utf-8')
    if (NBS / 'images').is_dir(): shutil.copytree(NBS / 'images', out / 'images', dirs_exist_ok=True)
    total = time.perf_counter() - t0
    load = os.getloadavg() if hasattr(os, 'getloadavg') else None
    (out / 'build.json').write_text(json.dumps(dict(seconds=times, total_seconds=total, workers=a.workers,
                                                    cpus=os.cpu_count(), loadavg=load), indent=2))
    print(f'[book] wrote {out}/index.html: {len(names) + 1} pages, {len(run)} notebooks executed in {total:.0f} s '
          f'({a.workers} workers, load {load[0]:.1f})' if load else '', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
