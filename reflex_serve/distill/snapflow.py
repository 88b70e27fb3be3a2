"""SnapFlow objectives: distil an N-step flow-matching teacher into a 1-step student.

SnapFlow (arXiv 2604.05656). The student is the teacher network F(x_t, s, t) with its
zero-initialised target-time embedding phi(s) now trained, so at step 0 it equals the
teacher. Two kinds of samples share one batch:

* flow-matching samples keep the instantaneous velocity field: s = t,
  ``L_FM = || F(x_t, s=t, t) - (eps - a) ||^2``;
* consistency samples teach the shortcut from t = 1 to 0 with the model's own
  stop-gradient velocities (no EMA, no external teacher)::

      x1 ~ N(0, I);  v1 = sg F(x1, 1, 1);  x_half = x1 - 0.5 v1
      v_half = sg F(x_half, 0.5, 0.5);  target = (v1 + v_half) / 2
      L_cons = || F(x1, s=0, t=1) - target ||^2

Total ``alpha * L_FM + (1 - alpha) * lambda * L_cons`` (paper defaults alpha = 0.5,
lambda = 0.1; this project's default lambda is 1.0, see :data:`DEFAULT_LAMBDA`). One-NFE inference is ``a = x1 - F(x1, s=0, t=1)``.

The ``trajectory`` objective instead regresses the 1-step output on the frozen teacher's
full N-step Euler result from the same noise: ``|| F(x1, 0, 1) - (x1 - a_teacher) ||^2``.
It is weighted exactly like the consistency term (``(1 - alpha) * lambda``), so the two
objectives differ only in the target of F(x1, s=0, t=1) and can be compared flag for flag.

Shapes: x, actions and velocities are float32 (B, H, A) in normalized action units; t and
s float32 (B,); state float32 (B, S) normalized; the prefix ``kv`` float32 (B, L, 2, P, D)
and ``mask`` float32 (B, P) (see :mod:`reflex_serve.policy.modeling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..policy.flow import euler_schedule, interpolate, sample_time
from . import DEFAULT_LAMBDA

OBJECTIVES = ("snapflow", "trajectory")


@dataclass(frozen=True)
class SnapFlowConfig:
    """Loss settings.

    Attributes:
        mix_ratio: fraction of each batch used as consistency samples (0..1).
        alpha: weight of the flow-matching term; (1 - alpha) * lam weighs consistency.
        lam: lambda, the consistency (or trajectory) scale, >= 0 (:data:`DEFAULT_LAMBDA`;
            the paper's is 0.1).
        objective: ``"snapflow"`` or ``"trajectory"``.
        teacher_steps: N of the teacher's Euler integration (trajectory objective).
    """

    mix_ratio: float = 0.5
    alpha: float = 0.5
    lam: float = DEFAULT_LAMBDA
    objective: str = "snapflow"
    teacher_steps: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.mix_ratio <= 1.0:
            raise ValueError(f"mix_ratio must be in [0, 1], got {self.mix_ratio}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.lam < 0:
            raise ValueError(f"lambda must be >= 0, got {self.lam}")
        if self.teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {self.teacher_steps}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")


def _full(b: int, value: float) -> torch.Tensor:
    return torch.full((b,), value, dtype=torch.float32)


def one_step(model: nn.Module, x1: torch.Tensor, state, kv, mask) -> torch.Tensor:
    """1-NFE sample a = x1 - F(x1, s=0, t=1); x1 (B, H, A) -> actions (B, H, A).

    ``model.velocity`` takes (x_t, t, s, ...): t = 1 is the noise end, s = 0 the target.
    """
    b = x1.shape[0]
    return x1 - model.velocity(x1, _full(b, 1.0), _full(b, 0.0), state, kv, mask)


def consistency_target(model: nn.Module, x1: torch.Tensor, state, kv, mask) -> torch.Tensor:
    """The two-step Euler shortcut velocity (v1 + v_half) / 2, computed without gradient."""
    b = x1.shape[0]
    with torch.no_grad():
        v1 = model.velocity(x1, _full(b, 1.0), _full(b, 1.0), state, kv, mask)
        x_half = x1 - 0.5 * v1
        v_half = model.velocity(x_half, _full(b, 0.5), _full(b, 0.5), state, kv, mask)
    return (v1 + v_half) / 2


@torch.no_grad()
def teacher_actions(
    teacher: nn.Module, x1: torch.Tensor, state, kv, mask, num_steps: int
) -> torch.Tensor:
    """The teacher's N-step Euler result from noise ``x1`` (s = t at every step)."""
    x = x1
    b = x1.shape[0]
    for t, s in euler_schedule(num_steps, "instantaneous"):
        x = x - teacher.velocity(x, _full(b, t), _full(b, s), state, kv, mask) / num_steps
    return x


def snapflow_loss(
    model: nn.Module,
    cfg: SnapFlowConfig,
    state: torch.Tensor,
    kv: torch.Tensor,
    mask: torch.Tensor,
    actions: torch.Tensor,
    generator: torch.Generator | None = None,
    teacher: nn.Module | None = None,
    teacher_prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The distillation loss for one batch.

    Args:
        model: the student (``velocity(x_t, t, s, state, prefix_kv, prefix_mask)``).
        state: normalized state (B, S); kv (B, L, 2, P, D) and mask (B, P): the (frozen)
            prefix; actions: normalized action-chunk labels (B, H, A) (demo actions or
            the chunks the teacher served).
        generator: draws t, eps and x1 (reproducible batches); the global RNG if None.
        teacher: the frozen teacher, required by the ``trajectory`` objective.
        teacher_prefix: (kv, mask) of the teacher's own prefix for the trajectory target,
            when the student's prefix is being trained (default: ``kv``, ``mask``).

    Returns:
        ``{"loss", "fm", "cons"}`` scalar tensors (``cons`` is the trajectory term for
        that objective).

    Raises:
        ValueError: trajectory objective without a teacher.
    """
    b = actions.shape[0]
    n_cons = round(cfg.mix_ratio * b)
    n_fm = b - n_cons
    zero = actions.new_zeros(())
    fm = cons = zero
    if n_fm > 0:
        a = actions[:n_fm]
        t = sample_time(n_fm, generator)
        eps = torch.randn(a.shape, generator=generator)
        v = model.velocity(interpolate(a, eps, t), t, t, state[:n_fm], kv[:n_fm], mask[:n_fm])
        fm = ((v - (eps - a)) ** 2).mean()
    if n_cons > 0:
        sl = slice(n_fm, b)
        x1 = torch.randn(actions[sl].shape, generator=generator)
        if cfg.objective == "snapflow":
            target = consistency_target(model, x1, state[sl], kv[sl], mask[sl])
        else:
            if teacher is None:
                raise ValueError("the trajectory objective needs the frozen teacher")
            t_kv, t_mask = teacher_prefix if teacher_prefix is not None else (kv, mask)
            a_teacher = teacher_actions(
                teacher, x1, state[sl], t_kv[sl], t_mask[sl], cfg.teacher_steps
            )
            target = x1 - a_teacher
        one, zero_s = _full(n_cons, 1.0), _full(n_cons, 0.0)
        pred = model.velocity(x1, one, zero_s, state[sl], kv[sl], mask[sl])
        cons = ((pred - target) ** 2).mean()
    loss = cfg.alpha * fm + (1 - cfg.alpha) * cfg.lam * cons
    return {"loss": loss, "fm": fm.detach(), "cons": cons.detach()}
