"""Tiny random-weight SmolVLA and pi0 built offline in the LeRobot venv; LeRobot's own output.

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
from lerobot_helpers import (
    INSTRUCTION,
    build_pair,
    make_noises,
    make_observation,
    requires_venv,
    tokenizer_vocab,
)
from safetensors.numpy import load_file

from reflex_serve.lerobot_import import venv

pytestmark = requires_venv

# kind: (parameters, expert width, preprocessor normaliser step, padded token count)
TINY = {
    "smolvla": (407_784, 48, 5, None),  # 4 VLM layers of width 64, vision tower 32
    "pi0": (275_656, 32, 6, 16),  # 2 PaliGemma layers of width 64, vocabulary 1,024
}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module", params=sorted(TINY))
def checkpoints(request, tmp_path_factory, hf_home):
    """Two tiny checkpoints of one kind: seeds 0 and 1 (same config, different weights)."""
    return build_pair(request.param, tmp_path_factory.mktemp(request.param), hf_home)


@pytest.fixture(scope="module")
def observation():
    return make_observation()


@pytest.fixture(scope="module")
def noises():
    return make_noises()


@pytest.fixture(scope="module")
def ref(checkpoints, observation, noises, hf_home):
    """LeRobot's output for seed-0 weights and both noises (one process, two runs each)."""
    return venv.reference_actions(
        checkpoints[0]["checkpoint"], noise=noises, repeats=2, hf_home=hf_home, **observation
    )


def test_checkpoint_layout(checkpoints):
    summary = checkpoints[0]
    kind = summary["kind"]
    parameters, expert_width, pre_step, _ = TINY[kind]
    assert summary["parameters"] == parameters
    assert {
        "config.json",
        "model.safetensors",
        "policy_preprocessor.json",
        "policy_postprocessor.json",
        f"policy_preprocessor_step_{pre_step}_normalizer_processor.safetensors",
        "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
    } <= set(summary["files"])
    ckpt = summary["checkpoint"]
    config = json.loads(Path(ckpt, "config.json").read_text())
    assert config["type"] == kind
    assert (config["chunk_size"], config["max_state_dim"], config["max_action_dim"]) == (10, 8, 8)
    if kind == "smolvla":
        assert config["vlm_model_name"] == f"{ckpt}/tiny-smolvlm"
    else:  # the saved config keeps the hard-coded variant names; the sizes are patched in
        assert (config["paligemma_variant"], config["action_expert_variant"]) == (
            "gemma_2b",
            "gemma_300m",
        )
    assert sorted(config["input_features"]) == [
        "observation.images.cam_high",
        "observation.images.cam_wrist",
        "observation.state",
    ]
    weights = [load_file(f"{c['checkpoint']}/model.safetensors") for c in checkpoints]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 50
    assert sum(w.size for w in weights[0].values()) == parameters
    key = "model.action_out_proj.weight"
    assert weights[0][key].shape == (8, expert_width)
    assert not np.allclose(weights[0][key], weights[1][key])


def test_reload_reproduces_and_weights_and_noise_matter(
    checkpoints, observation, noises, ref, hf_home
):
    assert ref["actions"].shape == (2, 10, 6) and ref["actions"].dtype == np.float32
    np.testing.assert_array_equal(ref["noise"], noises)
    assert ref["act_ms"].shape == (4,) and (ref["act_ms"] > 0).all() and int(ref["num_steps"]) == 10
    # other noise, same weights: other actions
    assert np.abs(ref["actions"][1] - ref["actions"][0]).max() > 0.1

    again = venv.reference_actions(
        checkpoints[0]["checkpoint"], noise=noises[0], hf_home=hf_home, **observation
    )
    assert again["actions"].shape == (10, 6)
    np.testing.assert_array_equal(again["actions"], ref["actions"][0])

    fresh = venv.reference_actions(
        checkpoints[1]["checkpoint"], noise=noises[0], hf_home=hf_home, **observation
    )
    assert np.abs(fresh["actions"] - ref["actions"][0]).max() > 0.1


def test_normalisation_and_tokens_match_the_saved_files(checkpoints, observation, ref, hf_home):
    kind, ckpt = checkpoints[0]["kind"], checkpoints[0]["checkpoint"]
    post = load_file(f"{ckpt}/policy_postprocessor_step_0_unnormalizer_processor.safetensors")
    (pre_file,) = Path(ckpt).glob("policy_preprocessor_step_*_normalizer_processor.safetensors")
    pre = load_file(pre_file)
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
    # both preprocessors append "\n"; SmolVLA pads to the longest, pi0 to max_length 16
    vocab = tokenizer_vocab(kind, ckpt, hf_home)
    ids = [vocab[c] for c in INSTRUCTION + "\n"]
    padded = TINY[kind][3] or len(ids)
    pad = [vocab["<pad>"]] * (padded - len(ids))
    np.testing.assert_array_equal(ref["lang_tokens"], ids + pad)
    np.testing.assert_array_equal(ref["lang_mask"], [True] * len(ids) + [False] * len(pad))


def test_unknown_camera_is_a_script_error(checkpoints, observation, hf_home):
    bad = {**observation, "cameras": ["cam_high", "cam_left"]}
    with pytest.raises(venv.LeRobotScriptError, match=r"cameras \['observation.images.cam_left'\]"):
        venv.reference_actions(checkpoints[0]["checkpoint"], hf_home=hf_home, **bad)
