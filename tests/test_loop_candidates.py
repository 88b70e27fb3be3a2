"""The candidate step: teacher@N exports, and the nine gates choosing among candidates.

Real parts: the shipped teacher and its teacher@N exports run by ONNX Runtime, in process
and over HTTP; real replay observations (first frames of seeded reach-v3 episodes) in a
real SQLite store; the real gate runner (latency side by side, resources in child
processes, one 8-step reach-v3 episode in MetaWorld: 0 vs 0 successes, so P1 and P2
pass); the stored gate runs read back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from distill_helpers import make_teacher, one_thread  # noqa: F401
from gates_helpers import fast_config, metaworld_store, padded
from typer.testing import CliRunner

from reflex_serve.assets import default_teacher
from reflex_serve.cli import app
from reflex_serve.export.manifest import (
    EXPERT_ONNX,
    MANIFEST,
    PREFIX_ONNX,
    _file_sha256,
    read_manifest,
    write_manifest,
)
from reflex_serve.gates.evidence import synthetic_observations
from reflex_serve.gates.results import GateResult
from reflex_serve.loop.candidates import (
    CandidateError,
    CandidateSpec,
    GateOptions,
    default_specs,
    gate_candidates,
    teacher_at_steps,
)
from reflex_serve.loop.choice import Gated, choose, describe_failure, failure_lines
from reflex_serve.loop.pipeline import failed_gates
from reflex_serve.runtime.cache import PrefixCache
from reflex_serve.runtime.policy import Policy
from reflex_serve.storage.gate_runs import latest_gate_runs
from reflex_serve.storage.store import Store

runner = CliRunner()
ENV = {"COLUMNS": "200"}
TEACHER = default_teacher()


def test_teacher_at_steps_is_its_own_version_sharing_the_teachers_files(tmp_path):
    teacher = read_manifest(TEACHER)
    one = teacher_at_steps(TEACHER, 1, tmp_path / "t1")
    two = teacher_at_steps(TEACHER, 2, tmp_path / "t2")
    m1, m2 = read_manifest(one, verify=True), read_manifest(two, verify=True)
    assert (m1.num_steps, m2.num_steps) == (1, 2)
    assert m1.parent_version == m2.parent_version == teacher.digest
    assert m2.target_time == "instantaneous" and m2.provenance["kind"] == "teacher-steps"
    assert m2.provenance["teacher_num_steps"] == 10
    assert len({teacher.digest, m1.digest, m2.digest}) == 3
    for name in (PREFIX_ONNX, EXPERT_ONNX):
        assert (two / name).read_bytes() == (TEACHER / name).read_bytes()
    assert Policy(two).prefix_digest == Policy(TEACHER).prefix_digest  # one cache key
    # deterministic: the same derivation elsewhere is the same version; the same
    # directory is reused; a directory holding something else is refused
    assert read_manifest(teacher_at_steps(TEACHER, 2, tmp_path / "again")).digest == m2.digest
    assert teacher_at_steps(TEACHER, 2, two) == two
    with pytest.raises(CandidateError, match="not empty and does not hold teacher@4") as err:
        teacher_at_steps(TEACHER, 4, two)
    assert err.value.field == "output"
    assert read_manifest(two).num_steps == 2


def test_teacher_at_n_acts_as_the_teacher_run_with_n_steps(tmp_path):
    from reflex_serve.client import ReflexClient
    from reflex_serve.server.app import create_app
    from reflex_serve.server.runner import BackgroundServer

    derived = teacher_at_steps(TEACHER, 2, tmp_path / "t2")
    cache = PrefixCache(16 << 20)
    teacher, cand = Policy(TEACHER, cache=cache), Policy(derived, cache=cache)
    observations = synthetic_observations(teacher.manifest, teacher.stats, 3, seed=0)
    for i, obs in enumerate(observations):
        noise = teacher.make_noise(seed=i)
        want = teacher.act(obs, num_steps=2, noise=noise)
        got = cand.act(obs, noise=noise)
        assert got.cache_hit and not want.cache_hit  # the teacher's prefix entry serves it
        np.testing.assert_array_equal(got.actions, want.actions)
        assert not np.allclose(got.actions, teacher.act(obs, noise=noise).actions, atol=1e-4)
    with BackgroundServer(create_app(Policy(derived))) as server, ReflexClient(server.url) as c:
        served = c.act(observations[0], seed=11)
    want = teacher.act(observations[0], num_steps=2, seed=11)
    np.testing.assert_allclose(served.actions, want.actions, rtol=0, atol=1e-6)


def test_bad_steps_and_non_teachers_are_clear_errors(tmp_path):
    cases = [
        (0, TEACHER, "num_steps", "must be an integer >= 1, got 0"),
        (10, TEACHER, "num_steps", "below the teacher's own 10 steps, got 10"),
        (11, TEACHER, "num_steps", "below the teacher's own 10 steps, got 11"),
        (2, tmp_path / "missing", "teacher", "is not an export directory"),
        (2, TEACHER, "output", "is the teacher's own directory"),
    ]
    student = teacher_at_steps(TEACHER, 1, tmp_path / "student")
    m = read_manifest(student)
    m.target_time = "shortcut"
    write_manifest(student, m)
    cases.append((1, student, "teacher", "not a flow-matching teacher: its target_time is "))
    for n, teacher, field, message in cases:
        out = TEACHER if field == "output" else tmp_path / f"out{n}"
        with pytest.raises(CandidateError, match=message) as err:
            teacher_at_steps(teacher, n, out)
        assert err.value.field == field
        assert not (tmp_path / f"out{n}").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # nothing left half-written


def test_cli_derive_writes_the_candidate_and_names_the_bad_argument(tmp_path):
    out = tmp_path / "t4"
    res = runner.invoke(
        app, ["models", "derive", str(TEACHER), "--num-steps", "4", "--output", str(out)], env=ENV
    )
    version = read_manifest(out).version
    assert res.exit_code == 0, res.output
    assert f"teacher@4: version {version} in {out} (teacher facef3247720 at 4 of its 10" in (
        res.output
    )
    cases = [
        (["--num-steps", "10", "--output", str(tmp_path / "x")], "--num-steps: must be below"),
        (["--num-steps", "2", "--output", str(out)], "--output: "),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["models", "derive", str(TEACHER), *args], env=ENV)
        assert res.exit_code == 2 and message in res.output, res.output
    res = runner.invoke(
        app, ["models", "derive", str(tmp_path / "nope"), "--num-steps", "2", "-o", "y"], env=ENV
    )
    assert res.exit_code == 2 and "TEACHER: " in res.output and "Traceback" not in res.output


def test_default_specs_cheapest_first_with_the_student(tmp_path):
    teacher, student = Path("models/metaworld8-teacher"), Path("models/metaworld8-snapflow")
    specs = default_specs(teacher, student, steps=(4, 1, 2, 10, 12), work_dir=tmp_path)
    assert [(s.name, s.kind, s.num_steps) for s in specs] == [
        ("teacher@1", "teacher-steps", 1),
        ("snapflow", "student", 1),
        ("teacher@2", "teacher-steps", 2),
        ("teacher@4", "teacher-steps", 4),
    ]
    assert specs[0].export_dir == tmp_path / "teacher@1" and specs[1].export_dir == student
    assert read_manifest(specs[3].export_dir).parent_version == read_manifest(teacher).digest


def _gated(name, nfe, ratio, energy=0.1, passed=True):
    return Gated(name, nfe, "0" * 12, "run", passed, ratio, energy, [] if passed else ["P3 x"])


def test_choice_rules_fastest_then_nfe_then_agreement():
    gated = [
        _gated("teacher@1", 1, 0.30, passed=False),
        _gated("teacher@2", 2, 0.41, energy=0.20),
        _gated("snapflow", 1, 0.42, energy=0.30),  # within 5% of 0.41: fewer NFE wins
        _gated("teacher@4", 4, 0.60),
    ]
    verdicts = choose(gated, 0.05)
    assert [v for v, _ in verdicts] == ["refused", "kept", "chosen", "kept"]
    assert verdicts[1][1].endswith("within 5%, but 2 NFE against 1")
    assert "fastest of 3 that passed (others: teacher@2 0.41x, teacher@4 0.60x)" in verdicts[2][1]
    assert "slower than snapflow (0.42x)" in verdicts[3][1]
    assert [v for v, _ in choose(gated, 0.0)] == ["refused", "chosen", "kept", "kept"]
    same_nfe = [_gated("a", 1, 0.42, energy=0.3), _gated("b", 1, 0.41, energy=0.2)]
    assert [v for v, _ in choose(same_nfe, 0.05)] == ["kept", "chosen"]
    assert "P3 relative energy 0.3 against 0.2" in choose(same_nfe, 0.05)[0][1]
    assert choose([_gated("a", 1, 0.3, passed=False)], 0.05) == [
        ("refused", "gates not passed: P3 x")
    ]


def test_a_refusal_names_each_gate_with_its_value_or_why_it_was_not_evaluated():
    p3 = GateResult.make("P3", "<=", 0.5, 1.3095, 256, "fail", "relative energy 1.310 > 0.5")
    p1 = GateResult.make("P1", ">=", 0.95, 0.7225, 10, "not_evaluated", "10 episodes cannot")
    s1 = GateResult.make("S1", "==", 0, None, 0, "not_evaluated", "no replay observations")
    assert describe_failure(p3) == (
        "P3 action_agreement 1.31 (needs <= 0.5): relative energy 1.310 > 0.5"
    )
    assert describe_failure(p1) == "P1 task_success not evaluated: 10 episodes cannot"
    close = GateResult.make("P1", ">=", 0.94333, 0.94296, 150, "fail", "147/150")
    assert describe_failure(close) == "P1 task_success 0.943 (needs >= 0.9433): 147/150"
    assert describe_failure(s1) == (
        "S1 finite failed: cannot be evaluated, so it fails: no replay observations"
    )


def test_a_skipped_suite_is_one_item_and_the_run_error_names_the_failed_gates():
    skip = "skipped: P3 did not pass ([sim] only_if_passing)"
    results = [
        GateResult.make("P3", "<=", 0.4, 0.79, 256, "fail", "pooled relative energy 0.790 > 0.4"),
        GateResult.make("P1", ">=", None, None, 0, "not_evaluated", skip),
        GateResult.make("P2", "<=", None, None, 0, "not_evaluated", skip),
        GateResult.make("P4", "<=", 0.5, 0.3, 100, "pass", "fast"),
    ]
    lines = failure_lines(results)
    assert lines == [
        "P3 action_agreement 0.79 (needs <= 0.4): pooled relative energy 0.790 > 0.4",
        "P1, P2 not run (the closed-loop suite runs only when the rest pass)",
    ]
    assert failed_gates("gates not passed: " + "; ".join(lines)) == "P3 failed"
    p1 = "gates not passed: P1 task_success not evaluated: 20 episodes cannot show"
    assert failed_gates(p1) == "P1 not evaluated"
    both = "gates not passed: P4 latency_speedup 0.6 (needs <= 0.5): slow; P1 task_success not evaluated: no suite"
    assert failed_gates(both) == "P4 failed and P1 not evaluated"
    assert failed_gates("the gates could not run: boom") == "the gates could not run: boom"


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """The shipped teacher's candidates through the real gates, once for the module."""
    root = tmp_path_factory.mktemp("candidates")
    url = f"sqlite:///{root / 'store.sqlite'}"
    metaworld_store(url).close()
    specs = default_specs(TEACHER, None, steps=(1, 2, 4), work_dir=root / "work")
    two = next(s for s in specs if s.num_steps == 2).export_dir
    big = padded(two, root / "padded", extra_mib=4)  # teacher@2 and 4 MiB of unused weights
    specs.append(CandidateSpec("padded@2", "student", 2, big))
    small = make_teacher(root / "six_d")  # another robot: 6-d state
    specs.append(CandidateSpec("six-d", "student", 10, small))
    cfg = fast_config(
        evidence={"observations": 6, "samples": 8, "holdout_pct": 50.0},
        # not under test here: a 2-core machine shared with other jobs times noisily
        latency_speedup={"max_ratio": 0.9},
        latency_p99_budget={"budget_ms": 1000.0},
        # six first frames of reach-v3 episodes, 8 draws: the shipped teacher at 2 steps
        # scores 0.44 there (0.23 on 64 demonstration frames of the six tasks), at 1 step
        # 1.1; the default limit 0.4 is calibrated on 64 frames (docs/gates.md)
        action_agreement={"max_energy": 0.6},
    )
    lines = []
    options = GateOptions(config=cfg, actor="test", progress=lines.append)
    chosen, outcomes = gate_candidates(TEACHER, specs, url, options, tie_within=0.0)
    return SimpleNamespace(url=url, specs=specs, chosen=chosen, outcomes=outcomes, lines=lines)


