"""The loop in a real ``reflex serve`` process with real worker processes: a schedule of
seconds triggers a run that distills, gates, shadows and promotes, recorded in the store
and shown by ``reflex runs``.

The teacher is the shipped MetaWorld teacher; the traffic is /act calls on loopback;
the gates are the real nine with small evidence and one 8-step reach-v3 episode."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime

import httpx
from loop_helpers import (
    finished,
    loop_config,
    post_traffic,
    run_record,
    runs_in,
    runs_show,
    serve_args,
    stop,
    wait_run,
    write_toml,
)
from router_helpers import admin, metric

from reflex_serve.assets import default_teacher
from reflex_serve.server.runner import spawn_server

STAGES = ["data", "distill", "candidates", "shadow", "promote", "monitor"]


def test_a_schedule_of_seconds_distills_gates_and_promotes(tmp_path):
    url_store = f"sqlite:///{tmp_path / 'store.sqlite'}"
    cfg = loop_config(tmp_path)
    proc, url = spawn_server(default_teacher(), *serve_args(
        url_store, cfg, "every 2s", "--min-new-samples", "100"))
    teacher = httpx.get(url + "/health").json()["model_version"]
    try:
        assert set(post_traffic(url, 120, per_episode=1)) == {200}
        run = wait_run(url_store, finished, timeout_s=240)
        assert run["status"] == "succeeded", run
        # due times before the traffic was in were skipped with the reason, not run
        skipped = [r for r in runs_in(url_store) if r["status"] == "skipped"]
        assert all("fewer than --min-new-samples 100" in r["error"] for r in skipped)
        rec = run_record(url_store, run["id"])
        assert rec["trigger"] == "schedule" and rec["teacher_version"] == teacher
        assert [s["stage"] for s in rec["stages"]] == STAGES
        assert {s["status"] for s in rec["stages"]} == {"passed"}
        data, distill, cands, _, promote, monitor = (s["detail"] for s in rec["stages"])
        assert 100 <= data["rows"] <= 120  # the train split of the rows before the run
        assert distill["steps"] == 20 and distill["parity_max_abs_diff"] < 1e-4
        assert sorted(c["name"] for c in rec["candidates"]) == ["snapflow", "teacher@2"]
        chosen = [c for c in rec["candidates"] if c["verdict"] == "chosen"]
        assert len(chosen) == 1 and chosen[0]["passed"] and chosen[0]["gate_run_id"]
        assert rec["promoted_version"] == chosen[0]["version"] == cands["version"]
        assert httpx.get(url + "/health").json()["model_version"] == rec["promoted_version"]
        swaps = admin(url, "GET", "/admin/swaps").json()
        assert swaps[0]["id"] == promote["swap_id"] == monitor["swap_id"]
        assert swaps[0]["status"] == "monitoring" and swaps[0]["from_version"] == teacher
        text = httpx.get(url + "/metrics").text
        assert metric(text, "reflex_distill_runs_total", result="succeeded") == 1
        assert metric(text, "reflex_distill_run_duration_seconds_count", result="succeeded") == 1
        # the schedule moved past the run's own due time (how far depends on when the
        # scheduler last ticked, which a loaded machine delays)
        started = datetime.fromisoformat(rec["started_at"]).timestamp()
        assert metric(text, "reflex_distill_next_run_timestamp_seconds") > started
        # no new traffic: the next due times are skipped, nothing runs twice
        time.sleep(3)
        assert [r["status"] for r in runs_in(url_store)].count("succeeded") == 1
        api = admin(url, "GET", f"/admin/distill/runs/{run['id']}").json()
        assert api["promoted_version"] == rec["promoted_version"]
    finally:
        stop(proc)
    shown = runs_show(url_store, run["id"])
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"run {run['id']} (schedule): succeeded" in out
    for stage in STAGES:
        assert f"  {stage}" in out
    assert "chosen" in out and "passed all nine" in out
    listed = subprocess.run([sys.executable, "-m", "reflex_serve.cli", "runs", "list", "--store",
                             url_store], check=False, capture_output=True, text=True,
                            timeout=60).stdout
    assert f"{run['id'][:12]} schedule succeeded" in listed and rec["promoted_version"] in listed


def test_write_toml_round_trips_through_the_loop_settings(tmp_path):
    from reflex_serve.loop.config import load_loop_config

    f = write_toml(tmp_path / "x.toml", teacher_steps=[1, 4], work_dir=tmp_path, shadow_s=0.5)
    cfg = load_loop_config(f)
    assert cfg.teacher_steps == (1, 4) and cfg.work_dir == tmp_path and cfg.shadow_s == 0.5
