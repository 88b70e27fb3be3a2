"""The loop's parts without servers: schedule specs, the flags' errors, the exactly-once
claim and run records on both backends, and the metrics read from the store."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from router_helpers import metric
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.loop.config import LoopConfigError, load_loop_config
from reflex_serve.loop.metrics import DistillCollector
from reflex_serve.loop.schedule import ScheduleError, parse_schedule
from reflex_serve.loop.scheduler import exit_reason
from reflex_serve.storage import distill_runs as runs
from reflex_serve.storage.records import FrameRecord

NOON = datetime(2026, 3, 2, 12, 0, 0, 250_000, tzinfo=UTC)
runner = CliRunner()


def local(hour: int, minute: int, day: datetime) -> datetime:
    """``hour:minute`` local time on ``day``'s local date, as UTC."""
    d = day.astimezone()
    return d.replace(hour=hour, minute=minute, second=0, microsecond=0).astimezone(UTC)


def test_nightly_fires_at_two_local_time_or_at_distill_at():
    s = parse_schedule("nightly")
    assert s.spec == "nightly@02:00" and s.cron == "0 2 * * *"
    nxt = s.next_after(NOON)
    assert nxt > NOON and nxt - NOON <= timedelta(days=1)
    assert nxt.astimezone().strftime("%H:%M:%S") == "02:00:00"
    at = parse_schedule("Nightly", at="23:30")
    assert at.spec == "nightly@23:30"
    assert at.next_after(NOON).astimezone().strftime("%H:%M") == "23:30"
    # the stored, normalised spec parses to the same schedule (restarts read it back)
    assert parse_schedule(at.spec) == at
    # strictly after: a moment exactly at the fire time gives the next day's
    fire = local(23, 30, NOON)
    assert at.next_after(fire) == fire + timedelta(days=1)


@pytest.mark.parametrize(("spec", "seconds"), [
    ("every 6h", 6 * 3600), ("every 30s", 30), ("every 15m", 900), ("every  1d12h", 129600)])
def test_intervals_count_from_the_moment_in_whole_seconds(spec, seconds):
    s = parse_schedule(spec)
    assert s.kind == "interval" and s.interval == timedelta(seconds=seconds)
    nxt = s.next_after(NOON)
    assert nxt == datetime(2026, 3, 2, 12, 0, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    assert nxt.microsecond == 0


def test_cron_expressions_use_croniter():
    s = parse_schedule("*/20 3 * * 1-5")
    assert s.kind == "cron" and s.spec == "*/20 3 * * 1-5"
    monday = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).astimezone()  # a Monday
    nxt = s.next_after(monday).astimezone()
    assert (nxt.hour, nxt.minute, nxt.weekday()) == (3, 0, 1)  # Tuesday 03:00 local
    assert s.next_after(nxt).astimezone().minute == 20


