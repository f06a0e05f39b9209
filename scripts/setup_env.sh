#!/usr/bin/env bash
# Create (or reuse) the local virtual environment .venv and install nsp_explore into it.
#   scripts/setup_env.sh [EXTRAS]      EXTRAS: comma list of setup.py extras (default: fast)
# Environment knobs:
#   PYTHON=python3.12        interpreter used to create .venv (3.10+)
#   NSP_VENV=.venv           where the environment lives
#   NSP_TORCH_INDEX=URL      pip index for torch (e.g. https://download.pytorch.org/whl/cu124)
#   NSP_TORCH_SPEC='torch==2.13.0'  the torch requirement to install when none is present
# torch is installed first and on purpose: without a GPU we never want pip to pull the
# multi-GB CUDA wheels by accident (see README, "torch without surprises").
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-fast}
PYTHON=${PYTHON:-python3}
VENV=${NSP_VENV:-.venv}
TORCH_SPEC=${NSP_TORCH_SPEC:-torch>=2.3,<2.14}
CPU_INDEX=https://download.pytorch.org/whl/cpu

"$PYTHON" - <<'PY' || { echo "nsp_explore needs Python >= 3.10 (PYTHON=$PYTHON)" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off -q)

if ! "$PY" -c "import torch" 2>/dev/null; then
  if [ -n "${NSP_TORCH_INDEX:-}" ]; then
    echo "[setup] installing $TORCH_SPEC from $NSP_TORCH_INDEX"
    "${PIP[@]}" "$TORCH_SPEC" --index-url "$NSP_TORCH_INDEX"
  elif command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" = Darwin ]; then
    echo "[setup] GPU or macOS found: installing the default torch build ($TORCH_SPEC)"
    "${PIP[@]}" "$TORCH_SPEC"
  elif "$PY" - "$CPU_INDEX" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=4)
PY
  then
    echo "[setup] no GPU: installing the CPU-only torch build from $CPU_INDEX"
    "${PIP[@]}" "$TORCH_SPEC" --index-url "$CPU_INDEX"
  else
    # PyTorch's CPU index is out of reach (offline mirror, firewall): take an exact version so a
    # local '+cpu' wheel (pip --find-links) wins over the CUDA build of the same release.
    spec=${NSP_TORCH_SPEC:-torch==2.13.0}
    echo "[setup] no GPU and no PyTorch CPU index reachable: installing $spec from your pip sources"
    "${PIP[@]}" "$spec"
  fi
fi

# Reinstall only when setup.py/settings.ini changed or an extra is missing; keep earlier extras.
stamp="$VENV/.nsp_installed"
hash="$(cat setup.py settings.ini | cksum | cut -d' ' -f1)"
have_hash=""; have_extras=""
[ -f "$stamp" ] && read -r have_hash have_extras < "$stamp" || true
union=$(printf '%s\n' ${have_extras//,/ } ${extras//,/ } | sort -u | paste -sd, -)
missing=$(comm -13 <(printf '%s\n' ${have_extras//,/ } | sort -u) <(printf '%s\n' ${extras//,/ } | sort -u))
if [ "$have_hash" != "$hash" ] || [ -n "$missing" ] || ! "$PY" -c "import nsp_explore" 2>/dev/null; then
  echo "[setup] installing nsp_explore[$union] (editable) into $VENV"
  "${PIP[@]}" -e ".[$union]"
  echo "$hash $union" > "$stamp"
fi
"$PY" -c "import torch, nsp_explore; print(f'[setup] ready: nsp_explore {nsp_explore.__version__}, torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
