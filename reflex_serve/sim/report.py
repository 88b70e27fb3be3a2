"""Evaluation results: per-task success with Wilson intervals, latency, configuration."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    E. B. Wilson (1927), "Probable inference, the law of succession, and statistical
    inference", JASA 22(158): 209-212. Unlike the normal (Wald) interval it stays inside
    [0, 1] and is not degenerate at 0 or n successes: 0/10 gives (0, 0.278) and 10/10
    gives (0.722, 1) at z = 1.96.

    Args:
        successes: number of successes k, 0 <= k <= n.
        n: number of trials; ``n == 0`` gives the uninformative (0.0, 1.0).
        z: standard-normal quantile (1.96 for a 95% interval).

    Returns:
        ``(low, high)``, floats in [0, 1].

    Raises:
        ValueError: if ``n < 0`` or ``successes`` is outside [0, n].
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


@dataclass
class TaskResult:
    """Outcome of one task's episodes.

    Attributes:
        task: task name. episodes, successes: counts. success_rate: successes / episodes.
        ci_low, ci_high: Wilson 95% interval of the success rate.
        mean_length: mean episode length in environment steps.
        seeds, success, lengths: per-episode seed, outcome, length.
    """

    task: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_length: float
    seeds: list[int] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    @classmethod
    def from_episodes(
        cls, task: str, seeds: Sequence[int], success: Sequence[bool], lengths: Sequence[int]
    ) -> TaskResult:
        """Summarise per-episode outcomes."""
        n, k = len(success), int(sum(bool(s) for s in success))
        lo, hi = wilson_interval(k, n)
        return cls(
            task=task,
            episodes=n,
            successes=k,
            success_rate=k / n if n else 0.0,
            ci_low=lo,
            ci_high=hi,
            mean_length=float(np.mean(lengths)) if n else 0.0,
            seeds=[int(s) for s in seeds],
            success=[bool(s) for s in success],
            lengths=[int(x) for x in lengths],
        )


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else math.nan


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


@dataclass
class LatencyStats:
    """Policy-call latency over an evaluation, in milliseconds.

    Attributes:
        act_calls: number of ``act`` calls.
        p50_ms, p90_ms, p99_ms, mean_ms: client-side wall time of ``act`` (includes
            transport for remote clients).
        server_total_ms_mean, server_prefix_ms_mean, server_expert_ms_mean: means of
            the timings the policy reported in its replies.
        cache_hit_rate: fraction of calls whose prefix came from the prefix cache.
    """

    act_calls: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    server_total_ms_mean: float
    server_prefix_ms_mean: float
    server_expert_ms_mean: float
    cache_hit_rate: float

    @classmethod
    def from_samples(
        cls,
        act_ms: Sequence[float],
        server_total: Sequence[float],
        server_prefix: Sequence[float],
        server_expert: Sequence[float],
        cache_hits: int,
    ) -> LatencyStats:
        """Aggregate per-call samples."""
        n = len(act_ms)
        return cls(
            act_calls=n,
            p50_ms=_pct(act_ms, 50),
            p90_ms=_pct(act_ms, 90),
            p99_ms=_pct(act_ms, 99),
            mean_ms=_mean(act_ms),
            server_total_ms_mean=_mean(server_total),
            server_prefix_ms_mean=_mean(server_prefix),
            server_expert_ms_mean=_mean(server_expert),
            cache_hit_rate=cache_hits / n if n else 0.0,
        )


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


@dataclass
class EvalReport:
    """The result of :func:`reflex_serve.sim.evaluate.evaluate`.

    Attributes:
        tasks: one :class:`TaskResult` per task, in evaluation order.
        success_rate: average over tasks of the per-task success rates.
        episodes, successes: totals over tasks.
        ci_low, ci_high: Wilson 95% interval of the pooled success rate.
        mean_length: mean episode length over all episodes (steps).
        latency: :class:`LatencyStats`.
        config: tasks, seeds, num_steps (requested / reported), n_action_steps,
            cameras, state_mode, horizons, model versions seen (digest -> calls),
            run id, wall time, GIF path, creation time.
    """

    tasks: list[TaskResult]
    success_rate: float
    episodes: int
    successes: int
    ci_low: float
    ci_high: float
    mean_length: float
    latency: LatencyStats
    config: dict[str, Any]

    @classmethod
    def build(
        cls, tasks: list[TaskResult], latency: LatencyStats, config: dict[str, Any]
    ) -> EvalReport:
        """Aggregate per-task results into a report."""
        n = sum(t.episodes for t in tasks)
        k = sum(t.successes for t in tasks)
        lo, hi = wilson_interval(k, n)
        lengths = [x for t in tasks for x in t.lengths]
        return cls(
            tasks=tasks,
            success_rate=float(np.mean([t.success_rate for t in tasks])) if tasks else 0.0,
            episodes=n,
            successes=k,
            ci_low=lo,
            ci_high=hi,
            mean_length=_mean(lengths) if lengths else 0.0,
            latency=latency,
            config=config,
        )

    def task(self, name: str) -> TaskResult:
        """The result of one task. Raises KeyError if it was not evaluated."""
        for t in self.tasks:
            if t.task == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (non-finite floats become ``None``)."""
        return _json_safe(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        """Inverse of :meth:`to_dict` (``None`` latencies become NaN)."""
        lat = {k: (math.nan if v is None else v) for k, v in d["latency"].items()}
        fields = {
            k: d[k]
            for k in (
                "success_rate",
                "episodes",
                "successes",
                "ci_low",
                "ci_high",
                "mean_length",
                "config",
            )
        }
        return cls(
            tasks=[TaskResult(**t) for t in d["tasks"]], latency=LatencyStats(**lat), **fields
        )

    def to_markdown(self) -> str:
        """A markdown summary: task | success | 95% CI | mean length, then latency."""
        lines = ["| task | success | 95% CI | mean length |", "|---|---|---|---|"]
        for t in self.tasks:
            lines.append(
                f"| {t.task} | {t.successes}/{t.episodes} ({100 * t.success_rate:.1f}%) | "
                f"[{100 * t.ci_low:.1f}, {100 * t.ci_high:.1f}]% | {t.mean_length:.1f} |"
            )
        lines.append(
            f"| **all** | {self.successes}/{self.episodes} (avg {100 * self.success_rate:.1f}%) | "
            f"[{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}]% | {self.mean_length:.1f} |"
        )
        lat = self.latency
        c = self.config
        latency_line = (
            f"act latency (client side, {lat.act_calls} calls): p50 {lat.p50_ms:.2f} ms, "
            f"p90 {lat.p90_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms; server total mean "
            f"{lat.server_total_ms_mean:.2f} ms; "
            f"prefix cache hit rate {100 * lat.cache_hit_rate:.1f}%"
        )
        config_line = (
            f"seeds {c.get('seed')} + [0, {c.get('num_episodes')}), num_steps requested "
            f"{c.get('num_steps_requested')} / reported {c.get('num_steps_reported')}, "
            f"n_action_steps {c.get('n_action_steps')}, "
            f"versions {sorted(c.get('model_versions', {}))}"
        )
        lines += ["", latency_line, "", config_line]
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``eval.json`` and ``eval.md`` into ``directory`` (created).

        Returns:
            ``{"json": path, "markdown": path}``.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        pj, pm = d / "eval.json", d / "eval.md"
        pj.write_text(self.to_json() + "\n")
        pm.write_text(self.to_markdown())
        return {"json": pj, "markdown": pm}
