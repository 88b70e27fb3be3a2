"""``reflex import lerobot CHECKPOINT_DIR --output EXPORT_DIR [--vlm DIR | --tokenizer FILE]``.

Reads a LeRobot checkpoint with plain files (no LeRobot needed), writes an export
directory and checks ONNX Runtime against the native torch modules on synthetic
observations. Exit status: 0 written and verified; 1 parity mismatch (the export is
removed: nothing unverified is left to serve); 2 a missing or invalid checkpoint, an
unsupported setting (the message names the file or config field), an output
directory that is not empty without --overwrite, or an --output that is a file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

import_app = typer.Typer(help="Import policies from other frameworks.", no_args_is_help=True)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _check_output(output: Path) -> None:
    """Exit 2 naming --output when it, or the nearest existing folder above it, is a file
    (a directory cannot be written there, with or without --overwrite)."""
    existing = next(p for p in (output, *output.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "is" if existing == output else f"lies under {existing}, which is"
        _fail(f"--output {output} {where} an existing file, not a directory")


@import_app.command("lerobot")
def import_lerobot(
    checkpoint_dir: Annotated[Path, typer.Argument(help="LeRobot checkpoint directory (config.json, model.safetensors, policy_*processor files).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Export directory to write.")],
    vlm: Annotated[Path | None, typer.Option(help="SmolVLA: the SmolVLM directory (config.json, tokenizer.json); default: the config's vlm_model_name when it is a local directory.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="pi0 / pi0.5: PaliGemma's tokenizer.json (default: google/paligemma-3b-pt-224 in the Hugging Face cache).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    parity_observations: Annotated[int, typer.Option(min=1, help="Synthetic observations of the ONNX vs torch check.")] = 3,
) -> None:
    """Import a LeRobot SmolVLA, pi0 or pi0.5 checkpoint as an export directory."""
    from ..export.imported_export import check_imported_parity, export_imported
    from ..export.manifest import ExportError
    from ..export.parity import ParityError
    from .imported import CheckpointError
    from .registry import load_checkpoint, policy_kind

    _check_output(output)
    try:
        policy = load_checkpoint(checkpoint_dir, vlm_dir=vlm, tokenizer_file=tokenizer)
        manifest = export_imported(policy, output, policy_kind=policy_kind(policy.kind), overwrite=overwrite)
    except (CheckpointError, ExportError) as exc:
        _fail(str(exc))
    try:
        report = check_imported_parity(policy, output, observations=parity_observations)
    except ParityError as exc:
        shutil.rmtree(output, ignore_errors=True)
        _fail(f"{exc}; {output} removed", code=1)
    typer.echo(
        f"imported {policy.kind} from {checkpoint_dir} as version {manifest.version} in {output} "
        f"(ONNX vs torch max abs diff {report.max_abs_diff:.2e} <= {report.tolerance:g} "
        f"over {report.observations} observations, {report.num_steps} steps)"
    )
