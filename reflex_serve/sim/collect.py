"""Scripted-expert demonstration collection into a ``reflex-demos`` directory.

Seed conventions (shared with :mod:`reflex_serve.sim.evaluate`):

* An episode is a pure function of ``(task, episode_seed)`` (see :mod:`.env`); the
  instruction paraphrase is drawn from the same seed.
* Collection with ``seed=s`` tries episode seeds ``s, s + 1, s + 2, ...`` for every task
  (attempt ``k`` uses ``s + k``), at most ``max_attempts`` per task; the default ``s = 0``
  therefore uses seeds in ``[0, max_attempts)``, well inside ``[0, 100000)``. The same
  seed is used across tasks; the task name is mixed into the environment RNG so the
  layouts are unrelated.
* Collection seeds must stay below :data:`EVAL_SEED_START` (1,000,000): ``collect``
  refuses ``s + max_attempts > EVAL_SEED_START``.
* Evaluation defaults to ``seed = EVAL_SEED_START`` and uses seeds ``seed + i`` for
  episode ``i`` of each task, so evaluation layouts never appear in default demos.
* Bimodal tasks (:data:`~reflex_serve.sim.tasks.BIMODAL_TASKS`) are demonstrated by a
  left or a right detour around the wall (:mod:`.bimodal`); with ``mode="mixed"`` the
  detour of an episode is a fair coin drawn from ``(task, episode seed)``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reflex_serve.sim.bimodal import MODE_CHOICES, MODES, make_strategy, resolve_mode
from reflex_serve.sim.dataset import EpisodeRecord, make_meta, write_meta, write_task_file
from reflex_serve.sim.env import SimEnv, parse_image_size, validate_cameras
from reflex_serve.sim.tasks import BIMODAL_TASKS, DEFAULT_TASKS, parse_task_list

EVAL_SEED_START = 1_000_000
"""First episode seed reserved for evaluation; collection seeds are below it."""

DEFAULT_HOLD_STEPS = 5
"""Steps recorded after the first success, so that the policy learns to hold."""


class CollectionError(RuntimeError):
    """The expert could not produce enough successful episodes within the attempt bound."""


@dataclass
class TaskCollection:
    """What was collected for one task.

    Attributes:
        task: task name. episodes: episodes written. successes: successful episodes
        written. attempts: episodes run (seeds tried). frames: frames written.
        lengths: int list of written episode lengths (steps). wall_s: seconds.
        failed_seeds: seeds whose expert episode failed.
        modes: bimodal tasks only: written episodes per detour mode (``{"left": n, ...}``).
    """

    task: str
    episodes: int
    successes: int
    attempts: int
    frames: int
    lengths: list[int]
    wall_s: float
    failed_seeds: list[int] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        lengths = np.asarray(self.lengths)
        out = {
            "episodes": self.episodes,
            "successes": self.successes,
            "attempts": self.attempts,
            "frames": self.frames,
            "length_mean": float(lengths.mean()) if lengths.size else 0.0,
            "length_min": int(lengths.min()) if lengths.size else 0,
            "length_max": int(lengths.max()) if lengths.size else 0,
            "failed_seeds": self.failed_seeds,
            "wall_s": round(self.wall_s, 2),
        }
        if self.modes:
            out["modes"] = dict(self.modes)
        return out


@dataclass
class CollectResult:
    """Result of :func:`collect`: the directory, its meta and per-task figures."""

    out_dir: Path
    meta: dict[str, Any]
    tasks: list[TaskCollection]
    wall_s: float


def run_expert_episode(
    env: SimEnv, seed: int, hold_steps: int = DEFAULT_HOLD_STEPS, strategy: Any = None
) -> EpisodeRecord:
    """Run the scripted expert for episode ``seed`` and record every step.

    Step ``t`` records the images and state of the observation the expert acted on and
    the action (clipped to [-1, 1], float32). The episode ends ``hold_steps`` steps
    after the first success, or at ``env.max_steps``.

    Args:
        strategy: instead of the task's MetaWorld expert, an object with
            ``get_action(obs39) -> (4,)``, ``mode`` (int) and ``decided(obs39) -> bool``
            (a :class:`~reflex_serve.sim.bimodal.WallDetourStrategy`); its mode and the
            first step it has decided at are recorded.

    Returns:
        An :class:`EpisodeRecord`; ``success`` tells whether success was reached.
    """
    obs = env.reset(seed)
    images, states, actions = [], [], []
    first_success: int | None = None
    decision = -1
    while True:
        if strategy is None:
            action = env.expert_action()
        else:
            raw = env.raw_obs
            if decision < 0 and strategy.decided(raw):
                decision = env.step_count
            action = np.clip(np.asarray(strategy.get_action(raw), dtype=np.float32), -1, 1)
        images.append(np.stack([obs.images[c] for c in env.cameras]))
        states.append(obs.state)
        actions.append(action)
        obs, success, done = env.step(action)
        if success and first_success is None:
            first_success = env.step_count
        if first_success is not None and env.step_count >= first_success + hold_steps:
            break
        if done:
            break
    return EpisodeRecord(
        seed=seed,
        instruction=env.instruction,
        success=first_success is not None,
        images=np.stack(images).astype(np.uint8, copy=False),
        state=np.stack(states).astype(np.float32, copy=False),
        action=np.stack(actions).astype(np.float32, copy=False),
        mode=-1 if strategy is None else int(strategy.mode),
        decision_step=decision,
    )


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    existing = (
        [p for p in out_dir.glob("*") if p.name == "meta.json" or p.suffix == ".npz"]
        if out_dir.exists()
        else []
    )
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a dataset ({existing[0].name}); pass overwrite=True"
        )
    for p in existing:
        p.unlink() if p.is_file() else shutil.rmtree(p)
    out_dir.mkdir(parents=True, exist_ok=True)


def collect(
    tasks: Sequence[str] | str | None = DEFAULT_TASKS,
    episodes_per_task: int = 40,
    seed: int = 0,
    out_dir: str | Path = "data/demos",
    cameras: Sequence[str] | str = ("corner2",),
    image_size: int | tuple[int, int] = 64,
    state_mode: str = "full",
    keep_failures: bool = False,
    progress: bool = True,
    *,
    max_steps: int | None = None,
    hold_steps: int = DEFAULT_HOLD_STEPS,
    max_attempts: int | None = None,
    overwrite: bool = False,
    store: Any = None,
    mode: str = "mixed",
) -> CollectResult:
    """Collect scripted-expert demonstrations into ``out_dir`` (``reflex-demos`` format).

    For each task, expert episodes are run on seeds ``seed, seed + 1, ...`` until
    ``episodes_per_task`` of them succeed. ``<task>.npz`` is written when a task is done;
    ``meta.json`` is written last, so its presence marks a complete directory.

    Args:
        tasks: task names (list or comma string; default the six default tasks).
        episodes_per_task: successful episodes required per task (>= 1).
        seed: first episode seed (>= 0); see the module docstring.
        out_dir: output directory (created).
        cameras: camera names; image_size: int or (h, w); state_mode: "full" | "proprio".
        keep_failures: also write failed episodes (``episode_success`` False).
        progress: show a rich progress bar.
        max_steps: episode horizon (default: per task, see :mod:`.tasks`).
        hold_steps: steps recorded after the first success (>= 0).
        max_attempts: episodes tried per task at most (default ``2 * episodes + 10``).
        overwrite: replace an existing dataset in ``out_dir``.
        store: an open :class:`reflex_serve.storage.Store`; each task's episodes are also
            written there (source ``demo``, one collection run id), after its npz file.
        mode: detour of the bimodal tasks: ``"mixed"`` (drawn per episode from the seed),
            ``"left"`` or ``"right"`` (forced; only with bimodal tasks selected alone).

    Returns:
        :class:`CollectResult` with per-task episode / frame / attempt counts.

    Raises:
        ValueError: bad arguments, or seeds reaching the evaluation range.
        FileExistsError: ``out_dir`` holds a dataset and not ``overwrite``.
        CollectionError: a task did not reach ``episodes_per_task`` successes within
            ``max_attempts`` episodes.
    """
    task_list = parse_task_list(tasks)
    if mode not in MODE_CHOICES:
        raise ValueError(f"mode must be one of {MODE_CHOICES}, got {mode!r}")
    single = [t for t in task_list if t not in BIMODAL_TASKS]
    if mode != "mixed" and single:
        raise ValueError(f"mode {mode!r} applies to bimodal tasks only, not to {single}")
    cams = validate_cameras(cameras)
    hw = parse_image_size(image_size)
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if hold_steps < 0:
        raise ValueError(f"hold_steps must be >= 0, got {hold_steps}")
    attempts_cap = max_attempts if max_attempts is not None else 2 * episodes_per_task + 10
    if attempts_cap < episodes_per_task:
        raise ValueError(f"max_attempts ({attempts_cap}) < episodes_per_task ({episodes_per_task})")
    if seed + attempts_cap > EVAL_SEED_START:
        raise ValueError(
            f"collection seeds [{seed}, {seed + attempts_cap}) reach the evaluation range "
            f"[{EVAL_SEED_START}, ...); use a smaller seed"
        )
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("attempts {task.fields[attempts]} frames {task.fields[frames]}"),
        TimeElapsedColumn(),
        disable=not progress,
    )
    results: list[TaskCollection] = []
    t_start = time.perf_counter()
    next_id = 0
    state_dim = 0
    run_id = None
    with bar:
        bar_ids = {
            t: bar.add_task(t, total=episodes_per_task, attempts=0, frames=0) for t in task_list
        }
        for task in task_list:
            t0 = time.perf_counter()
            kept: list[EpisodeRecord] = []
            failed: list[int] = []
            bimodal = task in BIMODAL_TASKS
            n_success = attempts = frames = 0
            with SimEnv(task, cams, hw, state_mode, max_steps) as env:
                state_dim = env.state_dim
                while n_success < episodes_per_task:
                    if attempts >= attempts_cap:
                        raise CollectionError(
                            f"{task}: only {n_success} of {episodes_per_task} expert episodes "
                            f"succeeded in {attempts} attempts (seeds {seed}..{seed + attempts - 1}); "
                            "raise max_attempts or max_steps"
                        )
                    s = seed + attempts
                    strat = make_strategy(task, resolve_mode(task, s, mode)) if bimodal else None
                    rec = run_expert_episode(env, s, hold_steps, strat)
                    attempts += 1
                    if rec.success:
                        n_success += 1
                    else:
                        failed.append(rec.seed)
                    if rec.success or keep_failures:
                        kept.append(rec)
                        frames += rec.length
                    bar.update(bar_ids[task], completed=n_success, attempts=attempts, frames=frames)
            write_task_file(out, task, kept, next_id, camera_names=cams)
            if store is not None:
                from reflex_serve.storage.demos import new_run_id, write_sim_episodes

                run_id = run_id or new_run_id()
                write_sim_episodes(store, task, kept, cams, run_id)
            next_id += len(kept)
            results.append(
                TaskCollection(
                    task=task,
                    episodes=len(kept),
                    successes=n_success,
                    attempts=attempts,
                    frames=frames,
                    lengths=[r.length for r in kept],
                    wall_s=time.perf_counter() - t0,
                    failed_seeds=failed,
                    modes={m: sum(r.mode == i for r in kept) for i, m in enumerate(MODES)}
                    if bimodal
                    else {},
                )
            )
    wall = time.perf_counter() - t_start
    meta = make_meta(
        cameras=cams,
        image_size=hw,
        state_mode=state_mode,
        state_dim=state_dim,
        tasks=task_list,
        seed=seed,
        episodes_per_task=episodes_per_task,
        keep_failures=keep_failures,
        hold_steps=hold_steps,
        max_steps={t: (max_steps or _task_max_steps(t)) for t in task_list},
        episode_seed_rule="attempt k of every task uses episode seed seed + k",
        source="metaworld scripted experts",
        collection={r.task: r.to_dict() for r in results},
        wall_s=round(wall, 2),
        **({"bimodal_mode": mode} if len(single) < len(task_list) else {}),
    )
    write_meta(out, meta)
    return CollectResult(out_dir=out, meta=meta, tasks=results, wall_s=wall)


def _task_max_steps(task: str) -> int:
    from reflex_serve.sim.tasks import get_task

    return get_task(task).max_steps
