"""Tiny random-weight pi0.5 built offline in the LeRobot venv; LeRobot's own output.

pi0.5 differs from pi0 where an exporter must follow it (docs/lerobot.md): QUANTILES
normalisation of state and action, and the normalised state discretised into 256 bins
and written into the prompt ("Task: ..., State: ...;\\nAction: ") before tokenising, so
the prefix depends on the state. Skipped, naming scripts/lerobot_venv.sh, without the venv.
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
PARAMETERS = 290_024  # pi0's tiny sizes plus the expert's adaRMS conditioning


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(hf_home, [seed-0, seed-1 checkpoints], observation, noises, seed-0 reference)."""
    root = tmp_path_factory.mktemp("pi05")
    hf_home = root / "hf"
    checkpoints = build_pair("pi05", root, hf_home)
    obs, noises = make_observation(), make_noises()
    ref = venv.reference_actions(checkpoints[0]["checkpoint"], noise=noises, hf_home=hf_home, **obs)
    return hf_home, checkpoints, obs, noises, ref


def test_reload_reproduces_and_weights_matter(setup):
    hf_home, checkpoints, obs, noises, ref = setup
    summary = checkpoints[0]
    assert summary["parameters"] == PARAMETERS and "TINY_RANDOM_PI0.json" in summary["files"]
    config = json.loads(Path(summary["checkpoint"], "config.json").read_text())
    assert config["type"] == "pi05" and config["normalization_mapping"]["STATE"] == "QUANTILES"
    assert ref["actions"].shape == (2, 10, 6)
    again = venv.reference_actions(summary["checkpoint"], noise=noises[0], hf_home=hf_home, **obs)
    np.testing.assert_array_equal(again["actions"], ref["actions"][0])
    fresh = venv.reference_actions(
        checkpoints[1]["checkpoint"], noise=noises[0], hf_home=hf_home, **obs
    )
    assert np.abs(fresh["actions"] - ref["actions"][0]).max() > 0.1
    assert np.abs(ref["actions"][1] - ref["actions"][0]).max() > 0.1


def test_quantile_normalisation_and_state_in_the_prompt(setup):
    hf_home, checkpoints, obs, _, ref = setup
    ckpt = checkpoints[0]["checkpoint"]
    post = load_file(f"{ckpt}/policy_postprocessor_step_0_unnormalizer_processor.safetensors")
    (pre_file,) = Path(ckpt).glob("policy_preprocessor_step_*_normalizer_processor.safetensors")
    pre = load_file(pre_file)
    # QUANTILES: 2 (x - q01) / (q99 - q01) - 1, inverse (x + 1) (q99 - q01) / 2 + q01
    q01, q99 = post["action.q01"], post["action.q99"]
    expected = (ref["actions_normalized"] + 1) * (q99 - q01) / 2 + q01
    np.testing.assert_allclose(ref["actions"], expected, atol=1e-5)
    s01, s99 = pre["observation.state.q01"], pre["observation.state.q99"]
    state = 2 * (obs["state"] - s01) / (s99 - s01) - 1
    np.testing.assert_allclose(ref["state_normalized"], state, atol=1e-6)

    bins = np.digitize(ref["state_normalized"], np.linspace(-1, 1, 257)[:-1]) - 1
    prompt = f"Task: {INSTRUCTION}, State: {' '.join(map(str, bins))};\nAction: "
    vocab = tokenizer_vocab("pi05", ckpt, hf_home)
    ids = [vocab[c] for c in prompt]
    assert len(ids) < 96 and len(set(bins.tolist())) > 1
    np.testing.assert_array_equal(ref["lang_tokens"][: len(ids)], ids)
    np.testing.assert_array_equal(ref["lang_tokens"][len(ids) :], vocab["<pad>"])
    assert ref["lang_mask"].sum() == len(ids) and ref["lang_mask"].shape == (96,)
