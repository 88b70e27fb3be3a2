"""The post-swap monitor: the new active version against the pre-swap baseline.

Five signals (docs/router.md has the rules and their defaults):

    errors            5xx share of the new version's /act calls      exact binomial test
                      against the baseline's upper confidence bound, capped by a ceiling
    latency_p99       server time above max(ratio x p99, p99 + d)    exact binomial test
    action_limits     chunks with a value outside the action limits  as errors
    divergence        new vs previous on mirrored calls (same noise) confidence bound vs limit
    episode_success   reported outcomes of episodes it served alone  two-proportion z-test

Each signal is judged only at evidence milestones (m, 2m, 4m, ... samples, on exactly
that many), at significance alpha/2, alpha/4, ... (:mod:`.stats`), so a decision depends
on the evidence and never on how often the monitor thread wakes up (errors and
action_limits spend half of alpha on their baseline's confidence bound, and alpha/4,
alpha/8, ... on their looks). Counting is O(1) per call on the event loop; a milestone wakes the monitor
thread at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reflex_serve.router.config import RouterConfig
from reflex_serve.router.stats import (
    LATENCY_QUANTILE,
    Baseline,
    Limits,
    binom_sf,
    clopper_pearson_upper,
    look_alpha,
    one_sided_p_drop,
    wilson_lower,
    z_for,
)

SIGNALS = ("errors", "latency_p99", "action_limits", "divergence", "episode_success")


@dataclass(frozen=True)
class Breach:
    """A signal's verdict that the new version is worse, with the figures it rests on."""

    signal: str
    reason: str
    figures: dict[str, Any]
    evidence_at: float  # time.monotonic() when the evidence of the look was complete


class Signal:
    """Evidence of one signal and its looks (subclasses: the sufficient statistics and
    the rule)."""

    name = ""

    def __init__(self, first_look: int, alpha: float, disabled: str | None = None) -> None:
        self.alpha = alpha
        self.disabled = disabled
        self.n = 0
        self._next = first_look
        self._look = 0
        self._pending: deque[tuple[int, int, Any, float]] = deque()
        self._lock = threading.Lock()
        self.last: dict[str, Any] | None = None

    def _count(self, snapshot: Any) -> bool:
        """Count one sample (lock held); queue a look when a milestone is reached."""
        self.n += 1
        if self.n >= self._next and self.disabled is None:
            self._pending.append((self._look, self.n, snapshot, time.monotonic()))
            self._look += 1
            self._next *= 2
            return True
        return False

    def judge(self) -> Breach | None:
        """Judge the queued looks in order; the first breach, or None."""
        while True:
            with self._lock:
                if not self._pending:
                    return None
                look, n, snapshot, at = self._pending.popleft()
            alpha = look_alpha(self.alpha, look)
            breached, reason, figures = self.rule(n, snapshot, alpha)
            self.last = {"look": look, "n": n, "alpha": alpha, "breach": breached, **figures}
            if breached:
                return Breach(self.name, reason, self.last, at)

    def rule(self, n: int, snapshot: Any, alpha: float) -> tuple[bool, str, dict[str, Any]]:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        state = "disabled" if self.disabled else ("judged" if self.last else "collecting")
        return {"state": state, "evidence": self.n, "next_look_at": self._next,
                "disabled": self.disabled, "last_look": self.last}


