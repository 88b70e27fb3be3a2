#!/usr/bin/env bash
# Create .venv-lerobot: a separate Python 3.12 virtual environment holding LeRobot 0.6.1
# (it needs Python >= 3.12 and torch >= 2.7, < 2.12, while the project runs on 3.11 with
# torch 2.13). Only the LeRobot importer's offline tools (reflex_serve/lerobot_import/
# scripts, run as subprocesses) and tests/test_lerobot_*.py use it; serving never does.
# The tests skip, naming this script, when the venv is absent. See docs/lerobot.md.
#
#   scripts/lerobot_venv.sh                      # creates ./.venv-lerobot (idempotent)
#   LEROBOT_VENV=/tmp/v scripts/lerobot_venv.sh
#   PYTHON312=/path/to/python3.12 scripts/lerobot_venv.sh
#
# torch: the configured indexes offer no CPU-only torch < 2.12 wheel for cp312 (the local
# wheels are cp311 2.13/2.14 CPU builds; download.pytorch.org is unreachable), so PyPI's
# CUDA build of 2.11.0 is installed; it runs on the CPU. About 5.3 GB on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LEROBOT_VENV:-.venv-lerobot}"
TORCH_SPEC="${LEROBOT_TORCH:-torch==2.11.0}"
LEROBOT_SPEC="lerobot[smolvla,pi]==0.6.1"

find_python312() {
    # pyenv installs first (a pyenv shim named python3.12 may exist yet refuse to run).
    local root candidate
    root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    for candidate in ${PYTHON312:-} "$root"/versions/3.12*/bin/python3.12 python3.12; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "no working Python 3.12 found: install one (pyenv install 3.12) or set PYTHON312" >&2
    exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
    "$(find_python312)" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned together with lerobot so the resolver cannot pick another build.
"$VENV/bin/python" -m pip install --quiet --progress-bar off "$TORCH_SPEC" "$LEROBOT_SPEC"
"$VENV/bin/python" - <<'PY'
import sys

import lerobot
import torch
import transformers

print(
    f"lerobot {lerobot.__version__} ready: python {sys.version.split()[0]}, "
    f"torch {torch.__version__}, transformers {transformers.__version__}"
)
PY
