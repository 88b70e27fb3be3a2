"""The `reflex` command line (typer).

Commands import their heavy dependencies lazily so that ``reflex --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from .distill.cli import distill_cmd
from .export.cli import validate_app
from .gates.cli import gates_app
from .lerobot_import.cli import import_app
from .loop.candidates_cli import derive_cmd
from .loop.cli import loop_settings, runs_app
from .router.cli import models_app
from .sim.cli import sim_app
from .storage.cli import data_app

app = typer.Typer(help="reflex-serve: serve, distill and ship flow-matching VLA robot policies.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
train_app = typer.Typer(help="Train policies.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(sim_app, name="sim", help="MetaWorld simulation: demonstrations.")
app.add_typer(data_app, name="data")
app.add_typer(validate_app, name="validate")
app.add_typer(gates_app, name="gates")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.add_typer(import_app, name="import")
train_app.command("distill")(distill_cmd)
models_app.command("derive")(derive_cmd)

ExportArg = Annotated[Path | None, typer.Argument(
    help="Export directory (default: the shipped MetaWorld teacher).", show_default=False)]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def resolve_export(export_dir: Path | None) -> Path:
    """The given export directory, or the shipped teacher; exits with a message if invalid."""
    from .assets import default_teacher
    from .export.manifest import ExportError, read_manifest

    try:
        path = export_dir if export_dir is not None else default_teacher()
        read_manifest(path)
    except (ExportError, FileNotFoundError) as exc:
        fail(f"EXPORT_DIR: {exc}")
    return path


@train_app.command("policy")
def train_policy_cmd(
    data: Annotated[str, typer.Option(help="Demonstration directory (reflex sim collect), or a store URL, SQLite file or data directory whose demo frames (train split) to use.")] = "data/demos",
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (checkpoints, logs).")] = Path("runs/policy"),
    tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks (default: all in --data).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 20000,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-4,
    chunk_size: Annotated[int, typer.Option(min=1, help="Actions per chunk (H).")] = 8,
    n_action_steps: Annotated[int, typer.Option(min=1, help="Actions executed per chunk.")] = 4,
    width: Annotated[int, typer.Option(min=8, help="Transformer width.")] = 128,
    prefix_layers: Annotated[int, typer.Option(min=1)] = 3,
    expert_layers: Annotated[int, typer.Option(min=1)] = 4,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads.")] = 2,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes (resumable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run directory's checkpoint.")] = False,
    export: Annotated[Path | None, typer.Option(help="Also write an export directory here.")] = None,
) -> None:
    """Train a flow-matching VLA on demonstrations (pi0-style prefix + action expert)."""
    from .policy.configuration import PolicyConfig
    from .policy.train import TrainConfig, train_policy
    from .policy.training import LoopConfig, TrainingDiverged

    if n_action_steps > chunk_size:
        raise typer.BadParameter(f"must be <= --chunk-size ({chunk_size})", param_hint="--n-action-steps")
    try:
        frames, provenance = load_training_frames(data, tasks.split(",") if tasks else None)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--data: {exc}")
    h, w = frames.images.shape[2:4]
    try:
        cfg = PolicyConfig(
            cameras=[[name, h, w] for name in frames.cameras], state_dim=frames.state.shape[1],
            action_dim=frames.action.shape[1], chunk_size=chunk_size, n_action_steps=n_action_steps,
            width=width, prefix_layers=prefix_layers, expert_layers=expert_layers,
            state_mode=provenance["state_mode"],
        )
    except ValueError as exc:
        fail(str(exc))
    provenance["seed"] = seed
    typer.echo(f"training on {provenance['frames']} frames from {provenance['episodes']} episodes")
    try:
        train_policy(frames, cfg, output, LoopConfig(steps=steps, lr=lr, max_minutes=max_minutes),
                     TrainConfig(batch_size=batch_size, seed=seed, threads=threads), resume=resume,
                     provenance=provenance)
    except TrainingDiverged as exc:
        fail(str(exc))
    typer.echo(f"run written to {output}")
    if export is not None:
        export_run(output, export, overwrite=False)


def load_training_frames(data: str, tasks: list[str] | None) -> tuple[Any, dict]:
    """Demonstration frames from a demo directory or from a store's demo rows (train split).

    Returns:
        (:class:`~reflex_serve.policy.data.FrameData` with camera names, provenance: data, tasks, episodes, frames, state_mode).

    Raises:
        FileNotFoundError, ValueError: nothing usable at ``data`` (the message says why).
    """
    import numpy as np

    from .distill.data import DataError, DataSpec, store_location
    from .policy.data import FrameData
    from .sim.dataset import load_demos
    from .sim.env import STATE_DIMS

    spec = DataSpec(data=data, source="demo")
    if spec.demo_dir() is not None:
        demos = load_demos(spec.demo_dir(), tasks=tasks)
        frames = FrameData.from_demos(demos)
        info = {"tasks": demos.tasks, "episodes": demos.num_episodes, "state_mode": demos.meta["state_mode"]}
    else:
        from .storage.reader import ReadQuery, load_frame_data
        from .storage.store import Store, StoreError

        if tasks:
            raise ValueError("--tasks selects tasks of a demo directory; a store is read whole")
        try:
            url, data_dir = store_location(spec)
            store = Store.open(url, data_dir, migrate=False)
        except (DataError, StoreError) as exc:
            raise ValueError(str(exc)) from None
        try:
            # chunk_size=1: the per-frame action; TrainingSet builds the chunks itself
            frames = load_frame_data(store, ReadQuery(sources=("demo",), split="train", chunk_size=1))
        finally:
            store.close()
        modes = [m for m, d in STATE_DIMS.items() if d == frames.state.shape[1]]
        info = {"tasks": None, "episodes": len(np.unique(frames.episode_index)),
                "state_mode": modes[0] if modes else "custom"}
    return frames, {"data": data, **info, "frames": len(frames.images)}


def export_run(run_dir: Path, output: Path, overwrite: bool, num_steps: int | None = None) -> None:
    """Export a training run and check ONNX Runtime / PyTorch parity; exits on error."""
    from .export.manifest import ExportError
    from .export.onnx_export import export_policy
    from .export.parity import ParityError, check_parity
    from .policy.train import load_run

    try:
        model, stats, info = load_run(run_dir)
    except FileNotFoundError as exc:
        fail(str(exc))
    provenance = {**info.get("provenance", {}), "trained_steps": info["trained_steps"],
                  "train": info.get("train"), "loop": info.get("loop")}
    try:
        manifest = export_policy(model, stats, output, num_steps=num_steps, provenance=provenance, overwrite=overwrite)
        report = check_parity(model, output)
    except (ExportError, ParityError) as exc:
        fail(str(exc))
    typer.echo(f"exported version {manifest.version} to {output} "
               f"(parity max abs diff {report.max_abs_diff:.2e} <= {report.tolerance:g})")


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Training run directory (reflex train policy --output).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Export directory to write.")],
    num_steps: Annotated[int | None, typer.Option(min=1, max=100, help="Default Euler steps.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
) -> None:
    """Write an export directory (ONNX graphs, weights, stats, manifest) and check parity."""
    export_run(run_dir, output, overwrite, num_steps)


@app.command("serve")
def serve_cmd(
    export_dir: ExportArg = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="REFLEX_API_KEY", help="Require 'Authorization: Bearer KEY' on /act.")] = None,
    num_steps: Annotated[int | None, typer.Option(min=1, max=100, help="Default Euler steps (manifest's if unset).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads per session.")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="Requests computed at once.")] = 2,
    cache_mb: Annotated[float, typer.Option(min=0, help="Prefix KV cache size in MiB (0 disables).")] = 256,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body in MiB.")] = 8,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    collect_data: Annotated[bool, typer.Option("--collect-data", help="Log every /act call into the store.")] = False,
    store: Annotated[str | None, typer.Option(help="Store URL (default: $REFLEX_STORE, else SQLite in --data-dir).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Directory of the embedded SQLite store (default: data).")] = None,
    hash_instructions: Annotated[bool, typer.Option("--hash-instructions", help="Store sha256 of instructions, not text.")] = False,
    no_images: Annotated[bool, typer.Option("--no-images", help="Store no camera images.")] = False,
    collect_queue: Annotated[int, typer.Option(min=1, help="Records queued for the store at most (then dropped).")] = 8192,
    collect_flush_s: Annotated[float, typer.Option(min=0.01, help="Commit interval of collected records, s.")] = 1.0,
    admin_key: Annotated[str | None, typer.Option(envvar="REFLEX_ADMIN_KEY", help="Run the versioning router; its admin API (/admin, reflex models) needs 'Authorization: Bearer KEY'. Must differ from --api-key.")] = None,
    monitor_window: Annotated[str | None, typer.Option(help="Post-swap monitoring window, e.g. 24h, 30m, 20s (default 24h; needs --admin-key).")] = None,
    router_config: Annotated[Path | None, typer.Option(help="TOML file of router rules on top of the defaults (docs/router.md; needs --admin-key).")] = None,
    distill_schedule: Annotated[str | None, typer.Option(help="Run the self-distilling loop (docs/loop.md): nightly, 'every 6h', or a cron expression '0 3 * * *'. Needs --collect-data.")] = None,
    distill_at: Annotated[str | None, typer.Option(help="Time of day HH:MM of --distill-schedule nightly (default 02:00, local time).")] = None,
    min_new_samples: Annotated[int | None, typer.Option(min=0, help="Skip a due run with fewer new served rows since the last successful run.")] = None,
    distill_threads: Annotated[int | None, typer.Option(min=1, help="Threads of the distill worker process (default 1).")] = None,
    distill_steps: Annotated[int | None, typer.Option(min=1, help="Training steps of the SnapFlow student (default 10000).")] = None,
    loop_config: Annotated[Path | None, typer.Option(help="TOML file of the loop's other settings (docs/loop.md).")] = None,
) -> None:
    """Serve a policy: POST /act (JSON or msgpack), the openpi websocket, /health, /metrics;
    with --admin-key, the versioning router and its admin API."""
    from .server.cli import serve

    collect = None
    if collect_data:
        from .storage.collector import CollectOptions
        from .storage.records import Privacy
        from .storage.writer import WriterConfig

        collect = CollectOptions(store=store, data_dir=data_dir,
                                 privacy=Privacy(hash_instructions=hash_instructions, store_images=not no_images),
                                 writer=WriterConfig(queue_size=collect_queue, flush_interval_s=collect_flush_s))
    elif hash_instructions or no_images or ((store or data_dir) and admin_key is None):
        raise typer.BadParameter("needs --collect-data", param_hint="--store/--data-dir/--hash-instructions/--no-images")
    loop = loop_settings(distill_schedule, distill_at, min_new_samples, distill_threads, distill_steps,
                         loop_config, collect_data=collect_data, data_dir=data_dir)
    if loop is not None and admin_key is None:
        from .server.cli import generated_admin_key

        admin_key = generated_admin_key()
    config = router_settings(admin_key, api_key, monitor_window, router_config)
    from .export.manifest import ExportError
    from .router.errors import RouterError
    from .server.cli import ServeError
    from .storage.engine import StoreError

    try:
        serve(resolve_export(export_dir), host=host, port=port, api_key=api_key, num_steps=num_steps,
              threads=threads, workers=workers, cache_mb=cache_mb, max_body_mb=max_body_mb, log_level=log_level,
              collect=collect, admin_key=admin_key, router_config=config, store=store, data_dir=data_dir,
              distill=loop)
    except (StoreError, ServeError) as exc:
        fail(str(exc))
    except ExportError as exc:
        fail(f"EXPORT_DIR: {exc}")
    except RouterError as exc:
        fail(f"router: {exc.message}")


def router_settings(admin_key: str | None, api_key: str | None, monitor_window: str | None,
                    config_file: Path | None) -> Any:
    """The router's config from ``reflex serve`` options (None without --admin-key)."""
    if admin_key is None:
        if monitor_window is not None or config_file is not None:
            raise typer.BadParameter("needs --admin-key", param_hint="--monitor-window/--router-config")
        return None
    if not admin_key.strip():
        raise typer.BadParameter("must not be empty", param_hint="--admin-key")
    if admin_key == api_key:
        raise typer.BadParameter("must differ from --api-key (the /act key)", param_hint="--admin-key")
    from .router.config import ConfigError, load_router_config
    from .storage.maintenance import parse_duration

    overrides = {}
    if monitor_window is not None:
        try:
            overrides["monitor"] = {"window_s": parse_duration(monitor_window).total_seconds()}
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--monitor-window") from None
        if overrides["monitor"]["window_s"] <= 0:
            raise typer.BadParameter("must be > 0", param_hint="--monitor-window")
    try:
        return load_router_config(config_file, **overrides)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--router-config") from None


