"""The data model on both backends: frames, content-addressed images, episodes, outcomes,
model versions, demos, and the reader (labels, filters, stable held-out split)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from reflex_serve.policy.data import FrameData, chunk_indices
from reflex_serve.storage.demos import write_demo_episode
from reflex_serve.storage.models import Episode, Image, Request, RequestImage, VersionTransition
from reflex_serve.storage.reader import ReadQuery, iter_batches, load_frame_data, read_all, split_of
from reflex_serve.storage.records import FrameRecord, InvalidRecord, decode_png, image_key
from reflex_serve.storage.versions import register_version, set_version_state, transitions

# Fixtures that run each test on SQLite and on PostgreSQL.

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def frame(
    i: int, episode: str | None = "ep-1", *, image_seed: int | None = None, **kw
) -> FrameRecord:
    rng = np.random.default_rng(i if image_seed is None else image_seed)
    defaults = {
        "request_id": f"req-{i}",
        "source": "served",
        "received_at": T0 + timedelta(seconds=i),
        "episode_id": episode,
        "step": i,
        "instruction": "push the puck",
        "state": rng.standard_normal(39).astype(np.float32),
        "actions": rng.standard_normal((8, 4)).astype(np.float32),
        "images": {"corner2": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
        "model_version": "abc123def456",
        "num_steps": 10,
        "seed": 7,
        "prefix_ms": 1.5,
        "expert_ms": 9.0,
        "total_ms": 11.0,
        "server_ms": 12.5,
        "cache_hit": False,
        "transport": "http_msgpack",
        "client": "127.0.0.1:5555",
    }
    defaults.update(kw)
    return FrameRecord(**defaults)


def test_a_frame_round_trips_with_every_field(store):
    f = frame(3)
    result = store.write([f])
    assert (result.requests, result.images, result.episodes) == (1, 1, 1)
    with store.session() as s:
        row = s.get(Request, f.id)
        link = s.scalars(select(RequestImage)).one()
        image = s.get(Image, link.image_sha256)
        episode = s.get(Episode, "ep-1")
    assert (row.request_id, row.source, row.episode_id, row.step) == ("req-3", "served", "ep-1", 3)
    assert row.received_at == T0 + timedelta(seconds=3)
    assert row.instruction == "push the puck"
    np.testing.assert_array_equal(np.frombuffer(row.state, "<f4"), f.state)
    np.testing.assert_array_equal(np.frombuffer(row.actions, "<f4").reshape(8, 4), f.actions)
    assert (row.state_dim, row.chunk_size, row.action_dim) == (39, 8, 4)
    assert (row.model_version, row.num_steps, row.seed) == ("abc123def456", 10, 7)
    assert (row.prefix_ms, row.expert_ms, row.total_ms, row.server_ms) == (1.5, 9.0, 11.0, 12.5)
    assert (row.cache_hit, row.transport, row.client) == (False, "http_msgpack", "127.0.0.1:5555")
    assert (link.camera, link.position) == ("corner2", 0)
    assert image.sha256 == image_key(f.images["corner2"]) and image.format == "png"
    assert (image.height, image.width, image.channels, image.nbytes) == (64, 64, 3, len(image.data))
    np.testing.assert_array_equal(decode_png(image.data), f.images["corner2"])
    assert (episode.source, episode.instruction, episode.started_at, episode.ended_at) == (
        "served",
        "push the puck",
        row.received_at,
        row.received_at,
    )


def test_identical_frames_are_stored_once(store):
    frames = [frame(i, image_seed=0) for i in range(5)]
    assert store.write(frames[:3]).images == 1
    assert store.write(frames[3:]).images == 0
    assert store.count(Image) == 1 and store.count(RequestImage) == 5 and store.count(Request) == 5


def test_requests_without_episode_or_step_are_logged(store):
    store.write([frame(1, episode=None, step=None)])
    assert store.count(Request) == 1 and store.count(Episode) == 0


def test_an_episode_spans_its_frames_across_batches(store):
    store.write([frame(5), frame(6)])
    store.write([frame(2)])
    ep = store.episode("ep-1")
    assert (ep.started_at, ep.ended_at) == (T0 + timedelta(seconds=2), T0 + timedelta(seconds=6))


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"episode_id": "x" * 129}, "episode_id"),
        ({"request_id": ""}, "request_id"),
        ({"state": np.array([np.nan] * 39, np.float32)}, "state"),
        ({"actions": np.zeros(4, np.float32)}, "actions"),
        ({"images": {"corner2": np.zeros((4, 4, 3), np.float32)}}, "images.corner2"),
        ({"source": "replay"}, "source"),
    ],
)
def test_a_bad_record_fails_the_whole_write_and_nothing_is_half_written(store, bad, field):
    with pytest.raises(InvalidRecord) as info:
        store.write([frame(1), frame(2, **bad)])
    assert info.value.field == field
    assert store.count(Request) == store.count(Image) == store.count(Episode) == 0


def test_outcomes_are_stored_with_the_episode_and_unknown_episodes_are_left_alone(store):
    store.write([frame(1)])
    report = store.report_outcome("ep-1", "success", reward=1.0, note="placed")
    assert (report.outcome, report.reward, report.note, report.source) == (
        "success",
        1.0,
        "placed",
        "served",
    )
    again = store.report_outcome("ep-1", "failure")
    ep = store.episode("ep-1")
    assert (ep.outcome, ep.reward, ep.note, ep.reported_at) == (
        "failure",
        None,
        None,
        again.reported_at,
    )
    assert store.report_outcome("never-seen", "success") is None
    assert store.episode("never-seen") is None
    created = store.report_outcome("queued", "success", create_as="served")
    assert created.source == "served" and store.episode("queued").instruction is None
    store.write([frame(9, episode="queued")])  # the writer catches up
    ep = store.episode("queued")
    assert (ep.outcome, ep.instruction) == ("success", "push the puck")
    with pytest.raises(ValueError, match="outcome must be one of"):
        store.report_outcome("ep-1", "maybe")


def test_model_versions_and_their_transitions_are_audited(store):
    manifest = {"digest": "sha256:" + "ab" * 32, "parent_version": None, "num_steps": 10}
    v = register_version(store, manifest, "active", actor="reflex-serve", reason="served")
    assert (v.version, v.state) == ("ab" * 6, "active")
    assert register_version(store, manifest, "candidate", actor="x").state == "active"
    set_version_state(store, manifest["digest"], "retired", actor="ops@lab", reason="superseded")
    history = [
        (t.from_state, t.to_state, t.actor, t.reason)
        for t in transitions(store, manifest["digest"])
    ]
    assert history == [
        (None, "active", "reflex-serve", "served"),
        ("active", "retired", "ops@lab", "superseded"),
    ]
    assert store.count(VersionTransition) == 2
    with pytest.raises(ValueError, match="state must be one of"):
        set_version_state(store, manifest["digest"], "deleted", actor="x")
    with pytest.raises(KeyError):
        set_version_state(store, "sha256:00", "active", actor="x")


def write_demo(store, seed: int, length: int = 5, task: str = "reach-v3"):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (length, 1, 64, 64, 3), dtype=np.uint8)
    state = rng.standard_normal((length, 39)).astype(np.float32)
    action = np.arange(length * 4, dtype=np.float32).reshape(length, 4) + 100 * seed
    write_demo_episode(
        store,
        task=task,
        seed=seed,
        instruction=f"reach {seed}",
        success=True,
        cameras=["corner2"],
        images=images,
        state=state,
        action=action,
        run_id="r1",
    )
    return images, state, action


def test_demo_labels_are_the_next_h_actions_of_the_episode(store):
    demos = [write_demo(store, seed, length=5 + seed) for seed in range(3)]
    ep = store.episode("demo-reach-v3-seed1-r1")
    assert (ep.source, ep.task, ep.instruction, ep.outcome) == (
        "demo",
        "reach-v3",
        "reach 1",
        "success",
    )
    batch = read_all(store, ReadQuery(sources=("demo",), chunk_size=3))
    assert len(batch) == 5 + 6 + 7
    assert list(batch.cameras) == ["corner2"] and batch.images.shape == (18, 1, 64, 64, 3)
    actions = np.concatenate([a for _, _, a in demos])
    episode_index = np.repeat(np.arange(3), [5, 6, 7])
    np.testing.assert_array_equal(batch.chunks, actions[chunk_indices(episode_index, 3)])
    np.testing.assert_array_equal(
        batch.images[:, 0], np.concatenate([i[:, 0] for i, _, _ in demos])
    )
    np.testing.assert_array_equal(batch.state, np.concatenate([s for _, s, _ in demos]))
    assert batch.steps.tolist() == [*range(5), *range(6), *range(7)]


def test_frame_data_from_the_store_trains_like_the_demo_files(store):
    demos = [write_demo(store, seed) for seed in range(2)]
    frames = load_frame_data(store, ReadQuery(sources=("demo",), chunk_size=8))
    assert isinstance(frames, FrameData)
    np.testing.assert_array_equal(frames.action, np.concatenate([a for _, _, a in demos]))
    assert frames.episode_index.tolist() == [0] * 5 + [1] * 5
    assert frames.instruction.tolist() == ["reach 0"] * 5 + ["reach 1"] * 5
    assert frames.images.dtype == np.uint8 and frames.state.dtype == np.float32
    with pytest.raises(ValueError, match="demo frames only"):
        load_frame_data(store, ReadQuery(sources=("served",)))


def test_served_labels_are_the_served_chunks_and_filters_apply(store):
    served = [
        frame(i, episode=f"ep-{i % 3}", model_version="v1" if i < 6 else "v2") for i in range(10)
    ]
    store.write(served)
    write_demo(store, 0)
    batches = list(iter_batches(store, ReadQuery(sources=("served",)), batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2]
    got = {rid: chunk for b in batches for rid, chunk in zip(b.request_ids, b.chunks)}
    for f in served:
        np.testing.assert_array_equal(got[f.request_id], f.actions)
    v2 = read_all(store, ReadQuery(sources=("served",), model_versions=("v2",)))
    assert sorted(v2.request_ids) == [f"req-{i}" for i in range(6, 10)]
    window = read_all(
        store,
        ReadQuery(
            sources=("served",), since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=5)
        ),
    )
    assert sorted(window.request_ids) == ["req-2", "req-3", "req-4"]
    padded = read_all(store, ReadQuery(sources=("served",), chunk_size=10))
    np.testing.assert_array_equal(padded.chunks[:, 8:], padded.chunks[:, 7:8].repeat(2, axis=1))
    both = read_all(store, ReadQuery(chunk_size=8))
    assert sorted(set(both.sources)) == ["demo", "served"] and len(both) == 15


def test_the_held_out_split_is_per_episode_and_stable_as_data_grows(store):
    store.write([frame(i, episode=f"ep-{i // 4}") for i in range(40)])
    first = read_all(store, ReadQuery(sources=("served",), split="holdout", holdout_pct=30))
    store.write([frame(i, episode=f"ep-{i // 4}") for i in range(40, 120)])
    later = read_all(store, ReadQuery(sources=("served",), split="holdout", holdout_pct=30))
    train = read_all(store, ReadQuery(sources=("served",), split="train", holdout_pct=30))
    assert set(first.request_ids) <= set(later.request_ids)
    assert not set(later.episode_ids) & set(train.episode_ids)
    assert len(later) + len(train) == 120
    assert all(split_of(e, 30) == "holdout" for e in later.episode_ids)
    assert 0 < len(set(later.episode_ids)) < 30
    assert split_of("ep-7", 0) == "train" and split_of("ep-7", 100) == "holdout"
    store.write([frame(500, episode=None)])
    loose = read_all(store, ReadQuery(sources=("served",), holdout_pct=30))
    assert loose.splits[list(loose.request_ids).index("req-500")] == split_of("req-500", 30)


def test_rows_without_images_are_skipped_unless_images_are_not_asked_for(store):
    store.write([frame(1), frame(2, images={})])
    assert read_all(store, ReadQuery(sources=("served",))).request_ids.tolist() == ["req-1"]
    light = read_all(store, ReadQuery(sources=("served",), with_images=False))
    assert light.images is None and len(light) == 2
