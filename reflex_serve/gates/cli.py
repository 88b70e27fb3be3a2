"""``reflex gates run | override | show`` (typer sub-app ``gates_app``).

Exit status: ``run`` and ``show`` 0 when the version may ship, 1 when it may not;
``override`` 0 when accepted; 2 on any error or refusal, with a message naming the
argument or field (never a traceback).
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

gates_app = typer.Typer(
    help="The 9-gate evaluator: may a candidate version ship? (docs/gates.md)",
    no_args_is_help=True,
)

StoreOpt = Annotated[
    str | None,
    typer.Option(help="Store URL (default: $REFLEX_STORE, else SQLite in --data-dir)."),
]
DataDirOpt = Annotated[
    Path | None, typer.Option(help="Directory of the embedded SQLite store (default: data).")
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the JSON report here ('-': stdout only).")
]


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _open_store(store: str | None, data_dir: Path | None, *, existing: bool = False):
    from ..storage.engine import StoreError
    from .evidence import open_cli_store

    try:
        return open_cli_store(store, data_dir, existing=existing)
    except StoreError as exc:
        _fail(str(exc))


def _check_json_path(json_path: Path | None) -> None:
    """Exit naming --json unless the report can be written there (before any work)."""
    if json_path is None or str(json_path) == "-":
        return
    parent = json_path.parent
    if json_path.is_dir():
        _fail(f"--json {json_path}: is a directory; name a file")
    if not parent.is_dir():
        _fail(f"--json {json_path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (json_path.exists() and not os.access(json_path, os.W_OK)):
        _fail(f"--json {json_path}: not writable")


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _print(report, json_path: Path | None) -> None:
    from .report import render, write_json

    if json_path is None or str(json_path) != "-":
        render(report)
    if json_path is not None:
        write_json(report, json_path)


@gates_app.command("run")
def run_cmd(
    candidate: Annotated[Path, typer.Argument(help="Candidate export directory (e.g. a student).")],
    reference: Annotated[Path, typer.Option(help="Reference export (the teacher it must match).")],
    suite: Annotated[
        str | None, typer.Option(help="Simulation suite: default, bimodal or none.")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated MetaWorld tasks instead of --suite.")
    ] = None,
    episodes: Annotated[
        int | None, typer.Option(min=1, help="Episodes per task and policy.")
    ] = None,
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Demonstration directory: replay frames when the store has no held-out rows."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of thresholds on top of the defaults.")
    ] = None,
    json_path: JsonOpt = None,
    operator: Annotated[
        str | None, typer.Option(help="Who runs the gates (recorded; default: the user).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Print each stage to stderr.")] = True,
) -> None:
    """Run the nine gates on CANDIDATE against --reference, record the run in the store.

    Exit status: 0 the candidate may ship, 1 it may not, 2 error.
    """
    from ..export.manifest import read_manifest
    from .audit import persist
    from .config import ConfigError, load_config, with_sim
    from .runner import GateInputError, run_gates

    if suite is not None and tasks is not None:
        _fail("give --suite or --tasks, not both")
    try:
        task_list = tasks.split(",") if tasks is not None else None
        cfg = with_sim(load_config(config), suite=suite, tasks=task_list, episodes=episodes)
    except ConfigError as exc:
        _fail(str(exc))
    for path, what in ((candidate, "CANDIDATE"), (reference, "--reference")):
        if not path.is_dir():
            _fail(f"{what}: {path} is not a directory")
    _check_json_path(json_path)
    st = _open_store(store, data_dir)
    say = (lambda msg: typer.echo(f"gates: {msg}", err=True)) if progress else None
    try:
        report = run_gates(
            candidate,
            reference,
            cfg,
            store=st,
            data=data,
            actor=operator or _default_operator(),
            progress=say,
        )
        persist(st, report, read_manifest(candidate).to_dict())
    except (GateInputError, ConfigError) as exc:
        _fail(str(exc))
    finally:
        st.close()
    _print(report, json_path)
    raise typer.Exit(0 if report.may_ship else 1)


@gates_app.command("override")
def override_cmd(
    version: Annotated[str, typer.Argument(help="Model version (12 hex digits) or digest.")],
    gate: Annotated[
        str, typer.Option(help="Gate id (P1..P6) or name, e.g. P4 or latency_speedup.")
    ],
    operator: Annotated[str, typer.Option(help="Who overrides (recorded).")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")],
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Override a failed PERFORMANCE gate of VERSION's latest run (safety gates: never).

    Exit status: 0 accepted; 2 refused (the refusal is recorded) or bad input.
    """
    from .audit import AuditError, OverrideRefused, may_ship, override

    st = _open_store(store, data_dir, existing=True)
    try:
        row = override(st, version, gate, operator, reason)
        decision = may_ship(st, version)
    except AuditError as exc:
        _fail(str(exc))
    except OverrideRefused as exc:
        _fail(str(exc))
    finally:
        st.close()
    typer.echo(
        f"override of {row.gate} on run {row.run_id} accepted (id {row.id}, "
        f"{row.operator}, {row.at.isoformat(timespec='seconds')})"
    )
    typer.echo(
        f"version {decision.version}: "
        f"{'may ship' if decision.may_ship else 'may not ship'} ({decision.reason})"
    )


@gates_app.command("show")
def show_cmd(
    version: Annotated[str, typer.Argument(help="Model version (12 hex digits) or digest.")],
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Print VERSION's latest gate run with overrides applied.

    Exit status: 0 it may ship, 1 it may not, 2 error.
    """
    from .audit import AuditError, latest_report

    _check_json_path(json_path)
    st = _open_store(store, data_dir, existing=True)
    try:
        report = latest_report(st, version)
    except AuditError as exc:
        _fail(str(exc))
    finally:
        st.close()
    _print(report, json_path)
    raise typer.Exit(0 if report.may_ship else 1)
