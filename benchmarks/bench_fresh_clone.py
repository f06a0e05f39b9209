"""The README's main job from a fresh clone, set-up included: `git clone` this repository into a temporary
folder, run `make tour` there (scripts/setup_env.sh creates .venv and installs the package, then the nano
tour), and record the wall time of the set-up and of the tour, with the 1-minute load average.

    python benchmarks/bench_fresh_clone.py [--repo .] [--keep]

pip's download cache is whatever this machine has (a first install on a new machine downloads torch too).
Writes benchmarks/results/fresh_clone_cpu.json.
"""
import argparse, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repo', default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument('--keep', action='store_true', help='keep the clone')
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix='nsp_fresh_'))
    load0 = os.getloadavg()[0]
    try:
        subprocess.run(['git', 'clone', '-q', a.repo, str(d / 'repo')], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'OMP_NUM_THREADS', 'VIRTUAL_ENV')}
        t0 = time.perf_counter()
        p = subprocess.Popen(['make', 'tour'], cwd=d / 'repo', env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t_ready = None
        log = []
        for line in p.stdout:
            log.append(line)
            if t_ready is None and line.startswith('[setup] ready'): t_ready = time.perf_counter() - t0
        rc = p.wait(); total = time.perf_counter() - t0
        if rc: raise SystemExit(''.join(log[-40:]) + f'\nmake tour failed with exit code {rc}')
        stages = {m.group(1): float(m.group(2)) for m in re.finditer(r'\[tour [\d:]+\] (\w+) done in ([\d.]+) s', ''.join(log))}
    finally:
        if not a.keep: shutil.rmtree(d, ignore_errors=True)
    row = dict(command='make tour (fresh clone)', setup_s=round(t_ready, 1), tour_s=round(total - t_ready, 1), total_s=round(total, 1),
               **{f'{k}_s': v for k, v in stages.items()}, loadavg_1min_start=load0, loadavg_1min_end=os.getloadavg()[0])
    print_table([row], 'the main job from a fresh clone (set-up included)')
    save_results('fresh_clone', [row], note="pip's cache as found on this machine; the issue's budget is 5 minutes on 2 idle cores")


if __name__ == '__main__':
    main()
