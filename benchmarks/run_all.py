"""Run every benchmarks/bench_*.py in turn (each prints a table and writes results/*.json)."""
import subprocess, sys
from pathlib import Path

here = Path(__file__).resolve().parent
failed = []
for script in sorted(here.glob('bench_*.py')):
    print(f'\n=== {script.name}', flush=True)
    if subprocess.run([sys.executable, str(script)] + sys.argv[1:]).returncode: failed.append(script.name)
sys.exit(f'failed: {failed}' if failed else 0)
