"""Shared pieces of the LeRobot tests: the venv skip, one observation, noises, vocabularies.

Every LeRobot call runs in .venv-lerobot's python as a subprocess
(reflex_serve.lerobot_import.venv); without that venv the tests using `requires_venv`
are skipped with the reason naming scripts/lerobot_venv.sh.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reflex_serve.lerobot_import import venv

requires_venv = pytest.mark.skipif(
    not (venv.venv_dir() / "bin" / "python").exists(),
    reason=f"{venv.venv_dir()}/bin/python missing: {venv.SETUP_HINT}",
)

CAMERAS = ["cam_high", "cam_wrist"]
INSTRUCTION = "pick the cube"


def make_observation(seed: int = 7) -> dict:
    """Keyword arguments of venv.reference_actions for the tiny policies' features."""
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8),
        "cameras": CAMERAS,
        "state": rng.standard_normal(6).astype(np.float32),
        "instruction": INSTRUCTION,
    }


def make_noises(count: int = 2, seed: int = 11) -> np.ndarray:
    """float32 (count, chunk 10, max_action_dim 8): x at t = 1 for the tiny policies."""
    return np.random.default_rng(seed).standard_normal((count, 10, 8)).astype(np.float32)


def build_pair(kind: str, root: Path, hf_home: Path) -> list[dict]:
    """Tiny checkpoints of `kind` with seeds 0 and 1 (same config, different weights)."""
    return [venv.build_tiny(kind, root / f"seed{s}", seed=s, hf_home=hf_home) for s in (0, 1)]


def tokenizer_vocab(kind: str, ckpt: str, hf_home) -> dict[str, int]:
    """Vocabulary of the tiny tokenizer a checkpoint uses (one id per character)."""
    if kind == "smolvla":
        path = Path(ckpt, "tiny-smolvlm", "tokenizer.json")
    else:  # pi0 / pi0.5: the fake hub-cache entry of google/paligemma-3b-pt-224
        (path,) = Path(hf_home, "hub").glob("models--google--paligemma*/snapshots/*/tokenizer.json")
    return json.loads(path.read_text())["model"]["vocab"]
