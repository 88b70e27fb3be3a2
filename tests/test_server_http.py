"""POST /act, /health, /metrics and /openapi.json on a real uvicorn server over a real export."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from reflex_serve.runtime.cache import PrefixCache
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import Observation
from reflex_serve.server import codec
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.server.settings import ServerSettings

LIMIT = 256 * 1024
MSGPACK = {"Content-Type": "application/msgpack"}


def random_observation(manifest, seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    images = {
        c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
        for c in manifest.cameras
    }
    state = rng.standard_normal(manifest.state_dim).astype(np.float32)
    return Observation(images=images, state=state, instruction="push the puck")


def png_b64(image: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def json_body(obs: Observation, **extra) -> dict:
    return {
        "images": {k: png_b64(v) for k, v in obs.images.items()},
        "state": obs.state.tolist(),
        "instruction": obs.instruction,
        **extra,
    }


def msgpack_body(obs: Observation, **extra) -> bytes:
    body = {"images": dict(obs.images), "state": obs.state, "instruction": obs.instruction}
    return codec.packb({**body, **extra})


@pytest.fixture(scope="module")
def policy(tiny_export):
    return Policy(tiny_export, cache=PrefixCache(16 << 20))


@pytest.fixture(scope="module")
def reference(tiny_export):
    """A second, cache-less Policy over the same export: the in-process answer."""
    return Policy(tiny_export)


@pytest.fixture(scope="module")
def server(policy):
    app = create_app(policy, ServerSettings(max_body_bytes=LIMIT, warmup_iters=1))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
        yield client


@pytest.fixture(scope="module")
def obs(policy):
    return random_observation(policy.manifest, seed=1)


def metric_value(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# -- round trips -------------------------------------------------------------------------


def test_json_act_matches_in_process_policy(http, reference, obs):
    r = http.post("/act", json=json_body(obs, seed=7, episode_id="ep", step=3))
    assert r.status_code == 200, r.text
    data = r.json()
    actions = np.asarray(data["actions"], dtype=np.float32)
    m = reference.manifest
    assert actions.shape == (m.chunk_size, m.action_dim)
    np.testing.assert_allclose(actions, reference.act(obs, seed=7).actions, atol=1e-5)
    assert data["model_version"] == reference.version == r.headers["X-Reflex-Model-Version"]
    assert data["num_steps"] == m.num_steps
    assert data["n_action_steps"] == m.n_action_steps
    assert set(data["timings"]) == {"prefix_ms", "expert_ms", "total_ms", "server_ms"}
    assert data["timings"]["server_ms"] >= data["timings"]["total_ms"] > 0
    assert (data["episode_id"], data["step"]) == ("ep", 3)
    assert data["request_id"] == r.headers["X-Request-ID"]
    assert r.headers["content-type"] == "application/json"


def test_msgpack_act_matches_in_process_policy_and_answers_msgpack(http, reference, obs):
    r = http.post("/act", content=msgpack_body(obs, seed=11, num_steps=3), headers=MSGPACK)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/msgpack"
    data = codec.unpackb(r.content)
    assert isinstance(data["actions"], np.ndarray) and data["actions"].dtype == np.float32
    expected = reference.act(obs, seed=11, num_steps=3).actions
    np.testing.assert_allclose(data["actions"], expected, atol=1e-5)
    assert data["num_steps"] == 3


def test_nested_list_images_and_accept_header_pick_the_formats(http, reference, obs):
    body = json_body(obs, seed=5)
    body["images"] = {k: v.tolist() for k, v in obs.images.items()}
    r = http.post("/act", json=body, headers={"Accept": "application/msgpack"})
    assert r.status_code == 200, r.text
    actions = codec.unpackb(r.content)["actions"]
    np.testing.assert_allclose(actions, reference.act(obs, seed=5).actions, atol=1e-5)
    r = http.post(
        "/act", content=msgpack_body(obs), headers={**MSGPACK, "Accept": "application/json"}
    )
    assert r.headers["content-type"] == "application/json"


def test_jpeg_and_data_url_images_are_accepted(http, obs):
    body = json_body(obs)
    body["images"] = {
        k: "data:image/jpeg;base64," + png_b64(v, "JPEG") for k, v in obs.images.items()
    }
    assert http.post("/act", json=body).status_code == 200


def test_second_identical_request_hits_the_prefix_cache(http, policy):
    fresh = random_observation(policy.manifest, seed=99)
    first = http.post("/act", content=msgpack_body(fresh, seed=1), headers=MSGPACK)
    second = http.post("/act", content=msgpack_body(fresh, seed=2), headers=MSGPACK)
    assert codec.unpackb(first.content)["cache_hit"] is False
    assert codec.unpackb(second.content)["cache_hit"] is True


# -- client mistakes: exact status, code and field ----------------------------------------


GARBAGE_PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
CAM = "images.corner2"


def image(value):
    return lambda body: body["images"].update(corner2=value)


def field(**values):
    return lambda body: body.update(values)


def drop(key):
    return lambda body: body.pop(key)


def state_at(i, value):
    return lambda body: body["state"].__setitem__(i, value)


# (case, mutation of a valid JSON body, error code, field): all answered with 422.
JSON_CASES = [
    ("image_wrong_size", image(png_b64(np.zeros((32, 32, 3), np.uint8))), "invalid_field", CAM),
    ("nested_image_wrong_size", image(np.zeros((64, 63, 3), int).tolist()), "invalid_field", CAM),
    ("nested_image_float_dtype", image(np.zeros((64, 64, 3)).tolist()), "invalid_field", CAM),
    ("nested_image_over_255", image(np.full((64, 64, 3), 300).tolist()), "invalid_field", CAM),
    ("ragged_nested_image", image([[1, 2], [3]]), "invalid_field", CAM),
    ("bad_base64", image("not base64 !!"), "invalid_field", CAM),
    ("undecodable_image", image(GARBAGE_PNG), "invalid_field", CAM),
    ("image_wrong_type", image(12), "invalid_field", CAM),
    ("unknown_camera", lambda b: b["images"].update(wrist=""), "unknown_field", "images.wrist"),
    ("missing_camera", lambda b: b["images"].pop("corner2"), "missing_field", CAM),
    ("missing_images", drop("images"), "missing_field", "images"),
    ("images_not_an_object", field(images=["x"]), "invalid_field", "images"),
    ("state_wrong_length", field(state=[0.0] * 7), "invalid_field", "state"),
    ("state_nan", state_at(0, float("nan")), "invalid_field", "state"),
    ("state_inf", state_at(3, float("-inf")), "invalid_field", "state"),
    ("state_not_numbers", state_at(0, "x"), "invalid_field", "state"),
    ("missing_state", drop("state"), "missing_field", "state"),
    ("instruction_not_a_string", field(instruction=5), "invalid_field", "instruction"),
    ("num_steps_zero", field(num_steps=0), "invalid_field", "num_steps"),
    ("num_steps_too_many", field(num_steps=101), "invalid_field", "num_steps"),
    ("num_steps_not_int", field(num_steps="ten"), "invalid_field", "num_steps"),
    ("seed_negative", field(seed=-1), "invalid_field", "seed"),
    ("episode_id_too_long", field(episode_id="e" * 129), "invalid_field", "episode_id"),
    ("episode_id_not_printable", field(episode_id="ep\n1"), "invalid_field", "episode_id"),
    ("step_bool", field(step=True), "invalid_field", "step"),
]


def assert_error(r: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"]


@pytest.mark.parametrize(
    "mutate, code, name", [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES]
)
def test_json_client_mistake_is_a_422_naming_the_field(http, obs, mutate, code, name):
    body = json_body(obs)
    mutate(body)
    r = http.post("/act", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert_error(r, 422, code, name)


MSGPACK_CASES = {
    "float_image": ({"images": {"corner2": np.zeros((64, 64, 3), np.float32)}}, "images.corner2"),
    "chw_image": ({"images": {"corner2": np.zeros((3, 64, 64), np.uint8)}}, "images.corner2"),
    "bool_state": ({"state": np.zeros(39, bool)}, "state"),
    "state_2d": ({"state": np.zeros((1, 39), np.float32)}, "state"),
    "png_bytes_wrong_size": (
        {"images": {"corner2": base64.b64decode(png_b64(np.zeros((8, 8, 3), np.uint8)))}},
        "images.corner2",
    ),
}


@pytest.mark.parametrize("case", sorted(MSGPACK_CASES))
def test_msgpack_client_mistake_is_a_422_naming_the_field(http, obs, case):
    override, field = MSGPACK_CASES[case]
    body = {"images": dict(obs.images), "state": obs.state, **override}
    r = http.post("/act", content=codec.packb(body), headers=MSGPACK)
    assert_error(r, 422, "invalid_field", field)


def ndarray_dict(data: bytes, dtype: str, shape: list) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


@pytest.mark.parametrize(
    "content, headers",
    [
        (b"{not json", {"Content-Type": "application/json"}),
        (b"[1, 2, 3]", {"Content-Type": "application/json"}),
        (b"\xff\xfe", {"Content-Type": "application/json"}),
        (b"\xc1", MSGPACK),
        (codec.packb({"a": 1}) + b"trailing", MSGPACK),
        (codec.packb({"state": ndarray_dict(b"\0" * 3, "<f4", [39])}), MSGPACK),
        (codec.packb({"x": ndarray_dict(b"", "|O", [0])}), MSGPACK),
    ],
    ids=[
        "bad_json",
        "json_array",
        "bad_utf8",
        "bad_msgpack",
        "msgpack_trailing",
        "ndarray_size_mismatch",
        "object_dtype",
    ],
)
def test_malformed_body_is_a_400(http, content, headers):
    assert_error(http.post("/act", content=content, headers=headers), 400, "malformed_body", None)


def test_unsupported_content_type_is_a_415(http, obs):
    r = http.post("/act", content=b"images=1", headers={"Content-Type": "text/plain"})
    assert_error(r, 415, "unsupported_media_type", None)


def test_body_over_the_limit_is_a_413_by_content_length(http):
    r = http.post("/act", content=b" " * (LIMIT + 1), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large", None)


def test_chunked_body_over_the_limit_is_a_413_while_streaming(http):
    def chunks():
        for _ in range(LIMIT // 4096 + 2):
            yield b" " * 4096

    r = http.post("/act", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "payload_too_large", None)


def test_server_still_serves_after_errors(http, obs):
    http.post("/act", content=b"{", headers={"Content-Type": "application/json"})
    assert http.post("/act", json=json_body(obs)).status_code == 200


def test_unknown_route_uses_the_error_model(http):
    assert_error(http.get("/nope"), 404, "not_found", None)
    assert_error(http.get("/act"), 405, "method_not_allowed", None)


# -- health, metrics, openapi --------------------------------------------------------------


def test_health_reports_the_model(http, policy):
    r = http.get("/health")
    assert r.status_code == 200
    data = r.json()
    m = policy.manifest
    assert data["status"] == "ok"
    assert data["model_version"] == policy.version
    assert data["cameras"] == [{"name": "corner2", "height": 64, "width": 64}]
    assert (data["state_dim"], data["action_dim"]) == (m.state_dim, m.action_dim)
    assert (data["chunk_size"], data["n_action_steps"], data["num_steps"]) == (
        m.chunk_size,
        m.n_action_steps,
        m.num_steps,
    )
    assert http.get("/healthz").text == "OK\n"


def test_metrics_count_requests_by_status_version_and_transport(http, policy, obs):
    before = http.get("/metrics").text
    n_json, n_msgpack, n_bad = 3, 2, 4
    for _ in range(n_json):
        assert http.post("/act", json=json_body(obs)).status_code == 200
    for _ in range(n_msgpack):
        assert http.post("/act", content=msgpack_body(obs), headers=MSGPACK).status_code == 200
    for _ in range(n_bad):
        assert http.post("/act", json={**json_body(obs), "state": [1.0]}).status_code == 422
    after = http.get("/metrics").text
    assert (
        after.startswith("# HELP") and "text/plain" in http.get("/metrics").headers["content-type"]
    )
    v = policy.version

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert (
        delta("reflex_act_requests_total", status="200", version=v, transport="http_json") == n_json
    )
    assert (
        delta("reflex_act_requests_total", status="200", version=v, transport="http_msgpack")
        == n_msgpack
    )
    assert (
        delta("reflex_act_requests_total", status="422", version=v, transport="http_json") == n_bad
    )
    assert delta("reflex_act_latency_seconds_count", version=v) == n_json + n_msgpack
    assert delta("reflex_prefix_cache_hits_total") >= n_json + n_msgpack - 1
    assert metric_value(after, "reflex_prefix_cache_entries") >= 1
    assert metric_value(after, "reflex_prefix_cache_max_bytes") == 16 << 20
    assert metric_value(after, "reflex_model_info", version=v, num_steps="10") == 1
    assert metric_value(after, "reflex_ready") == 1
    assert 'le="0.001"' in after and 'le="0.5"' in after


def test_two_apps_in_one_process_keep_separate_metrics(policy):
    a = create_app(policy, ServerSettings(warmup_iters=0))
    b = create_app(policy, ServerSettings(warmup_iters=0))
    a.state.reflex.metrics.observe_error(400, "http_json")
    assert "reflex_act_requests_total" in a.state.reflex.metrics.render().decode()
    assert 'status="400"' not in b.state.reflex.metrics.render().decode()


def test_openapi_documents_request_response_and_error_models(http):
    schema = http.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for name in (
        "ActRequest",
        "ActResponse",
        "Timings",
        "ErrorResponse",
        "ErrorDetail",
        "HealthResponse",
    ):
        assert name in components, name
    act = schema["paths"]["/act"]["post"]
    assert act["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ActRequest"
    )
    assert "application/msgpack" in act["requestBody"]["content"]
    for status in ("400", "413", "415", "422"):
        assert act["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "ErrorResponse"
        )
    assert set(components["ActRequest"]["properties"]) >= {
        "images",
        "state",
        "instruction",
        "episode_id",
        "step",
        "num_steps",
        "seed",
    }