@pytest.mark.parametrize(("spec", "at", "words"), [
    ("hourly", None, ["--distill-schedule 'hourly' is not a schedule", "every 6h", "nightly"]),
    ("every", None, ["--distill-schedule 'every'", "at least 1 s"]),
    ("every 0s", None, ["at least 1 s"]),
    ("every 6 hours", None, ["--distill-schedule", "cannot parse duration '6 hours'"]),
    ("61 * * * *", None, ["not a valid cron expression", "minute hour"]),
    ("* * * *", None, ["is not a schedule", "0 3 * * *"]),
    ("every 6h", "02:00", ["--distill-at applies to --distill-schedule nightly only"]),
    ("nightly", "25:00", ["--distill-at '25:00' is not a time of day HH:MM"]),
])
def test_bad_specs_name_the_flag_and_give_examples(spec, at, words):
    with pytest.raises(ScheduleError) as info:
        parse_schedule(spec, at)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize(("args", "flag", "words"), [
    (["--distill-schedule", "hourly", "--collect-data"], "--distill-schedule", "is not a schedule"),
    (["--distill-schedule", "nightly", "--distill-at", "7pm", "--collect-data"], "--distill-at",
     "is not a time of day"),
    (["--distill-schedule", "nightly"], "--distill-schedule", "needs --collect-data"),
    (["--min-new-samples", "10"], "--min-new-samples", "needs --distill-schedule"),
])
def test_serve_flags_are_checked_before_anything_loads(args, flag, words):
    result = runner.invoke(app, ["serve", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert flag in result.output and words in result.output


def test_loop_settings_from_toml_with_flags_on_top(tmp_path):
    f = tmp_path / "loop.toml"
    f.write_text('distill_steps = 50\nteacher_steps = [4, 1, 4]\nshadow_s = 0\n')
    cfg = load_loop_config(f, schedule="every 6h", distill_steps=7, threads=None)
    assert (cfg.distill_steps, cfg.teacher_steps, cfg.shadow_s, cfg.threads) == (7, (1, 4), 0, 1)
    assert cfg.schedule == "every 6h"
    f.write_text("shadow_fraction = 2.0\n")
    with pytest.raises(LoopConfigError, match="shadow_fraction"):
        load_loop_config(f)
    f.write_text("unknown_key = 1\n")
    with pytest.raises(LoopConfigError, match="unknown_key"):
        load_loop_config(f)
    with pytest.raises(LoopConfigError, match="--distill-schedule 'sometimes'"):
        load_loop_config(None, schedule="sometimes")


def test_run_directories_go_beside_the_store_unless_the_loop_file_says_otherwise(tmp_path):
    from reflex_serve.loop.cli import loop_settings

    args = ("every 1h", None, None, None, None)
    assert loop_settings(*args, None, collect_data=True).work_dir == Path("data/loop")
    beside = loop_settings(*args, None, collect_data=True, data_dir=tmp_path / "d")
    assert beside.work_dir == tmp_path / "d" / "loop"
    f = tmp_path / "loop.toml"
    f.write_text(f'work_dir = "{tmp_path / "elsewhere"}"\n')
    assert loop_settings(*args, f, collect_data=True, data_dir=tmp_path / "d").work_dir == (
        tmp_path / "elsewhere")


def test_exit_reasons_name_the_signal_or_the_status():
    assert exit_reason(-9) == "worker killed by signal SIGKILL"
    assert exit_reason(-15) == "worker killed by signal SIGTERM"
    assert exit_reason(1) == "worker exited with status 1"


# -- the store: both backends --------------------------------------------------------------


def served(store, n: int, at: datetime) -> None:
    rng = np.random.default_rng(0)
    store.write([FrameRecord(
        request_id=f"r{at.timestamp()}-{i}", source="served", received_at=at,
        episode_id=None, step=None, instruction="reach",
        state=rng.standard_normal(6).astype(np.float32),
        actions=rng.standard_normal((4, 4)).astype(np.float32), images={},
        model_version="abcdef123456", num_steps=10) for i in range(n)])


def claim(store, now, every_s=60, **kw):
    kw.setdefault("stale_before", now - timedelta(seconds=30))
    return runs.claim_due(store, "distill", now, now + timedelta(seconds=every_s),
                          host="test:1", **kw)


def test_a_due_run_is_claimed_exactly_once_and_missed_fires_run_once(store):
    t0 = NOON.replace(microsecond=0)
    row = runs.ensure_schedule(store, "distill", "every 1m", t0)
    # a restart keeps the stored next fire time; a new spec replaces it
    assert runs.ensure_schedule(store, "distill", "every 1m", t0 + timedelta(hours=5)) == row
    assert claim(store, t0 - timedelta(seconds=1)) is None  # not due yet
    # the server was down for three days: one run, and the schedule moves past now
    late = t0 + timedelta(days=3)
    first = claim(store, late)
    assert first is not None and not first.skipped
    assert runs.get_schedule(store, "distill")["next_run_at"] == late + timedelta(seconds=60)
    assert claim(store, late) is None  # the same due time is never claimed twice
    rec = runs.get_run(store, first.run_id)
    assert (rec["status"], rec["trigger"], rec["host"]) == ("running", "schedule", "test:1")
    assert rec["summary"]["due_at"] == t0.isoformat()
    # due again while that run is running with a fresh heartbeat: it waits, not lost
    due2 = late + timedelta(seconds=61)
    assert claim(store, due2, stale_before=late - timedelta(seconds=1)) is None
    runs.finish_run(store, first.run_id, "refused", error="data: too few rows")
    second = claim(store, due2)
    assert second is not None
    assert [r["id"] for r in runs.list_runs(store)] == [second.run_id, first.run_id]
    changed = runs.ensure_schedule(store, "distill", "every 2m", t0)
    assert (changed["spec"], changed["next_run_at"]) == ("every 2m", t0)


def test_too_few_new_samples_record_a_skipped_run_and_advance(store):
    t0 = NOON.replace(microsecond=0)
    runs.ensure_schedule(store, "distill", "every 1m", t0)
    served(store, 5, t0 - timedelta(minutes=5))
    skip = claim(store, t0, min_new_samples=10)
    assert skip.skipped and "5 new served rows" in skip.reason and "10" in skip.reason
    assert runs.get_run(store, skip.run_id)["status"] == "skipped"
    served(store, 6, t0)
    ok = claim(store, t0 + timedelta(seconds=60), min_new_samples=10)
    assert ok is not None and not ok.skipped
    runs.update_run(store, ok.run_id, data_until=t0 + timedelta(seconds=60))
    runs.finish_run(store, ok.run_id, "succeeded", promoted_version="0123456789ab")
    # after a succeeded run only rows newer than its data count
    served(store, 3, t0 + timedelta(seconds=90))
    again = claim(store, t0 + timedelta(seconds=120), min_new_samples=10)
    assert again.skipped and again.reason.startswith("3 new served rows since")
    # only the teacher's rows are what a run learns from
    other = claim(store, t0 + timedelta(seconds=180), min_new_samples=1,
                  teacher_version="0123456789ab")
    assert other.skipped and other.reason.startswith("0 new served rows of teacher 0123456789ab")


def test_stale_heartbeats_fail_runs_and_run_now_queues_one_at_a_time(store):
    now = NOON
    run_id, created = runs.queue_manual(store, now, stale_before=now - timedelta(seconds=30))
    assert created
    assert runs.queue_manual(store, now, stale_before=now) == (run_id, False)
    assert runs.claim_queued(store, "test:2", now) == run_id
    assert runs.claim_queued(store, "test:3", now) is None  # one replica wins
    assert runs.heartbeat(store, run_id)
    assert runs.fail_stale(store, now) == []  # beat after `now`
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert runs.fail_stale(store, later) == [run_id]
    rec = runs.get_run(store, run_id[:8])
    assert rec["status"] == "failed" and rec["error"].startswith("worker lost: no heartbeat")
    assert not runs.heartbeat(store, run_id)  # the worker learns its run is over
    assert runs.queue_manual(store, later, stale_before=later)[1]


def test_stages_and_candidates_are_recorded_in_order(store):
    run_id, _ = runs.queue_manual(store, NOON, stale_before=NOON)
    runs.claim_queued(store, "test:1", NOON)
    runs.start_stage(store, run_id, "data", 0)
    runs.finish_stage(store, run_id, "data", "passed", {"rows": 120})
    runs.start_stage(store, run_id, "candidates", 2)
    runs.add_candidates(store, run_id, [
        {"name": "teacher@2", "kind": "teacher-steps", "num_steps": 2, "version": "aa" * 6,
         "gate_run_id": None, "passed": False, "p50_ratio": 0.4, "verdict": "refused",
         "reason": "failed P3"},
        {"name": "snapflow", "kind": "student", "num_steps": 1, "version": "bb" * 6,
         "gate_run_id": None, "passed": True, "p50_ratio": 0.3, "verdict": "chosen",
         "reason": "the only one"}])
    assert runs.finish_run(store, run_id, "failed", error="candidates: boom")
    assert not runs.finish_run(store, run_id, "succeeded")  # an ended run stays ended
    rec = runs.get_run(store, run_id)
    assert [(s["stage"], s["status"]) for s in rec["stages"]] == [
        ("data", "passed"), ("candidates", "failed")]
    assert rec["stages"][1]["detail"] == {"error": "candidates: boom"}
    assert [(c["name"], c["verdict"]) for c in rec["candidates"]] == [
        ("snapflow", "chosen"), ("teacher@2", "refused")]


def test_metrics_are_read_from_the_store(store):
    registry = CollectorRegistry()
    registry.register(DistillCollector(store, "distill"))
    text = generate_latest(registry).decode()
    assert metric(text, "reflex_distill_runs_total", result="failed") == 0
    assert metric(text, "reflex_distill_running") == 0
    assert "reflex_distill_next_run_timestamp_seconds" not in text
    t0 = NOON.replace(microsecond=0)
    runs.ensure_schedule(store, "distill", "every 1m", t0)
    a = claim(store, t0)
    text = generate_latest(registry).decode()
    assert metric(text, "reflex_distill_running") == 1
    assert metric(text, "reflex_distill_next_run_timestamp_seconds") == t0.timestamp() + 60
    runs.finish_run(store, a.run_id, "refused", error="no")
    rec = runs.get_run(store, a.run_id)
    text = generate_latest(registry).decode()
    assert metric(text, "reflex_distill_runs_total", result="refused") == 1
    assert metric(text, "reflex_distill_run_duration_seconds_count", result="refused") == 1
    assert metric(text, "reflex_distill_run_duration_seconds_sum", result="refused") == \
        pytest.approx(rec["duration_s"], abs=1e-3)
    assert metric(text, "reflex_distill_last_run_timestamp_seconds", result="refused") == \
        pytest.approx(datetime.fromisoformat(rec["finished_at"]).timestamp())
    assert metric(text, "reflex_distill_runs_total", result="succeeded") == 0


def test_replicas_racing_for_one_due_time_start_one_run(store):
    """Eight replicas (one engine each) claim the same due run at once: one wins."""
    from concurrent.futures import ThreadPoolExecutor

    from reflex_serve.storage.store import Store

    t0 = NOON.replace(microsecond=0)
    runs.ensure_schedule(store, "distill", "every 1m", t0)
    replicas = [Store.open(store.url, migrate=False) for _ in range(8)]
    barrier = threading.Barrier(len(replicas))

    def race(st):
        barrier.wait()
        return claim(st, t0 + timedelta(seconds=5))

    try:
        with ThreadPoolExecutor(len(replicas)) as pool:
            claims = list(pool.map(race, replicas))
    finally:
        for st in replicas:
            st.close()
    won = [c for c in claims if c is not None]
    assert len(won) == 1
    assert [r["id"] for r in runs.list_runs(store)] == [won[0].run_id]


def test_a_worker_that_cannot_start_fails_its_run(store, tmp_path):
    from reflex_serve.loop.config import LoopConfig
    from reflex_serve.loop.scheduler import DistillLoop

    loop = DistillLoop(store, LoopConfig(work_dir=tmp_path), admin_key="k",
                       teacher=lambda: ("abcdef123456", tmp_path / "no-such-export"),
                       server_url="http://127.0.0.1:9")
    run_id, created = loop.run_now(actor="ci")
    assert created and loop.tick() == run_id and loop.proc is None
    rec = runs.get_run(store, run_id)
    assert rec["status"] == "failed" and rec["error"].startswith("cannot start the worker:")
    assert "no-such-export" in rec["error"]
    loop.close()  # nothing running: nothing to stop


def test_runs_cli_on_an_empty_and_a_filled_store(tmp_path):
    from reflex_serve.storage.store import Store

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    st = Store.open(url)
    out = runner.invoke(app, ["runs", "list", "--store", url])
    assert out.exit_code == 0 and "no distill runs recorded" in out.output
    missing = runner.invoke(app, ["runs", "show", "deadbeef", "--store", url])
    assert missing.exit_code == 2 and "error: RUN_ID: no distill run 'deadbeef'" in missing.output
    run_id, _ = runs.queue_manual(st, NOON, stale_before=NOON)
    runs.claim_queued(st, "test:1", NOON)
    runs.start_stage(st, run_id, "data", 0)
    runs.finish_stage(st, run_id, "data", "refused", {"rows": 3, "reason": "3 rows < 64"})
    runs.finish_run(st, run_id, "refused", error="data: 3 rows < 64")
    st.close()
    listed = runner.invoke(app, ["runs", "list", "--store", url], env={"COLUMNS": "200"})
    assert f"{run_id[:12]} manual   refused" in listed.output
    shown = runner.invoke(app, ["runs", "show", run_id[:6], "--store", url])
    assert shown.exit_code == 0
    assert f"run {run_id} (manual): refused" in shown.output
    assert "reason: data: 3 rows < 64" in shown.output
    assert '  data        refused' in shown.output and '{"rows": 3}' in shown.output
    as_json = runner.invoke(app, ["runs", "show", run_id, "--store", url, "--json"])
    assert json.loads(as_json.output)["stages"][0]["detail"]["rows"] == 3


def test_runs_cli_needs_an_existing_store_and_a_4_character_prefix(tmp_path):
    from reflex_serve.storage.store import Store

    env = {"COLUMNS": "200", "REFLEX_STORE": ""}
    empty = tmp_path / "empty"
    for args in (["runs", "list"], ["runs", "show", "abcd"]):
        out = runner.invoke(app, [*args, "--data-dir", str(empty)], env=env)
        assert out.exit_code == 2
        assert f"error: no store at {empty / 'store.sqlite'} (--data-dir {empty})" in out.output
    assert not empty.exists()
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    st = Store.open(url)
    run_id, _ = runs.queue_manual(st, NOON, stale_before=NOON)
    st.close()
    for prefix in ("", "zzz", run_id[:3]):
        out = runner.invoke(app, ["runs", "show", prefix, "--store", url], env=env)
        assert out.exit_code == 2
        assert f"error: RUN_ID: give at least 4 characters of the run id, got {prefix!r}" in (
            out.output)
    for prefix in ("____", "%%%%", "zzzz"):  # no wildcards: the one run does not match
        out = runner.invoke(app, ["runs", "show", prefix, "--store", url], env=env)
        assert out.exit_code == 2, (prefix, out.output)
        assert f"error: RUN_ID: no distill run {prefix!r}" in out.output
    assert runner.invoke(app, ["runs", "show", run_id[:4], "--store", url]).exit_code == 0
