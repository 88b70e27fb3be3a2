"""The `reflex` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="reflex-serve: serve, distill and ship flow-matching VLA robot policies.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
train_app = typer.Typer(help="Train policies.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _sim_app() -> typer.Typer:
    from .sim.cli import sim_app

    return sim_app


app.add_typer(_sim_app(), name="sim", help="MetaWorld simulation: demonstrations.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@train_app.command("policy")
def train_policy_cmd(
    data: Path = typer.Option(Path("data/demos"), "--data", help="Demonstration directory (reflex sim collect)."),
    output: Path = typer.Option(Path("runs/policy"), "--output", "-o", help="Run directory (checkpoints, logs)."),
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks to train on (default: all in --data)."),
    steps: int = typer.Option(20000, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(64, min=1),
    lr: float = typer.Option(3e-4, min=0.0),
    chunk_size: int = typer.Option(8, min=1, help="Actions per chunk (H)."),
    n_action_steps: int = typer.Option(4, min=1, help="Actions a controller executes per chunk."),
    width: int = typer.Option(128, min=8, help="Transformer width."),
    prefix_layers: int = typer.Option(3, min=1),
    expert_layers: int = typer.Option(4, min=1),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2, min=1, help="Torch threads."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop after this many minutes (resumable)."),
    resume: bool = typer.Option(False, help="Continue from the run directory's checkpoint."),
    export: Optional[Path] = typer.Option(None, help="Also write an export directory here when done."),
) -> None:
    """Train a flow-matching VLA on demonstrations (pi0-style prefix + action expert)."""
    from .policy.configuration import PolicyConfig
    from .policy.train import TrainConfig, train_policy
    from .policy.training import LoopConfig
    from .sim.dataset import frames_from_demos, load_demos

    if n_action_steps > chunk_size:
        raise typer.BadParameter(f"must be <= --chunk-size ({chunk_size})", param_hint="--n-action-steps")
    try:
        demos = load_demos(data, tasks=tasks.split(",") if tasks else None)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"--data: {exc}")
    meta = demos.meta
    try:
        cfg = PolicyConfig(
            cameras=[[c["name"], c["height"], c["width"]] for c in meta["cameras"]],
            state_dim=meta["state_dim"], action_dim=meta["action_dim"], chunk_size=chunk_size,
            n_action_steps=n_action_steps, width=width, prefix_layers=prefix_layers,
            expert_layers=expert_layers, state_mode=meta["state_mode"],
        )
    except ValueError as exc:
        _fail(str(exc))
    frames = frames_from_demos(demos)
    provenance = {"data": str(data), "tasks": demos.tasks, "episodes": int(demos.num_episodes),
                  "frames": len(frames.images), "seed": seed}
    typer.echo(f"training on {len(frames.images)} frames from {demos.num_episodes} episodes of {demos.tasks}")
    loop = LoopConfig(steps=steps, lr=lr, max_minutes=max_minutes)
    model, stats = train_policy(frames, cfg, output, loop, TrainConfig(batch_size=batch_size, seed=seed, threads=threads),
                                resume=resume, provenance=provenance)
    typer.echo(f"run written to {output}")
    if export is not None:
        _export_run(output, export, overwrite=False)


def _export_run(run_dir: Path, output: Path, overwrite: bool, num_steps: Optional[int] = None) -> None:
    from .export.manifest import ExportError
    from .export.onnx_export import export_policy
    from .export.parity import ParityError, check_parity
    from .policy.train import load_run

    try:
        model, stats, info = load_run(run_dir)
    except FileNotFoundError as exc:
        _fail(str(exc))
    provenance = {**info.get("provenance", {}), "trained_steps": info["trained_steps"],
                  "train": info.get("train"), "loop": info.get("loop")}
    try:
        manifest = export_policy(model, stats, output, num_steps=num_steps, provenance=provenance, overwrite=overwrite)
        report = check_parity(model, output)
    except (ExportError, ParityError) as exc:
        _fail(str(exc))
    typer.echo(f"exported version {manifest.version} to {output} "
               f"(parity max abs diff {report.max_abs_diff:.2e} <= {report.tolerance:g})")


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="Training run directory (reflex train policy --output)."),
    output: Path = typer.Option(..., "--output", "-o", help="Export directory to write."),
    num_steps: Optional[int] = typer.Option(None, min=1, max=100, help="Default Euler steps in the manifest."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output directory."),
) -> None:
    """Write an export directory (ONNX graphs, weights, stats, manifest) and check parity."""
    _export_run(run_dir, output, overwrite, num_steps)


if __name__ == "__main__":
    app()
