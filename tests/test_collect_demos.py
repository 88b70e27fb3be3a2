"""`reflex sim collect --store URL`: real MetaWorld demos land in the store (source demo)
and read back as the same training frames as the npz files."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from typer.testing import CliRunner

from reflex_serve.policy.data import FrameData
from reflex_serve.sim.cli import sim_app
from reflex_serve.sim.dataset import load_demos
from reflex_serve.storage.models import Episode, Request
from reflex_serve.storage.reader import ReadQuery, load_frame_data, read_all
from reflex_serve.storage.store import Store

# Fixtures that run each test on SQLite and on PostgreSQL.

runner = CliRunner()


@pytest.mark.timeout(300)
def test_sim_collect_writes_the_same_demos_into_the_store(tmp_path, store_url):
    out = tmp_path / "demos"
    args = [
        "collect",
        "--tasks",
        "reach-v3",
        "--episodes-per-task",
        "2",
        "--image-size",
        "16x24",
        "--cameras",
        "corner2,topview",
        "--state",
        "proprio",
        "--out",
        str(out),
        "--no-progress",
        "--store",
        store_url,
    ]
    res = runner.invoke(sim_app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "demos also written to Store(" in res.output
    demos = load_demos(out)  # the npz output is unchanged
    store = Store.open(store_url)
    assert store.count(Request, source="demo") == len(demos)
    assert store.count(Episode, source="demo") == demos.num_episodes == 2
    with store.session() as s:
        episodes = s.query(Episode).order_by(Episode.id).all()
    seeds = sorted(int(e.id.split("-seed")[1].split("-")[0]) for e in episodes)
    assert seeds == sorted(demos.episode_seed.tolist())
    assert {(e.task, e.outcome) for e in episodes} == {("reach-v3", "success")}
    assert sorted(e.instruction for e in episodes) == sorted(demos.episode_instruction.tolist())

    frames = load_frame_data(store, ReadQuery(sources=("demo",), chunk_size=8))
    expected = FrameData.from_demos(demos)
    order = np.argsort([f"demo-reach-v3-seed{s}" for s in demos.episode_seed])  # store order
    reorder = np.concatenate(
        [np.arange(len(demos))[demos.episode_frames(int(eid))] for eid in demos.episode_ids[order]]
    )
    np.testing.assert_array_equal(frames.images, expected.images[reorder])
    np.testing.assert_array_equal(frames.state, expected.state[reorder])
    np.testing.assert_array_equal(frames.action, expected.action[reorder])
    assert frames.instruction.tolist() == expected.instruction[reorder].tolist()
    batch = read_all(store, ReadQuery(sources=("demo",), chunk_size=8))
    assert batch.cameras == ["corner2", "topview"]
    assert batch.images.shape[1:] == (2, 16, 24, 3)
    store.close()


def test_a_bad_store_url_fails_before_collecting(tmp_path):
    res = runner.invoke(
        sim_app,
        [
            "collect",
            "--tasks",
            "reach-v3",
            "--out",
            str(tmp_path / "d"),
            "--store",
            "mysql://u@h/db",
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 2 and "--store" in res.output and "not supported" in res.output
    assert not (tmp_path / "d" / "meta.json").exists()
