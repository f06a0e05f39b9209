"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as code blocks).

nbdev 2's `nbdev_readme` needs Quarto; this keeps the README reproducible with Python alone.
Cells whose first line is `#| hide` are left out; outputs are not copied.
"""
import json, re
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root / 'nbs' / 'index.ipynb').read_text(encoding='utf-8'))
parts = []
for cell in nb['cells']:
    src = ''.join(cell['source']).strip('\n')
    if not src or src.startswith('#| hide') or src.startswith('#|hide'):
        continue
    if cell['cell_type'] == 'markdown':
        src = src.replace('](images/', '](nbs/images/')
        src = re.sub(r'\]\(([\w-]+\.(?:ipynb|md))\)', r'](nbs/\1)', src)   # links between notebooks, from the repo root
        parts.append(src)
    elif cell['cell_type'] == 'code':
        lines = [l for l in src.splitlines() if not l.startswith('#|')]
        if lines:
            parts.append('```python\n' + '\n'.join(lines) + '\n```')
text = '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n'
(root / 'README.md').write_text(text + '\n\n'.join(parts) + '\n', encoding='utf-8')
