"""Decision-point probe: does a policy commit to one detour, or average the two?

For each probe episode of a bimodal task (:mod:`.bimodal`), the environment is driven by
the scripted strategy through the shared part (identical in both modes) to the decision
point: the first observation at which the left and right detours act differently. There
the policy is asked for K action chunks (sample ``j`` of probe point ``p`` uses noise seed
``sample_seed + p * K + j`` when the client's ``act`` takes ``seed``), and each chunk is
classified.

Classification rule. From the decision point the episode is also rolled out H steps by
each strategy; ``r_left`` / ``r_right`` (A,) are the means of their first n actions
(n = ``n_action_steps``: the argument, else ``client.n_action_steps``, else the reply's
``extra["n_action_steps"]``, else the whole chunk). With ``mid = (r_left + r_right) / 2``
and ``d = (r_right - r_left) / 2`` (on these tasks ``d`` ~ (1, 0, 0, 0): the demos' dx is
-1 or +1), a sample chunk ``a`` (H, A) gets the score

    score = (mean(a[:n]) - mid) . d / |d|^2        (-1: the left demo, +1: the right one)

and commits to ``left`` if ``score <= -kappa``, to ``right`` if ``score >= kappa``, else it
is uncommitted (default ``kappa = 0.5``: at least half-way from the mean of the two modes
to one of them). A policy that returns the conditional mean scores about 0.

Seeds: probe episode ``i`` of every task uses episode seed ``seed + i`` (default
:data:`~reflex_serve.sim.collect.EVAL_SEED_START`, never used for demos).
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from reflex_serve.runtime.types import Observation
from reflex_serve.sim.bimodal import MODES, make_strategy
from reflex_serve.sim.collect import EVAL_SEED_START
from reflex_serve.sim.env import SimEnv, parse_image_size, validate_cameras
from reflex_serve.sim.evaluate import _resolve_n_action_steps
from reflex_serve.sim.probe_report import (
    UNCOMMITTED,
    ProbePoint,
    ProbeReport,
    TaskProbe,
    compare_reports,
    energy_distance,
)
from reflex_serve.sim.tasks import BIMODAL_TASKS, parse_task_list

__all__ = [
    "UNCOMMITTED",
    "ProbePoint",
    "ProbeReport",
    "TaskProbe",
    "classify",
    "compare_reports",
    "decision_point",
    "drive_to_decision",
    "energy_distance",
    "probe",
]


def classify(
    samples: np.ndarray, reference: np.ndarray, n: int, kappa: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Classify action chunks by the rule of the module docstring.

    Args:
        samples: float (K, H, A) chunks; reference: float (2, H', A), the left and right
            strategies' actions from the same observation; n: actions averaged (>= 1,
            capped at both lengths); kappa: commitment threshold in (0, 1].

    Returns:
        ``(scores float32 (K,), labels int8 (K,))``.

    Raises:
        ValueError: bad shapes, n < 1, kappa outside (0, 1], or identical references.
    """
    samples, reference = np.asarray(samples, np.float64), np.asarray(reference, np.float64)
    if samples.ndim != 3 or reference.ndim != 3 or reference.shape[0] != 2:
        raise ValueError(
            f"need samples (K, H, A), reference (2, H, A); got {samples.shape}, {reference.shape}"
        )
    if samples.shape[2] != reference.shape[2]:
        raise ValueError(f"action dims differ: {samples.shape[2]} vs {reference.shape[2]}")
    if n < 1 or not 0 < kappa <= 1:
        raise ValueError(f"need n >= 1 and 0 < kappa <= 1, got n={n}, kappa={kappa}")
    r = reference[:, : min(n, reference.shape[1])].mean(axis=1)
    mid, half = (r[0] + r[1]) / 2, (r[1] - r[0]) / 2
    norm2 = float(half @ half)
    if norm2 < 1e-12:
        raise ValueError("the two reference modes are identical at this observation")
    scores = (samples[:, : min(n, samples.shape[1])].mean(axis=1) - mid) @ half / norm2
    labels = np.full(scores.shape, UNCOMMITTED, dtype=np.int8)
    labels[scores <= -kappa] = 0
    labels[scores >= kappa] = 1
    return scores.astype(np.float32), labels


def _accepts_seed(client: Any) -> bool:
    try:
        params = inspect.signature(client.act).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params)


def drive_to_decision(env: SimEnv, seed: int, mode: int = 0) -> tuple[Observation, int]:
    """Reset episode ``seed`` and step the ``mode`` strategy until it has decided.

    Returns:
        ``(obs, step)``: the decision observation (the env stays there) and its step.

    Raises:
        RuntimeError: no decision before the horizon.
    """
    strategy = make_strategy(env.task, mode)
    obs = env.reset(seed)
    while not strategy.decided(env.raw_obs):
        obs, _, done = env.step(strategy.get_action(env.raw_obs))
        if done:
            raise RuntimeError(f"{env.task} seed {seed}: no decision in {env.max_steps} steps")
    return obs, env.step_count