class ComparedRateSignal(Signal):
    """A share of bad samples (5xx errors, chunks outside the action limits) against the
    previous version's share, with the evidence of both sides and an absolute ceiling.

    The baseline's share is known only from its ``base_n`` samples: half of ``alpha``
    goes to its exact upper confidence bound ``upper`` (Clopper-Pearson), the other half
    to the looks (alpha/4, alpha/8, ...). A look breaches when there are more bad samples
    than a rate of ``limit = min(max_rate, upper + max_increase)`` allows:
    P(Binomial(n, limit) >= k) < alpha_look. A version whose rate is at most both its
    baseline's + ``max_increase`` and ``max_rate`` is rolled back with probability
    <= alpha over the whole window. ``max_rate`` is the hard limit: it holds whatever the
    baseline (even an empty one), so a version whose every sample is bad is rolled back
    within a few samples (2 with the defaults), while a rare bad sample against a small
    clean baseline is not a breach.
    """

    def __init__(self, name: str, what: str, first_look: int, alpha: float, base_hits: int,
                 base_n: int, max_increase: float, max_rate: float) -> None:
        super().__init__(first_look, alpha / 2)  # the looks spend alpha/2 in all
        self.name, self.what = name, what
        self.base_hits, self.base_n = base_hits, base_n
        self.base_alpha = alpha / 2
        self.base_upper = clopper_pearson_upper(base_hits, base_n, self.base_alpha)
        self.max_increase, self.max_rate = max_increase, max_rate
        compared = min(1.0, self.base_upper + max_increase)
        self.limit = min(max_rate, compared)
        self.bound = "max_rate" if max_rate < compared else "baseline"
        self.hits = 0

    def add(self, hit: bool) -> bool:
        with self._lock:
            self.hits += bool(hit)
            return self._count(self.hits)

    def _figures(self) -> dict[str, Any]:
        return {"limit": self.limit, "bound": self.bound, "baseline_hits": self.base_hits,
                "baseline_n": self.base_n,
                "baseline_rate": self.base_hits / self.base_n if self.base_n else 0.0,
                "baseline_upper": self.base_upper, "baseline_alpha": self.base_alpha,
                "max_increase": self.max_increase, "max_rate": self.max_rate}

    def rule(self, n: int, hits: int, alpha: float) -> tuple[bool, str, dict[str, Any]]:
        p = binom_sf(hits, n, self.limit)
        figures = {"hits": hits, "rate": hits / n, "p_value": p,
                   "lower_bound": wilson_lower(hits, n, z_for(alpha)), **self._figures()}
        baseline = (f"baseline {self.base_hits} of {self.base_n}, at most "
                    f"{self.base_upper:.2%}")
        why = (f"the ceiling max_rate; {baseline}" if self.bound == "max_rate"
               else f"{baseline} + {self.max_increase:.2%}")
        reason = (f"{self.what}: {hits} of {n} ({hits / n:.2%}) against a limit of "
                  f"{self.limit:.2%} ({why}); p = {p:.2g} < {alpha:.2g}")
        return p < alpha, reason, figures

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self._figures()}


class LatencySignal(Signal):
    """Calls slower than ``threshold_ms``: breach when there are more of them than a p99
    at the threshold allows (P(Binomial(n, 1%) >= k) < alpha)."""

    name = "latency_p99"

    def __init__(self, first_look: int, alpha: float, threshold_ms: float | None,
                 baseline_p99: float | None, disabled: str | None) -> None:
        super().__init__(first_look, alpha, disabled)
        self.threshold_ms, self.baseline_p99 = threshold_ms, baseline_p99
        self.slow = 0

    def add(self, latency_ms: float) -> bool:
        if self.disabled:
            return False
        with self._lock:
            self.slow += latency_ms > self.threshold_ms
            return self._count(self.slow)

    def rule(self, n: int, slow: int, alpha: float) -> tuple[bool, str, dict[str, Any]]:
        tail = 1.0 - LATENCY_QUANTILE
        p = binom_sf(slow, n, tail)
        figures = {"slow": slow, "share_slow": slow / n, "threshold_ms": self.threshold_ms,
                   "baseline_p99_ms": self.baseline_p99, "p_value": p}
        reason = (f"p99 latency: {slow} of {n} calls ({slow / n:.2%}) above "
                  f"{self.threshold_ms:.1f} ms (baseline p99 {self.baseline_p99:.1f} ms); "
                  f"p = {p:.2g} < {alpha:.2g}")
        return p < alpha, reason, figures


