"""The facts docs/lerobot.md's SmolVLA export design rests on, measured on a tiny SmolVLA.

In the LeRobot venv (scripts/lerobot_venv.sh; skipped with that reason without it):
the prefix is 2 cameras x 4 image tokens + the language + ONE state token in its own
attention block; the image and language K/V do not depend on the state (so the state
can join prefix.onnx without changing them); padding the language to a fixed length
with mask 0 leaves the actions unchanged; one Euler step is noise - v(noise, t = 1).
"""

from __future__ import annotations

import json

import pytest

from reflex_serve.lerobot_import import venv

pytestmark = pytest.mark.skipif(
    not (venv.venv_dir() / "bin" / "python").exists(),
    reason=f"{venv.venv_dir()}/bin/python missing: {venv.SETUP_HINT}",
)


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    root = tmp_path_factory.mktemp("smolvla-design")
    hf_home = root / "hf"
    summary = venv.build_tiny("smolvla", root / "ckpt", seed=3, hf_home=hf_home)
    proc = venv.run_script(
        "smolvla_facts.py", summary["checkpoint"], "--pad-to", "16", hf_home=hf_home
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_prefix_layout_and_state_independent_image_language_kv(facts):
    language = facts["language_tokens"]
    assert language == len("pick the cube\n")
    assert facts["prefix_len"] == 2 * 4 + language + 1
    assert facts["prefix_blocks"] == [0] * (2 * 4 + language) + [1]
    assert facts["kv_shape"] == [1, 2, facts["prefix_len"], 16]  # B, kv heads, P, head_dim
    assert facts["image_lang_kv_diff"] == [0.0] * 4
    assert len(facts["state_kv_diff"]) == 4 and min(facts["state_kv_diff"]) > 1e-3


def test_fixed_length_language_and_one_euler_step(facts):
    assert facts["padded_language_diff"] < 1e-5
    assert facts["one_step_diff"] < 1e-6
    assert set(facts["act_ms"]) == {"1", "10"}
    assert 0 < facts["act_ms"]["1"] < facts["act_ms"]["10"]
