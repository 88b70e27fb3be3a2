"""Scripted-expert collection and the reflex-demos dataset format (real MetaWorld)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from reflex_serve.sim.collect import EVAL_SEED_START, CollectionError, collect
from reflex_serve.sim.dataset import load_demos, read_meta
from reflex_serve.sim.tasks import get_task

TASKS = ["reach-v3", "button-press-v3"]


@pytest.fixture(scope="module")
def demos_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    res = collect(TASKS, 2, seed=5, out_dir=out, image_size=24, progress=False)
    return out, res


def test_meta_and_task_files(demos_dir):
    out, res = demos_dir
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "reflex-demos" and meta["version"] == 1
    assert meta["cameras"] == [{"name": "corner2", "height": 24, "width": 24}]
    assert meta["state_mode"] == "full" and meta["state_dim"] == 39 and meta["action_dim"] == 4
    assert meta["tasks"] == TASKS and meta["seed"] == 5 and meta["episodes_per_task"] == 2
    assert "created_at" in meta
    assert sorted(p.name for p in out.glob("*.npz")) == sorted(f"{t}.npz" for t in TASKS)
    with np.load(out / "reach-v3.npz") as f:
        n = f["action"].shape[0]
        assert f["images"].shape == (n, 1, 24, 24, 3) and f["images"].dtype == np.uint8
        assert f["state"].shape == (n, 39) and f["state"].dtype == np.float32
        assert f["action"].dtype == np.float32
        assert f["episode_index"].dtype == np.int32 and f["frame_index"].dtype == np.int32
        assert f["episode_ids"].dtype == np.int32 and f["episode_seed"].dtype == np.int64
        assert f["episode_instruction"].dtype.kind == "U"
        assert f["episode_success"].dtype == np.bool_ and f["episode_length"].dtype == np.int32
    assert [r.episodes for r in res.tasks] == [2, 2]


def test_round_trip(demos_dir):
    out, _ = demos_dir
    d = load_demos(out)
    n = len(d)
    assert (
        d.images.shape == (n, 1, 24, 24, 3)
        and d.state.shape == (n, 39)
        and d.action.shape == (n, 4)
    )
    assert d.num_episodes == 4
    assert len(np.unique(d.episode_ids)) == 4  # unique across task files
    assert d.episode_length.sum() == n
    assert np.all(np.abs(d.action) <= 1.0)
    assert d.episode_success.all()
    assert list(d.episode_seed) == [5, 6, 5, 6]  # attempt k uses seed + k, per task
    for e in range(d.num_episodes):
        sl = d.episode_frames(int(d.episode_ids[e]))
        assert np.all(d.episode_index[sl] == d.episode_ids[e])
        np.testing.assert_array_equal(d.frame_index[sl], np.arange(d.episode_length[e]))
        assert d.instruction(sl.start) == d.episode_instruction[e]
        task = d.tasks[d.episode_task[e]]
        assert d.episode_instruction[e] in get_task(task).instructions
        assert np.all(d.task_index[sl] == d.episode_task[e])
    assert d.frame_instructions().shape == (n,)
    sub = load_demos(out, tasks=["button-press-v3"])
    assert sub.tasks == ["button-press-v3"] and sub.num_episodes == 2
    with pytest.raises(KeyError):
        load_demos(out, tasks=["door-open-v3"])


def test_episodes_hold_after_success(demos_dir):
    out, _ = demos_dir
    meta = read_meta(out)
    for task, info in meta["collection"].items():
        assert info["episodes"] == 2 and info["attempts"] >= 2
        assert info["length_max"] < get_task(task).max_steps  # ended by success + hold
    d = load_demos(out)
    from reflex_serve.sim.env import SimEnv

    with SimEnv(
        "reach-v3", image_size=24
    ) as env:  # replay episode 0: success 5 steps before its end
        env.reset(int(d.episode_seed[0]))
        first = None
        for t, a in enumerate(d.action[: d.episode_length[0]]):
            _, ok, _ = env.step(a)
            if ok and first is None:
                first = t + 1
        assert first == d.episode_length[0] - 5


def test_same_seed_reproduces_different_seed_differs(demos_dir, tmp_path):
    out, _ = demos_dir
    collect(["reach-v3"], 2, seed=5, out_dir=tmp_path / "a", image_size=24, progress=False)
    collect(["reach-v3"], 2, seed=50, out_dir=tmp_path / "b", image_size=24, progress=False)
    ref, a, b = (load_demos(p, tasks=["reach-v3"]) for p in (out, tmp_path / "a", tmp_path / "b"))
    for key in ("images", "state", "action", "episode_seed", "episode_instruction"):
        np.testing.assert_array_equal(getattr(ref, key), getattr(a, key))
    assert not np.array_equal(ref.state[0, 36:39], b.state[0, 36:39])  # goal position differs
    assert list(b.episode_seed) == [50, 51]


def test_proprio_mode(tmp_path):
    collect(
        ["reach-v3"],
        1,
        seed=0,
        out_dir=tmp_path,
        image_size=16,
        state_mode="proprio",
        progress=False,
    )
    d = load_demos(tmp_path)
    assert d.meta["state_mode"] == "proprio" and d.meta["state_dim"] == 4
    assert d.state.shape[1] == 4 and d.state_dim == 4


def test_mismatching_files_are_rejected(tmp_path):
    collect(["reach-v3", "push-v3"], 1, seed=0, out_dir=tmp_path, image_size=16, progress=False)
    path = tmp_path / "push-v3.npz"
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    bad_state = dict(arrays, state=arrays["state"][:, :4])
    np.savez_compressed(path, **bad_state)
    with pytest.raises(ValueError, match=r"push-v3\.npz.*'state'"):
        load_demos(tmp_path)
    bad_images = dict(arrays, images=np.zeros((len(arrays["state"]), 1, 32, 32, 3), np.uint8))
    np.savez_compressed(path, **bad_images)
    with pytest.raises(ValueError, match=r"push-v3\.npz.*'images'"):
        load_demos(tmp_path)
    dup_ids = dict(
        arrays,
        episode_ids=np.zeros(1, np.int32),
        episode_index=np.zeros_like(arrays["episode_index"]),
    )
    np.savez_compressed(path, **dup_ids)
    with pytest.raises(ValueError, match=r"push-v3\.npz.*'episode_ids'"):
        load_demos(tmp_path)
    del arrays["action"]
    np.savez_compressed(path, **arrays)
    with pytest.raises(ValueError, match=r"push-v3\.npz.*missing field 'action'"):
        load_demos(tmp_path)


def test_collect_errors(tmp_path):
    with pytest.raises(CollectionError, match=r"reach-v3: only 0 of 1 .* 2 attempts"):
        collect(
            ["reach-v3"],
            1,
            out_dir=tmp_path / "x",
            image_size=16,
            progress=False,
            max_steps=5,
            max_attempts=2,
        )
    with pytest.raises(ValueError, match="evaluation range"):
        collect(["reach-v3"], 1, seed=EVAL_SEED_START - 3, out_dir=tmp_path / "y", progress=False)
    collect(["reach-v3"], 1, out_dir=tmp_path / "z", image_size=16, progress=False)
    with pytest.raises(FileExistsError):
        collect(["reach-v3"], 1, out_dir=tmp_path / "z", image_size=16, progress=False)
    # failures kept on request
    res = collect(
        ["reach-v3"],
        1,
        out_dir=tmp_path / "z",
        image_size=16,
        progress=False,
        overwrite=True,
        keep_failures=True,
        max_steps=45,
    )
    d = load_demos(tmp_path / "z")
    assert d.episode_success.sum() == 1 and len(d.episode_success) == res.tasks[0].attempts
    assert np.all(d.episode_length[~d.episode_success] == 45)
