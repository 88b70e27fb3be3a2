"""API-key protection of POST /act (the websocket side is in test_server_websocket.py)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reflex_serve.runtime.policy import Policy
from reflex_serve.server import codec
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.server.settings import ServerSettings

KEY = "k-123"


@pytest.fixture(scope="module")
def http(tiny_export):
    app = create_app(Policy(tiny_export), ServerSettings(api_key=KEY, warmup_iters=0))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        yield client


def body() -> bytes:
    return codec.packb(
        {"images": {"corner2": np.zeros((64, 64, 3), np.uint8)}, "state": np.zeros(39, np.float32)}
    )


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer", ""],
    ids=["absent", "wrong_key", "wrong_scheme", "longer_key", "no_key", "empty"],
)
def test_act_without_a_valid_key_is_a_401(http, authorization):
    headers = {"Content-Type": "application/msgpack"}
    if authorization is not None:
        headers["Authorization"] = authorization
    r = http.post("/act", content=body(), headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == {
        "code": "unauthorized",
        "message": "missing or invalid API key",
        "field": None,
    }
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Api-Key"])
def test_act_with_the_key_is_served(http, scheme):
    headers = {"Content-Type": "application/msgpack", "Authorization": f"{scheme} {KEY}"}
    assert http.post("/act", content=body(), headers=headers).status_code == 200


def test_auth_is_checked_before_the_body_is_judged(http):
    r = http.post("/act", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 401


def test_health_metrics_and_openapi_stay_open_and_401s_are_counted(http):
    assert http.get("/health").status_code == 200
    assert http.get("/openapi.json").json()["components"]["securitySchemes"]["HTTPBearer"]
    text = http.get("/metrics").text
    counted = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "reflex_act_requests_total" and s.labels["status"] == "401"
    ]
    assert counted and sum(counted) >= 1
