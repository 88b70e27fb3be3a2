"""Builders for the loop tests: settings files, served traffic, polling the store.

Servers are real ``reflex serve`` processes (:func:`reflex_serve.server.runner.spawn_server`)
whose loop starts real worker processes; the teacher is the shipped MetaWorld teacher
(its /act takes one 64x64 ``corner2`` image and a 39-d state, as router_helpers sends).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from gates_helpers import fast_config, write_config
from router_helpers import ADMIN_KEY, MSGPACK, act_body

from reflex_serve.storage.store import Store


def write_toml(path: Path, **values) -> Path:
    """A flat TOML file of ``values`` (numbers, strings, paths, lists of ints)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (str, Path)):
            return f'"{v}"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    path.write_text("".join(f"{k} = {value(v)}\n" for k, v in values.items()))
    return path


def loop_config(tmp: Path, **values) -> Path:
    """A loop settings file for tests: fast gates (one 8-step reach-v3 episode, small
    evidence, P4's bar at 0.9: a busy machine moves one run's latency ratio), 20 distill
    steps, one teacher@2 candidate, 1 s shadow, quick polls and heartbeats; ``values``
    replace any of these."""
    gates = write_config(fast_config(latency_speedup={"max_ratio": 0.9}), tmp / "gates.toml")
    settings = {"distill_steps": 20, "batch_size": 8, "min_rows": 8, "teacher_steps": [2],
                "gates_config": gates, "shadow_s": 1.0, "shadow_fraction": 1.0,
                "heartbeat_s": 0.5, "stale_after_s": 10.0, "poll_s": 0.2,
                "work_dir": tmp / "loop", "stop_timeout_s": 2.0}
    settings.update(values)
    return write_toml(tmp / "loop.toml", **settings)


def serve_args(store_url: str, config: Path, schedule: str = "every 1h", *extra: str) -> list[str]:
    """``reflex serve`` options of a loop server on ``store_url``."""
    return ["--collect-data", "--store", store_url, "--collect-flush-s", "0.1",
            "--admin-key", ADMIN_KEY, "--distill-schedule", schedule, "--loop-config",
            str(config), *extra]


def post_traffic(url: str, n: int, prefix: str = "ep", per_episode: int = 2) -> list[int]:
    """``n`` /act calls in episodes of ``per_episode`` steps; their status codes."""
    with httpx.Client(base_url=url, timeout=30) as http:
        return [http.post("/act", headers=MSGPACK, content=act_body(
            i, f"{prefix}-{i // per_episode}", i % per_episode)).status_code for i in range(n)]


def runs_in(store_url: str) -> list[dict]:
    """Every run in the store, newest first."""
    from reflex_serve.storage.distill_runs import list_runs

    st = Store.open(store_url, migrate=False)
    try:
        return list_runs(st, 1000)
    finally:
        st.close()


def run_record(store_url: str, run_id: str) -> dict:
    from reflex_serve.storage.distill_runs import get_run

    st = Store.open(store_url, migrate=False)
    try:
        return get_run(st, run_id)
    finally:
        st.close()


def wait_run(store_url: str, predicate, timeout_s: float = 120.0, interval_s: float = 0.25):
    """Poll the store's runs until ``predicate(runs)`` is truthy; that value, or fail
    with the runs seen last."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = runs_in(store_url)
        found = predicate(rows)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"runs did not get there within {timeout_s} s: {rows}")
        time.sleep(interval_s)


def finished(rows: list[dict]) -> dict | None:
    """The newest run that ended succeeded, refused or failed."""
    return next((r for r in rows if r["status"] in ("succeeded", "refused", "failed")), None)


def stop(proc) -> str:
    """SIGTERM a server (SIGKILL after 30 s); its stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return proc.stderr.read()


def runs_show(store_url: str, run_id: str) -> subprocess.CompletedProcess:
    """``reflex runs show`` of a run (by a 10-character prefix of its id)."""
    return subprocess.run([sys.executable, "-m", "reflex_serve.cli", "runs", "show", run_id[:10],
                           "--store", store_url], check=False, capture_output=True, text=True,
                          timeout=60)
