"""PyTorch weights of an export or a training run (``model.safetensors``).

The policy configuration travels in the safetensors metadata (key ``"config"``, JSON),
so the weights file alone rebuilds the network.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, safe_open, save_file

from ..policy.configuration import PolicyConfig
from ..policy.modeling import FlowMatchingVLA
from .manifest import ExportError


def save_weights(model: FlowMatchingVLA, path: Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Write the model's parameters (float32) and its config to ``path``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"config": json.dumps(model.config.to_dict()), **(extra_metadata or {})}
    save_file(tensors, str(path), metadata=metadata)


def read_config(path: Path) -> PolicyConfig:
    """The :class:`PolicyConfig` stored in a weights file's metadata.

    Raises:
        ExportError: if the file has no policy config (not a native flow-matching policy).
    """
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ExportError(f"{path} carries no policy config: not a reflex flow-matching policy")
    return PolicyConfig.from_dict(json.loads(meta["config"]))


def load_model(path: Path) -> FlowMatchingVLA:
    """Rebuild a :class:`FlowMatchingVLA` in eval mode from a weights file.

    Raises:
        ExportError: if the file is missing or its tensors do not fit the stored config.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} not found")
    model = FlowMatchingVLA(read_config(path))
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise ExportError(f"{path}: weights do not match the stored config: {exc}") from exc
    return model.eval()
