"""Wall time of the nano tour on the CPU, per stage, with 1 and with 2 torch threads, in one run.

    PYTHONPATH=. python benchmarks/bench_cpu_tour.py [--preset nano] [--threads 1 2] [--busy 0 1]

Runs `run_tour(preset)` once per thread count and per number of concurrent CPU-bound processes (`--busy`: each
a one-thread torch matmul loop started before the tour and stopped after it, like another training beside it;
fresh workdir each time, so nothing is resumed) and records every stage's seconds, the total, and the 1-minute
load average before and after each run. `--threads 0` is the tour's own choice (`cpu_threads()`, from the load). The `nano`
preset loads the shipped pretrained pair; set-up (`scripts/setup_env.sh`, a fresh venv) is not included.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results

import torch
from nsp_explore.tour import run_tour, cpu_threads

BURNER = ("import torch, time; torch.set_num_threads(1); a = torch.randn(512, 512)\n"
          "while True: a = (a @ a).tanh_()")


def run_one(a, th: int, busy: int) -> dict:
    procs = [subprocess.Popen([sys.executable, '-c', BURNER], env={**os.environ, 'OMP_NUM_THREADS': '1'}) for _ in range(busy)]
    try:
        if busy: time.sleep(20)                                    # let the load average see them
        with tempfile.TemporaryDirectory() as d:
            load0 = os.getloadavg()[0]
            threads = th or cpu_threads()
            t = time.perf_counter()
            p = run_tour(a.preset, out=Path(d) / 'tour.html', workdir=Path(d) / 'runs', device='cpu', threads=threads)
            wall = time.perf_counter() - t
            s = json.loads(p.with_suffix('.json').read_text())
    finally:
        for q in procs: q.kill()
    return dict(preset=a.preset, torch_threads=threads, threads_asked=th or 'auto', busy_processes=busy,
                **{f'{k}_s': v for k, v in s['seconds'].items()}, total_s=s['total_seconds'], wall_s=wall,
                loadavg_1min_start=load0, loadavg_1min_end=os.getloadavg()[0],
                **{f'samples_{k}': v for k, v in s['scores'][0].items() if k != 'compared with the test set'})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--preset', default='nano')
    ap.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='torch threads per run (0: the tour\'s choice)')
    ap.add_argument('--busy', type=int, nargs='+', default=[0], help='concurrent CPU-bound processes per run')
    a = ap.parse_args()
    os.environ.setdefault('NSP_PROGRESS', '0')
    rows = []
    for busy in a.busy:
        for th in a.threads:
            rows.append(run_one(a, th, busy))
            print(rows[-1], flush=True)
    print_table(rows, f'{a.preset} tour on the CPU (stage seconds; the machine is shared: see the load averages)')
    save_results('cpu_tour', rows, cpu_count=os.cpu_count(), note='one run per (busy, threads), back to back; busy = one-thread matmul loops running beside the tour; set-up not included')


if __name__ == '__main__':
    main()
