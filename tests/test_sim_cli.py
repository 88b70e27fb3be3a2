"""`reflex sim collect`: flag validation names the flag; a tiny real collection works."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
from typer.testing import CliRunner

from reflex_serve.sim.cli import sim_app

runner = CliRunner()


@pytest.mark.parametrize(
    "args, flag, text",
    [
        (["--tasks", "fly-v3"], "--tasks", "unknown task"),
        (["--tasks", "reach-v3", "--tasks", "nope-v3"], "--tasks", "nope-v3"),
        (["--tasks", ","], "--tasks", "no task"),
        (["--state", "vision"], "--state", "proprio"),
        (["--image-size", "big"], "--image-size", "HxW"),
        (["--image-size", "4"], "--image-size", "range"),
        (["--cameras", "corner9"], "--cameras", "unknown camera"),
        (["--episodes-per-task", "0"], "--episodes-per-task", ">= 1"),
        (["--seed", "-1"], "--seed", ">= 0"),
        (["--seed", "999999"], "--seed", "evaluation range"),
        (["--max-steps", "0"], "--max-steps", "[1, 500]"),
        (["--max-attempts", "3"], "--max-attempts", "episodes-per-task"),
    ],
)
def test_bad_flags_name_the_flag(args, flag, text, tmp_path):
    res = runner.invoke(
        sim_app, ["collect", "--out", str(tmp_path / "d"), *args], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 2, res.output
    assert re.search(rf"Invalid value for '?{re.escape(flag)}'?:", res.output), res.output
    assert text in res.output, res.output
    assert not (tmp_path / "d").exists()


def test_collect_command_runs_and_refuses_overwrite(tmp_path):
    out = tmp_path / "demos"
    args = [
        "collect",
        "--tasks",
        "reach-v3",
        "--episodes-per-task",
        "1",
        "--image-size",
        "16x24",
        "--cameras",
        "corner2,topview",
        "--state",
        "proprio",
        "--out",
        str(out),
        "--no-progress",
    ]
    res = runner.invoke(sim_app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cameras"] == [
        {"name": "corner2", "height": 16, "width": 24},
        {"name": "topview", "height": 16, "width": 24},
    ]
    assert meta["state_dim"] == 4 and meta["tasks"] == ["reach-v3"]
    assert "reach-v3" in res.output
    again = runner.invoke(sim_app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 2 and re.search(r"Invalid value for '?--out'?:", again.output)
    assert "--overwrite" in again.output
    info = runner.invoke(sim_app, ["info", str(out)])
    assert info.exit_code == 0 and '"reflex-demos"' in info.output
