"""Tiny random-weight SmolVLA built offline in the LeRobot venv, and LeRobot's own output.

Every LeRobot call runs in .venv-lerobot's python as a subprocess (scripts/lerobot_venv.sh);
without that venv the module is skipped with that reason. What is checked: the saved
checkpoint layout, that a reload in a fresh process reproduces LeRobot's actions exactly
for the same observation and noise, that fresh weights and other noise change them, and
the normalisation / tokenisation the exporter must reproduce (docs/lerobot.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from reflex_serve.lerobot_import import venv

pytestmark = pytest.mark.skipif(
    not (venv.venv_dir() / "bin" / "python").exists(),
    reason=f"{venv.venv_dir()}/bin/python missing: {venv.SETUP_HINT}",
)

CAMERAS = ["cam_high", "cam_wrist"]
INSTRUCTION = "pick the cube"
TINY_PARAMETERS = 407_784  # 4 VLM layers of width 64, expert width 48, vision tower 32


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, hf_home):
    """Two tiny SmolVLA checkpoints: seeds 0 and 1 (same config, different weights)."""
    root = tmp_path_factory.mktemp("lerobot")
    return [venv.build_tiny("smolvla", root / f"seed{s}", seed=s, hf_home=hf_home) for s in (0, 1)]


@pytest.fixture(scope="module")
def observation():
    rng = np.random.default_rng(7)
    return {
        "images": rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8),
        "cameras": CAMERAS,
        "state": rng.standard_normal(6).astype(np.float32),
        "instruction": INSTRUCTION,
    }


@pytest.fixture(scope="module")
def noises():
    rng = np.random.default_rng(11)
    return rng.standard_normal((2, 10, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def ref(checkpoints, observation, noises, hf_home):
    """LeRobot's output for seed-0 weights and the first noise, in its own process."""
    return venv.reference_actions(
        checkpoints[0]["checkpoint"], noise=noises[0], repeats=2, hf_home=hf_home, **observation
    )


def test_checkpoint_layout(checkpoints):
    summary = checkpoints[0]
    assert summary["kind"] == "smolvla" and summary["parameters"] == TINY_PARAMETERS
    assert {
        "config.json",
        "model.safetensors",
        "policy_preprocessor.json",
        "policy_postprocessor.json",
        "policy_preprocessor_step_5_normalizer_processor.safetensors",
        "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
    } <= set(summary["files"])
    ckpt = summary["checkpoint"]
    config = json.loads(Path(ckpt, "config.json").read_text())
    assert config["type"] == "smolvla"
    assert (config["chunk_size"], config["max_state_dim"], config["max_action_dim"]) == (10, 8, 8)
    assert config["vlm_model_name"] == f"{ckpt}/tiny-smolvlm"
    assert sorted(config["input_features"]) == [
        "observation.images.cam_high",
        "observation.images.cam_wrist",
        "observation.state",
    ]
    weights = [load_file(f"{c['checkpoint']}/model.safetensors") for c in checkpoints]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 100
    assert sum(w.size for w in weights[0].values()) == TINY_PARAMETERS
    key = "model.action_out_proj.weight"
    assert weights[0][key].shape == (8, 48)
    assert not np.allclose(weights[0][key], weights[1][key])


def test_reload_reproduces_and_weights_and_noise_matter(
    checkpoints, observation, noises, ref, hf_home
):
    assert ref["actions"].shape == (10, 6) and ref["actions"].dtype == np.float32
    np.testing.assert_array_equal(ref["noise"], noises[0])
    assert ref["act_ms"].shape == (2,) and (ref["act_ms"] > 0).all() and int(ref["num_steps"]) == 10

    again = venv.reference_actions(
        checkpoints[0]["checkpoint"], noise=noises[0], hf_home=hf_home, **observation
    )
    np.testing.assert_array_equal(again["actions"], ref["actions"])

    fresh = venv.reference_actions(
        checkpoints[1]["checkpoint"], noise=noises[0], hf_home=hf_home, **observation
    )
    other_noise = venv.reference_actions(
        checkpoints[0]["checkpoint"], noise=noises[1], hf_home=hf_home, **observation
    )
    assert np.abs(fresh["actions"] - ref["actions"]).max() > 0.1
    assert np.abs(other_noise["actions"] - ref["actions"]).max() > 0.1


def test_normalisation_and_tokens_match_the_saved_files(checkpoints, observation, ref):
    ckpt = checkpoints[0]["checkpoint"]
    post = load_file(f"{ckpt}/policy_postprocessor_step_0_unnormalizer_processor.safetensors")
    pre = load_file(f"{ckpt}/policy_preprocessor_step_5_normalizer_processor.safetensors")
    # MEAN_STD: normalise (x - mean) / (std + 1e-8); unnormalise x * std + mean
    np.testing.assert_allclose(
        ref["actions"],
        ref["actions_normalized"] * post["action.std"] + post["action.mean"],
        atol=1e-6,
    )
    expected_state = (observation["state"] - pre["observation.state.mean"]) / (
        pre["observation.state.std"] + 1e-8
    )
    np.testing.assert_allclose(ref["state_normalized"], expected_state, atol=1e-6)
    assert not np.allclose(post["action.mean"], 0) and not np.allclose(post["action.std"], 1)
    # the preprocessor appends "\n" and the tiny tokenizer is one id per character
    vocab = json.loads(Path(ckpt, "tiny-smolvlm", "tokenizer.json").read_text())["model"]["vocab"]
    text = INSTRUCTION + "\n"
    np.testing.assert_array_equal(ref["lang_tokens"], [vocab[c] for c in text])
    assert ref["lang_mask"].all() and ref["lang_mask"].shape == (len(text),)


def test_unknown_camera_is_a_script_error(checkpoints, observation, hf_home):
    bad = {**observation, "cameras": ["cam_high", "cam_left"]}
    with pytest.raises(venv.LeRobotScriptError, match=r"cameras \['observation.images.cam_left'\]"):
        venv.reference_actions(checkpoints[0]["checkpoint"], hf_home=hf_home, **bad)
