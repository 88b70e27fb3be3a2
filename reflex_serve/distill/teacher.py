"""The teacher a student is distilled from, and the student it starts as.

A teacher is an export directory (ARCHITECTURE.md, "The export directory") of a
flow-matching policy with ``target_time`` ``instantaneous`` (s = t at every Euler step):
the project's own ``reflex-flow-vla``, whose PyTorch weights
:func:`reflex_serve.export.weights.load_model` rebuilds, or an imported LeRobot policy
(``lerobot-smolvla``, ``lerobot-pi0``, ``lerobot-pi05``), whose native modules
:func:`reflex_serve.lerobot_import.load_modules` rebuilds from the export alone. The
distiller uses the model only through ``encode_prefix(*prefix_inputs)`` and
``velocity(x_t, t, s, state, kv, mask)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..export.manifest import STATS, WEIGHTS, ExportError, Manifest, read_manifest
from ..export.onnx_export import POLICY_KIND
from ..export.weights import load_model
from ..policy.normalize import DatasetStats

IMPORTED_PREFIX = "lerobot-"


class TeacherError(ValueError):
    """The export cannot be distilled: not a flow-matching teacher, or unreadable."""


@dataclass
class Teacher:
    """A loaded teacher export.

    Attributes:
        path: the export directory.
        manifest: its manifest (digest verified).
        model: the PyTorch policy in eval mode, every parameter frozen.
        stats: its normalization statistics (the student inherits them).
        phi_zero: whether the target-time embedding phi(s) outputs zero, so that the
            student at step 0 equals the teacher for every s (see :func:`phi_is_zero`).
    """

    path: Path
    manifest: Manifest
    model: nn.Module
    stats: DatasetStats
    phi_zero: bool


def phi_is_zero(model: nn.Module) -> bool:
    """Whether the output layer of ``model.expert.target_time_mlp`` is exactly zero.

    SnapFlow's student equals its teacher at step 0 only if phi(s) = 0. A teacher trained
    with phi's parameters in the optimiser learns phi(s = t) as part of its time
    embedding; such a teacher still distils (the flow-matching term keeps s = t exact),
    but its 1-step output at s = 0 starts away from the teacher's.
    """
    mlp = getattr(getattr(model, "expert", None), "target_time_mlp", None)
    if mlp is None:
        return True  # an imported policy without phi: nothing to check here
    last = mlp[-1]
    return bool(torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0)


def load_teacher(path: Path | str) -> Teacher:
    """Load and check a teacher export.

    Raises:
        TeacherError: missing or corrupt directory (digest mismatch included), a policy
            kind other than ``reflex-flow-vla`` or an imported ``lerobot-*`` one, a ``shortcut`` export (a distilled
            student, not a flow-matching teacher), or weights that do not load or do not
            match the manifest's dimensions.
    """
    path = Path(path)
    try:
        manifest = read_manifest(path, verify=True)
    except ExportError as exc:
        raise TeacherError(str(exc)) from None
    imported = manifest.policy_kind.startswith(IMPORTED_PREFIX)
    if manifest.policy_kind != POLICY_KIND and not imported:
        raise TeacherError(
            f"{path}: policy_kind is {manifest.policy_kind!r}; the distiller needs a "
            f"flow-matching teacher of kind {POLICY_KIND!r} or an imported LeRobot "
            f"policy ({IMPORTED_PREFIX}smolvla, {IMPORTED_PREFIX}pi0, {IMPORTED_PREFIX}pi05)"
        )
    if manifest.target_time != "instantaneous":
        raise TeacherError(
            f"{path}: target_time is {manifest.target_time!r} (a distilled student, parent "
            f"{manifest.parent_version}); distil from a flow-matching teacher, whose "
            "target_time is 'instantaneous'"
        )
    try:
        model = _imported_model(path, manifest) if imported else load_model(path / WEIGHTS)
        stats = DatasetStats.load(path / STATS)
    except (ExportError, ValueError, OSError) as exc:
        raise TeacherError(
            f"{path}: cannot load the teacher's weights or statistics: {exc}"
        ) from None
    if imported:
        return _frozen(path, manifest, model, stats)
    cfg = model.config
    for name, ours in (
        ("state_dim", cfg.state_dim),
        ("action_dim", cfg.action_dim),
        ("chunk_size", cfg.chunk_size),
        ("max_text_tokens", cfg.max_text_tokens),
    ):
        if getattr(manifest, name) != ours:
            raise TeacherError(
                f"{path}: weights have {name} {ours}, the manifest has {getattr(manifest, name)}"
            )
    return _frozen(path, manifest, model, stats)


def _frozen(path: Path, manifest: Manifest, model: nn.Module, stats: DatasetStats) -> Teacher:
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(path, manifest, model.eval(), stats, phi_is_zero(model))


def _imported_model(path: Path, manifest: Manifest) -> nn.Module:
    """An imported LeRobot policy's native modules behind the distiller's interface
    (rebuilt from the export alone: its manifest's provenance and model.safetensors)."""
    from ..lerobot_import.imported import ImportedFlowModel
    from ..lerobot_import.registry import load_modules

    prefix, expert = load_modules(path)
    return ImportedFlowModel(prefix, expert, manifest.state_input)


def make_student(teacher: Teacher, train_prefix: bool = False) -> nn.Module:
    """The student at step 0: a copy of the teacher network (phi included).

    With a frozen prefix (default) only ``student.expert`` requires gradients.
    """
    student = copy.deepcopy(teacher.model)
    for name, p in student.named_parameters():
        p.requires_grad_(train_prefix or not name.startswith("prefix."))
    return student
