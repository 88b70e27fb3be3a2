"""``reflex runs list | show RUN_ID`` and the ``reflex serve --distill-*`` options.

Registered by :mod:`reflex_serve.cli`. The store is named as for ``reflex gates show``
and ``reflex data stats``: ``--store URL``, else ``$REFLEX_STORE``, else the SQLite file
in ``--data-dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

runs_app = typer.Typer(help="Runs of the self-distilling loop (docs/loop.md).",
                       no_args_is_help=True)

StoreOpt = Annotated[str | None, typer.Option(
    help="Store URL (default: $REFLEX_STORE, else SQLite in --data-dir).")]
DataDirOpt = Annotated[Path | None, typer.Option(
    help="Directory of the embedded SQLite store (default: data).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
MIN_PREFIX = 4  # as the API's /admin/distill/runs/{run_id}


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _open(store: str | None, data_dir: Path | None):
    """The store to read runs from; never created (exit 2 naming the flag)."""
    from reflex_serve.gates.evidence import open_cli_store
    from reflex_serve.storage.engine import StoreError

    try:
        return open_cli_store(store, data_dir, existing=True)
    except StoreError as exc:
        _fail(str(exc))


def loop_settings(schedule: str | None, at: str | None, min_new_samples: int | None,
                  threads: int | None, steps: int | None, config_file: Path | None,
                  *, collect_data: bool, data_dir: Path | None = None) -> Any:
    """The loop's settings from ``reflex serve`` options (None without
    ``--distill-schedule``). With ``--data-dir`` and no ``work_dir`` in the loop file,
    run directories go to ``DATA_DIR/loop`` (beside the store), not ``./data/loop``.

    Raises:
        typer.BadParameter: naming the flag (a bad schedule gives examples).
    """
    from reflex_serve.loop.config import LoopConfigError, load_loop_config
    from reflex_serve.loop.schedule import ScheduleError, parse_schedule

    if schedule is None:
        given = [f for f, v in (("--distill-at", at), ("--min-new-samples", min_new_samples),
                                ("--distill-threads", threads), ("--distill-steps", steps),
                                ("--loop-config", config_file)) if v is not None]
        if given:
            raise typer.BadParameter("needs --distill-schedule", param_hint="/".join(given))
        return None
    try:
        spec = parse_schedule(schedule, at).spec
    except ScheduleError as exc:  # its message starts with the flag it is about
        hint, message = str(exc).split(" ", 1)
        raise typer.BadParameter(message, param_hint=hint) from None
    if not collect_data:
        raise typer.BadParameter("needs --collect-data (the loop distills the traffic it "
                                 "collects)", param_hint="--distill-schedule")
    try:
        cfg = load_loop_config(config_file, schedule=spec, min_new_samples=min_new_samples,
                               threads=threads, distill_steps=steps)
    except LoopConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--loop-config") from None
    if data_dir is not None and "work_dir" not in cfg.model_fields_set:
        cfg = cfg.model_copy(update={"work_dir": Path(data_dir) / "loop"})
    return cfg


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


def _secs(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}s"


@runs_app.command("list")
def list_cmd(
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest runs to show.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The newest runs: id, trigger, status, start, duration, teacher, promoted version."""
    from reflex_serve.storage.distill_runs import get_schedule, list_runs

    st = _open(store, data_dir)
    try:
        rows = list_runs(st, limit)
        schedule = get_schedule(st, "distill")
    finally:
        st.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if schedule is not None:
        typer.echo(f"schedule {schedule['spec']}: next run at "
                   f"{schedule['next_run_at'].isoformat(timespec='seconds')}")
    if not rows:
        typer.echo("no distill runs recorded")
        return
    typer.echo(f"{'RUN':<12} {'TRIGGER':<8} {'STATUS':<9} {'STARTED':<19} {'DURATION':>9} "
               f"{'TEACHER':<12} PROMOTED")
    for r in rows:
        typer.echo(f"{r['id'][:12]:<12} {r['trigger']:<8} {r['status']:<9} "
                   f"{_when(r['started_at']):<19} {_secs(r['duration_s']):>9} "
                   f"{r['teacher_version'] or '-':<12} {r['promoted_version'] or '-'}")


@runs_app.command("show")
def show_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix will do).")],
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One run: each stage with status, duration and detail; each candidate with its
    verdict and reason. Exit status 0, or 2 for an unknown run or a prefix under 4
    characters."""
    from reflex_serve.storage.distill_runs import get_run

    if len(run_id.strip()) < MIN_PREFIX:
        _fail(f"RUN_ID: give at least {MIN_PREFIX} characters of the run id, got {run_id!r}")
    st = _open(store, data_dir)
    try:
        run = get_run(st, run_id)
    finally:
        st.close()
    if run is None:
        _fail(f"RUN_ID: no distill run {run_id!r} (or the prefix is not unique)")
    if as_json:
        typer.echo(json.dumps(run, indent=2))
        return
    typer.echo(f"run {run['id']} ({run['trigger']}): {run['status']}")
    typer.echo(f"  teacher {run['teacher_version'] or '-'}, promoted "
               f"{run['promoted_version'] or '-'}; started {_when(run['started_at'])}, "
               f"took {_secs(run['duration_s'])}; worker {run['worker_pid'] or '-'} on "
               f"{run['host'] or '-'}")
    if run["error"]:
        typer.echo(f"  reason: {run['error']}")
    typer.echo("stages:")
    for s in run["stages"]:
        detail = {k: v for k, v in s["detail"].items() if k not in ("reason", "error")}
        why = s["detail"].get("reason") or s["detail"].get("error")
        typer.echo(f"  {s['stage']:<11} {s['status']:<8} {_secs(s['duration_s']):>8}  "
                   f"{json.dumps(detail, default=str)}")
        if why:
            typer.echo(f"  {'':<11} {why}")
    if run["candidates"]:
        typer.echo("candidates:")
    for c in run["candidates"]:
        ratio = f"p50 {c['p50_ratio']:.2f}x" if c["p50_ratio"] is not None else "p50 -"
        typer.echo(f"  {c['name']:<12} {c['kind']:<13} {c['num_steps']:>2} step(s) "
                   f"{c['version'] or '-':<12} {ratio:<10} {c['verdict']:<8} {c['reason']}")
