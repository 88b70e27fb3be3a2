"""--collect-data inside a real uvicorn server (in-process), on SQLite and PostgreSQL:
every served chunk is stored as served, outcomes are accepted, bad requests store nothing."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from reflex_serve.runtime.policy import Policy
from reflex_serve.server import codec
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.server.settings import ServerSettings
from reflex_serve.storage.collector import CollectOptions, DataCollector
from reflex_serve.storage.models import Episode, Image, ModelVersion, Request, VersionTransition
from reflex_serve.storage.records import Privacy
from reflex_serve.storage.writer import WriterConfig

# Fixtures that run each test on SQLite and on PostgreSQL.

MSGPACK = {"Content-Type": "application/msgpack"}


@pytest.fixture(scope="module")
def policy(tiny_export):
    return Policy(tiny_export)


def body(i: int, **extra) -> bytes:
    rng = np.random.default_rng(i)
    return codec.packb(
        {
            "images": {"corner2": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
            "state": rng.standard_normal(39).astype(np.float32),
            "instruction": "open the drawer",
            **extra,
        }
    )


def wait_for_metric(http: httpx.Client, line: str, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while line not in (text := http.get("/metrics").text):
        assert time.monotonic() < deadline, f"{line!r} not in /metrics"
        time.sleep(0.02)
    return text


def serving(policy, store_url, *, flush_s=0.2, privacy=None, **settings):
    options = CollectOptions(
        store=store_url,
        privacy=privacy or Privacy(),
        writer=WriterConfig(flush_interval_s=flush_s),
    )
    collector = DataCollector.open(options)
    app = create_app(policy, ServerSettings(warmup_iters=0, **settings), collector=collector)
    return collector, BackgroundServer(app)


def test_every_served_chunk_is_stored_with_its_fields(policy, store_url):
    collector, server = serving(policy, store_url)
    responses = []
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        for i in range(6):
            extra = {"episode_id": "ep-1", "step": i, "seed": i} if i < 4 else {}
            r = http.post("/act", content=body(i, **extra), headers=MSGPACK)
            assert r.status_code == 200
            responses.append(codec.unpackb(r.content))
        with connect(server.ws_url) as ws:
            ws.recv()
            ws.send(
                codec.packb(
                    {
                        "observation/image": np.zeros((64, 64, 3), np.uint8),
                        "observation/state": np.zeros(39, np.float32),
                        "prompt": "close it",
                        "episode_id": "ws-ep",
                        "step": 0,
                    }
                )
            )
            ws.recv()
        metrics = wait_for_metric(http, "reflex_collect_enqueued_total 7.0")
    store = collector.store
    assert store.count(Request) == 7 and store.count(Request, source="served") == 7
    with store.session() as s:
        rows = {r.request_id: r for r in s.query(Request)}
    for resp in responses:
        row = rows[resp["request_id"]]
        np.testing.assert_array_equal(
            np.frombuffer(row.actions, "<f4").reshape(8, 4), resp["actions"]
        )
        assert (row.model_version, row.num_steps, row.cache_hit) == (
            resp["model_version"],
            resp["num_steps"],
            resp["cache_hit"],
        )
        assert row.total_ms == pytest.approx(resp["timings"]["total_ms"])
        assert row.client.startswith("127.0.0.1:") and row.transport == "http_msgpack"
    stepped = sorted((r.step, r.seed) for r in rows.values() if r.episode_id == "ep-1")
    assert stepped == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert sum(r.episode_id is None for r in rows.values()) == 2
    ws_row = next(r for r in rows.values() if r.transport == "websocket")
    assert (ws_row.instruction, ws_row.episode_id) == ("close it", "ws-ep")
    assert store.count(Image) == 7 and store.count(Episode) == 2
    assert store.count(ModelVersion, state="active") == 1
    assert store.count(VersionTransition, actor="reflex-serve") == 1
    assert "reflex_collect_enqueued_total 7.0" in metrics
    assert "reflex_collect_dropped_total 0.0" in metrics
    assert "reflex_collect_queue_depth" in metrics
    store.close()


def test_outcomes_are_accepted_for_episodes_the_writer_has_not_committed_yet(policy, store_url):
    collector, server = serving(policy, store_url, flush_s=60)
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        assert (
            http.post(
                "/act", content=body(0, episode_id="ep-7", step=0), headers=MSGPACK
            ).status_code
            == 200
        )
        assert collector.store.count(Request) == 0  # still queued
        r = http.post(
            "/v1/episodes/ep-7/outcome",
            json={"outcome": "success", "reward": 1.5, "note": "drawer open"},
        )
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["episode_id"], got["source"], got["outcome"], got["reward"], got["note"]) == (
            "ep-7",
            "served",
            "success",
            1.5,
            "drawer open",
        )
        assert http.get("/v1/episodes/ep-7").json()["outcome"] == "success"
    store = collector.store
    ep = store.episode("ep-7")
    assert (ep.outcome, ep.reward, ep.note, ep.instruction) == (
        "success",
        1.5,
        "drawer open",
        "open the drawer",
    )
    assert store.count(Request, episode_id="ep-7") == 1
    store.close()


@pytest.mark.parametrize(
    "path, payload, status, code, field",
    [
        ("/v1/episodes/never-seen/outcome", {"outcome": "success"}, 404, "not_found", "episode_id"),
        ("/v1/episodes/ep-1/outcome", {"outcome": "maybe"}, 422, "invalid_field", "outcome"),
        ("/v1/episodes/ep-1/outcome", {}, 422, "invalid_field", "outcome"),
        (
            "/v1/episodes/ep-1/outcome",
            {"outcome": "success", "reward": "high"},
            422,
            "invalid_field",
            "reward",
        ),
        (
            "/v1/episodes/ep-1/outcome",
            b'{"outcome": "success", "reward": Infinity}',
            422,
            "invalid_field",
            "reward",
        ),
        (
            "/v1/episodes/ep-1/outcome",
            {"outcome": "success", "extra": 1},
            422,
            "invalid_field",
            "extra",
        ),
        (
            "/v1/episodes/ep-1/outcome",
            {"outcome": "success", "note": "x" * 5000},
            422,
            "invalid_field",
            "note",
        ),
        (
            f"/v1/episodes/{'e' * 129}/outcome",
            {"outcome": "success"},
            422,
            "invalid_field",
            "episode_id",
        ),
        ("/v1/episodes/never-seen", None, 404, "not_found", "episode_id"),
    ],
)
def test_bad_outcome_calls_are_clear_4xx_and_store_nothing(
    policy, store_url, path, payload, status, code, field
):
    collector, server = serving(policy, store_url)
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        assert (
            http.post("/act", content=body(0, episode_id="ep-1"), headers=MSGPACK).status_code
            == 200
        )
        if payload is None:
            r = http.get(path)
        elif isinstance(payload, bytes):
            r = http.post(path, content=payload, headers={"Content-Type": "application/json"})
        else:
            r = http.post(path, json=payload)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code and r.json()["error"]["field"] == field
    assert collector.store.episode("ep-1").outcome is None
    assert collector.store.episode("never-seen") is None
    collector.store.close()


def test_a_non_json_outcome_body_is_a_400_as_on_act(policy, store_url):
    collector, server = serving(policy, store_url)
    with server:
        r = httpx.post(
            server.url + "/v1/episodes/x/outcome",
            content=b"{nope",
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body"
    assert r.json()["error"]["message"].startswith("malformed JSON body: ")
    collector.store.close()


def test_bad_act_requests_are_4xx_and_never_reach_the_store(policy, store_url):
    collector, server = serving(policy, store_url, max_body_bytes=64 * 1024)
    huge = codec.packb(
        {
            "images": {"corner2": np.zeros((256, 256, 3), np.uint8)},
            "state": np.zeros(39, np.float32),
        }
    )
    cases = [
        (huge, 413, "payload_too_large"),
        (
            codec.packb(
                {
                    "images": {"corner2": np.zeros((32, 32, 3), np.uint8)},
                    "state": np.zeros(39, np.float32),
                }
            ),
            422,
            "invalid_field",
        ),
        (
            codec.packb(
                {
                    "images": {"corner2": np.zeros((64, 64, 3), np.uint16)},
                    "state": np.zeros(39, np.float32),
                }
            ),
            422,
            "invalid_field",
        ),
        (body(0, state="fast"), 422, "invalid_field"),
        (body(0, episode_id=["a"]), 422, "invalid_field"),
        (body(0, step=-1), 422, "invalid_field"),
        (b"\xc1", 400, "malformed_body"),
    ]
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        for content, status, code in cases:
            r = http.post("/act", content=content, headers=MSGPACK)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code)
        assert http.post("/act", content=body(1), headers=MSGPACK).status_code == 200
    store = collector.store
    assert store.count(Request) == 1 and store.count(Image) == 1
    assert collector.writer.counts()["failed"] == 0
    store.close()


def test_no_images_and_hashed_instructions_are_honoured(policy, store_url):
    privacy = Privacy(hash_instructions=True, store_images=False)
    collector, server = serving(policy, store_url, privacy=privacy)
    with server:
        assert httpx.post(server.url + "/act", content=body(0), headers=MSGPACK).status_code == 200
    with collector.store.session() as s:
        row = s.query(Request).one()
    assert row.instruction.startswith("sha256:") and "drawer" not in row.instruction
    assert collector.store.count(Image) == 0
    collector.store.close()


def test_the_episode_api_needs_the_api_key_when_act_does(policy, store_url):
    collector, server = serving(policy, store_url, api_key="s3cret")
    with server:
        r = httpx.post(server.url + "/v1/episodes/x/outcome", json={"outcome": "success"})
        assert r.status_code == 401
        r = httpx.post(
            server.url + "/v1/episodes/x/outcome",
            json={"outcome": "success"},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert r.status_code == 404
    collector.store.close()


def test_without_collection_there_is_no_episode_api(policy):
    with BackgroundServer(create_app(policy, ServerSettings(warmup_iters=0))) as server:
        r = httpx.post(server.url + "/v1/episodes/x/outcome", json={"outcome": "success"})
        assert (
            r.status_code == 404 and "reflex_collect" not in httpx.get(server.url + "/metrics").text
        )
