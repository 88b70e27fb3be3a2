"""Bimodal suite: mirrored wall detours, mode recording, decision-point probe (real MetaWorld)."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from typer.testing import CliRunner

from reflex_serve.runtime.types import ActResult
from reflex_serve.sim.bimodal import MODES, episode_mode, make_strategy, resolve_mode
from reflex_serve.sim.cli import sim_app
from reflex_serve.sim.collect import collect, run_expert_episode
from reflex_serve.sim.dataset import OPTIONAL_EPISODE_FIELDS, load_demos
from reflex_serve.sim.env import SimEnv
from reflex_serve.sim.probe import (
    classify,
    compare_reports,
    decision_point,
    energy_distance,
    probe,
)
from reflex_serve.sim.tasks import BIMODAL_TASKS, SUITES

WALL_X = (-0.02, 0.22)
H = 8


@pytest.fixture(scope="module")
def episodes():
    """(task, mode) -> list of EpisodeRecord over seeds 3 and 4 (8 episodes in all)."""
    out = {}
    for task in BIMODAL_TASKS:
        with SimEnv(task, image_size=8) as env:
            for mode in (0, 1):
                strategy = make_strategy(task, mode)
                out[task, mode] = [run_expert_episode(env, s, 0, strategy) for s in (3, 4)]
    return out


@pytest.mark.parametrize("task", BIMODAL_TASKS)
def test_both_strategies_succeed(episodes, task):
    for mode in (0, 1):
        for rec in episodes[task, mode]:
            assert rec.success, (task, MODES[mode], rec.seed)
            assert rec.mode == mode and 0 < rec.decision_step < rec.length


@pytest.mark.parametrize("task", BIMODAL_TASKS)
def test_paths_split_at_the_decision_point(episodes, task):
    for left, right in zip(episodes[task, 0], episodes[task, 1]):
        t = left.decision_step
        assert right.decision_step == t
        # identical shared part: same actions and states up to the decision
        np.testing.assert_array_equal(left.action[:t], right.action[:t])
        np.testing.assert_array_equal(left.state[: t + 1], right.state[: t + 1])
        # the decision: sideways in opposite directions, saturated
        assert left.action[t, 0] == -1.0 and right.action[t, 0] == 1.0
        np.testing.assert_allclose(left.action[t, 1:], right.action[t, 1:])
        # each goes around its own end of the wall (hand x in the 39-d state)
        assert left.state[:, 0].min() < WALL_X[0] - 0.05 and left.state[:, 0].max() < 0.1
        assert right.state[:, 0].max() > WALL_X[1] + 0.05 and right.state[:, 0].min() > -0.07


def test_mode_draw_is_deterministic_and_balanced():
    for task in BIMODAL_TASKS:
        draws = [episode_mode(task, s) for s in range(400)]
        assert draws == [episode_mode(task, s) for s in range(400)]
        assert 0.4 < np.mean(draws) < 0.6
        assert resolve_mode(task, 7, "left") == 0 and resolve_mode(task, 7, "right") == 1
    a = [episode_mode(BIMODAL_TASKS[0], s) for s in range(64)]
    b = [episode_mode(BIMODAL_TASKS[1], s) for s in range(64)]
    assert a != b  # the task is mixed into the draw
    with pytest.raises(ValueError):
        resolve_mode(BIMODAL_TASKS[0], 0, "up")
    with pytest.raises(ValueError):
        make_strategy("reach-v3", "left")


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bimodal")
    res = collect(["reach-wall-v3"], 4, seed=10, out_dir=out, image_size=8, progress=False)
    return out, res


def test_collection_records_the_mode(mixed_dir):
    out, res = mixed_dir
    d = load_demos(out)
    seeds = d.episode_seed.tolist()
    assert d.episode_mode.dtype == np.int8 and d.episode_decision_step.dtype == np.int32
    assert d.episode_mode.tolist() == [episode_mode("reach-wall-v3", s) for s in seeds]
    assert res.tasks[0].modes == {
        "left": int(np.sum(d.episode_mode == 0)),
        "right": int(np.sum(d.episode_mode == 1)),
    }
    assert json.loads((out / "meta.json").read_text())["bimodal_mode"] == "mixed"
    for row, eid in enumerate(d.episode_ids.tolist()):
        sl = d.episode_frames(eid)
        t = int(d.episode_decision_step[row])
        sign = -1.0 if d.episode_mode[row] == 0 else 1.0
        assert d.action[sl][t, 0] == sign


def test_forced_mode_and_flags(tmp_path):
    res = collect(
        ["reach-wall-v3"],
        1,
        seed=0,
        out_dir=tmp_path / "l",
        image_size=8,
        progress=False,
        mode="right",
    )
    assert res.tasks[0].modes == {"left": 0, "right": 1}
    assert load_demos(tmp_path / "l").episode_mode.tolist() == [1]
    with pytest.raises(ValueError, match="bimodal tasks only"):
        collect(["reach-v3"], 1, out_dir=tmp_path / "x", progress=False, mode="left")
    with pytest.raises(ValueError, match="mode must be"):
        collect(["reach-wall-v3"], 1, out_dir=tmp_path / "y", progress=False, mode="up")


def test_older_files_without_mode_still_load(mixed_dir, tmp_path):
    src, _ = mixed_dir
    old = tmp_path / "old"
    shutil.copytree(src, old)
    path = old / "reach-wall-v3.npz"
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k not in OPTIONAL_EPISODE_FIELDS}
    np.savez_compressed(path, **arrays)
    d = load_demos(old)
    assert d.episode_mode.tolist() == [-1] * d.num_episodes
    assert d.episode_decision_step.tolist() == [-1] * d.num_episodes
    np.testing.assert_array_equal(d.action, load_demos(src).action)


# ---------------------------------------------------------------------- the probe
class ScriptedClient:
    """Chunks of H copies of a strategy action computed from the 39-d state.

    ``kind``: "left", "right", "mean" (average of both), or "coin" (by seed parity).
    """

    n_action_steps = 4

    def __init__(self, task_of_state, kind):
        self.task_of_state, self.kind, self.seeds = task_of_state, kind, []

    def act(self, obs, *, episode_id, step, num_steps, seed=None):
        self.seeds.append(seed)
        task = self.task_of_state(episode_id)
        a = [make_strategy(task, m).get_action(obs.state) for m in (0, 1)]
        kind = self.kind if self.kind != "coin" else MODES[seed % 2]
        act = {"left": a[0], "right": a[1], "mean": (a[0] + a[1]) / 2}[kind]
        return ActResult(
            np.tile(act, (H, 1)).astype(np.float32), num_steps or 10, 0, 0, 0, False, "scripted"
        )


def _task_from_episode_id(eid):
    return next(t for t in BIMODAL_TASKS if f"-{t}-" in eid)


@pytest.mark.parametrize("kind", ["left", "mean", "coin"])
def test_probe_on_scripted_clients(kind, tmp_path):
    client = ScriptedClient(_task_from_episode_id, kind)
    report = probe(client, BIMODAL_TASKS, num_episodes=1, num_samples=32, image_size=8)
    assert report.config["n_action_steps"] == [4] and report.config["client_takes_seed"]
    assert len(set(client.seeds)) == len(client.seeds) == 64  # distinct noise per sample
    for t in report.tasks:
        p = t.points[0]
        assert p.samples.shape == (32, H, 4) and p.reference.shape == (2, H, 4)
        shares = t.mode_shares()
        if kind == "left":
            assert t.commit_share == 1.0 and shares["left"] == 1.0
            np.testing.assert_allclose(p.scores, -1.0, atol=0.2)
        elif kind == "mean":
            assert t.commit_share == 0.0
            np.testing.assert_allclose(p.scores, 0.0, atol=0.1)
        else:
            assert t.commit_share == 1.0 and shares["left"] == shares["right"] == 0.5
    if kind == "mean":
        report.save(tmp_path)
        saved = json.loads((tmp_path / "probe.json").read_text())
        assert saved["commit_share"] == 0.0 and "reach-wall-v3" in saved["tasks"]
        with np.load(tmp_path / "probe_samples.npz") as f:
            assert f["pick-place-wall-v3/samples"].shape == (1, 32, H, 4)
        assert "| reach-wall-v3 |" in (tmp_path / "probe.md").read_text()


def test_decision_point_references():
    with SimEnv("pick-place-wall-v3", image_size=8) as env:
        obs, step, ref = decision_point(env, 1_000_000, 5)
    assert ref.shape == (2, 5, 4) and ref.dtype == np.float32
    assert (ref[0, :, 0] == -1).all() and (ref[1, :, 0] == 1).all()
    assert step > 0 and obs.state.shape == (39,)


def test_classify_and_energy_distance():
    ref = np.zeros((2, 4, 4), np.float32)
    ref[0, :, 0], ref[1, :, 0] = -1.0, 1.0
    samples = np.zeros((5, 4, 4), np.float32)
    samples[:, :, 0] = np.array([-1.0, -0.6, 0.0, 0.4, 0.9])[:, None]
    scores, labels = classify(samples, ref, n=2)
    np.testing.assert_allclose(scores, [-1.0, -0.6, 0.0, 0.4, 0.9], atol=1e-6)
    assert labels.tolist() == [0, 0, -1, -1, 1]
    assert classify(samples, ref, n=2, kappa=0.3)[1].tolist() == [0, 0, -1, 1, 1]
    with pytest.raises(ValueError, match="identical"):
        classify(samples, np.zeros((2, 4, 4)), n=2)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    assert abs(energy_distance(x, y)) < 0.1 < energy_distance(x, y + 1.0)
    bimodal = np.concatenate([x[:100] - 2, x[100:] + 2])
    assert energy_distance(bimodal, x * 0.1) > 1.0  # the mean is far from two modes


def test_compare_reports():
    def run(kind):
        client = ScriptedClient(_task_from_episode_id, kind)
        return probe(client, ["reach-wall-v3"], 1, 8, image_size=8)

    cmp = compare_reports(run("coin"), run("mean"))["reach-wall-v3"]
    assert cmp["commit_share"] == [1.0, 0.0] and cmp["energy_distance"] > 0.5


@pytest.mark.parametrize(
    "args, flag",
    [
        (["collect", "--suite", "bimodal", "--tasks", "reach-v3"], "--suite"),
        (["collect", "--suite", "nope"], "--suite"),
        (["collect", "--tasks", "reach-v3", "--mode", "left"], "--mode"),
        (["collect", "--suite", "bimodal", "--mode", "up"], "--mode"),
        (["probe", "--tasks", "reach-v3"], "--tasks"),
    ],
)
def test_cli_flags(args, flag, tmp_path):
    res = CliRunner().invoke(sim_app, [*args, "--out", str(tmp_path / "o")], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and flag in res.output, res.output
    assert SUITES["bimodal"] == BIMODAL_TASKS
