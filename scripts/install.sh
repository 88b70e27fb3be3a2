#!/usr/bin/env bash
# Install reflex-serve and everything its tests need on a fresh Debian machine (Python 3.11).
#   bash scripts/install.sh          system packages + the package with its dev extra
# Torch is installed first as the CPU build pinned below, so that pip does not pull a
# multi-GB CUDA build to satisfy the package's torch range.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  # Mesa EGL for headless MuJoCo rendering (MUJOCO_GL=egl).
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 >/dev/null
  # Prometheus: promtool checks and unit-tests docker/prometheus/alerts.yml, and the
  # observability tests scrape a real server with the binary. They start their own
  # prometheus on a free port, so the package's service must not hold :9090: a
  # policy-rc.d that denies service starts (Debian's mechanism) covers the install, and
  # on a systemd machine the unit is disabled.
  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    deny_starts=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
      $SUDO chmod 755 /usr/sbin/policy-rc.d
      deny_starts=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      prometheus >/dev/null
    if [ -n "$deny_starts" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  fi
fi

$PY -m pip install -q --upgrade pip
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[dev]"

# openpi-client (the robot-side client we are compatible with) needs numpy < 2: it lives
# in its own virtual environment, used by tests/test_server_openpi*.py.
if [ -f scripts/openpi_venv.sh ]; then
  bash scripts/openpi_venv.sh
fi
