"""The native pi0 port (reflex_serve/lerobot_import/pi0.py) against LeRobot 0.6.1 itself.

A tiny random-weight pi0 is built offline in the LeRobot venv (scripts/lerobot_venv.sh;
skipped with that reason without it). The port reads the saved files only; its 10-step
Euler actions, its tokens and its ONNX Runtime export are compared with LeRobot's
predict_action_chunk on the same observation and explicit noise (docs/lerobot.md).
"""

from __future__ import annotations

import pytest
from lerobot_helpers import requires_venv
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

from reflex_serve.lerobot_import import pi0

pytestmark = requires_venv


hf_home, checkpoint, observation, ref, policy = pi_fixtures("pi0", pi0.load_pi0)


def test_sizes_come_from_the_weights(policy):
    """The saved config says gemma_2b / gemma_300m; the tiny weights are the patched sizes."""
    arch = policy.provenance["architecture"]
    assert policy.provenance["config"]["paligemma_variant"] == "gemma_2b"
    assert (arch["vlm_width"], arch["expert_width"], arch["vlm_layers"], arch["expert_layers"]) == (
        64,
        32,
        2,
        2,
    )
    assert (arch["heads"], arch["kv_heads"], arch["head_dim"], arch["vocab_size"]) == (
        2,
        1,
        16,
        1024,
    )
    assert (
        arch["vision_hidden"],
        arch["vision_layers"],
        arch["vision_heads"],
        arch["vision_patch"],
    ) == (32, 2, 2, 8)
    assert policy.state_input == "expert" and not arch["adarms"]
    assert (policy.prefix_len, policy.num_kv_layers, policy.kv_dim) == (2 * 64 + 16, 2, 16)
    assert [c.name for c in policy.cameras] == ["cam_high", "cam_wrist"]
    assert policy.tokenizer["task_suffix"] == "\n" and "{state}" not in policy.tokenizer["template"]


def test_tokens_equal_lerobot(policy, ref, hf_home, observation):
    check_tokens(policy, ref, tokenizer_file(hf_home), observation)


def test_actions_equal_lerobot(policy, ref, hf_home, observation):
    worst = check_actions(policy, ref, tokenizer_file(hf_home), observation)
    print(f"pi0 torch vs LeRobot max abs action difference {worst:.3g}")


def test_target_time_embedding_is_inert_at_import(policy, observation, hf_home):
    check_phi(policy, observation, tokenizer_file(hf_home))


@pytest.mark.parametrize(
    "field, value",
    [
        ("use_relative_actions", True),
        ("rtc_config", {"enabled": True}),
        ("n_obs_steps", 2),
        ("chunk_size", 3),  # below n_action_steps
    ],
)
def test_unported_settings_are_refused_by_name(checkpoint, tmp_path, hf_home, field, value):
    check_refusal(pi0.load_pi0, checkpoint, tmp_path, tokenizer_file(hf_home), field, value)


def test_an_import_is_reproducible(checkpoint, hf_home):
    check_reproducible(pi0.load_pi0, checkpoint, tokenizer_file(hf_home))


def test_modules_rebuild_from_export_weights(policy, tmp_path, observation, hf_home):
    check_rebuild(policy, pi0, tmp_path, observation, tokenizer_file(hf_home))


def test_onnx_runtime_equals_lerobot(policy, ref, observation, tmp_path):
    worst = check_onnx(policy, ref, observation, tmp_path / "export", pi0.POLICY_KIND)
    print(f"pi0 ONNX Runtime vs LeRobot max abs action difference {worst:.3g}")


def test_http_server_equals_lerobot(policy, ref, observation, tmp_path):
    """`reflex serve` of the export, POST /act with a seed: LeRobot's actions for that noise."""
    worst = check_http(policy, ref, observation, tmp_path / "export", pi0.POLICY_KIND)
    print(f"pi0 HTTP /act vs LeRobot max abs action difference {worst:.3g}")
