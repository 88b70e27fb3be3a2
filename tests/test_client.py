"""ReflexClient against a real server: same chunks as in-process, errors as in-process."""

from __future__ import annotations

import numpy as np
import pytest

from reflex_serve.client import ReflexClient, ReflexClientError, ReflexServerError
from reflex_serve.runtime.cache import PrefixCache
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import ActResult, InvalidObservation, Observation
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.server.settings import ServerSettings

KEY = "client-key"


@pytest.fixture(scope="module")
def reference(tiny_export):
    return Policy(tiny_export)


@pytest.fixture(scope="module")
def server(tiny_export):
    policy = Policy(tiny_export, cache=PrefixCache(8 << 20))
    app = create_app(policy, ServerSettings(api_key=KEY, warmup_iters=1, max_body_bytes=1 << 20))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(params=[True, False], ids=["msgpack", "json"])
def client(server, request):
    with ReflexClient(server.url, api_key=KEY, timeout_s=10, use_msgpack=request.param) as c:
        c.wait_ready(timeout_s=20)
        yield c


def observation(seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        {"corner2": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
        rng.standard_normal(39).astype(np.float32),
        "reach the goal",
    )


def test_act_returns_the_in_process_chunk(client, reference):
    obs = observation(0)
    result = client.act(obs, episode_id="ep-1", step=0, num_steps=4, seed=21)
    assert isinstance(result, ActResult)
    expected = reference.act(obs, num_steps=4, seed=21)
    assert result.actions.shape == (8, 4) and result.actions.dtype == np.float32
    assert result.actions.flags.writeable
    np.testing.assert_allclose(result.actions, expected.actions, atol=1e-5)
    assert (result.num_steps, result.version) == (4, reference.version)
    assert result.extra["rtt_ms"] >= result.extra["server_ms"] >= result.total_ms > 0
    assert result.extra["n_action_steps"] == 4


def test_sim_act_client_protocol_and_cache_hit(client):
    assert client.n_action_steps == 4
    obs = observation(1 if client.use_msgpack else 2)
    first = client.act(obs, episode_id="ep", step=0, num_steps=None)
    second = client.act(obs, episode_id="ep", step=1, num_steps=None)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.num_steps == 10


def test_422_raises_invalid_observation_naming_the_field(client):
    obs = observation(3)
    bad = Observation(obs.images, np.zeros(5, np.float32), obs.instruction)
    with pytest.raises(InvalidObservation) as info:
        client.act(bad)
    assert info.value.field == "state"
    assert "39" in info.value.reason and not info.value.reason.startswith("state:")
    with pytest.raises(InvalidObservation) as info:
        client.act(obs, num_steps=0)
    assert info.value.field == "num_steps"


def test_wrong_key_and_oversized_body_raise_server_errors(server):
    with ReflexClient(server.url, api_key="nope") as c, pytest.raises(ReflexServerError) as info:
        c.act(observation(4))
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    big = Observation({"corner2": np.zeros((640, 640, 3), np.uint8)}, np.zeros(39, np.float32))
    with ReflexClient(server.url, api_key=KEY) as c, pytest.raises(ReflexServerError) as info:
        c.act(big)
    assert (info.value.status, info.value.code) == (413, "payload_too_large")


def test_unreachable_server_raises_client_error():
    with ReflexClient("http://127.0.0.1:9", timeout_s=1) as c:
        with pytest.raises(ReflexClientError):
            c.health()
        with pytest.raises(ReflexClientError):
            c.wait_ready(timeout_s=0.2, interval_s=0.05)