def decision_point(env: SimEnv, seed: int, horizon: int) -> tuple[Observation, int, np.ndarray]:
    """Drive episode ``seed`` to its decision point; roll out both detours from there.

    Args:
        env: a :class:`SimEnv` of a bimodal task. seed: episode seed. horizon: H >= 1.

    Returns:
        ``(obs, step, reference)``: the decision observation, its step, and float32
        (2, H, 4) actions of the left and right strategies from it (padded with the last
        action if the horizon ends first).

    Raises:
        RuntimeError: no decision within the horizon, or the two modes reached different
            decision states (the shared part must be identical).
    """
    refs, found = [], []
    for mode in range(len(MODES)):
        strategy = make_strategy(env.task, mode)
        obs, step = drive_to_decision(env, seed, mode)
        found.append((obs, step, env.raw_obs))
        acts: list[np.ndarray] = []
        done = False
        while len(acts) < horizon and not done:
            acts.append(strategy.get_action(env.raw_obs))
            _, _, done = env.step(acts[-1])
        acts += [acts[-1]] * (horizon - len(acts))
        refs.append(np.stack(acts))
    (obs, step, raw), (_, step_r, raw_r) = found
    if step != step_r or not np.allclose(raw, raw_r):
        raise RuntimeError(f"{env.task} seed {seed}: the modes diverge before the decision")
    return obs, step, np.stack(refs).astype(np.float32)


def probe(
    client: Any,
    tasks: Sequence[str] | str | None = BIMODAL_TASKS,
    num_episodes: int = 5,
    num_samples: int = 64,
    seed: int = EVAL_SEED_START,
    num_steps: int | None = None,
    n_action_steps: int | None = None,
    kappa: float = 0.5,
    cameras: Sequence[str] | str = ("corner2",),
    image_size: int | tuple[int, int] = 64,
    state_mode: str = "full",
    *,
    sample_seed: int = 0,
    progress: bool = False,
) -> ProbeReport:
    """Probe a policy client at the decision points of the bimodal tasks.

    Args:
        client: an :class:`~reflex_serve.sim.evaluate.ActClient`; a ``seed`` keyword of
            its ``act`` is used to draw distinct noise per sample.
        tasks: bimodal task names (default both). num_episodes: probe points per task.
        num_samples: K chunks per point (>= 2). seed: episode seed of point 0.
        num_steps: denoising steps requested (``None``: the client's default).
        n_action_steps: actions averaged by the rule (default: see module docstring).
        kappa: commitment threshold in (0, 1].
        cameras, image_size, state_mode: observation layout (must match the policy).
        sample_seed: noise seed of the first sample. progress: print one line per point.

    Returns:
        :class:`ProbeReport` (raw samples in every :class:`ProbePoint`).

    Raises:
        ValueError: bad arguments, a non-bimodal task, or chunks not shaped (H, 4).
        Whatever ``client.act`` raises is propagated.
    """
    task_list = parse_task_list(tasks)
    bad = [t for t in task_list if t not in BIMODAL_TASKS]
    if bad:
        raise ValueError(f"not bimodal tasks: {bad} (bimodal: {', '.join(BIMODAL_TASKS)})")
    if num_episodes < 1 or num_samples < 2 or seed < 0:
        raise ValueError("need num_episodes >= 1, num_samples >= 2 and seed >= 0")
    cams, hw = validate_cameras(cameras), parse_image_size(image_size)
    with_seed, run_id = _accepts_seed(client), uuid.uuid4().hex[:8]
    results: list[TaskProbe] = []
    reported: set[int] = set()
    n_used: set[int] = set()
    t_start, p_index = time.perf_counter(), 0
    for task in task_list:
        points: list[ProbePoint] = []
        with SimEnv(task, cams, hw, state_mode) as env:
            for i in range(num_episodes):
                ep_seed = seed + i
                obs, step = drive_to_decision(env, ep_seed)
                seeds = [sample_seed + p_index * num_samples + j for j in range(num_samples)]
                chunks, n = [], 1
                for j in range(num_samples):
                    kw = {"seed": seeds[j]} if with_seed else {}
                    eid = f"probe-{run_id}-{task}-{ep_seed}"
                    res = client.act(obs, episode_id=eid, step=step, num_steps=num_steps, **kw)
                    a = np.asarray(res.actions, dtype=np.float32)
                    if a.ndim != 2 or a.shape[1] != env.action_dim or a.shape[0] < 1:
                        raise ValueError(f"client returned actions of shape {a.shape}")
                    if chunks and a.shape != chunks[0].shape:
                        raise ValueError(f"chunk shape changed: {chunks[0].shape} -> {a.shape}")
                    chunks.append(a)
                    reported.add(int(res.num_steps))
                    n, _ = _resolve_n_action_steps(n_action_steps, client, res)
                samples = np.stack(chunks)
                _, _, reference = decision_point(env, ep_seed, samples.shape[1])
                n_used.add(n)
                scores, labels = classify(samples, reference, n, kappa)
                point = ProbePoint(
                    task=task,
                    seed=ep_seed,
                    step=step,
                    obs=obs,
                    reference=reference,
                    samples=samples,
                    scores=scores,
                    labels=labels,
                    sample_seeds=seeds if with_seed else None,
                )
                points.append(point)
                p_index += 1
                if progress:
                    print(f"{task} seed {ep_seed} step {step}: {point.commit_share:.0%} committed")
        results.append(TaskProbe(task, points))
    config = {
        "tasks": task_list,
        "num_episodes": num_episodes,
        "num_samples": num_samples,
        "seed": seed,
        "sample_seed": sample_seed,
        "client_takes_seed": with_seed,
        "num_steps": num_steps,
        "num_steps_reported": sorted(reported),
        "n_action_steps": sorted(n_used),
        "kappa": kappa,
        "cameras": [{"name": c, "height": hw[0], "width": hw[1]} for c in cams],
        "state_mode": state_mode,
        "wall_s": round(time.perf_counter() - t_start, 3),
    }
    return ProbeReport(results, config)
