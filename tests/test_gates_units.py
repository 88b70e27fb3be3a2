"""The gates' configuration and verdict rules on hand-made numbers (no models, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from reflex_serve.gates import performance, safety
from reflex_serve.gates.config import ConfigError, load_config
from reflex_serve.gates.evidence import Draws
from reflex_serve.gates.results import GATES, GateReport, GateResult, gate_spec, not_evaluated
from reflex_serve.policy.normalize import Stats
from reflex_serve.sim.report import EvalReport, LatencyStats, TaskResult, wilson_interval


def test_defaults_come_from_the_one_toml_file_and_a_file_overrides_some_keys(tmp_path):
    cfg = load_config()
    assert cfg.latency_speedup.max_ratio == 0.5 and cfg.task_success.margin == 0.05
    assert cfg.motion_smoothness.max_p99_ratio == 1.5 and cfg.resources.max_ratio == 1.1
    assert cfg.per_task_regression.max_drop == 0.10 and cfg.sim.suite == "default"
    path = tmp_path / "gates.toml"
    path.write_text("[latency_speedup]\nmax_ratio = 0.3\n[sim]\ntasks = ['reach-v3']\n")
    mine = load_config(path)
    assert mine.latency_speedup.max_ratio == 0.3 and mine.sim.task_list() == ["reach-v3"]
    assert mine.task_success == cfg.task_success  # untouched sections keep the defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[latency_speedup]\nmax_ration = 0.3\n", "unknown key [latency_speedup] max_ration"),
        ("[latency]\ncalls = 'many'\n", "[latency] calls must be an integer"),
        ("[sim]\nsuite = 'everything'\n", "[sim] suite must be one of"),
        ("[telemetry]\nx = 1\n", "unknown section [telemetry]"),
        ("[evidence]\nsamples = 1\n", "[evidence] samples must be >= 2"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_a_bad_config_file_names_the_section_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_gates_are_found_by_id_or_name_and_unknown_ones_list_the_catalogue():
    assert gate_spec("p4").name == "latency_speedup" and gate_spec("finite").id == "S1"
    assert [g.id for g in GATES] == ["S1", "S2", "S3", "P1", "P2", "P3", "P4", "P5", "P6"]
    with pytest.raises(KeyError, match="P6 \\(resources\\)"):
        gate_spec("P7")


def test_a_safety_gate_without_evidence_fails_and_a_performance_gate_is_not_evaluated():
    s = not_evaluated("S2", "no replay observations")
    p = not_evaluated("P3", "too few observations")
    assert s.verdict == "fail" and "cannot be evaluated" in s.detail
    assert p.verdict == "not_evaluated"
    draws = Draws(
        labels=["probe:black_image"],
        replay=0,
        samples=2,
        candidate=np.zeros((1, 2, 4, 2), np.float32),
        reference=np.zeros((1, 2, 4, 2), np.float32),
    )
    assert safety.finite(draws).verdict == "fail"
    broken = Draws(
        ["replay:0"],
        1,
        2,
        None,
        np.zeros((1, 2, 4, 2), np.float32),
        candidate_error="RuntimeException: bad graph",
    )
    result = safety.finite(broken)
    assert result.verdict == "fail" and "bad graph" in result.detail


def _report(results: list[GateResult]) -> GateReport:
    return GateReport("r", {}, {}, "", "", {}, {}, results)


def test_may_ship_needs_every_safety_gate_passed_and_performance_passed_or_overridden():
    ok = [GateResult.make(g.id, "<=", 1, 0, 1, "pass") for g in GATES]
    assert _report(ok).may_ship
    p4 = [r if r.gate != "P4" else GateResult.make("P4", "<=", 0.5, 0.9, 10, "fail") for r in ok]
    assert not _report(p4).may_ship and [r.gate for r in _report(p4).blocking()] == ["P4"]
    p4[6].overridden = {"operator": "ana"}
    assert _report(p4).may_ship
    s1 = [r if r.gate != "S1" else GateResult.make("S1", "==", 0, 3, 10, "fail") for r in ok]
    s1[0].overridden = {"operator": "ana"}  # never counts for a safety gate
    assert not _report(s1).may_ship
    assert not _report(ok[:8]).may_ship  # a missing gate blocks


def _eval(rates: dict[str, tuple[int, int]]) -> EvalReport:
    tasks = [
        TaskResult.from_episodes(t, list(range(n)), [i < k for i in range(n)], [10] * n)
        for t, (k, n) in rates.items()
    ]
    nan = float("nan")
    return EvalReport.build(tasks, LatencyStats(0, nan, nan, nan, nan, nan, nan, nan, 0.0), {})


def test_p1_compares_the_candidates_wilson_lower_bound_with_the_teachers_rate_minus_margin():
    cfg = load_config().task_success
    teacher = _eval({"reach-v3": (60, 60), "push-v3": (58, 60)})  # 118/120
    good = _eval({"reach-v3": (60, 60), "push-v3": (59, 60)})  # 119/120
    worse = _eval({"reach-v3": (59, 60), "push-v3": (58, 60)})  # 117/120
    bar = 118 / 120 - 0.05
    r = performance.task_success(good, teacher, cfg)
    assert r.verdict == "pass" and r.value == pytest.approx(wilson_interval(119, 120)[0])
    assert r.threshold == pytest.approx(bar) and r.evidence == 120
    r = performance.task_success(worse, teacher, cfg)
    # 117/120 = 97.5% but its lower bound 0.9291 is under 0.9333: too little evidence of parity
    assert r.verdict == "fail" and r.value < bar
    assert r.value == pytest.approx(wilson_interval(117, 120)[0])
    few = performance.task_success(
        _eval({"reach-v3": (10, 10)}), _eval({"reach-v3": (10, 10)}), cfg
    )
    assert few.verdict == "not_evaluated" and "raise [sim] episodes" in few.detail


def test_p2_fails_when_one_task_drops_more_than_ten_points():
    cfg = load_config().per_task_regression
    teacher = _eval({"reach-v3": (20, 20), "push-v3": (18, 20)})
    r = performance.per_task_regression(
        _eval({"reach-v3": (20, 20), "push-v3": (16, 20)}), teacher, cfg
    )
    assert r.verdict == "pass" and r.value == pytest.approx(0.10)
    r = performance.per_task_regression(
        _eval({"reach-v3": (17, 20), "push-v3": (18, 20)}), teacher, cfg
    )
    assert r.verdict == "fail" and r.value == pytest.approx(0.15) and "reach-v3" in r.detail


def _smooth(n: int, k: int, h: int = 8, a: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 0.5, h)[None, None, :, None]
    return (ramp + 0.01 * rng.standard_normal((n, k, h, a))).astype(np.float32)


def test_s3_catches_a_single_step_above_the_hard_maximum_that_p99_would_hide():
    cfg = load_config().replace("motion_smoothness", floor_fraction=0.01)
    teacher = _smooth(20, 8)
    cand = teacher.copy()
    cand[3, 2, 4, 1] += 1.7  # one jump in 20 * 8 * 7 steps: far below the 99th percentile
    draws = Draws([f"replay:{i}" for i in range(20)], 20, 8, cand, teacher)
    limits = safety.explicit_limits({"low": [-1, -1], "high": [1, 1], "max_step": 1.5}, 2)
    r = safety.motion_smoothness(draws, limits, cfg.motion_smoothness)
    assert r.value < cfg.motion_smoothness.max_p99_ratio  # the p99 alone would pass
    assert r.verdict == "fail" and r.data["steps_over_hard_max"] == 2  # up and back down
    same = safety.motion_smoothness(
        Draws(draws.labels, 20, 8, teacher, teacher), limits, cfg.motion_smoothness
    )
    assert same.verdict == "pass" and same.value == pytest.approx(1.0)
    # without the manifest's max_step the hard maximum is the whole width (2.0) by default
    derived = safety.Limits(limits.low, limits.high, "test")
    r = safety.motion_smoothness(draws, derived, cfg.motion_smoothness)
    assert r.verdict == "pass" and r.data["hard_max"] == [2.0, 2.0]


def test_s2_counts_values_outside_explicit_or_derived_limits():
    cfg = load_config()
    teacher = _smooth(4, 4)
    cand = teacher.copy()
    cand[1, 0, 0, 0] = 0.9
    draws = Draws([f"replay:{i}" for i in range(4)], 4, 4, cand, teacher)
    derived = safety.derived_limits(draws, np.zeros(2), np.full(2, 0.5), cfg.action_limits)
    # teacher range about [-0.03, 0.53] widened by 10% of its width: 0.9 is outside
    r = safety.action_limits(draws, derived)
    assert r.verdict == "fail" and r.value == 1 and "replay:1" in r.detail
    explicit = safety.explicit_limits({"low": [-1, -1], "high": [1, 1]}, 2)
    assert safety.action_limits(draws, explicit).verdict == "pass"
    with pytest.raises(ValueError, match="2 values"):
        safety.explicit_limits({"low": [-1], "high": [1]}, 2)


def test_p3_scores_a_mode_collapsed_candidate_and_needs_enough_observations():
    cfg = load_config()
    rng = np.random.default_rng(0)
    signs = np.where(rng.random((8, 16)) < 0.5, -1.0, 1.0)[..., None, None]
    teacher = (signs + 0.05 * rng.standard_normal((8, 16, 4, 2))).astype(np.float32)
    collapsed = 0.05 * rng.standard_normal((8, 16, 4, 2)).astype(np.float32)
    stats = Stats(np.zeros(2, np.float32), np.ones(2, np.float32), -np.ones(2), np.ones(2))
    labels = [f"replay:{i}" for i in range(8)]
    same = performance.action_agreement(
        Draws(labels, 8, 16, teacher, teacher), stats, cfg.action_agreement, cfg.evidence
    )
    assert same.verdict == "pass" and same.value == pytest.approx(0.0, abs=1e-9)
    bad = performance.action_agreement(
        Draws(labels, 8, 16, collapsed, teacher), stats, cfg.action_agreement, cfg.evidence
    )
    assert bad.verdict == "fail" and bad.value > 0.75
    few = performance.action_agreement(
        Draws(labels[:3], 3, 16, teacher[:3], teacher[:3]),
        stats,
        cfg.action_agreement,
        cfg.evidence,
    )
    assert few.verdict == "not_evaluated" and "min_observations" in few.detail


def test_the_table_prints_details_verbatim_and_says_why_it_may_not_ship():
    from rich.console import Console

    from reflex_serve.gates.report import render

    results = [GateResult.make(g.id, "<=", 1, 0, 1, "pass") for g in GATES]
    results[3] = GateResult.make(
        "P1",
        ">=",
        0.9,
        0.84,
        20,
        "not_evaluated",
        "20 episodes cannot show it; raise [sim] episodes",
    )
    rep = GateReport(
        "r1",
        {"version": "c", "num_steps": 1},
        {"version": "t", "num_steps": 10},
        "2026-11-30T10:00:00+00:00",
        "",
        {"replay_source": "store [x]"},
        {},
        results,
        actor="ci",
    )
    console = Console(record=True, width=220)
    render(rep, console)
    text = console.export_text()
    assert "raise [sim] episodes" in text and "store [x]" in text
    assert "not evaluated" in text and "MAY NOT SHIP: blocked by P1 task_success" in text
