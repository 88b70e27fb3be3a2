"""Parity between the PyTorch policy and its ONNX Runtime export.

The runtime's unnormalized actions must equal the PyTorch pipeline's for the same
observation and noise within 1e-4 max abs (the export contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..policy.flow import euler_schedule
from ..runtime.policy import Policy
from ..runtime.types import Observation

DEFAULT_TOLERANCE = 1e-4
_INSTRUCTIONS = ("reach the goal", "push the puck to the target", "", "open the drawer please")


class ParityError(AssertionError):
    """The ONNX Runtime actions differ from the PyTorch actions beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    """Result of :func:`check_parity`: max abs difference over all compared actions."""

    max_abs_diff: float
    tolerance: float
    observations: int
    num_steps: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def max_abs_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref|, or inf when either holds NaN or Inf: a parity check must never
    read a model that outputs NaN as agreeing (``max(0.0, nan)`` is 0.0 in Python)."""
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def torch_act(model: nn.Module, policy: Policy, obs: Observation, noise: np.ndarray,
              num_steps: int) -> np.ndarray:
    """The PyTorch reference for ``policy.act``: unnormalized actions float32 (H, action_dim).

    The inputs are the runtime's own (``policy.prefix_inputs``, ``policy.model_state``);
    ``model`` replaces the two graphs: anything with ``encode_prefix(**prefix feeds)`` and
    ``velocity(x_t, t, s, state, prefix_kv, prefix_mask)`` (the native policy, or an
    imported one as :class:`~reflex_serve.lerobot_import.imported.ImportedFlowModel`).
    ``noise``: float32 ``policy.noise_shape`` (H, max_action_dim).
    """
    state = policy.model_state(obs)
    feeds = {k: torch.from_numpy(v) for k, v in policy.prefix_inputs(obs, state).items()}
    st, x = torch.from_numpy(state), torch.from_numpy(noise[None])
    dt = np.float32(1.0 / num_steps)
    with torch.no_grad():
        kv, mask = model.encode_prefix(**feeds)
        for t, s in euler_schedule(num_steps, policy.manifest.target_time):
            x = x - dt * model.velocity(x, torch.full((1,), t), torch.full((1,), s), st, kv, mask)
    return policy.stats.action.unnormalize(x[0, :, : policy.manifest.action_dim].numpy())


def random_observations(policy: Policy, n: int, seed: int = 0) -> list[Observation]:
    """``n`` deterministic synthetic observations that fit ``policy``'s manifest."""
    rng = np.random.default_rng(seed)
    st = policy.stats.state
    out = []
    for i in range(n):
        images = {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in policy.manifest.cameras}
        state = (st.mean + st.std * rng.standard_normal(st.mean.shape)).astype(np.float32)
        out.append(Observation(images=images, state=state, instruction=_INSTRUCTIONS[i % len(_INSTRUCTIONS)]))
    return out


def check_parity(model: nn.Module, export_dir: Path, *, observations: int = 4, seed: int = 0,
                 num_steps: int | None = None, tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """Compare ONNX Runtime and PyTorch actions (:func:`torch_act`) on synthetic observations.

    Raises:
        ParityError: if the max abs difference exceeds ``tolerance``.
    """
    policy = Policy(export_dir)
    n = num_steps or policy.num_steps
    worst = 0.0
    model = model.eval()
    for i, obs in enumerate(random_observations(policy, observations, seed)):
        noise = policy.make_noise(seed + i)
        ours = policy.act(obs, noise=noise, num_steps=n).actions
        worst = max(worst, max_abs_diff(ours, torch_act(model, policy, obs, noise, n)))
    report = ParityReport(worst, tolerance, observations, n)
    if not report.ok:
        raise ParityError(f"ONNX Runtime vs PyTorch max abs diff {worst:.3g} exceeds {tolerance:g}")
    return report
