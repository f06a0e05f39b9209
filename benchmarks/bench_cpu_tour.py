"""Wall time of the nano tour on the CPU, per stage, with 1 and with 2 torch threads, in one run.

    PYTHONPATH=. python benchmarks/bench_cpu_tour.py [--preset nano] [--threads 1 2]

Runs `run_tour(preset)` once per thread count (fresh workdir each time, so nothing is resumed) and records
every stage's seconds, the total, and the 1-minute load average before and after each run. The `nano`
preset loads the shipped pretrained pair; set-up (`scripts/setup_env.sh`, a fresh venv) is not included.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results

import torch
from nsp_explore.tour import run_tour


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--preset', default='nano')
    ap.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    a = ap.parse_args()
    os.environ.setdefault('NSP_PROGRESS', '0')
    rows = []
    for th in a.threads:
        with tempfile.TemporaryDirectory() as d:
            load0 = os.getloadavg()[0]
            t = time.perf_counter()
            p = run_tour(a.preset, out=Path(d) / 'tour.html', workdir=Path(d) / 'runs', device='cpu', threads=th)
            wall = time.perf_counter() - t
            s = json.loads(p.with_suffix('.json').read_text())
        rows.append(dict(preset=a.preset, torch_threads=th, **{f'{k}_s': v for k, v in s['seconds'].items()},
                         total_s=s['total_seconds'], wall_s=wall, loadavg_1min_start=load0, loadavg_1min_end=os.getloadavg()[0],
                         **{f'samples_{k}': v for k, v in s['scores'][0].items() if k != 'compared with the test set'}))
        print(rows[-1], flush=True)
    print_table(rows, f'{a.preset} tour on the CPU (stage seconds; the machine is shared: see the load averages)')
    save_results('cpu_tour', rows, cpu_count=os.cpu_count(), note='one run per thread count, back to back; set-up not included')


if __name__ == '__main__':
    main()
