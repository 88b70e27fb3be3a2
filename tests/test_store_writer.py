"""The non-blocking writer: batches, flush interval, close, drops, retries, privacy."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import OperationalError

from reflex_serve.runtime.types import ActResult, Observation
from reflex_serve.server.observations import ActParams
from reflex_serve.server.state import ActRecord
from reflex_serve.storage.models import Episode, Image, Request
from reflex_serve.storage.records import FrameRecord, Privacy, hash_instruction
from reflex_serve.storage.writer import StoreWriter, WriterConfig

# Fixtures that run each test on SQLite and on PostgreSQL.


def frame(i: int, **kw) -> FrameRecord:
    rng = np.random.default_rng(i)
    fields = {
        "request_id": f"r{i}",
        "source": "served",
        "received_at": datetime.now(UTC),
        "episode_id": "ep",
        "step": i,
        "instruction": "open the drawer",
        "state": np.zeros(4, np.float32),
        "actions": np.ones((8, 4), np.float32),
        "images": {"corner2": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)},
    }
    fields.update(kw)
    return FrameRecord(**fields)


def act_record(i: int) -> ActRecord:
    obs = Observation(
        images={"corner2": np.full((16, 16, 3), i, np.uint8)},
        state=np.arange(4, dtype=np.float32),
        instruction="press the button",
    )
    result = ActResult(
        actions=np.full((8, 4), 0.5, np.float32),
        num_steps=10,
        prefix_ms=1.0,
        expert_ms=2.0,
        total_ms=3.5,
        cache_hit=True,
        version="feedbeef0001",
    )
    params = ActParams(num_steps=None, seed=3, episode_id="ep-act", step=i)
    return ActRecord(
        f"req-{i}", "http_json", 1_767_225_600.0 + i, obs, params, result, 4.0, "10.0.0.1:4000"
    )


def wait_for(predicate, timeout_s: float) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


def test_records_are_committed_within_one_flush_interval(store):
    writer = StoreWriter(store, WriterConfig(flush_interval_s=0.3)).start()
    for i in range(3):
        assert writer.submit(frame(i))
    waited = wait_for(lambda: store.count(Request) == 3, 5)
    assert waited < 0.3 + 0.5
    writer.close()
    assert writer.counts() == {"enqueued": 3, "written": 3, "dropped": 0, "failed": 0, "queued": 0}


def test_a_full_batch_commits_before_the_interval(store):
    writer = StoreWriter(store, WriterConfig(flush_interval_s=60, batch_size=5)).start()
    for i in range(5):
        writer.submit(frame(i))
    wait_for(lambda: store.count(Request) == 5, 5)
    writer.close()


def test_a_small_queue_wakes_the_writer_when_half_full(store):
    writer = StoreWriter(store, WriterConfig(queue_size=4, flush_interval_s=60)).start()
    for i in range(2):
        writer.submit(frame(i))
    wait_for(lambda: store.count(Request) == 2, 5)
    writer.close()


def test_close_commits_everything_queued(store):
    writer = StoreWriter(store, WriterConfig(flush_interval_s=60, batch_size=64)).start()
    for i in range(300):
        writer.submit(frame(i))
    assert writer.close()
    assert store.count(Request) == 300 and writer.counts()["written"] == 300
    assert not writer.submit(frame(999))  # closed: dropped, counted
    assert writer.counts()["dropped"] == 1


def test_flush_waits_for_earlier_records(store):
    writer = StoreWriter(store, WriterConfig(flush_interval_s=60)).start()
    for i in range(7):
        writer.submit(frame(i))
    assert writer.flush(10)
    assert store.count(Request) == 7
    writer.close()


def test_a_full_queue_drops_and_counts_never_blocks(store, caplog):
    release = threading.Event()
    real_write = store.write

    def slow_write(frames, *args, **kw):
        release.wait(10)
        return real_write(frames, *args, **kw)

    store.write = slow_write
    registry = CollectorRegistry()
    writer = StoreWriter(store, WriterConfig(queue_size=3, batch_size=1), registry=registry)
    writer.start()
    caplog.set_level(logging.WARNING, "reflex_serve.storage.writer")
    assert writer.submit(frame(0))
    wait_for(lambda: writer.counts()["queued"] == 0, 5)  # the thread holds it, blocked
    start = time.perf_counter()
    accepted = [writer.submit(frame(i)) for i in range(1, 6)]
    assert time.perf_counter() - start < 0.05
    assert accepted == [True, True, True, False, False]
    assert registry.get_sample_value("reflex_collect_dropped_total") == 2
    assert registry.get_sample_value("reflex_collect_queue_depth") == 3
    assert "dropped 1 record(s) (queue 3/3 full" in caplog.text  # rate-limited: one line
    release.set()
    writer.close()
    assert store.count(Request) == 4
    assert registry.get_sample_value("reflex_collect_written_total") == 4


def test_act_records_are_converted_in_the_writer_with_privacy_applied(store):
    privacy = Privacy(hash_instructions=True, store_images=False)
    writer = StoreWriter(store, WriterConfig(flush_interval_s=0.1), privacy).start()
    for i in range(2):
        writer.submit(act_record(i))
    writer.close()
    with store.session() as s:
        rows = s.query(Request).order_by(Request.step).all()
    assert [r.request_id for r in rows] == ["req-0", "req-1"]
    assert {r.instruction for r in rows} == {hash_instruction("press the button")}
    assert rows[1].received_at == datetime.fromtimestamp(1_767_225_601.0, UTC)
    assert (rows[1].model_version, rows[1].cache_hit, rows[1].seed, rows[1].client) == (
        "feedbeef0001",
        True,
        3,
        "10.0.0.1:4000",
    )
    assert (rows[1].transport, rows[1].server_ms, rows[1].num_steps) == ("http_json", 4.0, 10)
    assert store.count(Image) == 0
    assert store.episode("ep-act").instruction == hash_instruction("press the button")
    assert hash_instruction("press the button").startswith("sha256:")


def test_invalid_records_are_rejected_alone(store):
    writer = StoreWriter(store, WriterConfig(flush_interval_s=0.1)).start()
    writer.submit(frame(1))
    writer.submit(frame(2, episode_id="e" * 500))
    writer.submit("not a record")
    writer.submit(frame(3))
    writer.close()
    assert store.count(Request) == 2
    assert writer.counts()["failed"] == 2 and writer.counts()["written"] == 2
    assert store.count(Episode) == 1


def test_a_refused_batch_is_retried_record_by_record(store):
    writer = StoreWriter(store, WriterConfig(flush_interval_s=60)).start()
    first = frame(1)
    writer.submit(first)
    writer.submit(frame(2, id=first.id))  # same primary key: the database refuses the batch
    writer.submit(frame(3))
    writer.close()
    assert store.count(Request) == 2
    counts = writer.counts()
    assert (counts["written"], counts["failed"]) == (2, 1)


def test_an_unavailable_store_is_retried_until_it_comes_back(store, caplog):
    real_write, failures = store.write, []

    def flaky_write(frames, *args, **kw):
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real_write(frames, *args, **kw)

    store.write = flaky_write
    writer = StoreWriter(store, WriterConfig(flush_interval_s=0.05)).start()
    for i in range(4):
        writer.submit(frame(i))
    writer.close()
    assert store.count(Request) == 4 and len(failures) == 2
    assert "store unavailable" in caplog.text


def test_config_is_checked():
    with pytest.raises(ValueError, match="queue_size"):
        WriterConfig(queue_size=0)
