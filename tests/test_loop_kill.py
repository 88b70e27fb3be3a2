"""A distill worker killed with SIGKILL in the middle of a run leaves /act serving (every
call answered 200 throughout) and its run failed with the signal; run-now answers 202,
409 while a run is active, 401 without the admin key; the next run, whose candidates
all fail a gate, is refused with each candidate's reason.

Real processes: ``reflex serve`` with the shipped teacher, the worker it starts, the nine
gates (small evidence, one 8-step reach-v3 episode)."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from gates_helpers import fast_config, write_config
from loop_helpers import (
    loop_config,
    post_traffic,
    run_record,
    runs_show,
    serve_args,
    stop,
    wait_run,
)
from router_helpers import Load, admin, metric

from reflex_serve.assets import default_teacher
from reflex_serve.server.runner import spawn_server


def test_a_killed_worker_leaves_act_serving_and_its_run_failed(tmp_path):
    url_store = f"sqlite:///{tmp_path / 'store.sqlite'}"
    # every candidate fails P4 (p50 at most 1% of the teacher's): the second run is refused
    gates = write_config(fast_config(latency_speedup={"max_ratio": 0.01}), tmp_path / "g.toml")
    cfg = loop_config(tmp_path, gates_config=gates, shadow_s=0.0)
    proc, url = spawn_server(default_teacher(), *serve_args(url_store, cfg, "every 1h"))
    try:
        assert set(post_traffic(url, 60, per_episode=1)) == {200}
        assert admin(url, "POST", "/admin/distill/run-now", key="").status_code == 401
        assert admin(url, "POST", "/admin/distill/run-now", key="wrong").status_code == 401
        r = admin(url, "POST", "/admin/distill/run-now", json={"actor": "ci"})
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        busy = admin(url, "POST", "/admin/distill/run-now")
        assert busy.status_code == 409 and run_id in busy.json()["error"]["message"]
        assert busy.headers["x-reflex-run-id"] == run_id
        with Load(url, clients=2) as load:
            # kill it in the middle of gating (a gate child process may be running too)
            wait_run(url_store, lambda _: any(
                s["stage"] == "candidates" for s in run_record(url_store, run_id)["stages"]))
            pid = run_record(url_store, run_id)["worker_pid"]
            os.kill(pid, signal.SIGKILL)
            failed = wait_run(url_store, lambda rows: next(
                (x for x in rows if x["id"] == run_id and x["status"] == "failed"), None), 30)
            time.sleep(1.0)
        assert failed["error"] == "worker killed by signal SIGKILL"
        statuses = [s for s, *_ in load.results]
        assert len(statuses) > 20 and set(statuses) == {200}
        with pytest.raises(ProcessLookupError):  # its process group is gone too
            os.killpg(pid, 0)
        rec = run_record(url_store, run_id)
        assert rec["stages"][-1]["stage"] == "candidates"
        assert rec["stages"][-1]["status"] == "failed"
        assert rec["summary"]["actor"] == "ci"
        text = httpx.get(url + "/metrics").text
        assert metric(text, "reflex_distill_runs_total", result="failed") == 1
        assert metric(text, "reflex_distill_running") == 0
        # the next run goes to the end: every candidate refused, the run refused
        again = admin(url, "POST", "/admin/distill/run-now")
        assert again.status_code == 202 and again.json()["run_id"] != run_id
        refused = wait_run(url_store, lambda rows: rows[0]["status"] in (
            "refused", "failed", "succeeded") and rows[0], 240)
        assert refused["status"] == "refused", refused
        assert refused["error"].startswith("candidates: no candidate passed all nine gates")
        rec = run_record(url_store, refused["id"])
        assert [c["verdict"] for c in rec["candidates"]] == ["refused", "refused"]
        assert all("P4 latency_speedup" in c["reason"] for c in rec["candidates"])
        assert [s["status"] for s in rec["stages"]] == ["passed", "passed", "refused"]
        assert httpx.get(url + "/health").json()["model_version"] == rec["teacher_version"]
    finally:
        stop(proc)
    assert "refused" in runs_show(url_store, refused["id"]).stdout
