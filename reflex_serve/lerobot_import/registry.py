"""Which port reads which LeRobot checkpoint, and rebuilding a port's modules from an export.

Each port module (``smolvla.py``, ``pi0.py``, ``pi05.py``) provides:

* a loader ``load_<type>(checkpoint_dir, ...) -> ImportedPolicy`` (:data:`PORTS`);
* ``POLICY_KIND`` (the manifest's ``policy_kind``);
* ``modules_from_provenance(provenance) -> (prefix, expert)``: fresh modules of the
  architecture the importer recorded in the manifest's provenance.

Ports are imported lazily, so a port that does not exist yet is a clear error, not an
import failure of the package.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..export.manifest import WEIGHTS, ExportError, read_manifest
from .checkpoint import read_config, read_json
from .imported import CheckpointError, ImportedPolicy

#: config.json "type" -> (module of this package, loader function, manifest policy_kind,
#: the loader's keyword for the extra input file: the SmolVLM directory or PaliGemma's
#: tokenizer.json)
PORTS = {
    "smolvla": ("smolvla", "load_smolvla", "lerobot-smolvla", "vlm_dir"),
    "pi0": ("pi0", "load_pi0", "lerobot-pi0", "tokenizer_file"),
    "pi05": ("pi05", "load_pi05", "lerobot-pi05", "tokenizer_file"),
}
OPTION_FLAGS = {"vlm_dir": "--vlm", "tokenizer_file": "--tokenizer"}
KINDS = {kind: policy_type for policy_type, (_, _, kind, _) in PORTS.items()}


def _port(policy_type: str):
    module = PORTS[policy_type][0]
    try:
        return importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.{module}":
            raise
        raise CheckpointError(
            f"LeRobot {policy_type} checkpoints cannot be imported yet "
            f"(reflex_serve/lerobot_import/{module}.py does not exist)"
        ) from None


def load_checkpoint(checkpoint_dir: str | Path, vlm_dir: str | Path | None = None,
                    tokenizer_file: str | Path | None = None) -> ImportedPolicy:
    """Read any supported LeRobot checkpoint, dispatching on config.json ``type``.

    ``vlm_dir`` (SmolVLA: the SmolVLM directory) and ``tokenizer_file`` (pi0 / pi0.5:
    PaliGemma's tokenizer.json) are passed to the port that takes them, when given.
    Raises CheckpointError: missing / invalid files (named), an unknown or not yet
    ported type, an option the type does not take, an unsupported setting (the config
    field named).
    """
    config = read_config(Path(checkpoint_dir))
    policy_type = config["type"]
    if policy_type not in PORTS:
        raise CheckpointError(
            f"{Path(checkpoint_dir) / 'config.json'}: policy type {policy_type!r} is not supported "
            f"(supported: {sorted(PORTS)})"
        )
    options = {k: v for k, v in (("vlm_dir", vlm_dir), ("tokenizer_file", tokenizer_file)) if v is not None}
    _, loader_name, _, takes = PORTS[policy_type]
    for name in options:
        if name != takes:
            raise CheckpointError(f"{OPTION_FLAGS[name]} does not apply to a {policy_type} checkpoint "
                                  f"(it takes {OPTION_FLAGS[takes]})")
    loader = getattr(_port(policy_type), loader_name)
    policy = loader(checkpoint_dir, **options)
    env = training_env(Path(checkpoint_dir))
    if env is not None:
        policy.provenance["env"] = env
    return policy


def training_env(checkpoint_dir: Path) -> dict | None:
    """The simulation environment the checkpoint was trained for: ``env`` of the
    ``train_config.json`` LeRobot saves beside config.json (e.g. ``{"type": "libero",
    "task": "libero_10", ...}``), or None when there is none (a robot dataset). The
    evaluation suite is chosen by it (:mod:`reflex_serve.sim.suites`).

    Raises CheckpointError: a train_config.json that is not valid JSON.
    """
    path = checkpoint_dir / "train_config.json"
    if not path.is_file():
        return None
    env = read_json(path).get("env")
    return env if isinstance(env, dict) and env.get("type") else None


def policy_kind(policy_type: str) -> str:
    """The manifest ``policy_kind`` of a LeRobot ``type`` (e.g. "smolvla" -> "lerobot-smolvla")."""
    return PORTS[policy_type][2]


def load_modules(export_dir: str | Path) -> tuple[nn.Module, nn.Module]:
    """(prefix, expert) of an imported export, with its model.safetensors weights, eval mode.

    A distiller uses this to train the expert (and phi) of an imported teacher.

    Raises:
        ExportError: not an imported export, or weights that do not fit the recorded
            architecture.
    """
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    if manifest.policy_kind not in KINDS:
        raise ExportError(f"{export_dir}: policy_kind {manifest.policy_kind!r} is not an imported "
                          f"LeRobot policy (known: {sorted(KINDS)})")
    provenance = manifest.provenance
    if "architecture" not in provenance and "teacher_provenance" in provenance:
        provenance = provenance["teacher_provenance"]  # teacher@N: the teacher's modules
    try:
        prefix, expert = _port(KINDS[manifest.policy_kind]).modules_from_provenance(provenance)
    except (KeyError, TypeError, CheckpointError) as exc:
        raise ExportError(f"{export_dir}: manifest provenance cannot rebuild the modules: {exc!r}") from exc
    tensors = load_file(str(export_dir / WEIGHTS))
    for name, module in (("prefix", prefix), ("expert", expert)):
        state = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        try:
            module.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
        except RuntimeError as exc:
            raise ExportError(f"{export_dir / WEIGHTS}: {name} weights do not fit: {exc}") from exc
    return prefix.eval(), expert.eval()
