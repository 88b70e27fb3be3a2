"""``reflex validate export STUDENT [--reference TEACHER]`` (typer sub-app ``validate_app``).

Exit status: 0 pass, 1 fail, 2 error (missing or bad export, incompatible exports, no
observations). ``--json`` prints the report as one JSON object on stdout. The criteria
are documented in :mod:`reflex_serve.export.validate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .validate import DEFAULT_MAX_ENERGY, DEFAULT_MIN_SPREAD, DEFAULT_THRESHOLD

validate_app = typer.Typer(
    help="Validate exports: ONNX parity and agreement with a teacher.", no_args_is_help=True
)


def print_report(report, as_json: bool) -> None:
    """Print a :class:`~reflex_serve.export.validate.ValidationReport` (table or JSON)."""
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    def verdict(ok: bool | None) -> str:
        return {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "-"}[ok]

    table = Table(
        title=f"validate {report.student} ({report.student_version}, "
        f"{report.student_num_steps} step(s))"
    )
    for col in ("check", "value", "limit", "result"):
        table.add_column(col)
    table.add_row(
        "ONNX vs PyTorch max |diff|",
        f"{report.parity_max_abs:.2e}",
        f"<= {report.threshold:g}",
        verdict(report.parity_ok),
    )
    s = report.summary
    if s:
        table.add_row(
            "relative energy distance (pooled)",
            f"{s['relative_energy_pooled']:.3f}",
            f"<= {report.max_energy:g}",
            verdict(report.agreement_ok),
        )
        table.add_row("relative energy distance (mean)", f"{s['relative_energy_mean']:.3f}", "", "")
        table.add_row("relative energy distance (max)", f"{s['relative_energy_max']:.3f}", "", "")
        table.add_row("energy distance (mean)", f"{s['energy_mean']:.4f}", "", "")
        table.add_row(
            "spread E|Y-Y'| reference / student",
            f"{s['reference_spread_mean']:.3f} / {s['student_spread_mean']:.3f}",
            "",
            "",
        )
        table.add_row("MSE of mean chunks", f"{s['mean_mse_mean']:.4g}", "", "")
        table.add_row(
            "cosine of mean chunks (mean / min)",
            f"{s['mean_cosine_mean']:.4f} / {s['mean_cosine_min']:.4f}",
            "",
            "",
        )
        table.add_row("paired RMS difference (same noise)", f"{s['paired_rms_mean']:.4f}", "", "")
    console = Console(width=max(100, Console().width))
    console.print(table)
    if report.reference is not None:
        parent = "its parent" if report.is_parent else "NOT its parent"
        console.print(
            f"reference {report.reference} ({report.reference_version}, "
            f"{report.reference_num_steps} steps) is {parent}; {report.samples} draws "
            f"per observation on {report.observations_source}; normalized action units"
        )
    console.print("[green]PASS[/]" if report.passed else "[red]FAIL[/]")


def run_validation(
    student: Path,
    reference: Path | None,
    *,
    as_json: bool = False,
    synthetic_fallback: bool = False,
    **kwargs,
) -> int:
    """Validate and print; returns the exit status (0 pass, 1 fail, 2 error)."""
    from ..storage.engine import StoreError
    from .validate import ValidationError, validate_export

    try:
        report = validate_export(
            student, reference, synthetic_fallback=synthetic_fallback, **kwargs
        )
    except (ValidationError, StoreError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return 2
    print_report(report, as_json)
    return 0 if report.passed else 1


@validate_app.command("export")
def validate_export_cmd(
    student: Annotated[Path, typer.Argument(help="Export directory to validate (e.g. a student).")],
    reference: Annotated[
        Path | None,
        typer.Option(help="Reference export (e.g. the teacher) for the agreement check."),
    ] = None,
    threshold: Annotated[
        float, typer.Option(min=0.0, help="ONNX-vs-PyTorch max abs action difference allowed.")
    ] = DEFAULT_THRESHOLD,
    max_energy: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Largest pooled relative energy distance to the reference "
            "(0: same distribution; ~1: collapsed onto one mode).",
        ),
    ] = DEFAULT_MAX_ENERGY,
    min_spread: Annotated[
        float,
        typer.Option(
            min=1e-9, help="Floor of the reference spread in the ratio (normalized units)."
        ),
    ] = DEFAULT_MIN_SPREAD,
    observations: Annotated[int, typer.Option(min=1, help="Observations N.")] = 16,
    samples: Annotated[int, typer.Option(min=2, help="Noise draws K per observation.")] = 16,
    store: Annotated[
        str | None,
        typer.Option(
            help="Store URL: observations from its held-out split (default: $REFLEX_STORE, "
            "else the --data-dir store when it exists)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Directory of the embedded SQLite store (default: data).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Demonstration directory: its frames when no store has observations."),
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="Allow synthetic random observations when no real ones are found "
            "(out of distribution: a good student may fail there).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of noise and synthetic observations.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check an export's ONNX parity and, with --reference, its agreement with the reference.

    Exit status: 0 pass, 1 fail, 2 error.
    """
    code = run_validation(
        student,
        reference,
        as_json=as_json,
        threshold=threshold,
        max_energy=max_energy,
        min_spread=min_spread,
        observations=observations,
        samples=samples,
        store=store,
        data_dir=data_dir,
        data=data,
        synthetic=synthetic,
        seed=seed,
    )
    raise typer.Exit(code)
