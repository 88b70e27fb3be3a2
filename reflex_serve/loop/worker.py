"""The distill worker process: ``python -m reflex_serve.loop.worker --run-id ID --run-dir DIR``.

Started by the scheduler thread of a serving process (never inside it), in its own
process group, niced, with its thread budget in ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
and torch's own setting. It reads ``DIR/config.json`` (the loop settings), the store URL
from ``REFLEX_LOOP_STORE`` and the admin API from ``REFLEX_LOOP_SERVER`` /
``REFLEX_LOOP_ADMIN_KEY``; it records its pid, a heartbeat every ``heartbeat_s`` and each
stage. When its run is ended by someone else (a lost heartbeat, the server stopping) it
exits at the next heartbeat.

Exit status: 0 the run succeeded or was refused, 1 it failed, 2 bad arguments or an
unusable run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from datetime import datetime
from pathlib import Path

STORE_ENV = "REFLEX_LOOP_STORE"
log = logging.getLogger("reflex_serve.loop.worker")


def _heartbeat(store, run_id: str, every_s: float, stop: threading.Event) -> None:
    from reflex_serve.storage.distill_runs import heartbeat

    while not stop.wait(every_s):
        try:
            alive = heartbeat(store, run_id)
        except Exception as exc:  # noqa: BLE001 (a store hiccup: try again next beat)
            log.warning("heartbeat failed: %s", exc)
            continue
        if not alive:
            log.error("run %s was ended by someone else (see its record); exiting", run_id)
            os._exit(3)


def limit_threads(threads: int, nice: int) -> None:
    """Lower this process's priority by ``nice`` and cap its compute threads."""
    if nice:
        os.nice(nice)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Run one loop run to its end; the exit status (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m reflex_serve.loop.worker")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from reflex_serve.loop.admin import AdminClient
    from reflex_serve.loop.config import LoopConfig
    from reflex_serve.loop.pipeline import RunContext, run_pipeline
    from reflex_serve.storage import distill_runs as runs
    from reflex_serve.storage.models import utcnow
    from reflex_serve.storage.store import Store

    config = LoopConfig.read(args.run_dir / "config.json")
    url = os.environ.get(STORE_ENV)
    if not url:
        print(f"error: {STORE_ENV} is not set", file=sys.stderr)
        return 2
    store = Store.open(url, migrate=False)
    run = runs.get_run(store, args.run_id)
    if run is None or run["status"] != "running":
        print(f"error: run {args.run_id} is not running: {run and run['status']}",
              file=sys.stderr)
        return 2
    # alive first, then the slow imports (torch) under the thread budget
    runs.update_run(store, args.run_id, worker_pid=os.getpid(), heartbeat_at=utcnow())
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(store, args.run_id, config.heartbeat_s, stop),
                     daemon=True, name="heartbeat").start()
    limit_threads(config.threads, config.nice)
    admin = AdminClient.from_env()
    summary = run["summary"]
    ctx = RunContext(
        run_id=args.run_id, store=store, config=config, run_dir=args.run_dir,
        teacher_dir=Path(summary["teacher_dir"]), teacher_version=run["teacher_version"],
        data_until=datetime.fromisoformat(run["data_until"] or run["started_at"]),
        admin=admin)
    log.info("run %s: teacher %s, pipeline starts", args.run_id, ctx.teacher_version)
    try:
        status = run_pipeline(ctx)
    finally:
        stop.set()
        admin.close()
    log.info("run %s %s", args.run_id, status)
    store.close()
    return 1 if status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
