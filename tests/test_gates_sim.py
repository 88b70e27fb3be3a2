"""P1 and P2 in real MetaWorld: a weaker student of the shipped teacher fails them.

The weaker student is the shipped teacher at one Euler step whose actions are a tenth of
the teacher's (its ``stats.json`` action mean and std scaled by 0.1): it creeps toward
the goal and runs out of time. Its actions differ from the teacher's on every
observation, so the open-loop agreement gate P3 fails with P1 and P2: a student that is
weaker in closed loop without acting differently on the same observations would need
compounding errors that no test this short can show.
"""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from gates_helpers import failing, fast_config, metaworld_store

from reflex_serve.assets import default_teacher
from reflex_serve.export.manifest import STATS, read_manifest, write_manifest
from reflex_serve.gates.runner import run_gates


def weaker_student(out):
    shutil.copytree(default_teacher(), out)
    stats = json.loads((out / STATS).read_text())
    for key in ("mean", "std", "min", "max"):
        stats["action"][key] = [0.1 * v for v in stats["action"][key]]
    (out / STATS).write_text(json.dumps(stats))
    m = read_manifest(out)
    m.num_steps = 1
    write_manifest(out, m)
    return out


def test_a_weaker_student_fails_task_success_and_per_task_regression(tmp_path):
    weak = weaker_student(tmp_path / "weak")
    store = metaworld_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    cfg = fast_config(
        evidence={"observations": 6, "samples": 4, "holdout_pct": 50.0},
        sim={"episodes": 2, "max_steps": 100},
        # two episodes per policy: even 2/2 has a Wilson lower bound of 0.34, so the bar
        # (teacher rate - margin) must be below it for P1 to be decidable at all
        task_success={"margin": 0.7},
        # not under test: 1 vs 10 steps of this teacher is about 0.44 on an idle machine,
        # too close to 0.5 on two busy cores
        latency_speedup={"max_ratio": 0.8},
    )
    try:
        report = run_gates(weak, default_teacher(), cfg, store=store)
    finally:
        store.close()
    table = "\n".join(f"{r.gate} {r.verdict} {r.value} {r.detail}" for r in report.results)
    assert failing(report) == {"P1", "P2", "P3"}, table
    p1, p2 = report.result("P1"), report.result("P2")
    assert p1.data["reference_successes"] >= 1 and p1.data["candidate_successes"] == 0
    assert (
        p1.evidence == 2
        and p1.value == 0.0
        and p1.threshold == pytest.approx(max(0.0, p1.data["reference_rate"] - 0.7))
    )
    assert p2.value == pytest.approx(p1.data["reference_rate"]) and "reach-v3" in p2.detail
    assert report.evidence["replay_kind"] == "store" and report.evidence["replay_observations"] >= 4
    assert np.isfinite(report.result("S3").value)


def test_a_store_with_too_few_held_out_rows_gives_way_to_the_demo_frames(tmp_path):
    from typer.testing import CliRunner

    from reflex_serve.cli import app
    from reflex_serve.gates.evidence import replay_observations
    from reflex_serve.runtime.policy import Policy

    demos = tmp_path / "demos"
    res = CliRunner().invoke(app, ["sim", "collect", "--tasks", "reach-v3",
                                   "--episodes-per-task", "1", "--out", str(demos)])
    assert res.exit_code == 0, res.output
    store = metaworld_store(f"sqlite:///{tmp_path / 'store.sqlite'}", episodes=20)
    try:
        teacher = Policy(default_teacher())
        m, stats = teacher.manifest, teacher.stats
        held_out = replay_observations(m, stats, 64, store=store, data=demos, min_store=1)
        k = len(held_out.observations)
        assert held_out.kind == "store" and 1 <= k < 8  # about 10% of 20 first frames
        replay = replay_observations(m, stats, 64, store=store, data=demos, min_store=8)
        assert replay.kind == "demos" and len(replay.observations) > k
        assert f"held-out split has {k} observations, fewer than 8" in replay.notes[-1]
        alone = replay_observations(m, stats, 64, store=store, min_store=8)
        assert alone.kind == "store" and len(alone.observations) == k  # nothing to fall back on
    finally:
        store.close()
