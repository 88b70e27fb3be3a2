"""The documented pipeline as a new user runs it: collect -> train -> export -> eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.export.manifest import read_manifest

runner = CliRunner()
ENV = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    demos, run, export = root / "demos", root / "run", root / "export"
    res = runner.invoke(app, ["sim", "collect", "--tasks", "reach-v3", "--episodes-per-task", "2",
                              "--image-size", "32", "--out", str(demos), "--no-progress"], env=ENV)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "policy", "--data", str(demos), "--output", str(run), "--steps", "30",
                              "--width", "32", "--prefix-layers", "1", "--expert-layers", "2",
                              "--batch-size", "8", "--threads", "1"], env=ENV)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(run), "--output", str(export)], env=ENV)
    assert res.exit_code == 0, res.output
    return root, demos, run, export, res.output


def test_train_writes_a_resumable_run_with_a_loss_log(pipeline):
    _, _, run, _, _ = pipeline
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and log[-1]["step"] == 29
    assert all(row["loss"] > 0 for row in log)
    res = runner.invoke(app, ["train", "policy", "--data", str(pipeline[1]), "--output", str(run), "--steps", "40",
                              "--width", "32", "--prefix-layers", "1", "--expert-layers", "2",
                              "--batch-size", "8", "--threads", "1", "--resume"], env=ENV)
    assert res.exit_code == 0, res.output
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == [0, 29, 39]  # continued after step 30 instead of starting again at 0


def test_export_reports_parity_and_writes_the_manifest(pipeline):
    _, _, _, export, output = pipeline
    assert "parity max abs diff" in output
    m = read_manifest(export, verify=True)
    assert (m.state_dim, m.action_dim, m.cameras[0].height) == (39, 4, 32)
    assert m.provenance["tasks"] == ["reach-v3"] and m.provenance["episodes"] == 2
    res = runner.invoke(app, ["export", str(pipeline[2]), "--output", str(export)], env=ENV)
    assert res.exit_code == 2 and "immutable" in res.output


def test_eval_in_process_writes_a_report(pipeline):
    root, _, _, export, _ = pipeline
    out = root / "eval"
    res = runner.invoke(app, ["eval", str(export), "--tasks", "reach-v3", "--num-episodes", "1",
                              "--num-steps", "2", "--out", str(out), "--no-progress"], env=ENV)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "eval.json").read_text())
    assert [t["task"] for t in report["tasks"]] == ["reach-v3"]
    assert report["episodes"] == 1 and report["successes"] in (0, 1)
    assert report["latency"]["p50_ms"] > 0
    assert "reach-v3" in (out / "eval.md").read_text()


@pytest.mark.parametrize(
    "args, text",
    [
        (["train", "policy", "--data", "/nonexistent/demos"], "--data"),
        (["train", "policy", "--chunk-size", "4", "--n-action-steps", "5"], "--n-action-steps"),
        (["serve", "/nonexistent/export"], "EXPORT_DIR"),
        (["eval", "--tasks", "fly-v3"], "--tasks"),
        (["eval", "--gif"], "--gif"),
        (["eval", "--suite", "hard"], "unknown suite"),
        (["eval", "--suite", "bimodal", "--tasks", "reach-v3"], "not both"),
        (["eval", "--tasks", "reach-v3", "--num-episodes", "1", "--probe", "--no-progress"], "--probe"),
        (["export", "/nonexistent/run", "--output", "/tmp/x-never"], "not a training run"),
    ],
)
def test_cli_mistakes_name_what_is_wrong(args, text):
    res = runner.invoke(app, args, env=ENV)
    assert res.exit_code == 2, res.output
    assert text in res.output


def test_eval_refuses_an_export_whose_files_do_not_match_its_digest(tmp_path):
    import shutil

    from reflex_serve.assets import default_teacher

    bad = tmp_path / "tampered"
    shutil.copytree(default_teacher(), bad)
    with open(bad / "expert.onnx", "ab") as f:
        f.write(b"\0")
    for args in (["eval", str(bad), "--tasks", "reach-v3", "--num-episodes", "1"],
                 ["sim", "probe", str(bad), "--tasks", "reach-wall-v3"]):
        res = runner.invoke(app, args, env=ENV)
        assert res.exit_code == 2, res.output
        assert "does not match its manifest digest" in res.output, res.output


def test_reflex_entry_point_is_installed():
    out = subprocess.run([sys.executable, "-m", "reflex_serve.cli", "--help"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0 and "serve" in out.stdout and "eval" in out.stdout


def test_train_policy_reads_demo_frames_from_the_store(tmp_path):
    store = tmp_path / "store.sqlite"
    res = runner.invoke(app, ["sim", "collect", "--tasks", "reach-v3", "--episodes-per-task", "3",
                              "--image-size", "32", "--out", str(tmp_path / "demos"), "--store", f"sqlite:///{store}",
                              "--no-progress"], env=ENV)
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "policy", "--data", str(store), "--output", str(run), "--steps", "3",
                              "--width", "32", "--prefix-layers", "1", "--expert-layers", "2",
                              "--batch-size", "4", "--threads", "1"], env=ENV)
    assert res.exit_code == 0, res.output
    info = json.loads((run / "run.json").read_text())
    assert info["policy"]["cameras"] == [["corner2", 32, 32]] and info["policy"]["state_dim"] == 39
    prov = info["provenance"]
    assert prov["data"] == str(store) and prov["state_mode"] == "full"
    assert 1 <= prov["episodes"] <= 3  # the held-out split keeps some episodes out
    res = runner.invoke(app, ["train", "policy", "--data", str(store), "--tasks", "reach-v3"], env=ENV)
    assert res.exit_code == 2 and "--tasks" in res.output


def test_eval_probes_the_bimodal_decision_points(tmp_path):
    out = tmp_path / "eval"
    res = runner.invoke(app, ["eval", "--suite", "bimodal", "--num-episodes", "1", "--probe",
                              "--out", str(out), "--no-progress"], env=ENV)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "eval.json").read_text())
    assert [t["task"] for t in report["tasks"]] == ["reach-wall-v3", "pick-place-wall-v3"]
    probe = json.loads((out / "probe.json").read_text())
    assert "reach-wall-v3" in json.dumps(probe) and "commit" in json.dumps(probe)
