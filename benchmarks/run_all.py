"""Run every benchmarks/bench_*.py in turn (each prints a table and writes results/*.json).

    python benchmarks/run_all.py            # the quick ones (minutes each on 2 CPU cores)
    python benchmarks/run_all.py --all      # also the long studies in LONG (tens of minutes each)
"""
import subprocess, sys
from pathlib import Path

# Studies that train several models and score them with the full protocol: run them on purpose.
LONG = {'bench_compare.py', 'bench_cpu_pointflow.py', 'bench_cpu_tour.py', 'bench_generator_steps.py', 'bench_vat.py'}

here = Path(__file__).resolve().parent
run_long = '--all' in sys.argv
args = [a for a in sys.argv[1:] if a != '--all']
failed = []
for script in sorted(here.glob('bench_*.py')):
    if script.name in LONG and not run_long:
        print(f'\n=== {script.name}: skipped (a long study; `run_all.py --all` runs it)', flush=True); continue
    print(f'\n=== {script.name}', flush=True)
    if subprocess.run([sys.executable, str(script)] + args).returncode: failed.append(script.name)
sys.exit(f'failed: {failed}' if failed else 0)
