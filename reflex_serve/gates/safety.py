"""The three SAFETY gates. Nothing overrides them, and one that cannot be evaluated fails.

All three read the same :class:`~reflex_serve.gates.evidence.Draws`: K chunks per
observation (replay observations and edge probes) from candidate and reference, with
the same noise, in action units.

- S1 finite: no NaN or Inf anywhere in the candidate's chunks.
- S2 action_limits: every finite candidate action value inside the limits: the
  manifest's ``action_limits`` (``{"low": [...], "high": [...]}``, optionally with
  ``"max_step"``: the embodiment's largest change per step; the reference's, else
  the candidate's), else the teacher's range (its data's min and max from
  ``stats.json`` and its own chunks on the same observations) widened by ``margin`` x
  its width on each side. Zero violations.
- S3 motion_smoothness: per action dimension, the p99 of the step-to-step change
  |a[h+1] - a[h]| inside chunks at most ``max_p99_ratio`` x the teacher's on the same
  draws (the teacher's floored at ``floor_fraction`` x the limits' width, so a perfectly
  flat teacher does not turn tiny changes into large ratios), and no single step above
  the hard maximum: the manifest's ``max_step``, else ``max_step_fraction`` x the width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ActionLimitsConfig, MotionSmoothnessConfig
from .evidence import Draws
from .results import FAIL, PASS, GateResult, not_evaluated


@dataclass(frozen=True)
class Limits:
    """Per-dimension action limits (A,), where they came from, and the embodiment's
    largest step per control step (A,) when the manifest gives one."""

    low: np.ndarray
    high: np.ndarray
    source: str
    max_step: np.ndarray | None = None

    @property
    def width(self) -> np.ndarray:
        return self.high - self.low


def explicit_limits(manifest_limits: dict | None, action_dim: int) -> Limits | None:
    """Limits declared in a manifest (``low``/``high`` or ``min``/``max``), or None.

    Raises:
        ValueError: malformed limits (wrong length, low above high, non-finite).
    """
    if not manifest_limits:
        return None
    low = manifest_limits.get("low", manifest_limits.get("min"))
    high = manifest_limits.get("high", manifest_limits.get("max"))
    if low is None or high is None:
        raise ValueError("manifest action_limits needs 'low' and 'high' lists")
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if low.shape != (action_dim,) or high.shape != (action_dim,):
        raise ValueError(f"manifest action_limits must have {action_dim} values each")
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
        raise ValueError("manifest action_limits must be finite with low <= high")
    step = manifest_limits.get("max_step")
    if step is not None:
        step = np.broadcast_to(np.asarray(step, np.float64), (action_dim,)).copy()
        if not (np.all(np.isfinite(step)) and np.all(step > 0)):
            raise ValueError("manifest action_limits max_step must be positive")
    return Limits(low, high, "manifest action_limits", step)


def derived_limits(
    draws: Draws, data_min: np.ndarray, data_max: np.ndarray, cfg: ActionLimitsConfig
) -> Limits:
    """The teacher's range (its data and its finite chunks) widened by the margin."""
    low, high = np.asarray(data_min, np.float64), np.asarray(data_max, np.float64)
    ref = draws.reference
    if ref is not None:
        flat = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
        flat = flat[np.all(np.isfinite(flat), axis=1)]
        if len(flat):
            low, high = np.minimum(low, flat.min(0)), np.maximum(high, flat.max(0))
    pad = cfg.margin * np.maximum(high - low, 1e-6)
    seen = "its data and its chunks" if ref is not None else "its data"
    return Limits(
        low - pad,
        high + pad,
        f"teacher range ({seen}) widened by {cfg.margin:g} x width on each side",
    )


def _evidence_problem(draws: Draws) -> str | None:
    if draws.candidate is None:
        return f"the candidate could not act: {draws.candidate_error}"
    if draws.replay == 0:
        return "no replay observations (no held-out rows in the store and no --data)"
    return None


def _where(draws: Draws, per_obs: np.ndarray) -> str:
    hits = [draws.labels[i] for i in np.nonzero(per_obs)[0]]
    more = f" and {len(hits) - 4} more" if len(hits) > 4 else ""
    return ", ".join(hits[:4]) + more


