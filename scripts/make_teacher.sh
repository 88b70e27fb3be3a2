#!/usr/bin/env bash
# Rebuild the shipped MetaWorld teacher (reflex_serve/assets/teacher-metaworld) from scratch
# and evaluate it through the HTTP server, as recorded in docs/teacher.md.
#   bash scripts/make_teacher.sh [full|proprio]       about 30-45 minutes on two CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=egl
MODE=${1:-full}
DEMOS=data/demos-$MODE
RUN=runs/teacher-$MODE
EXPORT=${EXPORT:-exports/teacher-$MODE}
STEPS=${STEPS:-9000}
PORT=${PORT:-8123}

[ -f "$DEMOS/meta.json" ] || reflex sim collect --episodes-per-task 40 --seed 0 --state "$MODE" --out "$DEMOS"
reflex train policy --data "$DEMOS" --output "$RUN" --steps "$STEPS" --threads 2 --resume
reflex export "$RUN" --output "$EXPORT" --overwrite

reflex serve "$EXPORT" --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
reflex eval --server "http://127.0.0.1:$PORT" --num-episodes 50 --out "runs/eval-teacher-$MODE" --gif --no-progress
