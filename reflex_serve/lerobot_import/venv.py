"""Run the LeRobot-side scripts (in_venv/) in the LeRobot venv, from the project's Python.

Nothing here imports torch, transformers or lerobot: data crosses the process boundary
as .npz files and one JSON line on stdout.

The venv is `$LEROBOT_VENV` when set, else `.venv-lerobot` at the repository root (what
scripts/lerobot_venv.sh creates).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_VENV_DIR = Path(__file__).resolve().parent / "in_venv"
SETUP_HINT = "run scripts/lerobot_venv.sh (Python 3.12 venv with lerobot 0.6.1)"


class LeRobotVenvMissing(RuntimeError):
    """The LeRobot venv's python does not exist; the message says how to create it."""


class LeRobotScriptError(RuntimeError):
    """A script in the LeRobot venv exited non-zero; the message holds its stderr tail."""


def venv_dir() -> Path:
    """The LeRobot venv directory ($LEROBOT_VENV or <repo>/.venv-lerobot); may not exist."""
    return Path(os.environ.get("LEROBOT_VENV", REPO_ROOT / ".venv-lerobot"))


def lerobot_python() -> Path:
    """Path of the venv's python. Raises LeRobotVenvMissing when it is absent."""
    python = venv_dir() / "bin" / "python"
    if not python.exists():
        raise LeRobotVenvMissing(f"{python} missing: {SETUP_HINT}")
    return python


def run_script(
    script: str,
    *args: str | os.PathLike,
    timeout_s: float = 300.0,
    threads: int = 1,
    hf_home: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess:
    """Run `in_venv/<script>` with the venv's python and return the finished process.

    `threads` caps torch / OpenMP threads (OMP_NUM_THREADS, MKL_NUM_THREADS);
    `hf_home` is passed as --hf-home (default: the script makes a temporary one).
    Raises LeRobotVenvMissing, LeRobotScriptError (non-zero exit, stderr tail in the
    message) or subprocess.TimeoutExpired after `timeout_s` seconds.
    """
    path = IN_VENV_DIR / script
    if not path.is_file():
        raise FileNotFoundError(f"no LeRobot-side script {path}")
    cmd = [str(lerobot_python()), str(path), *map(str, args)]
    if hf_home is not None:
        cmd += ["--hf-home", str(hf_home)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)  # the venv must not see the project's site-packages
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=timeout_s, env=env
    )
    if proc.returncode != 0:
        raise LeRobotScriptError(
            f"{script} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return proc


def build_tiny(kind: str, out_dir: str | os.PathLike, seed: int = 0, **kwargs) -> dict:
    """Build a tiny random-weight LeRobot policy (`kind`: "smolvla") offline into `out_dir`.

    Returns the builder's summary: kind, seed, checkpoint, parameters, files
    ({name: bytes}), build_s, save_s. Errors as run_script.
    """
    proc = run_script("tiny.py", kind, out_dir, "--seed", str(seed), **kwargs)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference_actions(
    checkpoint: str | os.PathLike,
    images: np.ndarray,
    cameras: list[str],
    state: np.ndarray,
    instruction: str,
    noise: np.ndarray | None = None,
    seed: int = 0,
    repeats: int = 1,
    **kwargs,
) -> dict[str, np.ndarray]:
    """LeRobot's `predict_action_chunk` output for one observation (in_venv/reference.py).

    images: uint8 (cams, H, W, 3) in `cameras` order (LeRobot feature suffixes);
    state: (state_dim,) raw; noise: (chunk_size, max_action_dim) float32 x at t = 1,
    (K, chunk_size, max_action_dim) for K runs in one process (actions etc. then have a
    leading K), or None to draw it from torch.manual_seed(seed) in the venv. Returns the
    arrays of the script's OUT.npz (actions, actions_normalized, noise, state_normalized,
    lang_tokens, lang_mask, act_ms, num_steps). Errors as run_script.
    """
    with tempfile.TemporaryDirectory(prefix="reflex-lerobot-ref-") as tmp:
        obs_path, out_path = Path(tmp) / "obs.npz", Path(tmp) / "out.npz"
        fields = {
            "images": np.asarray(images, dtype=np.uint8),
            "cameras": np.asarray(cameras, dtype=str),
            "state": np.asarray(state, dtype=np.float32),
            "instruction": np.asarray(instruction),
            "seed": np.asarray(seed),
        }
        if noise is not None:
            fields["noise"] = np.asarray(noise, dtype=np.float32)
        np.savez(obs_path, **fields)
        run_script(
            "reference.py", checkpoint, obs_path, out_path, "--repeats", str(repeats), **kwargs
        )
        with np.load(out_path) as out:
            return {k: out[k] for k in out.files}