@app.command("eval")
def eval_cmd(
    export_dir: ExportArg = None,
    server: Annotated[str | None, typer.Option(help="Evaluate a running server (http://host:port) instead.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="REFLEX_API_KEY", help="API key for --server.")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated MetaWorld tasks (default: the six).")] = None,
    suite: Annotated[str | None, typer.Option(help="A named task selection: default or bimodal (instead of --tasks).")] = None,
    probe: Annotated[bool, typer.Option(help="Also probe the bimodal tasks' decision points: the share of sampled chunks that commit to a mode.")] = False,
    num_episodes: Annotated[int, typer.Option(min=1, help="Episodes per task.")] = 10,
    seed: Annotated[int, typer.Option(help="First episode seed (default: never used for demos).")] = 1_000_000,
    num_steps: Annotated[int | None, typer.Option(min=1, max=100, help="Override the denoising steps.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write eval.json and eval.md here.")] = None,
    gif: Annotated[bool, typer.Option(help="Also write episodes.gif (needs --out).")] = False,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads (in-process).")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    report_outcomes: Annotated[bool, typer.Option("--report-outcomes", help="With --server: report each episode's success to the server (needs --collect-data there; the router's episode-success signal reads them).")] = False,
) -> None:
    """Closed-loop MetaWorld evaluation: success rate with Wilson 95% intervals, /act latency."""
    from .client import LocalClient, ReflexClient, ReflexClientError
    from .sim.evaluate import run_eval, sim_settings_from_manifest

    if server is not None and export_dir is not None:
        raise typer.BadParameter("give either EXPORT_DIR or --server, not both", param_hint="--server")
    if gif and out is None:
        raise typer.BadParameter("--gif needs --out", param_hint="--gif")
    if report_outcomes and server is None:
        raise typer.BadParameter("needs --server", param_hint="--report-outcomes")
    task_list = eval_tasks(tasks, suite)
    if server is not None:
        client = ReflexClient(server, api_key=api_key, report_outcomes=report_outcomes)
        try:
            summary = client.wait_ready(timeout_s=30)
        except ReflexClientError as exc:
            fail(f"--server {server}: {exc}")
    else:
        from .export.manifest import ExportError
        from .runtime.policy import Policy

        try:
            policy = Policy(resolve_export(export_dir), intra_op_threads=threads, verify=True)
        except ExportError as exc:
            fail(f"EXPORT_DIR: {exc}")
        client, summary = LocalClient(policy), policy.manifest
    try:
        settings = sim_settings_from_manifest(summary)
    except ValueError as exc:  # SuiteUnavailable included: an imported policy's own suite
        fail(f"{'--server' if server is not None else 'EXPORT_DIR'}: {exc}")
    run_eval(client, task_list, num_episodes, seed, out_dir=out, gif=gif, num_steps=num_steps,
             progress=progress, **settings)
    if probe:
        from .sim.probe import probe as run_probe
        from .sim.tasks import BIMODAL_TASKS

        probed = [t for t in task_list if t in BIMODAL_TASKS]
        if not probed:
            fail(f"--probe: none of {task_list} is a bimodal task ({', '.join(BIMODAL_TASKS)})")
        report = run_probe(client, probed, seed=seed, num_steps=num_steps, **settings)
        typer.echo(report.to_markdown())
        if out is not None:
            report.save(out)


