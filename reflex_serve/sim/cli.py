"""``reflex sim``: simulator commands (typer sub-app ``sim_app``).

    reflex sim collect --tasks reach-v3,push-v3 --episodes-per-task 40 --out data/demos
    reflex sim collect --suite bimodal --mode mixed --out data/demos-bimodal
    reflex sim probe [EXPORT_DIR | --server URL] --num-steps 10 --num-steps 1
    python -m reflex_serve.sim.cli collect ...      (same, without the main CLI)

``reflex eval`` (closed-loop evaluation of a server or an export) lives in the main CLI
and calls :func:`reflex_serve.sim.evaluate.run_eval`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from reflex_serve.sim.collect import EVAL_SEED_START, CollectionError, collect
from reflex_serve.sim.env import STATE_DIMS, parse_image_size, validate_cameras
from reflex_serve.sim.tasks import DEFAULT_TASKS, SUITES, TASKS, parse_task_list

sim_app = typer.Typer(help="MetaWorld simulation: scripted-expert demos.", no_args_is_help=True)


def parse_tasks_option(values: list[str] | None, flag: str = "--tasks") -> list[str]:
    """Parse a repeated / comma-separated task option; BadParameter names ``flag``."""
    try:
        return parse_task_list(values or None)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise typer.BadParameter(f"{msg}", param_hint=flag) from None


def parse_cameras_option(values: list[str] | None, flag: str = "--cameras") -> tuple[str, ...]:
    """Parse a repeated / comma-separated camera option; BadParameter names ``flag``."""
    try:
        return validate_cameras(",".join(values) if values else "corner2")
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=flag) from None


def parse_image_size_option(value: str, flag: str = "--image-size") -> tuple[int, int]:
    """Parse ``N`` or ``HxW``; BadParameter names ``flag``."""
    try:
        return parse_image_size(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=flag) from None


def parse_state_option(value: str, flag: str = "--state") -> str:
    """Check a state mode (full | proprio); BadParameter names ``flag``."""
    if value not in STATE_DIMS:
        raise typer.BadParameter(
            f"must be one of {', '.join(STATE_DIMS)}, got {value!r}", param_hint=flag
        )
    return value


@sim_app.command("collect")
def collect_command(
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks",
            metavar="TASKS",
            help=f"Tasks, comma list or repeated (default: {','.join(DEFAULT_TASKS)}). "
            f"Known: {', '.join(sorted(TASKS))}.",
        ),
    ] = None,
    episodes_per_task: Annotated[
        int, typer.Option("--episodes-per-task", help="Successful episodes per task.")
    ] = 40,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", help=f"First episode seed; attempt k uses seed + k (< {EVAL_SEED_START})."
        ),
    ] = 0,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("data/demos"),
    cameras: Annotated[
        list[str] | None,
        typer.Option(
            "--cameras",
            metavar="CAMERAS",
            help="Cameras, comma list or repeated (default: corner2).",
        ),
    ] = None,
    image_size: Annotated[
        str, typer.Option("--image-size", metavar="N|HxW", help="Image size in pixels.")
    ] = "64",
    state: Annotated[
        str,
        typer.Option(
            "--state",
            metavar="full|proprio",
            help="State: full (39-d) or proprio (hand xyz + gripper).",
        ),
    ] = "full",
    keep_failures: Annotated[
        bool, typer.Option("--keep-failures", help="Also store failed expert episodes.")
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Episode horizon (default: per task).")
    ] = None,
    hold_steps: Annotated[
        int, typer.Option("--hold-steps", help="Steps recorded after the first success.")
    ] = 5,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts", help="Episodes tried per task at most (default: 2 x episodes + 10)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing dataset in --out.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
    store: Annotated[
        str | None,
        typer.Option("--store", help="Also write the demos into this store (source demo)."),
    ] = None,
    suite: Annotated[
        str | None,
        typer.Option(
            "--suite", metavar="|".join(SUITES), help="A named task set instead of --tasks."
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            metavar="mixed|left|right",
            help="Bimodal tasks: detour drawn per episode from its seed (mixed) or forced.",
        ),
    ] = "mixed",
) -> None:
    """Collect scripted-expert demonstrations (reflex-demos format: meta.json + <task>.npz)."""
    if suite is not None:
        if tasks:
            raise typer.BadParameter("give --suite or --tasks, not both", param_hint="--suite")
        if suite not in SUITES:
            raise typer.BadParameter(
                f"must be one of {', '.join(SUITES)}, got {suite!r}", param_hint="--suite"
            )
        tasks = list(SUITES[suite])
    task_list = parse_tasks_option(tasks)
    from reflex_serve.sim.bimodal import MODE_CHOICES
    from reflex_serve.sim.tasks import BIMODAL_TASKS

    if mode not in MODE_CHOICES:
        raise typer.BadParameter(
            f"must be one of {', '.join(MODE_CHOICES)}, got {mode!r}", param_hint="--mode"
        )
    if mode != "mixed" and any(t not in BIMODAL_TASKS for t in task_list):
        raise typer.BadParameter(
            f"--mode {mode} needs bimodal tasks only ({', '.join(BIMODAL_TASKS)})",
            param_hint="--mode",
        )
    cams = parse_cameras_option(cameras)
    hw = parse_image_size_option(image_size)
    state = parse_state_option(state)
    if episodes_per_task < 1:
        raise typer.BadParameter(
            f"must be >= 1, got {episodes_per_task}", param_hint="--episodes-per-task"
        )
    if seed < 0:
        raise typer.BadParameter(f"must be >= 0, got {seed}", param_hint="--seed")
    if max_steps is not None and not 1 <= max_steps <= 500:
        raise typer.BadParameter(f"must be in [1, 500], got {max_steps}", param_hint="--max-steps")
    if hold_steps < 0:
        raise typer.BadParameter(f"must be >= 0, got {hold_steps}", param_hint="--hold-steps")
    attempts = max_attempts if max_attempts is not None else 2 * episodes_per_task + 10
    if attempts < episodes_per_task:
        raise typer.BadParameter(
            f"must be >= --episodes-per-task ({episodes_per_task})", param_hint="--max-attempts"
        )
    if seed + attempts > EVAL_SEED_START:
        raise typer.BadParameter(
            f"seeds [{seed}, {seed + attempts}) would reach the evaluation range (>= {EVAL_SEED_START})",
            param_hint="--seed",
        )
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    if not overwrite and (out / "meta.json").exists():
        raise typer.BadParameter(
            f"{out} already holds a dataset; pass --overwrite", param_hint="--out"
        )
    console = Console()
    demo_store = None
    if store is not None:
        from reflex_serve.storage.engine import StoreError
        from reflex_serve.storage.store import Store

        try:
            demo_store = Store.open(store)
        except StoreError as e:
            raise typer.BadParameter(str(e), param_hint="--store") from None
    try:
        result = collect(
            task_list,
            episodes_per_task,
            seed,
            out,
            cams,
            hw,
            state,
            keep_failures=keep_failures,
            progress=progress,
            max_steps=max_steps,
            hold_steps=hold_steps,
            max_attempts=attempts,
            overwrite=overwrite,
            store=demo_store,
            mode=mode,
        )
    except (CollectionError, FileExistsError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    table = Table(title=f"{result.out_dir}  ({result.wall_s:.1f} s)")
    for col in ("task", "episodes", "attempts", "frames", "length mean [min, max]", "modes", "s"):
        table.add_column(col)
    for r in result.tasks:
        d = r.to_dict()
        table.add_row(
            r.task,
            str(r.episodes),
            str(r.attempts),
            str(r.frames),
            f"{d['length_mean']:.1f} [{d['length_min']}, {d['length_max']}]",
            " ".join(f"{m} {n}" for m, n in r.modes.items()) or "-",
            f"{r.wall_s:.1f}",
        )
    console.print(table)
    if demo_store is not None:
        console.print(f"demos also written to {demo_store!r} (source demo)")


@sim_app.command("info")
def info_command(
    path: Annotated[Path, typer.Argument(help="A reflex-demos directory.")],
) -> None:
    """Print a demo directory's meta and per-task counts."""
    from reflex_serve.sim.dataset import read_meta

    try:
        meta = read_meta(path)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="PATH") from None
    typer.echo(json.dumps(meta, indent=2))


