"""Closed-loop evaluation: drive :class:`SimEnv` episodes through any ``act`` client.

The loop is what a robot controller does: observe, ask the policy for a chunk when the
action queue is empty, execute the first ``n_action_steps`` actions one per step, stop
on success or at the horizon. Any object with the :class:`ActClient` shape works: the
in-process runtime policy, the HTTP client of a running server, or a scripted expert.

Seeds: episode ``i`` (0-based) of every task uses episode seed ``seed + i``; the default
``seed`` is :data:`~reflex_serve.sim.collect.EVAL_SEED_START` (1,000,000), disjoint from
the collection seeds (below 1,000,000) so evaluation layouts are never training layouts.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reflex_serve.runtime.types import ActResult, Observation
from reflex_serve.sim.collect import EVAL_SEED_START
from reflex_serve.sim.env import STATE_DIMS, SimEnv, parse_image_size, validate_cameras
from reflex_serve.sim.report import EvalReport, LatencyStats, TaskResult, wilson_interval
from reflex_serve.sim.tasks import DEFAULT_TASKS, parse_task_list

__all__ = [
    "ActClient",
    "EvalReport",
    "LatencyStats",
    "TaskResult",
    "evaluate",
    "run_eval",
    "sim_settings_from_manifest",
    "wilson_interval",
]


@runtime_checkable
class ActClient(Protocol):
    """What :func:`evaluate` needs from a policy client.

    ``act`` returns an :class:`ActResult` whose ``actions`` are float32 (H, 4),
    unnormalized, in the environment's action units. ``episode_id`` identifies the
    episode (stable across its calls), ``step`` is the environment step at which the
    observation was taken, ``num_steps`` is the requested number of denoising steps
    (``None``: the policy's default).

    Optional attributes, read with ``getattr``:
        n_action_steps (int): actions to execute per chunk (the manifest's value).
        end_episode(episode_id, *, success: bool, steps: int): called after each
            episode, e.g. to report the outcome to the server.
    """

    def act(
        self, obs: Observation, *, episode_id: str, step: int, num_steps: int | None
    ) -> ActResult: ...


def sim_settings_from_manifest(manifest: Any) -> dict[str, Any]:
    """Observation settings for :func:`evaluate` that match a policy's manifest.

    Args:
        manifest: an object (or dict) with ``cameras`` (items with ``name``, ``height``,
            ``width``, as objects or dicts; all the same size) and ``state_dim``
            (39 -> ``"full"``, 4 -> ``"proprio"``).

    Returns:
        ``{"cameras": (...), "image_size": (h, w), "state_mode": ...}``, to pass as
        keyword arguments to :func:`evaluate`.

    Raises:
        SuiteUnavailable: the policy is not a MetaWorld policy (an imported LeRobot
            checkpoint: the reason names its own suite and why it cannot run here).
        ValueError: cameras of different sizes, or a state_dim no state mode produces.
    """
    from reflex_serve.sim.suites import require_metaworld

    def get(obj: Any, key: str) -> Any:
        return obj[key] if isinstance(obj, dict) else getattr(obj, key)

    require_metaworld(manifest)

    cams = list(get(manifest, "cameras"))
    sizes = {(int(get(c, "height")), int(get(c, "width"))) for c in cams}
    if len(sizes) != 1:
        raise ValueError(f"manifest cameras must share one image size, got {sorted(sizes)}")
    state_dim = int(get(manifest, "state_dim"))
    modes = [m for m, d in STATE_DIMS.items() if d == state_dim]
    if not modes:
        raise ValueError(f"manifest state_dim {state_dim} matches no state mode {STATE_DIMS}")
    return {
        "cameras": tuple(str(get(c, "name")) for c in cams),
        "image_size": sizes.pop(),
        "state_mode": modes[0],
    }


def _resolve_n_action_steps(
    explicit: int | None, client: Any, result: ActResult
) -> tuple[int, str]:
    h = int(result.actions.shape[0])
    if explicit is not None:
        return min(int(explicit), h), "argument"
    attr = getattr(client, "n_action_steps", None)
    if isinstance(attr, (int, np.integer)) and attr > 0:
        return min(int(attr), h), "client"
    extra = (result.extra or {}).get("n_action_steps")
    if isinstance(extra, (int, np.integer)) and extra > 0:
        return min(int(extra), h), "reply"
    return h, "chunk_size"


def _gif_frame(
    img: np.ndarray, scale: int, border: tuple[int, int, int] | None = None
) -> np.ndarray:
    out = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    if border is not None:
        out = out.copy()
        b = max(2, scale)
        out[:b], out[-b:], out[:, :b], out[:, -b:] = border, border, border, border
    return out


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write uint8 (H, W, 3) frames as a looping GIF. Returns the path."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=int(1000 / fps), loop=0)
    return path


def evaluate(
    client: ActClient,
    tasks: Sequence[str] | str | None = DEFAULT_TASKS,
    num_episodes: int = 10,
    seed: int = EVAL_SEED_START,
    n_action_steps: int | None = None,
    num_steps: int | None = None,
    cameras: Sequence[str] | str = ("corner2",),
    image_size: int | tuple[int, int] = 64,
    state_mode: str = "full",
    max_steps: int | None = None,
    gif_path: str | Path | None = None,
    progress: bool = True,
    *,
    gif_scale: int = 2,
) -> EvalReport:
    """Evaluate a policy client in closed loop on MetaWorld tasks.

    Each episode: ``reset(seed + i)``; loop: when the action queue is empty call
    ``client.act`` and enqueue the first ``n_action_steps`` actions of the chunk; step
    the environment with the next queued action; success ends the episode, as does the
    horizon. Episode length is the number of environment steps taken.

    Args:
        client: see :class:`ActClient`.
        tasks: task names (list or comma string).
        num_episodes: episodes per task (>= 1).
        seed: episode seed of episode 0 (default 1,000,000, disjoint from collection).
        n_action_steps: actions executed per chunk; default ``client.n_action_steps``,
            else the reply's ``extra["n_action_steps"]``, else the whole chunk.
        num_steps: denoising steps requested from the client (``None``: its default).
        cameras, image_size, state_mode: observation layout (must match the policy).
        max_steps: horizon (default per task).
        gif_path: if set, write a GIF of the first episode of every task (first camera,
            upscaled by ``gif_scale``; a green / red border marks success / failure).
        progress: show a rich progress bar.

    Returns:
        :class:`EvalReport`.

    Raises:
        ValueError: bad arguments, or a chunk whose shape is not (H, 4).
        InvalidAction: the client returned non-finite actions.
        Whatever ``client.act`` raises is propagated.
    """
    task_list = parse_task_list(tasks)
    cams = validate_cameras(cameras)
    hw = parse_image_size(image_size)
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if n_action_steps is not None and n_action_steps < 1:
        raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    run_id = uuid.uuid4().hex[:8]
    act_ms: list[float] = []
    server_total, server_prefix, server_expert = [], [], []
    cache_hits = 0
    versions: dict[str, int] = {}
    reported_steps: set[int] = set()
    nas_used: set[int] = set()
    nas_source = ""
    results: list[TaskResult] = []
    gif_frames: list[np.ndarray] = []
    horizons: dict[str, int] = {}
    t_start = time.perf_counter()
    bar = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("success {task.fields[succ]}"),
        TimeElapsedColumn(),
        disable=not progress,
    )
    with bar:
        for task in task_list:
            bid = bar.add_task(task, total=num_episodes, succ=0)
            lengths, successes, seeds = [], [], []
            with SimEnv(task, cams, hw, state_mode, max_steps) as env:
                horizons[task] = env.max_steps
                for i in range(num_episodes):
                    ep_seed = seed + i
                    episode_id = f"eval-{run_id}-{task}-{ep_seed}"
                    obs = env.reset(ep_seed)
                    record = gif_path is not None and i == 0
                    frames = [obs.images[cams[0]]] if record else []
                    queue: deque[np.ndarray] = deque()
                    success = False
                    while True:
                        if not queue:
                            t0 = time.perf_counter()
                            res = client.act(
                                obs, episode_id=episode_id, step=env.step_count, num_steps=num_steps
                            )
                            act_ms.append((time.perf_counter() - t0) * 1e3)
                            acts = np.asarray(res.actions, dtype=np.float32)
                            if (
                                acts.ndim != 2
                                or acts.shape[1] != env.action_dim
                                or acts.shape[0] < 1
                            ):
                                raise ValueError(
                                    f"client returned actions of shape {acts.shape}, expected (H, {env.action_dim})"
                                )
                            k, nas_source = _resolve_n_action_steps(n_action_steps, client, res)
                            nas_used.add(k)
                            queue.extend(acts[:k])
                            server_total.append(float(res.total_ms))
                            server_prefix.append(float(res.prefix_ms))
                            server_expert.append(float(res.expert_ms))
                            cache_hits += bool(res.cache_hit)
                            versions[res.version] = versions.get(res.version, 0) + 1
                            reported_steps.add(int(res.num_steps))
                        obs, success, done = env.step(queue.popleft())
                        if record:
                            frames.append(obs.images[cams[0]])
                        if success or done:
                            break
                    lengths.append(env.step_count)
                    successes.append(success)
                    seeds.append(ep_seed)
                    end = getattr(client, "end_episode", None)
                    if callable(end):
                        end(episode_id, success=success, steps=env.step_count)
                    if record:
                        color = (0, 200, 0) if success else (220, 0, 0)
                        gif_frames.extend(_gif_frame(f, gif_scale) for f in frames)
                        gif_frames.extend([_gif_frame(frames[-1], gif_scale, color)] * 10)
                    bar.update(bid, advance=1, succ=f"{sum(successes)}/{i + 1}")
            results.append(TaskResult.from_episodes(task, seeds, successes, lengths))
    wall = time.perf_counter() - t_start
    gif_written = (
        str(write_gif(gif_frames, gif_path)) if gif_path is not None and gif_frames else None
    )
    latency = LatencyStats.from_samples(
        act_ms, server_total, server_prefix, server_expert, cache_hits
    )
    config = {
        "tasks": task_list,
        "num_episodes": num_episodes,
        "seed": seed,
        "episode_seeds": f"seed + i for i in [0, {num_episodes})",
        "num_steps_requested": num_steps,
        "num_steps_reported": sorted(reported_steps),
        "n_action_steps": sorted(nas_used),
        "n_action_steps_source": nas_source,
        "cameras": [{"name": c, "height": hw[0], "width": hw[1]} for c in cams],
        "state_mode": state_mode,
        "max_steps": horizons,
        "model_versions": versions,
        "run_id": run_id,
        "wall_s": round(wall, 3),
        "gif": gif_written,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return EvalReport.build(results, latency, config)


def run_eval(
    client: ActClient,
    tasks: Sequence[str] | str | None = DEFAULT_TASKS,
    num_episodes: int = 10,
    seed: int = EVAL_SEED_START,
    *,
    out_dir: str | Path | None = None,
    gif: bool = False,
    print_report: bool = True,
    **kwargs: Any,
) -> EvalReport:
    """Evaluate, print the markdown table and optionally save the report.

    Args:
        client, tasks, num_episodes, seed: as in :func:`evaluate`.
        out_dir: if set, write ``eval.json``, ``eval.md`` (and ``episodes.gif`` with
            ``gif``) there.
        gif: record a GIF (only with ``out_dir``, or pass ``gif_path`` in kwargs).
        print_report: print the table with rich.
        **kwargs: forwarded to :func:`evaluate` (n_action_steps, num_steps, cameras,
            image_size, state_mode, max_steps, gif_path, progress).

    Returns:
        The :class:`EvalReport`.
    """
    if gif and out_dir is not None and "gif_path" not in kwargs:
        kwargs["gif_path"] = Path(out_dir) / "episodes.gif"
    report = evaluate(client, tasks, num_episodes, seed, **kwargs)
    if out_dir is not None:
        report.save(out_dir)
    if print_report:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(report.to_markdown()))
    return report
