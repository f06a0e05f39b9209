#!/usr/bin/env bash
# The main job: set up .venv, then run the tour (sample with the shipped pretrained nano pair on a CPU,
# score, and write the self-contained HTML report; plotly.js inlined; opens offline).
#   scripts/tour.sh [nsp-tour options]     e.g. --out reports/tour.html --preset nano
# Set-up installs the `fast` extra only (the time budget is minutes from a fresh clone); the report's one
# off-screen pyvista picture needs the `render` extra (vtk, a large download): NSP_TOUR_EXTRAS=fast,render.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh "${NSP_TOUR_EXTRAS:-fast}"
exec "${NSP_VENV:-.venv}/bin/nsp-tour" "$@"