def finite(draws: Draws) -> GateResult:
    """S1: count of non-finite values in the candidate's chunks (must be 0)."""
    problem = _evidence_problem(draws)
    if problem:
        return not_evaluated("S1", problem, comparison="==", threshold=0)
    c = draws.candidate
    bad = ~np.isfinite(c)
    count = int(bad.sum())
    chunks = draws.observations * draws.samples
    per_obs = bad.reshape(draws.observations, -1).any(1)
    if count == 0:
        detail = f"all {chunks} chunks finite ({draws.replay} replay observations + probes)"
    else:
        bad_chunks = int(bad.reshape(draws.observations, draws.samples, -1).any(2).sum())
        detail = f"{count} NaN/Inf values in {bad_chunks} chunks, at {_where(draws, per_obs)}"
    return GateResult.make(
        "S1",
        "==",
        0,
        count,
        chunks,
        PASS if count == 0 else FAIL,
        detail,
        offending=[draws.labels[i] for i in np.nonzero(per_obs)[0]],
    )


def action_limits(draws: Draws, limits: Limits) -> GateResult:
    """S2: count of finite candidate action values outside ``limits`` (must be 0)."""
    problem = _evidence_problem(draws)
    if problem:
        return not_evaluated("S2", problem, comparison="==", threshold=0)
    c = draws.candidate.astype(np.float64)
    with np.errstate(invalid="ignore"):
        out = np.isfinite(c) & ((c < limits.low) | (c > limits.high))
    count = int(out.sum())
    chunks = draws.observations * draws.samples
    data = {"low": limits.low.tolist(), "high": limits.high.tolist(), "source": limits.source}
    if count == 0:
        detail = f"{chunks} chunks inside limits from the {limits.source}"
    else:
        dims = sorted({int(d) for d in np.nonzero(out)[-1]})
        worst = float(np.max(np.where(out, np.maximum(limits.low - c, c - limits.high), 0)))
        per_obs = out.reshape(draws.observations, -1).any(1)
        detail = (
            f"{count} values outside the limits (dimensions {dims}, up to {worst:.3g} "
            f"beyond), at {_where(draws, per_obs)}; limits from the {limits.source}"
        )
    return GateResult.make(
        "S2", "==", 0, count, chunks, PASS if count == 0 else FAIL, detail, **data
    )


def motion_smoothness(draws: Draws, limits: Limits, cfg: MotionSmoothnessConfig) -> GateResult:
    """S3: p99 step change vs the teacher's, and the hard maximum of a single step."""
    ratio_max = cfg.max_p99_ratio
    problem = _evidence_problem(draws)
    if problem is None and draws.reference is None:
        problem = f"the teacher could not act: {draws.reference_error}"
    if problem is None and draws.candidate.shape[2] < 2:
        problem = "chunks of one action have no step-to-step change"
    if problem:
        return not_evaluated("S3", problem, threshold=ratio_max)
    c, t = draws.candidate.astype(np.float64), draws.reference.astype(np.float64)
    ok = np.isfinite(c).all((2, 3)) & np.isfinite(t).all((2, 3))  # (N, K) usable draws
    if not ok.any():
        return not_evaluated(
            "S3", "no draw where both policies' chunks are finite", threshold=ratio_max
        )
    sc = np.abs(np.diff(c[ok], axis=1)).reshape(-1, c.shape[-1])  # (M * (H-1), A)
    st = np.abs(np.diff(t[ok], axis=1)).reshape(-1, c.shape[-1])
    p99_c, p99_t = np.percentile(sc, 99, axis=0), np.percentile(st, 99, axis=0)
    width = np.maximum(limits.width, 1e-9)
    ratios = p99_c / np.maximum(p99_t, cfg.floor_fraction * width)
    hard = limits.max_step if limits.max_step is not None else cfg.max_step_fraction * width
    over = sc > hard
    value = float(ratios.max())
    passed = value <= ratio_max and not over.any()
    dim = int(ratios.argmax())
    detail = (
        f"worst dimension {dim}: p99 step {p99_c[dim]:.3g} vs teacher {p99_t[dim]:.3g}; "
        f"largest step {sc.max():.3g} (hard maximum {hard.min():.3g})"
    )
    if over.any():
        detail += f"; {int(over.sum())} steps above the hard maximum"
    return GateResult.make(
        "S3",
        "<=",
        ratio_max,
        value,
        int(ok.sum()),
        PASS if passed else FAIL,
        detail,
        p99_candidate=p99_c.tolist(),
        p99_teacher=p99_t.tolist(),
        hard_max=hard.tolist(),
        steps_over_hard_max=int(over.sum()),
    )