def eval_tasks(tasks: str | None, suite: str | None) -> list[str]:
    """The task list of ``--tasks`` or ``--suite`` (the six default tasks if neither)."""
    from .sim.tasks import SUITES, parse_task_list

    if tasks is not None and suite is not None:
        raise typer.BadParameter("give --tasks or --suite, not both", param_hint="--suite")
    if suite is not None:
        if suite not in SUITES:
            raise typer.BadParameter(f"unknown suite {suite!r}; known: {', '.join(SUITES)}", param_hint="--suite")
        return list(SUITES[suite])
    try:
        return parse_task_list(tasks)
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--tasks") from exc


@app.command("demo")
def demo_cmd(
    export_dir: ExportArg = None,
    out: Annotated[Path, typer.Option(help="Working directory: store, loop runs, server log, summary (its data/ and loop/ are replaced).")] = Path("runs/demo"),
    distill_steps: Annotated[int, typer.Option(min=1, help="Optimizer steps of the SnapFlow student.")] = 2000,
    min_new_samples: Annotated[int, typer.Option(min=1, help="Served rows before the scheduled run starts.")] = 300,
    gate_episodes: Annotated[int, typer.Option(min=1, help="Closed-loop episodes per task and policy for gates P1 / P2.")] = 25,
    after_rounds: Annotated[int, typer.Option(min=1, help="Rounds of traffic on the new version before the summary.")] = 3,
    max_minutes: Annotated[float, typer.Option(min=1.0, help="Summarize after this long whatever happened.")] = 30.0,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated MetaWorld tasks (default: the six).")] = None,
) -> None:
    """The whole self-distilling loop on embedded defaults (docs/demo.md): serve the shipped
    teacher with collection and a short schedule, drive it with the MetaWorld robot, and
    watch the loop distill, gate, shadow and warm-swap a faster version by itself."""
    from .loop.demo import DemoOptions, run_demo

    opts = DemoOptions(
        out=out, export_dir=resolve_export(export_dir) if export_dir else None,
        tasks=tuple(eval_tasks(tasks, None)), distill_steps=distill_steps,
        min_new_samples=min_new_samples, gate_episodes=gate_episodes,
        after_rounds=after_rounds, max_minutes=max_minutes,
    )
    try:
        summary = run_demo(opts, say=typer.echo)
    except RuntimeError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    from .loop.demo_report import to_markdown

    typer.echo("\n" + to_markdown(summary))
    typer.echo(f"summary written to {out / 'summary.md'} and summary.json; server log {out / 'server.log'}")


if __name__ == "__main__":
    app()
