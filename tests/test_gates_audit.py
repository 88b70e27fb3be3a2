"""Gate runs in the store (SQLite and PostgreSQL): persistence, audited overrides,
may_ship, the Prometheus collector, the 0001 -> 0002 upgrade, CLI errors."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import pytest
from alembic import command
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import inspect, select
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.gates.audit import (
    AuditError,
    OverrideRefused,
    latest_report,
    may_ship,
    override,
    persist,
)
from reflex_serve.gates.config import load_config
from reflex_serve.gates.metrics import GateCollector
from reflex_serve.gates.results import GATES, GateReport, GateResult
from reflex_serve.storage import schema
from reflex_serve.storage.models import GateOverride, GateRun, ModelVersion
from reflex_serve.storage.store import Store
from reflex_serve.storage.versions import register_version

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def manifest(name: str) -> dict:
    return {"digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest(), "num_steps": 1}


def report(
    candidate: dict,
    failed: dict[str, str] | None = None,
    started: str = "2026-11-30T10:00:00+00:00",
) -> GateReport:
    """Nine results; ``failed`` maps gate ids to ``fail`` or ``not_evaluated``."""
    failed = failed or {}
    results = [
        GateResult.make(
            g.id,
            "<=",
            0.5,
            0.25 if g.id not in failed else 0.9,
            10,
            failed.get(g.id, "pass"),
            f"{g.id} detail",
        )
        for g in GATES
    ]
    version = candidate["digest"].split(":")[1][:12]
    ref = manifest("teacher")
    return GateReport(
        run_id=hashlib.sha256(f"{version}{started}".encode()).hexdigest()[:32],
        candidate={"path": "/x", "version": version, "digest": candidate["digest"], "num_steps": 1},
        reference={
            "path": "/t",
            "version": ref["digest"][7:19],
            "digest": ref["digest"],
            "num_steps": 10,
        },
        started_at=started,
        finished_at=started,
        evidence={"replay_source": "test"},
        config=load_config().to_dict(),
        results=results,
        actor="ci",
    )


def test_a_run_and_its_nine_results_are_stored_and_read_back(store):
    cand = manifest("student-a")
    run_id = persist(store, report(cand, {"P4": "fail"}), cand)
    with store.session() as s:
        row = s.get(GateRun, run_id)
        assert (row.passed, row.actor, row.reference_version) == (
            False,
            "ci",
            manifest("teacher")["digest"][7:19],
        )
        assert s.get(ModelVersion, cand["digest"]).state == "candidate"
    shown = latest_report(store, cand["digest"][7:19])
    assert [r.gate for r in shown.results] == [g.id for g in GATES]
    assert shown.result("P4").verdict == "fail" and shown.result("P4").value == 0.9
    assert shown.config["latency_speedup"]["max_ratio"] == 0.5
    decision = may_ship(store, cand["digest"])  # by full digest too
    assert not decision.may_ship and decision.blocking == ["P4"] and decision.run_id == run_id


def test_an_overridden_performance_failure_ships_and_the_audit_row_is_there(store):
    cand = manifest("student-b")
    version = cand["digest"][7:19]
    persist(store, report(cand, {"P4": "fail", "P1": "not_evaluated"}), cand)
    assert may_ship(store, version).blocking == ["P1", "P4"]
    before = time.time()
    row = override(store, version, "latency_speedup", "ana", "  edge box is faster  ")
    assert (row.gate, row.operator, row.reason, row.status) == (
        "P4",
        "ana",
        "edge box is faster",
        "accepted",
    )
    assert row.at.timestamp() >= before - 1 and row.refusal is None
    assert not may_ship(store, version).may_ship  # P1 still not evaluated
    override(store, version, "P1", "ben", "no simulator for this embodiment")
    decision = may_ship(store, version)
    assert decision.may_ship and decision.overridden == ["P1", "P4"] and decision.blocking == []
    with store.session() as s:
        rows = s.scalars(select(GateOverride).order_by(GateOverride.id)).all()
        assert [(o.gate, o.operator, o.status) for o in rows] == [
            ("P4", "ana", "accepted"),
            ("P1", "ben", "accepted"),
        ]


def test_a_safety_override_is_refused_and_recorded_as_refused(store):
    cand = manifest("student-c")
    version = cand["digest"][7:19]
    persist(store, report(cand, {"S3": "fail"}), cand)
    with pytest.raises(OverrideRefused, match="safety gates can never be overridden"):
        override(store, version, "S3", "ana", "looks fine to me")
    with pytest.raises(OverrideRefused, match="nothing to override"):
        override(store, version, "P2", "ana", "just in case")
    assert not may_ship(store, version).may_ship
    shown = latest_report(store, version)
    assert [(o["gate"], o["status"]) for o in shown.overrides] == [
        ("S3", "refused"),
        ("P2", "refused"),
    ]
    assert "safety gate" in shown.overrides[0]["refusal"] and shown.result("S3").overridden is None


def test_bad_override_input_is_an_error_and_nothing_is_recorded(store):
    cand = manifest("student-d")
    version = cand["digest"][7:19]
    persist(store, report(cand, {"P4": "fail"}), cand)
    for args, message in (
        ((version, "P9", "ana", "r"), "unknown gate 'P9'"),
        ((version, "P4", "ana", "   "), "--reason must say why"),
        ((version, "P4", "", "r"), "--operator must name"),
        (("0123456789ab", "P4", "ana", "r"), "no model version"),
    ):
        with pytest.raises(AuditError, match=message):
            override(store, *args)
    register_version(store, manifest("never-gated"), actor="t")
    with pytest.raises(AuditError, match="has no gate run"):
        override(store, manifest("never-gated")["digest"][7:19], "P4", "ana", "r")
    assert store.count(GateOverride) == 0
    assert not may_ship(store, "0123456789ab").may_ship


def test_an_override_belongs_to_its_run_a_newer_run_needs_its_own(store):
    cand = manifest("student-e")
    version = cand["digest"][7:19]
    persist(store, report(cand, {"P4": "fail"}, "2026-11-30T10:00:00+00:00"), cand)
    override(store, version, "P4", "ana", "accepted for the pilot")
    assert may_ship(store, version).may_ship
    persist(store, report(cand, {"P4": "fail"}, "2026-11-30T11:00:00+00:00"), cand)
    assert not may_ship(store, version).may_ship and latest_report(store, version).overrides == []


def test_gate_metrics_by_version_and_gate_follow_overrides(store):
    a, b = manifest("student-f"), manifest("student-g")
    persist(store, report(a, {"P4": "fail"}), a)
    persist(store, report(b), b)
    registry = CollectorRegistry()
    registry.register(GateCollector(store))
    va, vb = a["digest"][7:19], b["digest"][7:19]

    def text() -> str:
        return generate_latest(registry).decode()

    out = text()
    assert f'reflex_gate_passed{{gate="P4",kind="performance",version="{va}"}} 0.0' in out
    assert f'reflex_gate_passed{{gate="S1",kind="safety",version="{va}"}} 1.0' in out
    assert f'reflex_gate_value{{gate="P4",kind="performance",version="{va}"}} 0.9' in out
    assert f'reflex_gate_may_ship{{version="{va}"}} 0.0' in out
    assert f'reflex_gate_may_ship{{version="{vb}"}} 1.0' in out
    override(store, va, "P4", "ana", "pilot")
    out = text()
    assert f'reflex_gate_passed{{gate="P4",kind="performance",version="{va}"}} 1.0' in out
    assert f'reflex_gate_overridden{{gate="P4",kind="performance",version="{va}"}} 1.0' in out
    assert f'reflex_gate_may_ship{{version="{va}"}} 1.0' in out


def test_a_0001_store_with_data_is_upgraded_to_0002(store_url):
    st = Store.open(store_url)
    with st.engine.connect() as conn:
        command.downgrade(schema.alembic_config(conn), "0001")
        conn.commit()
        assert "gate_runs" not in inspect(conn).get_table_names()
    old = manifest("old")  # a row as 0001 knows it (Core insert: only 0001's columns)
    row = {
        "digest": old["digest"],
        "version": old["digest"][7:19],
        "parent_digest": None,
        "manifest": old,
        "state": "active",
        "created_at": datetime.now(UTC),
    }
    with st.session() as s:
        st.insert_ignore(s, ModelVersion, [row])
    st.close()
    st = Store.open(store_url)
    try:
        with st.engine.connect() as conn:
            assert schema.current_revision(conn) == schema.head_revision()
            assert {"gate_runs", "gate_results", "gate_overrides"} <= set(
                inspect(conn).get_table_names()
            )
        assert st.count(ModelVersion) == 1
        cand = manifest("old")
        persist(st, report(cand), cand)
        assert may_ship(st, cand["digest"]).may_ship
    finally:
        st.close()


def test_cli_override_and_show_errors_are_clear(store_url):
    st = Store.open(store_url)
    cand = manifest("student-h")
    version = cand["digest"][7:19]
    persist(st, report(cand, {"P4": "fail"}), cand)
    st.close()
    base = ["--store", store_url]
    res = runner.invoke(
        app,
        ["gates", "override", version, "--gate", "P7", "--operator", "a", "--reason", "x", *base],
        env=ENV,
    )
    assert res.exit_code == 2 and "unknown gate 'P7'" in res.output
    res = runner.invoke(
        app,
        ["gates", "override", version, "--gate", "P4", "--operator", "a", "--reason", "", *base],
        env=ENV,
    )
    assert res.exit_code == 2 and "--reason must say why" in res.output
    res = runner.invoke(app, ["gates", "show", "0123456789ab", *base], env=ENV)
    assert res.exit_code == 2 and "no model version '0123456789ab'" in res.output
    res = runner.invoke(app, ["gates", "show", version, *base], env=ENV)
    assert (
        res.exit_code == 1 and "MAY NOT SHIP" in res.output and "P4 latency_speedup" in res.output
    )
    assert "Traceback" not in res.output


def test_serve_with_a_store_exposes_the_gate_metrics(tiny_export, store_url):
    import httpx

    from reflex_serve.runtime.policy import Policy
    from reflex_serve.server.app import create_app
    from reflex_serve.server.runner import BackgroundServer
    from reflex_serve.server.settings import ServerSettings
    from reflex_serve.storage.collector import CollectOptions, DataCollector

    collector = DataCollector.open(CollectOptions(store=store_url))
    cand = manifest("student-served")
    persist(collector.store, report(cand, {"P6": "fail"}), cand)
    app = create_app(Policy(tiny_export), ServerSettings(warmup_iters=0), collector=collector)
    try:
        with BackgroundServer(app) as server:
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        collector.store.close()
    v = cand["digest"][7:19]
    assert f'reflex_gate_passed{{gate="P6",kind="performance",version="{v}"}} 0.0' in text
    assert f'reflex_gate_may_ship{{version="{v}"}} 0.0' in text
    assert "reflex_gate_scrape_errors_total 0.0" in text


def test_cli_run_input_errors_name_the_argument(tiny_export, tmp_path):
    from distill_helpers import make_teacher

    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    small = make_teacher(tmp_path / "six_d")  # 6-d state, 32x32 camera
    cases = [
        ([str(tmp_path / "missing"), "--reference", str(tiny_export)], "CANDIDATE"),
        (
            [str(small), "--reference", str(tiny_export)],
            "differ in state_dim: candidate 6, reference 39",
        ),
        (
            [str(tiny_export), "--reference", str(tiny_export), "--suite", "everything"],
            "[sim] suite must be one of",
        ),
        (
            [str(tiny_export), "--reference", str(tiny_export), "--tasks", "fly-v3"],
            "unknown tasks ['fly-v3']",
        ),
        ([str(tiny_export), "--reference", str(tiny_export), "--data", str(tmp_path)], "--data"),
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text("[latency_speedup]\nmax = 1\n")
    cases.append(
        (
            [str(tiny_export), "--reference", str(tiny_export), "--config", str(bad)],
            "unknown key [latency_speedup] max",
        )
    )
    for args, message in cases:
        res = runner.invoke(app, ["gates", "run", *args, "--store", url, "--no-progress"], env=ENV)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_cli_names_an_unusable_data_dir_or_json_path_and_never_creates_a_store(tiny_export,
                                                                              tmp_path):
    env = {**ENV, "REFLEX_STORE": ""}
    (tmp_path / "file").write_text("not a directory")
    bad_dir = tmp_path / "file" / "data"
    run = ["gates", "run", str(tiny_export), "--reference", str(tiny_export), "--no-progress"]
    res = runner.invoke(app, [*run, "--data-dir", str(bad_dir)], env=env)
    assert res.exit_code == 2 and f"error: --data-dir {bad_dir}: cannot create it" in res.output
    empty = tmp_path / "empty"
    missing = tmp_path / "no" / "dir"
    for json_path, message in ((missing / "x.json", f"directory {missing} does not exist"),
                               (tmp_path, "is a directory")):
        res = runner.invoke(app, [*run, "--data-dir", str(empty), "--json", str(json_path)],
                            env=env)
        assert res.exit_code == 2 and f"error: --json {json_path}: {message}" in res.output
        assert not empty.exists()  # refused before the store is opened or a gate runs
    for args in (["gates", "show", "0123456789ab"],
                 ["gates", "override", "0123456789ab", "--gate", "P4", "--operator", "a",
                  "--reason", "x"]):
        res = runner.invoke(app, [*args, "--data-dir", str(empty)], env=env)
        assert res.exit_code == 2, res.output
        assert f"error: no store at {empty / 'store.sqlite'} (--data-dir {empty})" in res.output
        assert not empty.exists()
    assert "Traceback" not in res.output
