"""Reading a LeRobot 0.6.x checkpoint directory with plain files (shared by every port).

What a saved LeRobot policy holds (docs/lerobot.md, "Normalisation -> stats.json"):
``config.json`` (the policy config, ``type`` names the policy), ``model.safetensors``
(the weights), ``policy_preprocessor.json`` / ``policy_postprocessor.json`` (the
processor steps; the normaliser's ``norm_map`` and ``state_file``) and the normaliser
statistics ``*.safetensors`` next to them. Nothing here imports LeRobot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from ..export.manifest import CameraSpec
from ..policy.normalize import DatasetStats, Stats
from .imported import CheckpointError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PREPROCESSOR = "policy_preprocessor.json"
POSTPROCESSOR = "policy_postprocessor.json"
LEROBOT_VERSION = "0.6.1"
NORM_EPS = 1e-8  # LeRobot's normaliser eps (a zero range becomes eps)
IMAGE_PREFIX = "observation.images."


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file. Raises CheckpointError naming the file when missing / invalid."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a LeRobot checkpoint directory")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_config(checkpoint: Path) -> dict[str, Any]:
    """The policy's config.json (its ``type`` is the policy family). Raises CheckpointError."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint} is not a directory: not a LeRobot checkpoint")
    config = read_json(checkpoint / CONFIG)
    if "type" not in config:
        raise CheckpointError(f"{checkpoint / CONFIG} has no 'type' field: not a LeRobot policy config")
    return config


def refuse(config: dict[str, Any], field: str, bad: bool, why: str) -> None:
    """Raise CheckpointError naming config field ``field`` (and its value) when ``bad``."""
    if bad:
        raise CheckpointError(f"config.json field {field}={config.get(field)!r} is not supported: {why}")


_REQUIRED = object()


def number(config: dict[str, Any], field: str, where: str, *, integer: bool = False,
           default: Any = _REQUIRED) -> Any:
    """``config[field]`` as an int (``integer``) or a float; ``default`` when it is absent
    or null (a required field when no default is given).

    ``where`` names the file (and section) in the error, e.g. ``".../config.json
    text_config"``. Raises CheckpointError naming it and the field when the field is
    missing, or is not a JSON number (an integral one for ``integer``).
    """
    value = config.get(field)
    if value is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{where} field {field} is missing")
        return default
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool):
        raise CheckpointError(
            f"{where} field {field}={value!r} is not {'an integer' if integer else 'a number'}"
        )
    return int(value) if integer else float(value)


def int_pair(config: dict[str, Any], field: str, where: str,
             default: list[int] | None) -> tuple[int, int]:
    """``config[field]`` (``default`` when absent) as two integers, e.g. an image size.
    Raises CheckpointError naming the file and field when it is not a list of two."""
    value = config.get(field, default)
    if not isinstance(value, list) or len(value) != 2:
        raise CheckpointError(f"{where} field {field}={value!r} is not a list of two integers")
    first, second = (number({field: v}, field, where, integer=True) for v in value)
    return first, second


