"""``reflex data``: inspect, prune, export and fill the store (typer sub-app ``data_app``).

    reflex data stats   [--store URL | --data-dir DIR] [--json]
    reflex data prune   --older-than 30d [--source served|demo|all] [--dry-run]
    reflex data export  --output DIR [--source ...] [--model-version V] [--since 7d]
    reflex data import-demos DEMO_DIR          (a ``reflex sim collect --out`` directory)

Every command takes ``--store URL`` (or ``$REFLEX_STORE``) or ``--data-dir DIR`` (the
SQLite file ``DIR/store.sqlite``), like ``reflex serve --collect-data``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

data_app = typer.Typer(help="The data store: stats, retention, export.", no_args_is_help=True)

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="REFLEX_STORE",
        help="Store URL (sqlite:///F or postgresql+psycopg://...).",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Directory of the embedded SQLite store (default: data)."),
]
SourceOpt = Annotated[str, typer.Option("--source", help="served, demo or all.")]


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _open(store: str | None, data_dir: Path | None):
    from reflex_serve.storage.engine import StoreError
    from reflex_serve.storage.store import Store

    try:
        return Store.open(store, data_dir)
    except StoreError as exc:
        _fail(str(exc))


def _sources(value: str) -> tuple[str, ...]:
    if value == "all":
        return ("demo", "served")
    if value not in ("served", "demo"):
        raise typer.BadParameter(
            f"must be served, demo or all, got {value!r}", param_hint="--source"
        )
    return (value,)


def _when(value: str | None, flag: str) -> datetime | None:
    """``--since`` / ``--until``: an ISO time or an age like ``7d``."""
    from reflex_serve.storage.maintenance import parse_time_or_age

    if value is None:
        return None
    try:
        return parse_time_or_age(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


def _iso(t: datetime | None) -> str:
    return t.isoformat(timespec="seconds") if t else "-"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


@data_app.command("stats")
def stats_cmd(
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts by source and model version, outcomes, success rate, image bytes, time range."""
    from reflex_serve.storage.maintenance import store_stats

    st = store_stats(_open(store, data_dir))
    if as_json:
        typer.echo(json.dumps(st.to_dict(), indent=2))
        return
    rate = "n/a" if st.success_rate is None else f"{100 * st.success_rate:.1f}%"
    versions = ", ".join(f"{v}: {n}" for v, n in st.requests_by_version.items()) or "none"
    lines = [
        f"store       {st.url}  (schema {st.revision})",
        "requests    " + "  ".join(f"{k} {v}" for k, v in st.requests_by_source.items()),
        f"versions    {versions}",
        "episodes    "
        + "  ".join(f"{k} {v}" for k, v in st.episodes_by_source.items())
        + f"  with outcome {st.episodes_with_outcome}  success rate {rate}"
        + f" ({st.successes}/{st.episodes_with_outcome})",
        f"images      {st.images} frames, {_mib(st.image_bytes)}",
        f"time range  {_iso(st.first)} .. {_iso(st.last)}",
    ]
    typer.echo("\n".join(lines))


@data_app.command("prune")
def prune_cmd(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age to keep: 30d, 12h, 1d12h, 2w.")
    ],
    source: SourceOpt = "served",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, delete nothing.")] = False,
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Delete requests older than --older-than, then orphan images and empty episodes."""
    from reflex_serve.storage.maintenance import parse_duration, prune

    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    report = prune(_open(store, data_dir), age, _sources(source), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        f"{verb} {report.requests} requests, {report.episodes} episodes, {report.images} "
        f"images ({_mib(report.image_bytes)}) of source {'+'.join(report.sources)} received "
        f"before {report.cutoff.isoformat(timespec='seconds')}"
    )


@data_app.command("export")
def export_cmd(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write (new or empty).")
    ],
    source: SourceOpt = "all",
    model_version: Annotated[
        list[str] | None, typer.Option("--model-version", help="Served version(s) to keep.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="ISO time or age (7d): oldest request.")] = None,
    until: Annotated[
        str | None, typer.Option(help="ISO time or age: newest request (excl.).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, holdout or all.")] = "all",
    holdout_pct: Annotated[float, typer.Option(min=0, max=100, help="Held-out share, %.")] = 10.0,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Length H of the action-chunk labels.")
    ] = 8,
    fps: Annotated[float, typer.Option(min=0.001, help="Frame rate written to info.json.")] = 10.0,
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Export to a LeRobotDataset v3.0 directory (Parquet, PNG images embedded)."""
    import pyarrow.parquet as pq

    from reflex_serve.storage.export import export_lerobot
    from reflex_serve.storage.reader import ReadQuery

    try:
        query = ReadQuery(
            sources=_sources(source),
            model_versions=tuple(model_version) if model_version else None,
            since=_when(since, "--since"),
            until=_when(until, "--until"),
            split=split,
            holdout_pct=holdout_pct,
            chunk_size=chunk_size,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        report = export_lerobot(_open(store, data_dir), output, query, fps=fps)
    except (FileExistsError, ValueError) as exc:
        _fail(str(exc))
    read_back = sum(pq.read_metadata(p).num_rows for p in report.files)
    if read_back != report.frames:
        _fail(f"read back {read_back} frames from {output}, wrote {report.frames}")
    typer.echo(
        f"exported {report.frames} frames of {report.episodes} episodes ({report.tasks} "
        f"tasks) to {output} in {len(report.files)} data file(s); read back OK"
    )


@data_app.command("import-demos")
def import_demos_cmd(
    demo_dir: Annotated[
        Path, typer.Argument(help="A reflex-demos directory (reflex sim collect --out).")
    ],
    tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks (default: all).")] = None,
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Copy demonstrations from a reflex-demos directory into the store (source demo)."""
    from reflex_serve.storage.demos import import_demo_dir

    try:
        episodes, frames = import_demo_dir(
            _open(store, data_dir), demo_dir, tasks.split(",") if tasks else None
        )
    except (FileNotFoundError, KeyError, ValueError) as exc:
        _fail(f"{demo_dir}: {exc}")
    typer.echo(f"imported {episodes} demo episodes ({frames} frames) from {demo_dir}")


if __name__ == "__main__":
    data_app()