class DivergenceSignal(Signal):
    """Mean divergence from the previous version: breach when its lower confidence bound
    exceeds ``limit``."""

    name = "divergence"

    def __init__(self, first_look: int, alpha: float, limit: float, disabled: str | None) -> None:
        super().__init__(first_look, alpha, disabled)
        self.limit = limit
        self._sum = self._sumsq = 0.0

    def add(self, divergence: float) -> bool:
        if self.disabled:
            return False
        d = divergence if math.isfinite(divergence) else 1e6
        with self._lock:
            self._sum += d
            self._sumsq += d * d
            return self._count((self._sum, self._sumsq))

    def rule(self, n: int, sums: tuple[float, float], alpha: float):
        total, squares = sums
        mean = total / n
        sd = math.sqrt(max(0.0, (squares - n * mean * mean) / (n - 1))) if n > 1 else 0.0
        lower = mean - z_for(alpha) * sd / math.sqrt(n)
        figures = {"mean": mean, "sd": sd, "lower_bound": lower, "limit": self.limit}
        reason = (f"divergence from the previous version: mean {mean:.3f} over {n} mirrored "
                  f"calls, lower bound {lower:.3f} > {self.limit:g} action std")
        return lower > self.limit, reason, figures


class OutcomeSignal(Signal):
    """Episode success of the new version against the previous one's before the swap."""

    name = "episode_success"

    def __init__(self, first_look: int, alpha: float, min_drop: float,
                 baseline: list[bool], disabled: str | None) -> None:
        super().__init__(first_look, alpha, disabled)
        self.min_drop = min_drop
        self.base_n, self.base_k = len(baseline), sum(baseline)

    def poll(self, fetch: Callable[[int], list[bool]]) -> None:
        """Queue every look the store's outcomes now reach (``fetch(n)``: the first n
        outcomes of the new version since the swap)."""
        if self.disabled:
            return
        outcomes = fetch(self._next)
        with self._lock:
            self.n = len(outcomes)
            while len(outcomes) >= self._next:
                first = outcomes[: self._next]
                self._pending.append((self._look, self._next, sum(first), time.monotonic()))
                self._look += 1
                self._next *= 2

    def rule(self, n: int, k: int, alpha: float) -> tuple[bool, str, dict[str, Any]]:
        base = self.base_k / self.base_n
        p = one_sided_p_drop(self.base_k, self.base_n, k, n)
        drop = base - k / n
        figures = {"successes": k, "rate": k / n, "baseline_rate": base,
                   "baseline_episodes": self.base_n, "drop": drop, "p_value": p,
                   "min_drop": self.min_drop}
        reason = (f"episode success {k}/{n} ({k / n:.0%}) vs {self.base_k}/{self.base_n} "
                  f"({base:.0%}) before the swap; p = {p:.2g} < {alpha:.2g}")
        return p < alpha and drop >= self.min_drop, reason, figures


