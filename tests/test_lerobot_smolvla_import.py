"""`reflex import lerobot` on a tiny SmolVLA: served actions equal LeRobot's own.

The checkpoint is built offline in the LeRobot venv (scripts/lerobot_venv.sh; skipped
with that reason when absent) and LeRobot's `predict_action_chunk` output for one
observation and explicit noise is the reference (venv.reference_actions). Compared at
1e-4 max abs: the native torch modules, ONNX Runtime through `Policy.act`, and a
`reflex serve` process answering POST /act with a seed.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from lerobot_helpers import CAMERAS, make_noises, make_observation, requires_venv
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.parity import torch_act
from reflex_serve.lerobot_import import venv
from reflex_serve.lerobot_import.checkpoint import file_sha256
from reflex_serve.lerobot_import.imported import ImportedFlowModel
from reflex_serve.lerobot_import.smolvla import load_smolvla
from reflex_serve.policy.tokenizer import make_text_encoder
from reflex_serve.runtime.cache import PrefixCache
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import Observation
from reflex_serve.server.runner import spawn_server

pytestmark = requires_venv
TOL = 1e-4
SEED = 1234


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, hf_home) -> Path:
    root = tmp_path_factory.mktemp("smolvla")
    return Path(venv.build_tiny("smolvla", root / "ckpt", seed=0, hf_home=hf_home)["checkpoint"])


@pytest.fixture(scope="module")
def export(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "smolvla"
    result = CliRunner().invoke(app, ["import", "lerobot", str(checkpoint), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "ONNX vs torch max abs diff" in result.output
    return out


@pytest.fixture(scope="module")
def observation():
    return make_observation()


@pytest.fixture(scope="module")
def obs(observation) -> Observation:
    images = {c: observation["images"][i] for i, c in enumerate(CAMERAS)}
    return Observation(images=images, state=observation["state"], instruction=observation["instruction"])


@pytest.fixture(scope="module")
def noises():
    """(3, 10, 8): two fixed draws and the one the server draws for SEED."""
    served = np.random.default_rng(SEED).standard_normal((10, 8), dtype=np.float32)
    return np.concatenate([make_noises(), served[None]])


@pytest.fixture(scope="module")
def ref(checkpoint, observation, noises, hf_home):
    return venv.reference_actions(checkpoint, noise=noises, repeats=1, hf_home=hf_home, **observation)


def test_tokens_and_state_match_lerobot(checkpoint, export, ref, obs):
    policy = Policy(export)
    spec = policy.manifest.tokenizer
    assert spec["kind"] == "hf-tokenizers" and spec["task_suffix"] == "\n"
    tokens, mask = make_text_encoder(spec, 16, export).encode(obs.instruction)
    n = len(ref["lang_tokens"])  # LeRobot pads to the longest; the export to 16 with mask 0
    assert n == len("pick the cube\n") < 16
    np.testing.assert_array_equal(tokens[:n], ref["lang_tokens"])
    assert mask.tolist() == [1] * n + [0] * (16 - n)
    state = policy.model_state(obs)
    np.testing.assert_allclose(state[0, :6], ref["state_normalized"], atol=1e-6)
    assert state.shape == (1, 8) and not state[0, 6:].any()


def test_native_torch_modules_match_lerobot(checkpoint, export, ref, obs, noises):
    imported = load_smolvla(checkpoint)
    model = ImportedFlowModel(imported.prefix, imported.expert, imported.state_input)
    for k, noise in enumerate(noises):
        ours = torch_act(model, Policy(export), obs, noise, num_steps=10)
        assert np.abs(ours - ref["actions"][k]).max() < TOL
    # the noise really matters, so the comparison above could fail
    assert np.abs(ref["actions"][0] - ref["actions"][1]).max() > 0.1


def test_onnx_runtime_matches_lerobot(checkpoint, export, ref, obs, noises):
    policy = Policy(export, verify=True, cache=PrefixCache(1 << 20))
    assert policy.noise_shape == (10, 8)
    for k, noise in enumerate(noises):
        result = policy.act(obs, noise=noise)
        assert result.actions.shape == (10, 6)
        assert np.abs(result.actions - ref["actions"][k]).max() < TOL
    assert result.cache_hit  # same observation: the prefix came from the cache
    moved = Observation(images=obs.images, state=obs.state + 0.5, instruction=obs.instruction)
    assert not policy.act(moved, noise=noises[0]).cache_hit  # the state is a prefix token


def test_manifest_records_the_source_checkpoint(checkpoint, export):
    m = read_manifest(export, verify=True)
    assert m.policy_kind == "lerobot-smolvla" and m.state_input == "prefix"
    assert (m.state_dim, m.max_state_dim, m.action_dim, m.max_action_dim) == (6, 8, 6, 8)
    assert m.prefix_len == 2 * 4 + 16 + 1 and (m.num_kv_layers, m.kv_dim) == (4, 32)
    assert [c.name for c in m.cameras] == CAMERAS and (m.cameras[0].height, m.cameras[0].width) == (48, 64)
    assert m.extra_artifacts == ["tokenizer.json"] and m.num_steps == 10
    p = m.provenance
    assert p["checkpoint"] == str(checkpoint) and p["lerobot_version"] == "0.6.1"
    assert p["checkpoint_sha256"] == file_sha256(checkpoint / "model.safetensors")
    assert p["normalization"]["norm_map"] == {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    assert p["config"] == json.loads((checkpoint / "config.json").read_text())
    raw = p["normalization"]["action"]
    np.testing.assert_allclose(json.loads((export / "stats.json").read_text())["action"]["std"], raw["std"])


def test_http_server_matches_lerobot_and_names_what_it_expects(export, ref, obs):
    proc, url = spawn_server(export)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            body = {"images": {k: v.tolist() for k, v in obs.images.items()},
                    "state": obs.state.tolist(), "instruction": obs.instruction, "seed": SEED}
            r = http.post("/act", json=body)
            assert r.status_code == 200, r.text
            actions = np.asarray(r.json()["actions"], dtype=np.float32)
            assert np.abs(actions - ref["actions"][2]).max() < TOL

            bad_camera = {**body, "images": {**body["images"], "cam_left": body["images"]["cam_high"]}}
            r = http.post("/act", json=bad_camera)
            assert r.status_code == 422 and "['cam_high', 'cam_wrist']" in r.text
            small = np.zeros((32, 32, 3), np.uint8).tolist()
            r = http.post("/act", json={**body, "images": {**body["images"], "cam_wrist": small}})
            assert r.status_code == 422 and "(48, 64, 3)" in r.text and "images.cam_wrist" in r.text
            r = http.post("/act", json={**body, "state": [0.0] * 8})
            assert r.status_code == 422 and "expected 6 values" in r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize("section, field, value, expected", [
    ("text_config", "rms_norm_eps", "x", "rms_norm_eps='x' is not a number"),
    ("vision_config", "num_attention_heads", 2.5, "num_attention_heads=2.5 is not an integer"),
])
def test_a_malformed_vlm_config_number_names_the_field_and_file(checkpoint, tmp_path, section, field, value,
                                                                 expected):
    vlm = tmp_path / "vlm"
    shutil.copytree(json.loads((checkpoint / "config.json").read_text())["vlm_model_name"], vlm)
    config = json.loads((vlm / "config.json").read_text())
    config.setdefault(section, {})[field] = value
    (vlm / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["import", "lerobot", str(checkpoint), "--output", str(out), "--vlm", str(vlm)])
    assert result.exit_code == 2, result.output
    assert f"error: {vlm / 'config.json'} {section} field {expected}" in result.output
    assert not out.exists()
