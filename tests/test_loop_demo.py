"""``reflex demo``'s settings files and summary (the loop itself is tested in
test_loop_server.py; the full demo's output is docs/demo.md)."""

from __future__ import annotations

import pytest

from reflex_serve.gates.config import load_config
from reflex_serve.loop.config import load_loop_config
from reflex_serve.loop.demo import DemoOptions, Round, write_settings
from reflex_serve.loop.demo_report import summarize, to_markdown


def test_the_demo_settings_are_valid_loop_and_gate_configs(tmp_path):
    loop_toml, gates_toml = write_settings(DemoOptions(out=tmp_path, distill_steps=123,
                                                       tasks=("reach-v3", "push-v3")))
    loop = load_loop_config(loop_toml)
    assert loop.distill_steps == 123 and loop.teacher_steps == (1, 2, 4)
    assert loop.gates_config == gates_toml.resolve() and loop.work_dir == (tmp_path / "loop").resolve()
    gates = load_config(gates_toml)
    assert gates.sim.task_list() == ["reach-v3", "push-v3"]
    assert gates.sim.episodes == 25 and gates.sim.only_if_passing is True
    assert gates.task_success.margin == 0.05  # thresholds stay the defaults


def rnd(i, start, end, n, k, version, ms, server_ms):
    return Round(i, start, end, n, k, {version: 10}, [ms] * 10, [server_ms] * 10)


RUN = {
    "id": "r1", "trigger": "schedule", "status": "succeeded", "teacher_version": "t",
    "promoted_version": "s", "duration_s": 100.0, "error": None,
    "stages": [{"stage": "distill", "status": "passed", "duration_s": 40.0,
                "detail": {"steps": 2000, "version": "s"}}],
    "candidates": [
        {"name": "snapflow", "num_steps": 1, "version": "s", "verdict": "chosen",
         "p50_ratio": 0.3, "reason": "passed all nine; fastest"},
        {"name": "teacher@1", "num_steps": 1, "version": "u", "verdict": "refused",
         "p50_ratio": 0.31, "reason": "gates not passed: P3 0.61 > 0.4"},
    ],
}


def test_the_summary_splits_traffic_into_before_during_and_after_the_run():
    rounds = [
        rnd(0, 0, 10, 6, 6, "t", 12.0, 9.0),     # before the run started (at 20 s)
        rnd(1, 10, 20, 6, 5, "t", 14.0, 10.0),   # finished exactly at the start: before
        rnd(2, 20, 60, 6, 6, "t", 30.0, 20.0),   # during
        rnd(3, 115, 125, 6, 6, "s", 4.0, 3.0),   # served by the new version after the run
        rnd(4, 125, 135, 6, 6, "s", 4.0, 3.0),
    ]
    s = summarize(rounds, RUN, 20.0, {"monitor": {"version": "s", "signals": {
        "errors": {"state": "collecting", "evidence": 120}}}}, 600.0)
    before, during, after = (s["phases"][k] for k in ("before", "during", "after"))
    assert (before["rounds"], before["episodes"], before["successes"]) == (2, 12, 11)
    assert before["wilson_95"][0] == pytest.approx(0.6461, abs=1e-3)  # Wilson of 11/12
    assert (during["rounds"], after["rounds"], after["episodes"]) == (1, 2, 12)
    assert before["p50_ms"] == 13.0 and after["p50_ms"] == 4.0
    assert s["speedup"]["client_p50"] == pytest.approx(3.25)
    assert s["speedup"]["server_p50"] == pytest.approx(9.5 / 3.0)
    assert s["chosen"]["name"] == "snapflow" and s["teacher"] == "t"
    text = to_markdown(s)
    assert "Run r1 (schedule): **succeeded**, s promoted in 100 s." in text
    assert "| teacher@1 | 1 | u | refused | 0.31 | gates not passed: P3 0.61 > 0.4 |" in text
    assert "| before | 2 | 11/12 (91.7%) [64.6%, 98.5%] | 20 |" in text
    assert "Speed-up after the swap: /act p50 3.25x (client), 3.17x (server)." in text
    assert "Post-swap monitor on s: errors collecting (120)." in text


def test_a_refused_run_has_no_after_phase_and_no_speedup():
    rounds = [rnd(0, 0, 10, 6, 6, "t", 12.0, 9.0), rnd(1, 30, 40, 6, 6, "t", 12.0, 9.0)]
    refused = {**RUN, "status": "refused", "promoted_version": None,
               "error": "no candidate passed all nine gates"}
    s = summarize(rounds, refused, 20.0, None, 100.0)
    assert s["phases"]["after"]["episodes"] == 0 and s["speedup"] is None
    assert "**refused** (no candidate passed all nine gates)" in to_markdown(s)
    nothing = summarize(rounds, None, None, None, 100.0)
    assert nothing["phases"]["before"]["rounds"] == 2 and nothing["run"] is None
    assert "No distill run started" in to_markdown(nothing)