class Monitor:
    """The signals of one swap, fed by the router's hooks and judged by its thread.

    Args:
        swap_id: the ``swaps`` row. new_version / previous_version: short ids.
        baseline: the previous version's last calls. limits: the action limits.
        config: the rules. started_at / until: the window (UTC).
        outcomes: ``(version, since, until, limit, newest_first) -> [success]``, the
            store's attributed outcomes (None: no store, the signal is disabled).
        mirrored: whether the previous version is loaded for mirrored calls.
        wake: called (on the event loop, O(1)) when a look is queued.
    """

    def __init__(self, swap_id: str, new_version: str, previous_version: str | None,
                 baseline: Baseline, limits: Limits, config: RouterConfig,
                 started_at: datetime, until: datetime,
                 outcomes: Callable[..., list[bool]] | None, mirrored: bool,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.swap_id, self.new_version, self.previous_version = swap_id, new_version, previous_version
        self.baseline, self.limits, self.config = baseline, limits, config
        self.started_at, self.until, self._wake = started_at, until, wake
        self._outcomes = outcomes
        alpha = config.monitor.alpha
        self.errors = ComparedRateSignal(
            "errors", "5xx errors", config.errors.min_requests, alpha, baseline.errors,
            baseline.requests, config.errors.max_increase, config.errors.max_rate)
        self.action_limits = ComparedRateSignal(
            "action_limits", f"chunks outside the action limits ({limits.source})",
            config.action_limits.min_chunks, alpha, baseline.violations, baseline.chunks,
            config.action_limits.max_increase, config.action_limits.max_rate)
        self.latency = self._latency_signal(baseline, config, alpha)
        self.divergence = DivergenceSignal(
            config.divergence.min_comparisons, alpha, config.divergence.max_divergence,
            None if mirrored and config.divergence.mirror_fraction > 0
            else "the previous version is not loaded or mirroring is off")
        self.outcomes = self._outcome_signal(config, alpha)

    @staticmethod
    def _latency_signal(baseline: Baseline, config: RouterConfig, alpha: float) -> LatencySignal:
        rule = config.latency
        p99 = baseline.latency_quantile()
        if len(baseline.latencies_ms) < rule.min_baseline or p99 is None:
            return LatencySignal(rule.min_requests, alpha, None, p99,
                                 f"no baseline: {len(baseline.latencies_ms)} calls of the "
                                 f"previous version < {rule.min_baseline}")
        threshold = max(rule.p99_ratio * p99, p99 + rule.min_increase_ms)
        return LatencySignal(rule.min_requests, alpha, threshold, p99, None)

    def _outcome_signal(self, config: RouterConfig, alpha: float) -> OutcomeSignal:
        rule = config.outcomes
        if self._outcomes is None or self.previous_version is None:
            return OutcomeSignal(rule.min_episodes, alpha, rule.min_drop, [],
                                 "no store or no previous version")
        since = self.started_at - timedelta(seconds=rule.baseline_window_s)
        base = self._outcomes(self.previous_version, since, self.started_at, rule.baseline_max,
                              True)
        disabled = None
        if len(base) < rule.min_episodes:
            disabled = (f"no baseline: {len(base)} episodes of {self.previous_version} with an "
                        f"outcome before the swap < {rule.min_episodes}")
        return OutcomeSignal(rule.min_episodes, alpha, rule.min_drop, base, disabled)

    @property
    def signals(self) -> tuple[Signal, ...]:
        return (self.errors, self.latency, self.action_limits, self.divergence, self.outcomes)

    # -- evidence (hooks: O(1)) -------------------------------------------------------------

    def observe_success(self, latency_ms: float, actions) -> None:
        looked = self.errors.add(False)
        looked |= self.latency.add(latency_ms)
        looked |= self.action_limits.add(self.limits.violated(actions))
        if looked:
            self._wake()

    def observe_error(self) -> None:
        if self.errors.add(True):
            self._wake()

    def observe_divergence(self, divergence: float) -> None:
        if self.divergence.add(divergence):
            self._wake()

    # -- decisions (the monitor thread) -----------------------------------------------------

    def evaluate(self) -> Breach | None:
        """Poll the store's outcomes, judge every queued look; the first breach or None."""
        if self._outcomes is not None and self.outcomes.disabled is None:
            self.outcomes.poll(lambda n: self._outcomes(self.new_version, self.started_at,
                                                        None, n, False))
        for signal in self.signals:
            breach = signal.judge()
            if breach is not None:
                return breach
        return None

    def expired(self, now: datetime) -> bool:
        return now >= self.until

    def status(self) -> dict[str, Any]:
        return {
            "swap_id": self.swap_id,
            "version": self.new_version,
            "previous_version": self.previous_version,
            "started_at": self.started_at.isoformat(),
            "until": self.until.isoformat(),
            "baseline": self.baseline.to_dict(),
            "limits": self.limits.to_dict(),
            "signals": {s.name: s.status() for s in self.signals},
        }
