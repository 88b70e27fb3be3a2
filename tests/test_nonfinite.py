"""NaN and Inf never pass for agreement or reach a robot: a parity check fails on a model
that outputs NaN, a state too extreme to normalise is a 422 naming it, and a chunk with
NaN or Inf is answered with a 500 ``non_finite_actions`` over HTTP and the websocket,
counted against the version that computed it."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from reflex_serve.export.manifest import WEIGHTS
from reflex_serve.export.onnx_export import export_policy
from reflex_serve.export.parity import ParityError, check_parity, max_abs_diff, random_observations
from reflex_serve.export.weights import load_model
from reflex_serve.policy.normalize import DatasetStats
from reflex_serve.runtime.policy import Policy
from reflex_serve.server import codec
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.server.settings import ServerSettings, WebsocketKeys


def test_max_abs_diff_reads_nan_as_infinitely_far():
    a = np.zeros((2, 3), np.float32)
    assert max_abs_diff(a, a + 0.5) == 0.5
    b = a.copy()
    b[1, 2] = np.nan
    assert max_abs_diff(a, b) == float("inf")
    assert max(0.0, float(np.abs(a - b).max())) == 0.0  # why: Python's max drops NaN


def test_parity_check_fails_on_a_model_that_outputs_nan(tiny_export):
    model = load_model(tiny_export / WEIGHTS)
    with torch.no_grad():
        model.expert.head.bias.fill_(float("nan"))
    with pytest.raises(ParityError, match="inf exceeds"):
        check_parity(model, tiny_export)


@pytest.fixture(scope="module")
def nan_export(tiny_export, tmp_path_factory):
    """A real export whose expert outputs NaN (its head bias is NaN)."""
    model = load_model(tiny_export / WEIGHTS)
    with torch.no_grad():
        model.expert.head.bias.fill_(float("nan"))
    out = tmp_path_factory.mktemp("nan") / "export"
    export_policy(model, DatasetStats.load(tiny_export / "stats.json"), out)
    return out


def body(policy: Policy, **fields) -> dict:
    obs = random_observations(policy, 1, seed=2)[0]
    return {"images": {k: v.tolist() for k, v in obs.images.items()}, "state": obs.state.tolist(),
            "instruction": obs.instruction, **fields}


def test_state_too_far_outside_the_statistics_is_a_422(tiny_export):
    policy = Policy(tiny_export)
    with BackgroundServer(create_app(policy, ServerSettings(warmup_iters=0))) as srv:
        std = policy.stats.state.std
        idx = int(np.argmin(std))
        assert std[idx] < 0.99
        state = [0.0] * policy.manifest.state_dim
        state[idx] = 3.4e38  # finite in float32; divided by a std under 1 it overflows
        r = httpx.post(f"{srv.url}/act", json=body(policy, state=state), timeout=30)
        ok = httpx.post(f"{srv.url}/act", json=body(policy), timeout=30)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "state" and f"index {idx}" in err["message"] and "too far outside" in err["message"]
    assert ok.status_code == 200


def test_non_finite_chunk_is_never_sent(nan_export):
    policy = Policy(nan_export)
    assert not np.isfinite(policy.act(random_observations(policy, 1)[0], seed=0).actions).all()
    keys = WebsocketKeys(images={"observation/image": "corner2"})
    app = create_app(policy, ServerSettings(warmup_iters=0, websocket_keys=keys))
    with BackgroundServer(app) as srv:
        r = httpx.post(f"{srv.url}/act", json=body(policy), timeout=30)
        packed = httpx.post(f"{srv.url}/act", content=codec.packb(body(policy)),
                            headers={"Content-Type": codec.CONTENT_TYPE}, timeout=30)
        with connect(srv.ws_url, compression=None, max_size=None) as ws:
            ws.recv()  # the metadata frame
            obs = random_observations(policy, 1, seed=2)[0]
            ws.send(codec.packb({"observation/image": obs.images["corner2"],
                                 "observation/state": obs.state, "prompt": obs.instruction}))
            reply = ws.recv()
        metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
    assert r.status_code == 500 and packed.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "non_finite_actions" and policy.version in err["message"]
    assert "no chunk was sent" in err["message"]
    assert reply.startswith("500 non_finite_actions")
    counted = [line for line in metrics.splitlines() if line.startswith("reflex_act_requests_total{")
               and 'status="500"' in line and policy.version in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 3
