#!/usr/bin/env bash
# Developer helper: turn percent-format sources (.nbsrc/NN_topic.py, git-ignored scratch) into
# notebooks nbs/NN_topic.ipynb, then export + clean just those notebooks. The notebooks are the
# source of truth; this only speeds up writing new ones.   tools/nbsrc.sh 00_core 01_viz
set -euo pipefail
cd "$(dirname "$0")/.."
for n in "$@"; do
  upd=(); [ -f "nbs/$n.ipynb" ] && upd=(--update)    # keep cell ids (clean merges) when the notebook exists
  .venv/bin/jupytext --quiet "${upd[@]}" --to ipynb -o "nbs/$n.ipynb" ".nbsrc/$n.py"
  .venv/bin/nbdev_export --path "nbs/$n.ipynb"
  .venv/bin/nbdev_clean --fname "nbs/$n.ipynb"
done
