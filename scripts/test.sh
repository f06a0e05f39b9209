#!/usr/bin/env bash
# Run every test: set up .venv, check notebooks and library are in sync and clean,
# run the notebook tests (nbdev_test, skipping cells flagged slow/cuda/widgets) and pytest tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh fast,dev,render,mesh
V=${NSP_VENV:-.venv}/bin
export PYTHONHASHSEED=0 MPLBACKEND=Agg NSP_PROGRESS=${NSP_PROGRESS:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
echo "== 1/3 notebooks <-> library sync and notebook cleanliness"
"$V/python" tools/check_sync.py
echo "== 2/3 notebook tests (nbdev_test; flags slow, cuda, widgets are skipped)"
# two notebooks at a time, one torch thread each: two 2-thread processes on 2 cores run 5-10x slower
OMP_NUM_THREADS=1 "$V/nbdev_test" --n_workers ${NSP_NB_WORKERS:-2} --timing ${NSP_TEST_FLAGS:+--flags "$NSP_TEST_FLAGS"}
echo "== 3/3 pytest tests/"
"$V/python" -m pytest tests/ -q ${PYTEST_ARGS:-}
echo "== all tests passed in $(( $(date +%s) - start )) s (after set-up)"