def check_interface(config: dict[str, Any], features: Features, where: str) -> None:
    """Refuse, naming the config field, an interface no port runs (shared by every port):
    more ``n_action_steps`` than ``chunk_size`` (LeRobot refuses it too), ``n_obs_steps``
    other than 1, a state or action wider than ``max_state_dim`` / ``max_action_dim`` (the
    widths they are zero-padded to). ``where`` names config.json for a malformed number."""
    chunk = number(config, "chunk_size", where, integer=True)
    steps = number(config, "n_action_steps", where, integer=True)
    refuse(config, "n_action_steps", not 1 <= steps <= chunk,
           f"must be 1..chunk_size (chunk_size={chunk})")
    refuse(config, "n_obs_steps", number(config, "n_obs_steps", where, integer=True, default=1) != 1,
           "only one observation step")
    for field, width, what in (("max_state_dim", features.state_dim, "observation.state"),
                               ("max_action_dim", features.action_dim, "action")):
        refuse(config, field, number(config, field, where, integer=True) < width,
               f"smaller than the {width} values of {what} (input/output_features)")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_safetensors(path: Path, load: Callable[[str], dict] = load_file) -> dict:
    """The tensors of a safetensors file, read by ``load`` (default: as numpy arrays;
    ``safetensors.torch.load_file`` for bfloat16 weights). Raises CheckpointError naming
    the file when it is truncated or not a safetensors file."""
    try:
        return load(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def read_weights(checkpoint: Path, load: Callable[[str], dict] = load_file) -> tuple[dict, str]:
    """(model.safetensors tensors, read by ``load`` (:func:`read_safetensors`), its sha256).

    Raises CheckpointError naming the file when it is missing or unreadable.
    """
    path = Path(checkpoint) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the checkpoint has no weights")
    return read_safetensors(path, load), file_sha256(path)


@dataclass(frozen=True)
class Features:
    """The robot interface of a policy config: cameras in config order, state and action widths."""

    cameras: list[CameraSpec]
    state_dim: int
    action_dim: int


def read_features(config: dict[str, Any], config_path: Path) -> Features:
    """Cameras (``observation.images.<name>`` of shape (3, H, W)), state and action widths.

    Raises CheckpointError naming config.json when a feature is missing or malformed.
    """
    try:
        inputs, outputs = config["input_features"], config["output_features"]
        cameras = [
            CameraSpec(key[len(IMAGE_PREFIX):], int(f["shape"][1]), int(f["shape"][2]))
            for key, f in inputs.items()
            if f["type"] == "VISUAL"
        ]
        state_dim = int(inputs["observation.state"]["shape"][0])
        action_dim = int(outputs["action"]["shape"][0])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: input/output features malformed ({exc!r})") from exc
    if not cameras:
        raise CheckpointError(f"{config_path}: input_features has no observation.images.* camera")
    return Features(cameras, state_dim, action_dim)


def _normalizer_step(checkpoint: Path, name: str, registry: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config of the ``registry`` step of processor file ``name``, its statistics)."""
    path = checkpoint / name
    for step in read_json(path).get("steps", []):
        if step.get("registry_name") == registry:
            state_file = step.get("state_file")
            if not state_file or not (checkpoint / state_file).is_file():
                raise CheckpointError(f"{path}: {registry} statistics file {state_file!r} not found")
            return step.get("config", {}), read_safetensors(checkpoint / state_file)
    raise CheckpointError(f"{path} has no {registry} step")


def affine_stats(mode: str, raw: dict[str, np.ndarray], key: str, dim: int) -> Stats:
    """LeRobot normalisation ``mode`` of feature ``key`` as (mean, std) (docs/lerobot.md table).

    Raises CheckpointError when the mode is unknown or its statistics are missing.
    """
    def get(stat: str) -> np.ndarray:
        name = f"{key}.{stat}"
        if name not in raw:
            raise CheckpointError(f"normaliser statistics lack {name} (needed by {mode})")
        return raw[name].astype(np.float64).reshape(dim)

    def span(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        width = np.where(hi - lo == 0, NORM_EPS, hi - lo)
        return lo + width / 2, width / 2

    if mode == "MEAN_STD":
        mean, std = get("mean"), get("std")
    elif mode == "MIN_MAX":
        mean, std = span(get("min"), get("max"))
    elif mode == "QUANTILES":
        mean, std = span(get("q01"), get("q99"))
    elif mode == "QUANTILE10":
        mean, std = span(get("q10"), get("q90"))
    elif mode == "IDENTITY":
        mean, std = np.zeros(dim), np.ones(dim)
    else:
        raise CheckpointError(f"normalisation mode {mode!r} of {key} is not supported")
    lo = raw.get(f"{key}.min", mean - std).astype(np.float32).reshape(dim)
    hi = raw.get(f"{key}.max", mean + std).astype(np.float32).reshape(dim)
    return Stats(mean=mean.astype(np.float32), std=std.astype(np.float32), min=lo, max=hi)


def read_normalization(checkpoint: Path, features: Features) -> tuple[DatasetStats, dict[str, Any]]:
    """State / action statistics of the saved pre- and post-processor, and their provenance.

    The preprocessor's normaliser gives the state mode and statistics, the
    postprocessor's unnormaliser the action's. Returns (DatasetStats, {"norm_map": ...,
    "state": {stat: list}, "action": {stat: list}}). Raises CheckpointError naming the file.
    """
    checkpoint = Path(checkpoint)
    pre_cfg, pre_raw = _normalizer_step(checkpoint, PREPROCESSOR, "normalizer_processor")
    post_cfg, post_raw = _normalizer_step(checkpoint, POSTPROCESSOR, "unnormalizer_processor")
    modes = {**pre_cfg.get("norm_map", {}), **post_cfg.get("norm_map", {})}
    state_mode, action_mode = modes.get("STATE", "IDENTITY"), modes.get("ACTION", "IDENTITY")
    stats = DatasetStats(
        state=affine_stats(state_mode, pre_raw, "observation.state", features.state_dim),
        action=affine_stats(action_mode, post_raw, "action", features.action_dim),
    )

    def raw_of(raw: dict[str, np.ndarray], key: str) -> dict[str, list]:
        return {k[len(key) + 1:]: v.tolist() for k, v in raw.items() if k.startswith(key + ".")}

    provenance = {
        "norm_map": modes,
        "state": raw_of(pre_raw, "observation.state"),
        "action": raw_of(post_raw, "action"),
    }
    return stats, provenance


def preprocessor_step(checkpoint: Path, registry: str) -> dict[str, Any] | None:
    """The config of the preprocessor step ``registry`` (e.g. "tokenizer_processor"), or None."""
    for step in read_json(Path(checkpoint) / PREPROCESSOR).get("steps", []):
        if step.get("registry_name") == registry:
            return step.get("config", {})
    return None
