"""Candidates broken on purpose fail exactly the intended gate.

Real parts throughout: a tiny policy trained for a few hundred steps on bimodal data,
exported to ONNX and run by ONNX Runtime; replay observations from a real SQLite store's
held-out split; the closed-loop suite in MetaWorld (one 8-step reach-v3 episode: these
policies never succeed, so P1 and P2 compare 0 with 0 and pass); memory measured in
child processes. The reference is the trained policy at 20 Euler steps; the faithful
candidate is the same weights at 5 steps (4x fewer expert calls, same distribution).
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
from distill_helpers import one_thread  # noqa: F401
from gates_helpers import (
    BlowsUpAtStateMax,
    Jittery,
    NanOnBlackImage,
    export,
    failing,
    fast_config,
    padded,
    train_bimodal,
    variant,
    with_num_steps,
    write_config,
    write_replay_store,
)
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.gates import performance
from reflex_serve.gates.audit import latest_report
from reflex_serve.gates.evidence import draw, replay_observations
from reflex_serve.gates.measure import measure_latency
from reflex_serve.gates.runner import run_gates
from reflex_serve.runtime.policy import Policy

runner = CliRunner()
ENV = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("gates")
    model, stats = train_bimodal(root / "train")
    ref = export(model, stats, root / "reference", 20)
    paths = {
        "faithful": with_num_steps(ref, root / "faithful", 5),
        "naive_1_step": with_num_steps(ref, root / "naive", 1),
        "slower": with_num_steps(ref, root / "slower", 50),
        "nan_on_black": export(variant(NanOnBlackImage, model), stats, root / "nan", 5),
        "beyond_limits": export(variant(BlowsUpAtStateMax, model), stats, root / "limits", 5),
        "jittery": export(variant(Jittery, model), stats, root / "jitter", 5),
    }
    paths["bigger"] = padded(paths["faithful"], root / "bigger", extra_mib=4)
    url = f"sqlite:///{root / 'store.sqlite'}"
    store = write_replay_store(url)
    yield SimpleNamespace(root=root, reference=ref, paths=paths, store=store, url=url)
    store.close()


def gates(family, name: str, **sections):
    return run_gates(
        family.paths[name],
        family.reference,
        fast_config(**sections),
        store=family.store,
        actor="test",
    )


def table(report) -> str:
    return "\n".join(f"{r.gate} {r.verdict} {r.value} {r.detail}" for r in report.results)


def test_a_faithful_faster_candidate_passes_all_nine(family):
    report = gates(family, "faithful")
    assert failing(report) == set(), table(report)
    assert report.may_ship and report.evidence["replay_kind"] == "store"
    assert report.evidence["replay_observations"] == 8 and len(report.evidence["probes"]) == 5
    r = {x.gate: x for x in report.results}
    assert r["S1"].value == 0 and r["S1"].evidence == (8 + 5) * 8  # chunks: observations x K
    assert r["S2"].value == 0 and r["S3"].value <= 1.5
    assert r["P3"].value < 0.1 and r["P3"].data["spread_teacher"] > 3  # bimodal: modes far apart
    assert r["P4"].value < 0.5 and r["P4"].evidence == 40  # 5 vs 20 Euler steps
    assert (r["P1"].value, r["P1"].threshold, r["P1"].evidence) == (0.0, 0.0, 1)
    assert r["P6"].data["bytes_ratio"] == 1.0


def test_nan_on_a_black_image_fails_s1_only(family):
    report = gates(family, "nan_on_black")
    assert failing(report) == {"S1"}, table(report)
    s1 = report.result("S1")
    assert (
        s1.data["offending"] == ["probe:black_image"] and s1.value == 8 * 8 * 4
    )  # K draws x H x A
    assert not report.may_ship and [r.gate for r in report.blocking()] == ["S1"]


def test_actions_beyond_the_limits_at_the_state_maximum_fail_s2_only(family):
    report = gates(family, "beyond_limits")
    assert failing(report) == {"S2"}, table(report)
    s2 = report.result("S2")
    assert "probe:state_max" in s2.detail and "replay" not in s2.detail.split("at ")[1]
    assert s2.value == 8 * 8 * 4  # every value of every draw at that probe
    assert "teacher range" in s2.data["source"]


def test_a_jittery_expert_fails_s3_only(family):
    report = gates(family, "jittery")
    assert failing(report) == {"S3"}, table(report)
    assert report.result("S3").value > 1.5
    # the oscillation keeps each mode's mean: the agreement gate does not see it
    assert report.result("P3").value < 0.5 and report.result("P3").data["mean_cosine"] > 0.9


def test_a_slower_model_fails_p4_only(family):
    report = gates(family, "slower")  # the same weights at 50 Euler steps instead of 20
    assert failing(report) == {"P4"}, table(report)
    p4 = report.result("P4")
    assert p4.value > 1.2 and p4.data["candidate_p50_ms"] > p4.data["reference_p50_ms"]


def test_only_if_passing_skips_the_suite_once_another_gate_failed(family):
    report = gates(family, "slower", sim={"only_if_passing": True})
    verdicts = {r.gate: r.verdict for r in report.results}
    assert {g for g, v in verdicts.items() if v != "pass"} == {"P4", "P1", "P2"}, table(report)
    assert verdicts["P1"] == verdicts["P2"] == "not_evaluated"
    assert report.result("P1").detail == "skipped: P4 did not pass ([sim] only_if_passing)"
    assert report.result("P1").evidence == 0
    faithful = gates(family, "faithful", sim={"only_if_passing": True})
    assert failing(faithful) == set() and faithful.result("P1").evidence > 0, table(faithful)


def test_a_bigger_model_fails_p6_only(family):
    report = gates(family, "bigger")  # the faithful candidate plus 4 MiB of unused weights
    assert failing(report) == {"P6"}, table(report)
    p6 = report.result("P6")
    assert p6.data["bytes_ratio"] > 5 and p6.value == p6.data["bytes_ratio"]


def test_p5_fails_when_the_p99_exceeds_the_control_budget(family):
    cfg = fast_config()
    obs = replay_observations(
        Policy(family.reference).manifest, Policy(family.reference).stats, 4, store=family.store
    ).observations
    lat = measure_latency(family.paths["faithful"], family.reference, obs, 30, 3, 1)
    p99 = lat.percentile("candidate", 99)
    tight = cfg.replace("latency_p99_budget", budget_ms=p99 / 2).latency_p99_budget
    roomy = cfg.replace("latency_p99_budget", budget_ms=p99 * 2).latency_p99_budget
    assert performance.latency_p99_budget(lat, None, tight, cfg.latency).verdict == "fail"
    ok = performance.latency_p99_budget(lat, None, roomy, cfg.latency)
    assert ok.verdict == "pass" and ok.value == pytest.approx(p99)


def test_the_10_step_teacher_agrees_with_itself_exactly(family):
    cfg = fast_config()
    ref = Policy(family.reference)
    obs = replay_observations(ref.manifest, ref.stats, 8, store=family.store).observations
    draws = draw(ref, ref, obs, [], 16, 0)
    p3 = performance.action_agreement(draws, ref.stats.action, cfg.action_agreement, cfg.evidence)
    assert p3.verdict == "pass" and p3.value == pytest.approx(0.0, abs=1e-9)


def test_naive_one_step_on_bimodal_data_fails_p3_only_and_the_override_path(family, tmp_path):
    # K = 16 draws: a collapsed candidate scores up to (K - 2) / K
    config = write_config(fast_config(evidence={"samples": 16}), tmp_path / "gates.toml")
    out = tmp_path / "report.json"
    naive = family.paths["naive_1_step"]
    res = runner.invoke(
        app,
        [
            "gates",
            "run",
            str(naive),
            "--reference",
            str(family.reference),
            "--store",
            family.url,
            "--config",
            str(config),
            "--json",
            str(out),
            "--operator",
            "ci",
        ],
        env=ENV,
    )
    assert res.exit_code == 1, res.output
    assert "MAY NOT SHIP" in res.output and "P3 action_agreement" in res.output
    report = json.loads(out.read_text())
    verdicts = {g["gate"]: g["verdict"] for g in report["gates"]}
    assert {g for g, v in verdicts.items() if v != "pass"} == {"P3"}, verdicts
    p3 = next(g for g in report["gates"] if g["gate"] == "P3")
    # one Euler step returns about the mean of the two modes: the spread collapses
    assert p3["value"] > 0.5 and p3["data"]["spread_candidate"] < 0.5 * p3["data"]["spread_teacher"]
    version = report["candidate"]["version"]
    assert report["blocking"] == ["P3"] and report["actor"] == "ci"

    res = runner.invoke(
        app,
        ["gates", "override", version, "--gate", "S1", "--operator", "ana", "--reason", "ship it"],
        env={**ENV, "REFLEX_STORE": family.url},
    )
    assert res.exit_code == 2 and "safety gates can never be overridden" in res.output
    res = runner.invoke(
        app,
        [
            "gates",
            "override",
            version,
            "--gate",
            "P3",
            "--operator",
            "ana",
            "--reason",
            "bimodal suite not in production",
        ],
        env={**ENV, "REFLEX_STORE": family.url},
    )
    assert res.exit_code == 0 and "may ship (overridden: P3)" in res.output, res.output
    res = runner.invoke(app, ["gates", "show", version, "--store", family.url], env=ENV)
    assert res.exit_code == 0 and "overridden" in res.output and "MAY SHIP" in res.output
    shown = latest_report(family.store, version)
    assert shown.may_ship and shown.result("P3").overridden["operator"] == "ana"
    assert [(o["gate"], o["status"]) for o in shown.overrides] == [
        ("S1", "refused"),
        ("P3", "accepted"),
    ]
