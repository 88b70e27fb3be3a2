#!/usr/bin/env bash
# Create .venv-openpi: a separate virtual environment holding the real `openpi-client`
# PyPI package (it pins numpy < 2, so it cannot share the project's environment).
# tests/test_server_openpi.py drives the server from this venv when it exists and skips
# (with the reason) when it does not.
#
#   scripts/openpi_venv.sh            # creates ./.venv-openpi (idempotent)
#   OPENPI_VENV=/tmp/v scripts/openpi_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${OPENPI_VENV:-.venv-openpi}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "openpi-client>=0.1" typing_extensions  # 0.1.2 imports it without declaring it
"$VENV/bin/python" -c "import numpy, openpi_client.websocket_client_policy as w; print('openpi-client ready, numpy', numpy.__version__)"
