"""The openpi websocket protocol: the plain `websockets` library in-process, and the real
`openpi-client` PyPI package from its own numpy<2 venv (scripts/openpi_venv.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from reflex_serve.runtime.cache import PrefixCache
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import Observation
from reflex_serve.server import codec
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.server.settings import ServerSettings, WebsocketKeys

KEY = "s3cret"
REPO = Path(__file__).resolve().parents[1]
OPENPI_PYTHON = Path(os.environ.get("OPENPI_VENV", REPO / ".venv-openpi")) / "bin" / "python"


@pytest.fixture(scope="module")
def policy(tiny_export):
    return Policy(tiny_export, cache=PrefixCache(16 << 20))


@pytest.fixture(scope="module")
def reference(tiny_export):
    return Policy(tiny_export)


@pytest.fixture(scope="module")
def server(policy):
    keys = WebsocketKeys(images={"observation/image": "corner2", "cam_high": "corner2"})
    app = create_app(policy, ServerSettings(api_key=KEY, warmup_iters=0, websocket_keys=keys))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture()
def ws(server):
    with connect(
        server.ws_url,
        additional_headers={"Authorization": f"Api-Key {KEY}"},
        compression=None,
        max_size=None,
    ) as conn:
        yield conn


def openpi_obs(rng: np.random.Generator, **extra) -> dict:
    return {
        "observation/image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "observation/state": rng.standard_normal(39).astype(np.float32),
        "prompt": "open the drawer",
        **extra,
    }


def as_observation(msg: dict, image: np.ndarray | None = None) -> Observation:
    img = msg["observation/image"] if image is None else image
    return Observation({"corner2": img}, msg["observation/state"], msg["prompt"])


def test_metadata_frame_is_the_model_summary(ws, policy):
    meta = codec.unpackb(ws.recv())
    assert meta["model_version"] == policy.version
    assert meta["cameras"] == [{"name": "corner2", "height": 64, "width": 64}]
    assert (meta["chunk_size"], meta["action_dim"], meta["n_action_steps"]) == (8, 4, 4)
    assert meta["server"] == "reflex-serve"


def test_websocket_act_matches_in_process_policy(ws, reference):
    ws.recv()
    rng = np.random.default_rng(0)
    for i in range(3):
        msg = openpi_obs(rng, seed=i)
        ws.send(codec.packb(msg))
        reply = codec.unpackb(ws.recv())
        assert reply["actions"].shape == (8, 4) and reply["actions"].dtype == np.float32
        expected = reference.act(as_observation(msg), seed=i).actions
        np.testing.assert_allclose(reply["actions"], expected, atol=1e-5)
        assert reply["server_timing"]["infer_ms"] > 0
        assert ("prev_total_ms" in reply["server_timing"]) == (i > 0)
        assert set(reply["policy_timing"]) == {"prefix_ms", "expert_ms", "total_ms"}
        assert reply["model_version"] == reference.version


def test_chw_float_images_and_nested_keys_are_converted(ws, reference):
    ws.recv()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    state = rng.standard_normal(39).astype(np.float32)
    expected = reference.act(Observation({"corner2": image}, state, "lift"), seed=3).actions
    chw_float = image.transpose(2, 0, 1).astype(np.float32) / 255.0
    nested = {"images": {"corner2": chw_float}, "state": state, "prompt": "lift", "seed": 3}
    chw_uint8 = {
        "cam_high": image.transpose(2, 0, 1),
        "observation": {"state": state},
        "instruction": "lift",
        "seed": 3,
    }
    for msg in (nested, chw_uint8):
        ws.send(codec.packb(msg))
        np.testing.assert_allclose(codec.unpackb(ws.recv())["actions"], expected, atol=1e-5)


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"observation/state": np.zeros(5, np.float32)}, "observation/state"),
        ({"observation/image": np.full((64, 64, 3), 2.0, np.float32)}, "observation/image"),
        ({"observation/image": np.zeros((64, 64, 3), np.int16)}, "observation/image"),
        (
            {"observation/images/gripper": np.zeros((64, 64, 3), np.uint8)},
            "observation/images/gripper",
        ),
        ({"observation/image": None}, "images.corner2"),
        ({"num_steps": 0}, "num_steps"),
    ],
    ids=[
        "short_state",
        "float_out_of_range",
        "int16_image",
        "unknown_camera",
        "missing_camera",
        "num_steps",
    ],
)
def test_bad_observation_gets_a_text_frame_and_the_connection_stays_open(ws, override, needle):
    ws.recv()
    msg = {**openpi_obs(np.random.default_rng(2)), **override}
    ws.send(codec.packb({k: v for k, v in msg.items() if v is not None}))
    reply = ws.recv()
    assert isinstance(reply, str) and reply.startswith("422") and needle in reply
    ws.send(codec.packb(openpi_obs(np.random.default_rng(3))))
    assert codec.unpackb(ws.recv())["actions"].shape == (8, 4)


def test_garbage_and_text_frames_get_error_text(ws):
    ws.recv()
    ws.send(b"\xc1")
    assert ws.recv().startswith("400")
    ws.send("hello")
    assert ws.recv().startswith("400")


def test_handshake_without_the_api_key_is_refused(server):
    for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": f"Basic {KEY}"}):
        with pytest.raises(InvalidStatus) as info:
            connect(server.ws_url, additional_headers=headers)
        assert info.value.response.status_code == 403
    with connect(server.ws_url + "/ws", additional_headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert codec.unpackb(c.recv())["server"] == "reflex-serve"


OPENPI_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from openpi_client import action_chunk_broker, websocket_client_policy

    port, key = int(sys.argv[1]), sys.argv[2]
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key=key)
    meta = client.get_server_metadata()
    rng = np.random.default_rng(0)
    obs = {
        "observation/image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "observation/state": rng.standard_normal(39).astype(np.float32),
        "prompt": "open the drawer",
        "seed": 5,
    }
    result = client.infer(obs)
    broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=meta["n_action_steps"])
    first = broker.infer(obs)["actions"]
    try:
        client.infer({**obs, "observation/state": np.zeros(3, np.float32)})
        error = None
    except RuntimeError as exc:
        error = str(exc)
    again = client.infer(obs)["actions"]
    print(json.dumps({
        "numpy": np.__version__,
        "meta": {k: meta[k] for k in ("model_version", "chunk_size", "n_action_steps")},
        "actions": result["actions"].tolist(),
        "dtype": str(result["actions"].dtype),
        "server_timing": result["server_timing"],
        "broker_first": first.tolist(),
        "error": error,
        "again": again.tolist(),
        "image": obs["observation/image"].tolist(),
        "state": obs["observation/state"].tolist(),
    }))
    """
)


@pytest.mark.skipif(
    not OPENPI_PYTHON.exists(),
    reason=f"{OPENPI_PYTHON} missing: run scripts/openpi_venv.sh (openpi-client needs numpy<2)",
)
def test_real_openpi_client_from_its_own_venv(server, reference, tmp_path):
    script = tmp_path / "openpi_client_check.py"
    script.write_text(OPENPI_SCRIPT)
    proc = subprocess.run(
        [str(OPENPI_PYTHON), str(script), str(server.port), KEY],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["numpy"].startswith("1.")
    assert out["meta"] == {"model_version": reference.version, "chunk_size": 8, "n_action_steps": 4}
    obs = Observation(
        {"corner2": np.asarray(out["image"], np.uint8)},
        np.asarray(out["state"], np.float32),
        "open the drawer",
    )
    expected = reference.act(obs, seed=5).actions
    assert out["dtype"] == "float32"
    np.testing.assert_allclose(np.asarray(out["actions"]), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["broker_first"]), expected[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["again"]), expected, atol=1e-5)
    assert out["server_timing"]["infer_ms"] > 0
    assert "observation/state" in out["error"] and "422" in out["error"]
