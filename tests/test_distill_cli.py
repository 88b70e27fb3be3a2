"""`reflex train distill` end to end: demo directory and store in, a 1-step student export
out, sharing the teacher's prefix graph, validated against the teacher."""

from __future__ import annotations

import json

import pytest
from distill_helpers import make_demo_dir, make_store, make_teacher, one_thread  # noqa: F401
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.export.manifest import read_manifest

runner = CliRunner()
ENV = {"COLUMNS": "200"}
FAST = ["--steps", "12", "--batch-size", "8", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-cli")
    return root, make_teacher(root / "teacher"), make_demo_dir(root / "demos")


@pytest.fixture(scope="module")
def student(setup):
    root, teacher, demos = setup
    out = root / "student"
    res = runner.invoke(
        app,
        ["train", "distill", str(teacher), "--output", str(out), "--data", str(demos), *FAST],
        env=ENV,
    )
    assert res.exit_code == 0, res.output
    return out, res.output


def test_student_export_is_a_one_step_shortcut_child_sharing_the_prefix(setup, student):
    root, teacher, _ = setup
    out, output = student
    m, t = read_manifest(out, verify=True), read_manifest(teacher)
    assert (m.num_steps, m.target_time, m.parent_version) == (1, "shortcut", t.digest)
    assert (out / "prefix.onnx").read_bytes() == (teacher / "prefix.onnx").read_bytes()
    assert (out / "expert.onnx").read_bytes() != (teacher / "expert.onnx").read_bytes()
    p = m.provenance
    assert (p["objective"], p["steps"], p["mix_ratio"], p["alpha"], p["lambda"]) == (
        "snapflow",
        12,
        0.5,
        0.5,
        1.0,  # the default lambda (the paper's 0.1 commits to a mode 0.63x as often)
    )
    assert (p["lr"], p["batch_size"], p["seed"]) == (1e-4, 8, 0) and p["prefix"].startswith(
        "frozen"
    )
    assert p["data"]["rows"] == {"demo": 48} and {"fm", "cons"} <= set(p["losses"]["last"])
    run = root / "student-run"
    assert (run / "checkpoint.pt").is_file() and (run / "train_log.jsonl").is_file()
    assert "parity max abs diff" in output and "48 labelled observations" in output


def test_student_round_trips_through_validate(setup, student):
    _, teacher, demos = setup
    out, _ = student
    args = [
        "validate",
        "export",
        str(out),
        "--reference",
        str(teacher),
        "--data",  # real frames: validation no longer defaults to synthetic observations
        str(demos),
        "--observations",
        "3",
        "--samples",
        "6",
    ]
    res = runner.invoke(app, args, env=ENV)
    assert res.exit_code == 0, res.output
    assert "relative energy distance" in res.output and "is its parent" in res.output
    res = runner.invoke(app, [*args, "--json"], env=ENV)
    report = json.loads(res.output)
    assert report["is_parent"] and report["student_num_steps"] == 1 and report["parity_ok"]
    assert report["summary"]["relative_energy_mean"] < 0.5


def test_store_data_train_prefix_and_validate_after(setup, tmp_path):
    _, teacher, _ = setup
    version = read_manifest(teacher).version
    url = make_store(f"sqlite:///{tmp_path / 'store.sqlite'}", served_version=version)
    out = tmp_path / "student"
    res = runner.invoke(
        app,
        [
            "train",
            "distill",
            str(teacher),
            "--output",
            str(out),
            "--data",
            url,
            "--model-version",
            "teacher",
            "--train-prefix",
            "--validate-after",
            "--objective",
            "trajectory",
            *FAST,
        ],
        env=ENV,
    )
    assert res.exit_code == 0, res.output
    assert "{'demo': 84, 'served': 16}" in res.output and "store held-out split" in res.output
    m = read_manifest(out)
    assert (
        m.provenance["prefix"].startswith("trained") and m.provenance["objective"] == "trajectory"
    )
    assert (out / "prefix.onnx").read_bytes() != (teacher / "prefix.onnx").read_bytes()
    assert (
        m.provenance["data"]["model_version"] == version
        and m.provenance["data"]["split"] == "train"
    )


def test_resume_from_the_cli(setup, tmp_path):
    _, teacher, demos = setup
    base = [
        "train",
        "distill",
        str(teacher),
        "--data",
        str(demos),
        "--run-dir",
        str(tmp_path / "run"),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--no-progress",
    ]
    res = runner.invoke(
        app, [*base, "--output", str(tmp_path / "a"), "--max-minutes", "0"], env=ENV
    )
    assert res.exit_code == 0 and "trained 1 steps" in res.output, res.output
    res = runner.invoke(app, [*base, "--output", str(tmp_path / "b")], env=ENV)
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, [*base, "--output", str(tmp_path / "b"), "--resume"], env=ENV)
    assert res.exit_code == 0 and "trained 4 steps (3 now" in res.output, res.output
    assert read_manifest(tmp_path / "b").provenance["steps"] == 4


def test_clear_errors(setup, student, tmp_path):
    _root, teacher, demos = setup
    out, _ = student

    def run(*args):
        return runner.invoke(app, ["train", "distill", *args, *FAST], env=ENV)

    res = run(
        str(teacher), "--output", str(tmp_path / "x"), "--data", str(demos), "--runtime", "cloud"
    )
    assert res.exit_code == 2 and "'cloud' is not supported" in res.output and "local" in res.output
    res = run(str(out), "--output", str(tmp_path / "x"), "--data", str(demos))
    assert res.exit_code == 2 and "instantaneous" in res.output, res.output
    res = run(str(tmp_path / "none"), "--output", str(tmp_path / "x"), "--data", str(demos))
    assert res.exit_code == 2 and "TEACHER_EXPORT" in res.output
    d5 = make_demo_dir(tmp_path / "d5", state_dim=5)
    res = run(str(teacher), "--output", str(tmp_path / "x"), "--data", str(d5))
    assert res.exit_code == 2 and "state_dim 5" in res.output and "state_dim 6" in res.output
    res = run(str(teacher), "--output", str(out), "--data", str(demos))
    assert res.exit_code == 2 and "not empty" in res.output
    res = run(
        str(teacher), "--output", str(tmp_path / "x"), "--data", str(demos), "--objective", "magic"
    )
    assert res.exit_code == 2 and "objective" in res.output
    assert not (tmp_path / "x").exists()


def test_rows_served_by_other_versions_are_named(setup, tmp_path):
    """Distilling from a store that another model answered is allowed (its chunks are the
    labels), but said: the user may have meant the teacher's own traffic."""
    _, teacher, _ = setup
    url = make_store(f"sqlite:///{tmp_path / 'store.sqlite'}", served_version="0123456789ab")
    res = runner.invoke(
        app,
        ["train", "distill", str(teacher), "--output", str(tmp_path / "s"), "--data", url,
         "--source", "served", *FAST],
        env=ENV,
    )
    assert res.exit_code == 0, res.output
    assert "note: 16 served rows were answered by other versions (0123456789ab)" in res.output
    assert read_manifest(tmp_path / "s").provenance["data"]["served_versions"] == {"0123456789ab": 16}