@sim_app.command("probe")
def probe_command(
    export_dir: Annotated[
        Path | None,
        typer.Argument(help="Export directory (default: the shipped teacher).", show_default=False),
    ] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="Probe a running server (http://host:port).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="REFLEX_API_KEY", help="For --server.")
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option("--tasks", metavar="TASKS", help="Bimodal tasks (default: both)."),
    ] = None,
    num_episodes: Annotated[
        int, typer.Option("--num-episodes", min=1, help="Decision points per task.")
    ] = 5,
    samples: Annotated[int, typer.Option("--samples", min=2, help="Chunks per point (K).")] = 64,
    num_steps: Annotated[
        list[int] | None,
        typer.Option(
            "--num-steps",
            min=1,
            max=100,
            help="Denoising steps; repeat to compare (energy distance to the first).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Episode seed of point 0.")] = (
        EVAL_SEED_START
    ),
    sample_seed: Annotated[int, typer.Option("--sample-seed", help="First noise seed.")] = 0,
    kappa: Annotated[
        float, typer.Option("--kappa", min=0.01, max=1.0, help="Commitment threshold.")
    ] = 0.5,
    n_action_steps: Annotated[
        int | None, typer.Option("--n-action-steps", min=1, help="Actions averaged per chunk.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write probe-steps<N>.{json,md,npz} here.")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="ONNX Runtime threads.")] = 1,
) -> None:
    """Decision-point probe on the bimodal tasks: share of samples that commit to a detour."""
    from reflex_serve.sim.evaluate import sim_settings_from_manifest
    from reflex_serve.sim.probe import compare_reports, probe
    from reflex_serve.sim.tasks import BIMODAL_TASKS

    task_list = parse_tasks_option(tasks or list(BIMODAL_TASKS))
    if any(t not in BIMODAL_TASKS for t in task_list):
        raise typer.BadParameter(
            f"bimodal tasks only: {', '.join(BIMODAL_TASKS)}", param_hint="--tasks"
        )
    if server is not None and export_dir is not None:
        raise typer.BadParameter(
            "give either EXPORT_DIR or --server, not both", param_hint="--server"
        )
    client, summary = _make_client(export_dir, server, api_key, threads)
    try:
        settings = sim_settings_from_manifest(summary)
    except ValueError as exc:  # SuiteUnavailable included: an imported policy's own suite
        raise typer.BadParameter(str(exc), param_hint="EXPORT_DIR / --server") from None
    console = Console()
    reports = []
    for steps in num_steps or [None]:
        report = probe(
            client,
            task_list,
            num_episodes,
            samples,
            seed,
            num_steps=steps,
            n_action_steps=n_action_steps,
            kappa=kappa,
            sample_seed=sample_seed,
            **settings,
        )
        reports.append(report)
        console.print(Markdown(report.to_markdown()))
        if out is not None:
            report.save(out, stem=f"probe-steps{steps or 'default'}")
    for steps, other in zip((num_steps or [])[1:], reports[1:]):
        cmp = compare_reports(reports[0], other)
        for task, d in cmp.items():
            console.print(
                f"{task}: energy distance steps {num_steps[0]} vs {steps}: "
                f"{d['energy_distance']:.4f}"
            )
        if out is not None:
            (out / f"probe-compare-{num_steps[0]}-vs-{steps}.json").write_text(
                json.dumps(cmp, indent=2) + "\n"
            )


def _make_client(
    export_dir: Path | None, server: str | None, api_key: str | None, threads: int
) -> tuple[object, object]:
    """An ActClient and its manifest summary: a server's, or an in-process export's."""
    if server is not None:
        from reflex_serve.client import ReflexClient, ReflexClientError

        client = ReflexClient(server, api_key=api_key)
        try:
            return client, client.wait_ready(timeout_s=30)
        except ReflexClientError as e:
            raise typer.BadParameter(str(e), param_hint="--server") from None
    from reflex_serve.cli import resolve_export
    from reflex_serve.client import LocalClient
    from reflex_serve.export.manifest import ExportError
    from reflex_serve.runtime.policy import Policy

    try:
        policy = Policy(resolve_export(export_dir), intra_op_threads=threads, verify=True)
    except ExportError as exc:
        raise typer.BadParameter(str(exc), param_hint="EXPORT_DIR") from None
    return LocalClient(policy), policy.manifest


if __name__ == "__main__":
    sim_app()
