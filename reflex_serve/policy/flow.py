"""Flow-matching conventions shared by training, export, runtime and distillation.

Same convention as LeRobot pi0 / pi0.5 / SmolVLA (Black et al., "pi0: A Vision-Language-
Action Flow Model for General Robot Control", 2024): noise at t = 1, data at t = 0,

    x_t = t * eps + (1 - t) * a,        target velocity u = eps - a,

training times t ~ Beta(1.5, 1.0) * 0.999 + 0.001, and sampling by Euler steps from
t = 1 with dt = -1/N: x <- x + dt * v(x, t).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

TIME_EPS = 0.001


def sample_time(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times, float32 (batch,), from Beta(1.5, 1.0) * 0.999 + 0.001."""
    beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
    if generator is None:
        t = beta.sample((batch,))
    else:  # Beta.sample takes no generator: X/(X+Y) with X~Gamma(1.5), Y~Gamma(1)
        u1 = torch._standard_gamma(torch.full((batch,), 1.5), generator=generator)
        u2 = torch._standard_gamma(torch.full((batch,), 1.0), generator=generator)
        t = u1 / (u1 + u2)
    return t * (1 - TIME_EPS) + TIME_EPS


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t * eps + (1 - t) * a for actions/noise (B, H, A) and t (B,)."""
    tb = t[:, None, None]
    return tb * noise + (1 - tb) * actions


def euler_schedule(num_steps: int, target_time: str = "instantaneous") -> list[tuple[float, float]]:
    """The (t, s) pairs of an N-step Euler integration from t = 1 to 0.

    Args:
        num_steps: N >= 1.
        target_time: ``"instantaneous"`` gives s = t (a flow-matching teacher);
            ``"shortcut"`` gives s = t + dt, the end of the step (a SnapFlow student).

    Raises:
        ValueError: for N < 1 or an unknown ``target_time``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if target_time not in ("instantaneous", "shortcut"):
        raise ValueError(f"unknown target_time {target_time!r}")
    steps = []
    for i in range(num_steps):
        t = 1.0 - i / num_steps
        s = t if target_time == "instantaneous" else 1.0 - (i + 1) / num_steps
        steps.append((t, s))
    return steps


def euler_sample(
    velocity: Callable[[np.ndarray, float, float], np.ndarray],
    noise: np.ndarray,
    num_steps: int,
    target_time: str = "instantaneous",
) -> np.ndarray:
    """Integrate x from noise at t = 1 to an action chunk at t = 0.

    Args:
        velocity: v(x, t, s) -> array shaped like x.
        noise: x at t = 1, e.g. float32 (B, H, A).
        num_steps: number of Euler steps (NFE).

    Returns:
        x at t = 0, same shape and dtype as ``noise``.
    """
    x = noise
    dt = -1.0 / num_steps
    for t, s in euler_schedule(num_steps, target_time):
        x = x + dt * velocity(x, t, s)
    return x