def test_the_fastest_candidate_that_passes_all_nine_is_chosen(gated):
    by = {o.spec.name: o for o in gated.outcomes}
    table = "\n".join(f"{o.spec.name} {o.verdict} {o.p50_ratio} {o.reason}" for o in gated.outcomes)
    assert [o.spec for o in gated.outcomes] == gated.specs
    # one Euler step returns about the mean action: its samples are not the teacher's
    assert by["teacher@1"].verdict == "refused" and not by["teacher@1"].passed, table
    assert by["teacher@1"].reason.startswith("gates not passed: P3 action_agreement "), table
    assert by["teacher@2"].passed, table
    assert by["padded@2"].verdict == "refused", table
    assert by["padded@2"].reason.startswith("gates not passed: P6 resources ") and "P3" not in (
        by["padded@2"].reason
    )
    assert by["six-d"].verdict == "refused" and by["six-d"].gate_run_id is None
    assert by["six-d"].reason == (
        "the gates could not run: candidate and reference differ in state_dim: "
        "candidate 6, reference 39"
    )
    passed = [o for o in gated.outcomes if o.passed]
    assert gated.chosen is not None and gated.chosen.verdict == "chosen", table
    assert gated.chosen.p50_ratio == min(o.p50_ratio for o in passed)
    assert [o for o in gated.outcomes if o.verdict == "chosen"] == [gated.chosen]
    assert gated.chosen.reason.startswith(
        f"passed all nine; p50 {gated.chosen.p50_ratio:.2f}x the teacher's"
    )
    for o in passed:
        if o is not gated.chosen:
            assert o.verdict == "kept" and f"slower than {gated.chosen.spec.name}" in o.reason
    assert any(line.startswith("teacher@4: timing ") for line in gated.lines)
    assert json.loads(json.dumps(gated.chosen.to_dict()))["version"] == gated.chosen.version


