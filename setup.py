"""Packaging for nsp_explore, driven by settings.ini (the nbdev 2.4 convention).

`data_samples/` (top level of the repo) ships inside the wheel as `nsp_explore.data_samples`.
"""
from configparser import ConfigParser
from pathlib import Path
import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=['='])
cfg.read(here / 'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

requirements = cfg.get('requirements', '').split()
extras = {
    'fast': ['fpsample>=0.3.3,<1',            # exact FPS in Rust with wheels (>=1.0 is source-only)
             'pykdtree>=1.3',                 # KD-tree Chamfer on CPU (falls back to scipy's cKDTree)
             'numba>=0.59'],                  # the exact one-run KD-tree FPS and LoD assignment (lod, CPU)
    'cluster': ['torch-cluster'],             # source build on PyPI (~16 min); prefer conda's build
    'render': ['pyvista>=0.42'],              # publication renders, off-screen PNG
    'lab': ['jupyterlab>=4', 'ipywidgets>=8', 'anywidget>=0.9', 'fastcore<2'],  # FigureWidget needs anywidget (plotly>=6); notebooks import fastcore.test
    'mesh': cfg.get('mesh_requirements', 'scikit-image>=0.21').split(),   # marching cubes (occupancy.extract_mesh)
    # live 3-D views in JupyterLab (nsp_explore.live.live_view): pyvista renders in the kernel, trame streams it;
    # pyvista >= 0.48 moved its trame backend into trame-pyvista. The offline scenes need none of this.
    'live': ['pyvista>=0.48', 'trame>=3', 'trame-vtk>=2.8', 'trame-vuetify>=2.7', 'trame-pyvista>=0.2', 'ipywidgets>=8'],
    'dev': cfg.get('dev_requirements', '').split(),
}
extras['all'] = sorted({r for k in ('fast', 'render', 'lab', 'live', 'mesh', 'dev') for r in extras[k]})

sample_files = [str(p.relative_to(here / 'data_samples')) for p in (here / 'data_samples').rglob('*')
                if p.is_file() and '__pycache__' not in p.parts]

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=(here / 'README.md').read_text(encoding='utf-8') if (here / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'],
    license='Apache-2.0', url=cfg['git_url'],
    keywords=cfg['keywords'].split(),
    python_requires=f">={cfg['min_python']}",
    packages=['nsp_explore', 'nsp_explore.data_samples'],
    package_dir={'nsp_explore': 'nsp_explore', 'nsp_explore.data_samples': 'data_samples'},
    package_data={'nsp_explore.data_samples': sample_files},
    include_package_data=True,
    install_requires=requirements,
    extras_require=extras,
    entry_points={'console_scripts': ['nsp-tour=nsp_explore.tour:main'],
                  'nbdev': ['nsp_explore=nsp_explore._modidx:d']},
    zip_safe=False,
    classifiers=['Programming Language :: Python :: 3', 'Intended Audience :: Science/Research',
                 'License :: OSI Approved :: Apache Software License'],
)
