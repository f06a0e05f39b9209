"""Regenerate the static pictures of the landing page (nbs/images/*.svg) from the package itself.

    .venv/bin/python tools/make_figures.py

next_scale.svg: one procedural airplane at 4, 16, 64 and 256 points (prefixes of its FPS order),
projected to 2-D, with the new points of each scale highlighted. Deterministic (seeded).
"""
from pathlib import Path
import numpy as np
from nsp_explore.shapes import make_shape, sample_surface
from nsp_explore.lod import fps_order

out = Path(__file__).resolve().parents[1] / 'nbs' / 'images' / 'next_scale.svg'
pts = sample_surface(make_shape('airplane', seed=3), n=2048, seed=0)
order = fps_order(pts).numpy()
scales = [4, 16, 64, 256]
# a fixed oblique view: rotate about y, then tilt about x; keep x (right) and y (up)
a, b = np.radians(20), np.radians(-62)
Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
Rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
p = pts @ Ry.T @ Rx.T
xy = p[:, :2]; depth = p[:, 2]
lo, hi = xy.min(0), xy.max(0)
W, H, pad, gap = 190, 170, 14, 40
scale = min((W - 2 * pad) / (hi - lo)[0], (H - 2 * pad) / (hi - lo)[1])
off = (np.array([W, H]) - scale * (hi - lo)) / 2
def to_svg(q, i):
    "2-D view coordinates -> SVG pixels of panel i (y axis pointing up)."
    u = (q - lo) * scale + off
    return i * (W + gap) + u[0], H - u[1]
parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{len(scales) * (W + gap) - gap}" height="{H + 40}" '
         f'viewBox="0 0 {len(scales) * (W + gap) - gap} {H + 40}" font-family="Helvetica,Arial,sans-serif">',
         '<rect width="100%" height="100%" fill="white"/>']
prev = 0
for i, s in enumerate(scales):
    x0 = i * (W + gap)
    parts.append(f'<rect x="{x0 + 2}" y="2" width="{W - 4}" height="{H - 4}" rx="10" fill="#f7f7fb" stroke="#d0d0e0"/>')
    idx = order[:s]
    for j in idx[np.argsort(depth[idx])]:
        x, y = to_svg(xy[j], i)
        new = j in set(order[prev:s].tolist())
        r = {4: 6, 16: 4.5, 64: 3, 256: 2}[s]
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{"#d62728" if new else "#1f77b4"}" fill-opacity="0.85"/>')
    parts.append(f'<text x="{x0 + W / 2}" y="{H + 22}" text-anchor="middle" font-size="14">X{chr(0x2080 + i + 1)}: {s} points</text>')
    if i:
        ax = x0 - gap + 6
        parts.append(f'<path d="M{ax} {H / 2} h{gap - 14}" stroke="#555" stroke-width="2" marker-end="url(#arr)"/>')
    prev = s
parts.insert(2, '<defs><marker id="arr" markerWidth="8" markerHeight="8" refX="6" refY="4" orient="auto">'
                '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>')
parts.append('</svg>')
out.write_text('\n'.join(parts) + '\n')
print(f'wrote {out} ({out.stat().st_size} bytes)')