def test_every_gate_run_is_a_row_in_the_store(gated):
    store = Store.open(gated.url)
    try:
        runs = {r.id: r for r in latest_gate_runs(store)}
    finally:
        store.close()
    ran = [o for o in gated.outcomes if o.gate_run_id is not None]
    assert len(ran) == 4 and set(runs) == {o.gate_run_id for o in ran}
    for o in ran:
        run = runs[o.gate_run_id]
        assert run.candidate_version == o.version == read_manifest(o.spec.export_dir).version
        assert run.reference_version == "facef3247720" and run.passed == o.passed
        assert run.actor == "test" and len(run.results) == 9
        p4 = next(r for r in run.results if r.gate == "P4")
        assert p4.value == pytest.approx(o.p50_ratio)
    manifest = json.loads((gated.outcomes[0].spec.export_dir / MANIFEST).read_text())
    assert _file_sha256(gated.outcomes[0].spec.export_dir / PREFIX_ONNX) == _file_sha256(
        TEACHER / PREFIX_ONNX
    ) and manifest["parent_version"].startswith("sha256:facef3247720")


def test_cli_derive_names_an_output_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    for out, message in ((tmp_path / "file", "is not a directory"),
                         (tmp_path / "file" / "t2", "cannot create")):
        res = runner.invoke(
            app, ["models", "derive", str(TEACHER), "--num-steps", "2", "--output", str(out)],
            env=ENV,
        )
        assert res.exit_code == 2, res.output
        assert "error: --output: " in res.output and message in res.output
        assert "Traceback" not in res.output
    assert (tmp_path / "file").read_text() == "not a directory"
