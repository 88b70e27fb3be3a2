"""``reflex train distill TEACHER_EXPORT --output DIR``: SnapFlow, teacher -> 1-step student.

Registered by :mod:`reflex_serve.cli` under ``train``. Exit status: 0 done (and, with
``--validate-after``, validated), 1 the student failed validation, 2 an error (bad
teacher, data that do not match it, a bad option).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from . import DEFAULT_LAMBDA

RUNTIMES = ("local",)


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _when(value: str | None) -> datetime | None:
    """``--since``: an ISO time or an age like ``7d``."""
    from ..storage.maintenance import parse_time_or_age

    if value is None:
        return None
    try:
        return parse_time_or_age(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None


def distill_cmd(
    teacher_export: Annotated[
        Path, typer.Argument(help="The flow-matching teacher's export directory.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Student export directory to write.")
    ],
    data: Annotated[
        str | None,
        typer.Option(
            help="Store URL, SQLite file, data directory, or demo directory (reflex sim collect) "
            "(default: --data-dir's store)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory of the embedded SQLite store when --data is not given (default: data)."
        ),
    ] = None,
    source: Annotated[
        str, typer.Option(help="Store rows to learn from: demo, served or all.")
    ] = "all",
    model_version: Annotated[
        str | None,
        typer.Option(
            help="Served rows of this version only ('teacher': the teacher's own traffic)."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Rows received since (ISO time or age like 7d).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 10000,
    mix_ratio: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of each batch that is consistency samples."),
    ] = 0.5,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    alpha: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Weight of the flow-matching term.")
    ] = 0.5,
    lam: Annotated[
        float,
        typer.Option(
            "--lambda", min=0.0, help="Scale of the consistency term (the paper's is 0.1)."
        ),
    ] = DEFAULT_LAMBDA,
    objective: Annotated[
        str | None,
        typer.Option(
            help="snapflow, or trajectory (regress the 1-step output on the teacher's "
            "N-step result). Default: snapflow; trajectory with --state-out."
        ),
    ] = None,
    train_prefix: Annotated[
        bool,
        typer.Option(
            "--train-prefix", help="Also train the prefix (its cache is then not shared)."
        ),
    ] = False,
    state_out: Annotated[
        bool,
        typer.Option(
            "--state-out",
            help="pi0.5 teachers only: move the state from the prompt to an explicit expert "
            "input, so the student's prefix is cacheable across control steps.",
        ),
    ] = False,
    runtime: Annotated[str, typer.Option(help="Where to train: local.")] = "local",
    validate_after: Annotated[
        bool,
        typer.Option(
            "--validate-after", help="Run `reflex validate export` against the teacher at the end."
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seed of batches and noise (same seed, same weights).")
    ] = 0,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads.")] = 2,
    run_dir: Annotated[
        Path | None, typer.Option(help="Checkpoints and log (default: <output>-run).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run directory's checkpoint.")] = False,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop after this many minutes (resumable).")
    ] = None,
    prefix_cache_mb: Annotated[
        float,
        typer.Option(
            min=0.0, help="Memory for frozen-prefix outputs, MiB (the rest is computed per batch)."
        ),
    ] = 2048,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Distill a 10-step flow-matching teacher into a 1-step student (SnapFlow, arXiv 2604.05656).

    Exit status: 0 done, 1 the student failed --validate-after, 2 an error.
    """
    if runtime not in RUNTIMES:
        raise typer.BadParameter(
            f"{runtime!r} is not supported; supported: "
            f"{', '.join(RUNTIMES)} (train in this process)",
            param_hint="--runtime",
        )
    from ..export.manifest import ExportError
    from ..export.parity import ParityError
    from ..policy.training import TrainingDiverged
    from ..storage.engine import StoreError
    from .data import DataError, DataSpec, load_data
    from .student_export import export_student
    from .teacher import TeacherError, load_teacher
    from .trainer import DistillConfig, DistillError, distill, read_run

    if output.exists() and any(output.iterdir()) and not overwrite:
        _fail(f"--output {output} is not empty (an export is immutable); pass --overwrite")
    try:
        cfg = DistillConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            mix_ratio=mix_ratio,
            alpha=alpha,
            lam=lam,
            objective=objective or ("trajectory" if state_out else "snapflow"),
            train_prefix=train_prefix,
            state_out=state_out,
            seed=seed,
            threads=threads,
            prefix_cache_mb=prefix_cache_mb,
            max_minutes=max_minutes,
            progress=progress,
        )
    except ValueError as exc:
        _fail(str(exc))
    run_dir = run_dir or output.with_name(output.name + "-run")
    try:
        teacher = load_teacher(teacher_export)
    except TeacherError as exc:
        _fail(f"TEACHER_EXPORT: {exc}")
    if state_out:
        from .state_out import StateOutError, check_teacher

        try:
            check_teacher(teacher.manifest, train_prefix)
        except StateOutError as exc:
            _fail(str(exc))
    if model_version == "teacher":
        model_version = teacher.manifest.version
    previous = read_run(run_dir) if resume else None
    # a run reads the rows received before it started, so that --resume sees the same rows
    until = (
        datetime.fromisoformat(previous["data"]["until"])
        if previous and previous["data"].get("until")
        else datetime.now(UTC)
    )
    try:
        spec = DataSpec(
            data=data,
            data_dir=data_dir,
            source=source,
            model_version=model_version,
            since=_when(since),
            until=until,
        )
        rows = load_data(spec, teacher.manifest, teacher.stats, teacher.path)
    except (DataError, StoreError, FileNotFoundError, KeyError, ValueError) as exc:
        _fail(f"--data: {exc}")
    typer.echo(
        f"teacher {teacher.manifest.version} ({teacher.manifest.num_steps} steps); "
        f"{rows.size} labelled observations {rows.rows}; run directory {run_dir}"
    )
    others = {v: n for v, n in rows.description.get("served_versions", {}).items()
              if v != teacher.manifest.version}
    if others:
        typer.echo(
            f"note: {sum(others.values())} served rows were answered by other versions "
            f"({', '.join(sorted(others))}), not this teacher; their chunks are the labels. "
            "--model-version teacher keeps the teacher's own traffic"
        )
    try:
        result = distill(teacher, rows, cfg, run_dir, resume=resume, echo=typer.echo)
    except (DistillError, TrainingDiverged) as exc:
        _fail(str(exc))
    last = result.losses.get("last", {})
    typer.echo(
        f"trained {result.steps} steps ({result.session_steps} now, {result.step_ms:.0f} ms "
        f"per step); last " + " ".join(f"{k}={v}" for k, v in last.items() if k != "lr")
    )
    try:
        manifest, parity = export_student(result, teacher, output, data=rows, overwrite=overwrite)
    except (ExportError, ParityError) as exc:
        _fail(str(exc))
    typer.echo(
        f"student {manifest.version} (1 step, parent {teacher.manifest.version}) written "
        f"to {output}; parity max abs diff {parity:.2e}"
    )
    if validate_after:
        from ..export.cli import run_validation

        store_url = None
        if rows.description.get("kind") == "store":
            from ..storage.engine import resolve_url
            from .data import store_location

            url, ddir = store_location(spec)
            store_url = resolve_url(url, ddir)
        code = run_validation(output, teacher.path, store=store_url, synthetic_fallback=True)
        raise typer.Exit(code)
