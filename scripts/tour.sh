#!/usr/bin/env bash
# The main job: set up .venv, then run the tour (train, sample, score) and write the
# self-contained HTML report (plotly.js inlined; opens offline).
#   scripts/tour.sh [nsp-tour options]     e.g. --out reports/tour.html --preset nano
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh fast,render
exec "${NSP_VENV:-.venv}/bin/nsp-tour" "$@"
