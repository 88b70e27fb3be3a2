"""The native pi0.5 port (reflex_serve/lerobot_import/pi05.py) against LeRobot 0.6.1 itself.

A tiny random-weight pi0.5 is built offline in the LeRobot venv (scripts/lerobot_venv.sh;
skipped with that reason without it). pi0.5 writes the QUANTILES-normalised state,
discretised into 256 bins, into its prompt and conditions the expert with adaRMS on
time; the port's tokens, 10-step Euler actions and ONNX Runtime export are compared with
LeRobot's predict_action_chunk on the same observation and explicit noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from lerobot_helpers import INSTRUCTION, requires_venv
from lerobot_pi_helpers import (
    check_actions,
    check_http,
    check_onnx,
    check_phi,
    check_rebuild,
    check_refusal,
    check_reproducible,
    check_tokens,
    pi_fixtures,
    tokenizer_file,
)

from reflex_serve.lerobot_import import pi05
from reflex_serve.lerobot_import.pi_tokenizer import tokenize

pytestmark = requires_venv


hf_home, checkpoint, observation, ref, policy = pi_fixtures("pi05", pi05.load_pi05)


def test_sizes_and_interface(policy):
    arch = policy.provenance["architecture"]
    assert arch["adarms"] and policy.state_input == "prompt"
    assert (arch["vlm_width"], arch["expert_width"], arch["head_dim"], arch["vocab_size"]) == (
        64,
        32,
        16,
        1024,
    )
    assert (policy.prefix_len, policy.max_text_tokens) == (2 * 64 + 96, 96)
    assert policy.provenance["normalization"]["norm_map"]["STATE"] == "QUANTILES"
    spec = policy.tokenizer
    assert "{state}" in spec["template"] and spec["task_clean"] and spec["state_bins"] == 256


def test_quantile_statistics_are_affine(policy, ref, observation):
    """(x - mean) / std with mean = (q01 + q99) / 2, std = (q99 - q01) / 2 is LeRobot's
    2 (x - q01) / (q99 - q01) - 1."""
    raw = policy.provenance["normalization"]["state"]
    q01, q99 = np.asarray(raw["q01"]), np.asarray(raw["q99"])
    np.testing.assert_allclose(policy.stats.state.mean, (q01 + q99) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        policy.stats.state.normalize(observation["state"]), ref["state_normalized"], atol=1e-6
    )


def test_tokens_equal_lerobot(policy, ref, hf_home, observation):
    check_tokens(policy, ref, tokenizer_file(hf_home), observation)
    tok = tokenizer_file(hf_home)
    state = ref["state_normalized"]
    messy, _ = tokenize(
        policy.tokenizer, tok, "  pick_the cube\n", state
    )  # LeRobot's task cleaning
    np.testing.assert_array_equal(messy, ref["lang_tokens"])
    other, _ = tokenize(policy.tokenizer, tok, INSTRUCTION, np.clip(state + 0.5, -1, 1))
    assert not np.array_equal(other, ref["lang_tokens"])  # the state is in the prompt


def test_actions_equal_lerobot(policy, ref, hf_home, observation):
    worst = check_actions(policy, ref, tokenizer_file(hf_home), observation)
    print(f"pi0.5 torch vs LeRobot max abs action difference {worst:.3g}")


def test_target_time_embedding_is_inert_at_import(policy, observation, hf_home):
    check_phi(policy, observation, tokenizer_file(hf_home))


@pytest.mark.parametrize(
    "field, value",
    [
        ("use_relative_actions", True),
        ("image_resolution", [64, 48]),
        ("max_state_dim", 4),  # below the state's 6 values
        ("n_obs_steps", 2),
        ("chunk_size", 3),  # below n_action_steps
    ],
)
def test_unported_settings_are_refused_by_name(checkpoint, tmp_path, hf_home, field, value):
    check_refusal(pi05.load_pi05, checkpoint, tmp_path, tokenizer_file(hf_home), field, value)


def test_an_import_is_reproducible(checkpoint, hf_home):
    check_reproducible(pi05.load_pi05, checkpoint, tokenizer_file(hf_home))


def test_modules_rebuild_from_export_weights(policy, tmp_path, observation, hf_home):
    check_rebuild(policy, pi05, tmp_path, observation, tokenizer_file(hf_home))


def test_onnx_runtime_equals_lerobot(policy, ref, observation, tmp_path):
    worst = check_onnx(policy, ref, observation, tmp_path / "export", pi05.POLICY_KIND)
    print(f"pi0.5 ONNX Runtime vs LeRobot max abs action difference {worst:.3g}")


def test_http_server_equals_lerobot(policy, ref, observation, tmp_path):
    """`reflex serve` of the export, POST /act with a seed: LeRobot's actions for that noise."""
    worst = check_http(policy, ref, observation, tmp_path / "export", pi05.POLICY_KIND)
    print(f"pi05 HTTP /act vs LeRobot max abs action difference {worst:.3g}")
