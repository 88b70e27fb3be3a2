"""The schedule lives in the store: a restart resumes it at the stored next fire time, a
run that became due while the server was down runs once (not once per missed fire), a
run that happened is not repeated; two replicas on one PostgreSQL store run each due
time exactly once.

Real ``reflex serve`` processes and workers; the runs end quickly, refused at their data
stage (the stores hold no served traffic), which is enough to count them."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

from conftest import _reset_pg
from loop_helpers import finished, loop_config, runs_in, serve_args, stop, wait_run
from sqlalchemy import update

from reflex_serve.assets import default_teacher
from reflex_serve.loop.schedule import parse_schedule
from reflex_serve.server.runner import spawn_server
from reflex_serve.storage.distill_runs import get_schedule
from reflex_serve.storage.loop_models import ScheduleState
from reflex_serve.storage.store import Store


def schedule_row(url: str) -> dict:
    st = Store.open(url, migrate=False)
    try:
        return get_schedule(st, "distill")
    finally:
        st.close()


def test_a_restart_neither_skips_nor_repeats_a_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    cfg = loop_config(tmp_path)
    # a nightly time far from now, so that it is never due by itself during the test
    at = (datetime.now().astimezone() + timedelta(hours=12)).strftime("%H:%M")
    args = serve_args(url, cfg, "nightly", "--distill-at", at)
    expected = parse_schedule("nightly", at)

    proc, _ = spawn_server(default_teacher(), *args)
    stop(proc)
    first = schedule_row(url)
    assert first["spec"] == expected.spec and first["last_run_at"] is None
    assert first["next_run_at"] == expected.next_after(first["updated_at"])
    assert runs_in(url) == []

    # the server is down for three nights: the fires it missed are due at once
    missed = first["next_run_at"] - timedelta(days=3)
    st = Store.open(url, migrate=False)
    with st.session() as s:
        s.execute(update(ScheduleState).values(next_run_at=missed))
    st.close()
    started = datetime.now(UTC)
    proc, _ = spawn_server(default_teacher(), *args)
    try:
        run = wait_run(url, finished, timeout_s=90)
        time.sleep(1.5)  # several scheduler polls: nothing else may start
        rows = runs_in(url)
    finally:
        stop(proc)
    assert len(rows) == 1 and rows[0]["id"] == run["id"]
    assert run["trigger"] == "schedule" and run["status"] == "refused"
    assert run["error"].startswith("data: no usable data")
    assert run["summary"]["due_at"] == missed.isoformat()
    resumed = schedule_row(url)
    assert started - timedelta(seconds=1) <= resumed["last_run_at"] <= datetime.now(UTC)
    assert resumed["next_run_at"] == expected.next_after(resumed["last_run_at"])
    assert resumed["next_run_at"] > datetime.now(UTC)

    # a second restart: the stored next fire time stands, the run is not repeated
    proc, _ = spawn_server(default_teacher(), *args)
    try:
        time.sleep(2.0)
    finally:
        stop(proc)
    assert schedule_row(url) == resumed
    assert [r["id"] for r in runs_in(url)] == [run["id"]]


def test_two_replicas_on_postgresql_run_each_due_time_once(pg_database, tmp_path):
    _reset_pg(pg_database)
    cfg = loop_config(tmp_path)
    args = serve_args(pg_database, cfg, "every 2s")
    procs = []
    try:
        for _ in range(2):
            procs.append(spawn_server(default_teacher(), *args)[0])
        time.sleep(12)
    finally:
        for p in procs:
            stop(p)
    rows = sorted(runs_in(pg_database), key=lambda r: r["created_at"])
    assert len(rows) >= 2, rows
    assert all(r["trigger"] == "schedule" for r in rows)
    # every run ended: refused at its data stage, or stopped with its server at the end
    outcomes = [(r["status"], r["error"].split(":")[0]) for r in rows]
    assert set(outcomes) <= {("refused", "data"), ("failed", "server stopped")}, outcomes
    assert outcomes.count(("refused", "data")) >= 2, outcomes
    due = [r["summary"]["due_at"] for r in rows]
    assert len(set(due)) == len(due), due  # no due time ran twice
    # one run at a time: each started after the previous one ended
    for a, b in itertools.pairwise(rows):
        assert b["started_at"] >= a["finished_at"], (a, b)
    # each run was claimed by one of the two replicas, which started its worker
    pids = {p.pid for p in procs}
    assert all(int(r["host"].rsplit(":", 1)[1]) in pids for r in rows)
