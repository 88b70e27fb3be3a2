"""The student's export directory: manifest with num_steps = 1, ``target_time`` shortcut,
the teacher as parent, the teacher's prefix.onnx when the prefix is frozen (so the prefix
cache is shared), and an ONNX Runtime parity check against the PyTorch student.

A student of an imported LeRobot teacher keeps the imported layout (tokenizer file,
padded widths, where the state enters) and the teacher's provenance (source checkpoint,
architecture), so that its modules can be rebuilt from the export like the teacher's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..export.manifest import PREFIX_ONNX, Manifest
from ..lerobot_import.imported import ImportedFlowModel
from .data import DistillData
from .teacher import Teacher
from .trainer import DistillResult


def export_student(
    result: DistillResult,
    teacher: Teacher,
    out_dir: Path,
    *,
    data: DistillData | None = None,
    overwrite: bool = False,
    parity_tolerance: float = 1e-4,
) -> tuple[Manifest, float]:
    """Write the student's export directory and check its ONNX Runtime parity.

    The manifest has ``num_steps = 1``, ``target_time = "shortcut"``, the teacher's digest
    as ``parent_version`` and the run's provenance; with a frozen prefix ``prefix.onnx``
    is copied from the teacher.

    Returns:
        (the manifest, the parity max abs difference).

    Raises:
        ExportError: ``out_dir`` is not empty and ``overwrite`` is False.
        ParityError: ONNX Runtime and PyTorch differ by more than ``parity_tolerance``.
    """
    from ..export.onnx_export import export_policy
    from ..export.parity import check_parity

    cfg = result.config
    provenance = {
        "kind": "snapflow-distill",
        "paper": "arXiv 2604.05656",
        "objective": cfg.objective,
        "teacher": teacher.manifest.digest,
        "teacher_num_steps": teacher.manifest.num_steps,
        "steps": result.steps,
        "mix_ratio": cfg.mix_ratio,
        "alpha": cfg.alpha,
        "lambda": cfg.lam,
        "lr": cfg.lr,
        "optimizer": "AdamW",
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "ema_decay": cfg.ema_decay,
        "prefix": _prefix_note(cfg),
        "teacher_phi_zero": teacher.phi_zero,
        "data": data.description if data else None,
        "losses": result.losses,
        "run_dir": str(result.run_dir),
    }
    common = {
        "num_steps": 1,
        "target_time": "shortcut",
        "parent_version": teacher.manifest.digest,
        "overwrite": overwrite,
        "prefix_onnx_from": None if cfg.train_prefix else teacher.path / PREFIX_ONNX,
    }
    if isinstance(result.student, ImportedFlowModel):
        return _export_imported_student(result, teacher, out_dir, provenance, common, parity_tolerance)
    manifest = export_policy(result.student, teacher.stats, out_dir, provenance=provenance, **common)
    report = check_parity(result.student, out_dir, tolerance=parity_tolerance)
    return manifest, report.max_abs_diff


def _prefix_note(cfg) -> str:
    if cfg.train_prefix:
        return "trained: prefix.onnx exported anew, prefix cache not shared with the teacher"
    if cfg.state_out:
        return ("frozen: prefix.onnx is the teacher's; its token input is the state-free prompt, "
                "so cache entries are shared across states, not with the teacher")
    return "frozen: prefix.onnx is the teacher's, prefix cache shared"


def _export_imported_student(
    result: DistillResult,
    teacher: Teacher,
    out_dir: Path,
    provenance: dict[str, Any],
    common: dict[str, Any],
    parity_tolerance: float,
) -> tuple[Manifest, float]:
    """The student of an imported LeRobot teacher: the same export layout (tokenizer file,
    padded widths, state input) with the student's modules; the provenance keeps the
    teacher's (source checkpoint, architecture) so the student's modules can be rebuilt."""
    from ..export.imported_export import check_imported_parity, export_imported
    from ..lerobot_import.imported import policy_from_export

    policy = policy_from_export(teacher.path, teacher.manifest, teacher.stats, result.student)
    if result.config.state_out:  # its own prompt, state input and expert class
        from .state_out import student_policy

        policy = student_policy(policy)
    manifest = export_imported(
        policy,
        out_dir,
        policy_kind=teacher.manifest.policy_kind,
        provenance={**policy.provenance, **provenance},
        **common,
    )
    report = check_imported_parity(policy, out_dir, tolerance=parity_tolerance)
    return manifest, report.max_abs_diff
