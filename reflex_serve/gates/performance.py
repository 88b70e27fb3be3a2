"""The six PERFORMANCE gates: verdicts from measurements (:mod:`.measure`, :mod:`.evidence`).

An operator may override any of them with an identity and a reason. One that cannot be
evaluated (no suite, too few samples) reports ``not_evaluated``, which fails unless
overridden.

- P1 task_success: pooled closed-loop success over the suite; the candidate's Wilson
  lower bound >= the teacher's rate - ``margin``. Not evaluated when even a perfect
  candidate could not pass with this many episodes (n / (n + z^2) below the bar).
- P2 per_task_regression: no task's success rate drops more than ``max_drop``.
- P3 action_agreement: on the held-out replay observations, the pooled relative energy
  distance between candidate and teacher samples (sum of the energy distances over sum of
  the teacher's spreads; K draws, same noise, the teacher's normalized units)
  <= ``max_energy``; the mean squared difference of their mean chunks
  <= ``max_mean_mse``; the cosine of the mean chunks (all observations together)
  >= ``min_mean_cosine``. A candidate that returns the mean of a two-mode teacher scores
  about 1 (see :mod:`reflex_serve.export.validate`).
- P4 latency_speedup: candidate act p50 <= ``max_ratio`` x the teacher's, interleaved
  in one run.
- P5 latency_p99_budget: candidate act p99 <= ``budget_ms``.
- P6 resources: the candidate's policy memory (peak RSS over its process's baseline,
  floored at ``memory_floor_mb``) and model bytes each <= ``max_ratio`` x the teacher's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..export.validate import agreement, pooled_relative_energy
from ..sim.report import wilson_interval
from .config import (
    ActionAgreementConfig,
    EvidenceConfig,
    LatencyBudgetConfig,
    LatencyConfig,
    LatencySpeedupConfig,
    PerTaskRegressionConfig,
    ResourcesConfig,
    TaskSuccessConfig,
)
from .evidence import Draws
from .measure import Latency
from .results import FAIL, NOT_EVALUATED, PASS, GateResult, not_evaluated


def _pooled(report) -> tuple[int, int]:
    return sum(t.successes for t in report.tasks), sum(t.episodes for t in report.tasks)


def task_success(candidate, reference, cfg: TaskSuccessConfig) -> GateResult:
    """P1 from two EvalReports (:mod:`reflex_serve.sim.report`) of the same tasks and seeds."""
    kc, nc = _pooled(candidate)
    kr, nr = _pooled(reference)
    ref_rate = kr / nr
    bar = max(0.0, ref_rate - cfg.margin)
    lb = wilson_interval(kc, nc, cfg.z)[0]
    best = wilson_interval(nc, nc, cfg.z)[0]
    data = {
        "candidate_successes": kc,
        "reference_successes": kr,
        "episodes": nc,
        "candidate_rate": kc / nc,
        "reference_rate": ref_rate,
    }
    if best < bar:
        return GateResult.make(
            "P1",
            ">=",
            bar,
            lb,
            nc,
            NOT_EVALUATED,
            f"{nc} episodes cannot show a lower bound >= {bar:.3f} (even {nc}/{nc} gives "
            f"{best:.3f}); raise [sim] episodes",
            **data,
        )
    detail = (
        f"candidate {kc}/{nc} ({kc / nc:.1%}, lower bound {lb:.3f}) vs teacher "
        f"{kr}/{nr} ({ref_rate:.1%}) - {cfg.margin:g}"
    )
    return GateResult.make("P1", ">=", bar, lb, nc, PASS if lb >= bar else FAIL, detail, **data)


def per_task_regression(candidate, reference, cfg: PerTaskRegressionConfig) -> GateResult:
    """P2: the largest per-task drop of success rate, candidate vs teacher."""
    ref = {t.task: t for t in reference.tasks}
    drops = {t.task: ref[t.task].success_rate - t.success_rate for t in candidate.tasks}
    worst = max(drops, key=drops.get)
    value = drops[worst]
    rates = {
        t.task: {"candidate": t.success_rate, "reference": ref[t.task].success_rate}
        for t in candidate.tasks
    }
    over = [t for t, d in drops.items() if d > cfg.max_drop + 1e-12]
    detail = (
        f"worst {worst}: {rates[worst]['candidate']:.0%} vs teacher {rates[worst]['reference']:.0%}"
    )
    if over:
        detail += f"; dropped more than {cfg.max_drop:.0%}: {', '.join(over)}"
    evidence = sum(t.episodes for t in candidate.tasks)
    return GateResult.make(
        "P2", "<=", cfg.max_drop, value, evidence, FAIL if over else PASS, detail, per_task=rates
    )


def suite_not_evaluated(reason: str) -> list[GateResult]:
    """P1 and P2 when the suite did not run."""
    return [not_evaluated("P1", reason, comparison=">="), not_evaluated("P2", reason)]


def action_agreement(
    draws: Draws, action_stats, cfg: ActionAgreementConfig, evidence: EvidenceConfig
) -> GateResult:
    """P3 on the replay part of ``draws`` (normalized with the teacher's ``action_stats``)."""
    n, k = draws.replay, draws.samples
    if draws.candidate is None or draws.reference is None:
        err = draws.candidate_error or draws.reference_error
        return not_evaluated("P3", f"a policy could not act: {err}", threshold=cfg.max_energy)
    if n < evidence.min_observations:
        return not_evaluated(
            "P3",
            f"{n} held-out observations, fewer than "
            f"[evidence] min_observations = {evidence.min_observations}",
            evidence=n * k,
            threshold=cfg.max_energy,
        )
    x = action_stats.normalize(draws.candidate[:n]).reshape(n, k, -1).astype(np.float64)
    y = action_stats.normalize(draws.reference[:n]).reshape(n, k, -1).astype(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return GateResult.make(
            "P3",
            "<=",
            cfg.max_energy,
            None,
            n * k,
            FAIL,
            "non-finite actions on the replay observations",
        )
    per = [agreement(x[i], y[i], cfg.min_spread) for i in range(n)]
    rel = pooled_relative_energy(per, cfg.min_spread)
    mse = float(np.mean([r.mean_mse for r in per]))
    mx, my = x.mean(1).ravel(), y.mean(1).ravel()
    cos = float(mx @ my / max(np.linalg.norm(mx) * np.linalg.norm(my), 1e-12))
    failed = []
    if rel > cfg.max_energy:
        failed.append(f"pooled relative energy {rel:.3f} > {cfg.max_energy:g}")
    if mse > cfg.max_mean_mse:
        failed.append(f"mean-chunk MSE {mse:.3g} > {cfg.max_mean_mse:g}")
    if cos < cfg.min_mean_cosine:
        failed.append(f"mean-chunk cosine {cos:.3f} < {cfg.min_mean_cosine:g}")
    spread_r = float(np.mean([r.reference_spread for r in per]))
    spread_c = float(np.mean([r.student_spread for r in per]))
    detail = (
        "; ".join(failed)
        if failed
        else (
            f"mean-chunk MSE {mse:.3g}, cosine {cos:.3f}; spread candidate {spread_c:.3f} vs "
            f"teacher {spread_r:.3f}"
        )
    )
    return GateResult.make(
        "P3",
        "<=",
        cfg.max_energy,
        rel,
        n * k,
        FAIL if failed else PASS,
        detail,
        observations=n,
        samples=k,
        mean_mse=mse,
        mean_cosine=cos,
        relative_energy_mean=float(np.mean([r.relative_energy for r in per])),
        relative_energy_max=float(max(r.relative_energy for r in per)),
        spread_candidate=spread_c,
        spread_teacher=spread_r,
    )


def _latency_problem(latency: Latency | None, error: str | None, cfg: LatencyConfig) -> str | None:
    if latency is None:
        return f"latency could not be measured: {error}"
    if len(latency.candidate_ms) < cfg.min_calls:
        return f"{len(latency.candidate_ms)} timed calls, fewer than [latency] min_calls"
    return None


def latency_speedup(
    latency: Latency | None, error: str | None, cfg: LatencySpeedupConfig, measure: LatencyConfig
) -> GateResult:
    """P4: candidate p50 / teacher p50, interleaved in one run."""
    problem = _latency_problem(latency, error, measure)
    if problem:
        return not_evaluated("P4", problem, threshold=cfg.max_ratio)
    c50, r50 = latency.percentile("candidate", 50), latency.percentile("reference", 50)
    ratio = c50 / r50
    detail = f"p50 {c50:.2f} ms vs teacher {r50:.2f} ms (interleaved, no prefix cache)"
    return GateResult.make(
        "P4",
        "<=",
        cfg.max_ratio,
        ratio,
        len(latency.candidate_ms),
        PASS if ratio <= cfg.max_ratio else FAIL,
        detail,
        candidate_p50_ms=c50,
        reference_p50_ms=r50,
    )


def latency_p99_budget(
    latency: Latency | None, error: str | None, cfg: LatencyBudgetConfig, measure: LatencyConfig
) -> GateResult:
    """P5: candidate p99 (ms) under the control budget."""
    problem = _latency_problem(latency, error, measure)
    if problem:
        return not_evaluated("P5", problem, threshold=cfg.budget_ms)
    p99 = latency.percentile("candidate", 99)
    ref99 = latency.percentile("reference", 99)
    detail = f"p99 {p99:.2f} ms (teacher {ref99:.2f} ms), budget {cfg.budget_ms:g} ms"
    return GateResult.make(
        "P5",
        "<=",
        cfg.budget_ms,
        p99,
        len(latency.candidate_ms),
        PASS if p99 <= cfg.budget_ms else FAIL,
        detail,
        reference_p99_ms=ref99,
    )


def resources(
    candidate: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    error: str | None,
    cfg: ResourcesConfig,
) -> GateResult:
    """P6 from two measurement dicts (:func:`.measure.measure_resources`)."""
    if candidate is None or reference is None:
        return not_evaluated(
            "P6", f"resources could not be measured: {error}", threshold=cfg.max_ratio
        )
    floor = cfg.memory_floor_mb * 1024
    mem_c, mem_r = max(candidate["policy_kib"], floor), max(reference["policy_kib"], floor)
    mem_ratio = mem_c / mem_r
    bytes_ratio = candidate["model_bytes"] / reference["model_bytes"]
    value = max(mem_ratio, bytes_ratio)
    detail = (
        f"memory {candidate['policy_kib'] / 1024:.1f} vs {reference['policy_kib'] / 1024:.1f}"
        f" MiB ({mem_ratio:.2f}x), model {candidate['model_bytes'] / 2**20:.2f} vs "
        f"{reference['model_bytes'] / 2**20:.2f} MiB ({bytes_ratio:.2f}x)"
    )
    return GateResult.make(
        "P6",
        "<=",
        cfg.max_ratio,
        value,
        2,
        PASS if value <= cfg.max_ratio else FAIL,
        detail,
        memory_ratio=mem_ratio,
        bytes_ratio=bytes_ratio,
        candidate=candidate,
        reference=reference,
    )
