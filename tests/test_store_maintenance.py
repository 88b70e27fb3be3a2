"""`reflex data stats | prune | export | import-demos` and the LeRobot v3 export, both backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from reflex_serve.sim.dataset import EpisodeRecord, make_meta, write_meta, write_task_file
from reflex_serve.storage import schema
from reflex_serve.storage.cli import data_app
from reflex_serve.storage.demos import write_demo_episode
from reflex_serve.storage.export import export_lerobot
from reflex_serve.storage.maintenance import parse_duration, prune, store_stats
from reflex_serve.storage.models import Episode, Image, Request
from reflex_serve.storage.reader import ReadQuery
from reflex_serve.storage.records import FrameRecord, decode_png

# Fixtures that run each test on SQLite and on PostgreSQL.

runner = CliRunner()
NOW = datetime.now(UTC)


def served(i: int, age_days: float, episode: str | None, image: np.ndarray, version="v1"):
    return FrameRecord(
        request_id=f"r{i}",
        source="served",
        received_at=NOW - timedelta(days=age_days),
        episode_id=episode,
        step=i,
        instruction="push",
        state=np.full(4, i, np.float32),
        actions=np.full((8, 2), i, np.float32),
        images={"corner2": image},
        model_version=version,
    )


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def demo(store, seed: int, length: int = 4):
    rng = np.random.default_rng(seed)
    write_demo_episode(
        store,
        task="reach-v3",
        seed=seed,
        instruction="reach the goal",
        success=seed % 2 == 0,
        cameras=["corner2"],
        images=rng.integers(0, 256, (length, 1, 16, 16, 3), dtype=np.uint8),
        state=rng.standard_normal((length, 4)).astype(np.float32),
        action=rng.standard_normal((length, 2)).astype(np.float32),
        run_id="t",
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("1d12h", timedelta(hours=36)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_durations_parse(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "1d-2h", "thirty days"])
def test_bad_durations_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="e.g. 30d, 12h"):
        parse_duration(text)


def test_stats_count_by_source_version_and_outcome(store):
    shared = image(0)
    store.write(
        [
            served(1, 0, "a", shared),
            served(2, 0, "a", shared),
            served(3, 0, "b", image(1), version="v2"),
            served(4, 0, None, image(2)),
        ]
    )
    demo(store, 10)
    demo(store, 11)
    store.report_outcome("a", "success")
    st = store_stats(store)
    assert st.requests_by_source == {"demo": 8, "served": 4}
    assert st.requests_by_version == {"v1": 3, "v2": 1}
    assert st.episodes_by_source == {"demo": 2, "served": 2}
    assert (st.episodes_with_outcome, st.successes) == (3, 2)  # demo seeds 10 (ok), 11 (failed)
    assert st.success_rate == pytest.approx(2 / 3)
    assert st.images == 3 + 8 and st.image_bytes > 0
    assert st.first <= st.last and st.revision == schema.head_revision()
    assert json.loads(json.dumps(st.to_dict()))["success_rate"] == pytest.approx(2 / 3)


def test_prune_removes_old_requests_orphan_images_and_empty_episodes(store):
    shared = image(0)
    store.write(
        [
            served(1, 40, "old", shared),
            served(2, 40, "old", image(1)),
            served(3, 35, "mixed", image(2)),
            served(4, 1, "mixed", shared),
            served(5, 50, None, image(3)),
        ]
    )
    store.report_outcome("fresh", "success", create_as="served")
    demo(store, 20)
    with store.session() as s:  # demo frames are as old as the served ones
        s.query(Request).filter(Request.source == "demo").update(
            {Request.received_at: NOW - timedelta(days=60)}
        )
        s.query(Episode).filter(Episode.source == "demo").update(
            {Episode.started_at: NOW - timedelta(days=60), Episode.ended_at: None}
        )
    dry = prune(store, timedelta(days=30), dry_run=True)
    assert store.count(Request) == 9
    report = prune(store, timedelta(days=30))
    assert (dry.requests, dry.episodes, dry.images) == (
        report.requests,
        report.episodes,
        report.images,
    )
    assert (report.requests, report.episodes, report.images) == (4, 1, 3)
    assert report.image_bytes > 0 and not report.dry_run
    assert store.count(Request, source="served") == 1 and store.count(Request, source="demo") == 4
    assert store.episode("old") is None and store.episode("mixed") is not None
    assert store.episode("fresh") is not None  # no requests yet, but recent
    assert store.count(Image) == 1 + 4  # the shared frame is still used, plus the demo frames
    demos = prune(store, timedelta(days=30), ("demo",))
    assert (demos.requests, demos.episodes, demos.images) == (4, 1, 4)
    assert store.count(Episode) == 2


def test_cli_stats_prune_and_errors(store, tmp_path):
    store.write([served(1, 40, "e", image(0)), served(2, 0, "e", image(1))])
    url = store.url
    res = runner.invoke(data_app, ["stats", "--store", url])
    assert res.exit_code == 0, res.output
    assert "requests    demo 0  served 2" in res.output
    assert "images      2 frames" in res.output and f"(schema {schema.head_revision()})" in res.output
    res = runner.invoke(data_app, ["stats", "--store", url, "--json"])
    assert json.loads(res.output)["requests_by_source"] == {"demo": 0, "served": 2}
    res = runner.invoke(data_app, ["prune", "--older-than", "30d", "--dry-run", "--store", url])
    assert res.exit_code == 0 and res.output.startswith(
        "would remove 1 requests, 0 episodes, 1 images"
    )
    res = runner.invoke(data_app, ["prune", "--older-than", "30d", "--store", url])
    assert res.output.startswith("removed 1 requests, 0 episodes, 1 images")
    assert store.count(Request) == 1
    res = runner.invoke(data_app, ["prune", "--older-than", "soon", "--store", url])
    assert res.exit_code == 2 and "--older-than" in res.output
    res = runner.invoke(data_app, ["stats", "--store", "mysql://x@y/z"])
    assert res.exit_code == 2 and "not supported" in res.output


def test_data_dir_holds_the_embedded_store(tmp_path, monkeypatch):
    monkeypatch.delenv("REFLEX_STORE", raising=False)
    res = runner.invoke(data_app, ["stats", "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "store.sqlite").is_file()


def test_import_demos_copies_a_demo_directory(store, tmp_path):
    rng = np.random.default_rng(0)
    episodes = [
        EpisodeRecord(
            seed=s,
            instruction=f"push {s}",
            success=True,
            images=rng.integers(0, 256, (n, 1, 16, 16, 3), dtype=np.uint8),
            state=rng.standard_normal((n, 39)).astype(np.float32),
            action=rng.uniform(-1, 1, (n, 4)).astype(np.float32),
        )
        for s, n in ((3, 5), (4, 7))
    ]
    write_task_file(tmp_path / "demos", "push-v3", episodes, 0, camera_names=["corner2"])
    write_meta(
        tmp_path / "demos",
        make_meta(
            cameras=["corner2"],
            image_size=(16, 16),
            state_mode="full",
            state_dim=39,
            tasks=["push-v3"],
            seed=3,
            episodes_per_task=2,
        ),
    )
    res = runner.invoke(data_app, ["import-demos", str(tmp_path / "demos"), "--store", store.url])
    assert res.exit_code == 0, res.output
    assert "imported 2 demo episodes (12 frames)" in res.output
    assert store.count(Request, source="demo") == 12 and store.count(Episode, source="demo") == 2
    res = runner.invoke(data_app, ["import-demos", str(tmp_path / "nope"), "--store", store.url])
    assert res.exit_code == 2 and "meta.json" in res.output


def test_export_writes_a_lerobot_v3_layout_that_reads_back(store, tmp_path):
    frames = [served(i, 0, f"ep{i // 3}", image(i)) for i in range(6)] + [
        served(9, 0, None, image(9))
    ]
    store.write(frames)
    store.report_outcome("ep1", "failure", reward=-1.0)
    demo(store, 0, length=4)
    out = tmp_path / "lerobot"
    res = runner.invoke(
        data_app,
        ["export", "--output", str(out), "--store", store.url, "--chunk-size", "8", "--fps", "20"],
    )
    assert res.exit_code == 0, res.output
    assert "exported 11 frames of 4 episodes" in res.output and "read back OK" in res.output
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["video_path"] is None
    assert (info["total_frames"], info["total_episodes"], info["total_tasks"]) == (11, 4, 2)
    assert info["features"]["observation.images.corner2"]["dtype"] == "image"
    assert info["features"]["observation.images.corner2"]["shape"] == [16, 16, 3]
    assert info["features"]["reflex.chunk"]["shape"] == [16]
    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    assert data.num_rows == 11
    assert set(info["features"]) == set(data.column_names)
    rows = data.to_pylist()
    assert [r["index"] for r in rows] == list(range(11))
    by_request = {r["reflex.request_id"]: r for r in rows}
    r4 = by_request["r4"]
    np.testing.assert_array_equal(decode_png(r4["observation.images.corner2"]["bytes"]), image(4))
    assert r4["observation.state"] == [4.0] * 4 and r4["action"] == [4.0, 4.0]
    assert (r4["frame_index"], r4["timestamp"]) == (1, pytest.approx(0.05))
    episodes = pq.read_table(
        out / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    ).to_pylist()
    assert [e["length"] for e in episodes] == [4, 3, 3, 1]  # demo ep, ep0, ep1, the loose request
    assert [e["dataset_from_index"] for e in episodes] == [0, 4, 7, 10]
    ep1 = next(e for e in episodes if e["reflex.episode_id"] == "ep1")
    assert (ep1["reflex.outcome"], ep1["reflex.reward"], ep1["tasks"]) == (
        "failure",
        -1.0,
        ["push"],
    )
    tasks = pq.read_table(out / "meta" / "tasks.parquet").to_pylist()
    assert sorted((t["task"], t["task_index"]) for t in tasks) == [
        ("push", 1),
        ("reach the goal", 0),
    ]
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert stats["action"]["count"] == [11]
    res = runner.invoke(data_app, ["export", "--output", str(out), "--store", store.url])
    assert res.exit_code == 2 and "not empty" in res.output


def test_export_of_an_empty_selection_is_an_error(store, tmp_path):
    with pytest.raises(ValueError, match="no rows with images"):
        export_lerobot(store, tmp_path / "o", ReadQuery(sources=("served",)))


def test_tasks_parquet_reads_as_lerobot_reads_it_with_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    from reflex_serve.storage.export import _write_tasks

    _write_tasks(tmp_path / "tasks.parquet", {"reach the goal": 0, "push": 1})
    tasks = pd.read_parquet(tmp_path / "tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    assert tasks.loc["push", "task_index"] == 1
