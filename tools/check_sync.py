"""Fail when the notebooks and the library (or README) have drifted apart, or notebooks are unclean.

Works on a temporary copy, so it never edits the working tree:
1. `nbdev_export` in the copy must reproduce `nsp_explore/*.py` byte for byte;
2. `nbdev_clean` in the copy must leave every notebook unchanged;
3. `tools/make_readme.py` must reproduce README.md from nbs/index.ipynb.
Fix with `make export` (export + clean + README) and commit.
"""
import filecmp, shutil, subprocess, sys, tempfile
from pathlib import Path

root = Path(__file__).resolve().parents[1]
bindir = Path(sys.executable).parent
problems = []
with tempfile.TemporaryDirectory() as td:
    tmp = Path(td)
    for name in ('settings.ini', 'README.md'):
        shutil.copy2(root / name, tmp / name)
    shutil.copytree(root / 'nbs', tmp / 'nbs', ignore=shutil.ignore_patterns('.ipynb_checkpoints', '_*'))
    shutil.copytree(root / 'nsp_explore', tmp / 'nsp_explore', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copytree(root / 'tools', tmp / 'tools', ignore=shutil.ignore_patterns('__pycache__'))
    for cmd in (['nbdev_export'], ['nbdev_clean'], [sys.executable, 'tools/make_readme.py']):
        exe = cmd if cmd[0] == sys.executable else [str(bindir / cmd[0])]
        r = subprocess.run(exe, cwd=tmp, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f'{cmd[0]} failed:\n{r.stdout}\n{r.stderr}')
    for sub, pat in (('nsp_explore', '*.py'), ('nbs', '*.ipynb')):
        a = {p.name for p in (root / sub).glob(pat)}
        b = {p.name for p in (tmp / sub).glob(pat)}
        for name in sorted(a | b):
            if name not in a:
                problems.append(f'{sub}/{name} would be created by the export but is not in the tree')
            elif name not in b:
                if sub == 'nsp_explore' and name != '__init__.py':
                    problems.append(f'{sub}/{name} is not produced by any notebook (hand-written or stale)')
            elif not filecmp.cmp(root / sub / name, tmp / sub / name, shallow=False):
                what = 'differs from what nbdev_export writes' if sub == 'nsp_explore' else 'is not clean (nbdev_clean changes it)'
                problems.append(f'{sub}/{name} {what}')
    if not filecmp.cmp(root / 'README.md', tmp / 'README.md', shallow=False):
        problems.append('README.md differs from what tools/make_readme.py writes from nbs/index.ipynb')
if problems:
    print('Notebooks and library are out of sync:\n  - ' + '\n  - '.join(problems))
    print('Run `make export` and commit the result (never edit nsp_explore/*.py by hand).')
    sys.exit(1)
print('notebooks, library and README are in sync; notebooks are clean')
