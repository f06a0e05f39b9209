"""Shared helpers for the benchmark scripts: a printed table and a JSON file under results/.

Every benchmark script calls `save_results(name, rows, **meta)`; the file records the device,
software versions and machine load so numbers are never read without their context.
"""
from __future__ import annotations
import json, os, platform, subprocess, sys, time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / 'results'
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> dict:
    import torch
    from nsp_explore.core import versions
    d = versions()
    d.update(cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
             device='cuda' if torch.cuda.is_available() else 'cpu', processor=platform.processor() or platform.machine())
    try: d['loadavg_1min'] = os.getloadavg()[0]
    except OSError: pass
    return d


def print_table(rows: list[dict], title: str = '') -> str:
    "Print rows (list of dicts) as an aligned text table; return the text."
    if not rows: return ''
    cols = []
    for r in rows:
        for k in r:
            if k not in cols: cols.append(k)
    fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, '')) for c in cols] for r in rows]
    w = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [title] if title else []
    lines += ['  '.join(c.ljust(w[i]) for i, c in enumerate(cols)), '  '.join('-' * x for x in w)]
    lines += ['  '.join(v.ljust(w[i]) for i, v in enumerate(row)) for row in cells]
    text = '\n'.join(lines); print(text); return text


def save_results(name: str, rows: list[dict], results_dir=None, **meta) -> Path:
    "Write <results_dir or benchmarks/results>/<name>_<device>.json with rows, machine info and extra metadata."
    m = machine()
    out = Path(results_dir) if results_dir is not None else RESULTS
    path = out / f"{name}_{m['device']}.json"
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(benchmark=name, date=time.strftime('%Y-%m-%d %H:%M:%S'), machine=m, meta=meta, rows=rows)
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(payload, indent=2, default=str)); os.replace(tmp, path)
    print(f'wrote {path}')
    return path


def run_workers(cmds: dict, logs: dict, env: dict, jobs: int = 0, deadline_s: float | None = None) -> list:
    """Run each command of `cmds` (name -> argv) as its own process, at most `jobs` at once (0: all at once), its
    output in the file `logs[name]`; processes still running `deadline_s` seconds after the first start are killed.
    Returns the names of the killed ones."""
    t0, procs, killed = time.time(), {}, []
    for name, cmd in cmds.items():
        while jobs and sum(p.poll() is None for p in procs.values()) >= jobs: time.sleep(1)
        with open(logs[name], 'w') as log: procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    for name, p in procs.items():
        left = None if deadline_s is None else max(1.0, deadline_s - (time.time() - t0))
        try: p.wait(timeout=left)
        except subprocess.TimeoutExpired:
            p.kill(); killed.append(name); print(f'{name}: killed at the deadline', flush=True)
    return killed
