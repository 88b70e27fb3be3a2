"""The statistics the monitor decides with, action limits, and a version's live counters.

    wilson_lower(k, n, z)            lower bound of a proportion (Wilson score interval)
    binom_sf(k, n, p)                P(X >= k) for X ~ Binomial(n, p), exact: the test of
                                     the rate rules ("more bad samples than a rate p
                                     allows"), conservative at every sample size
    binom_cdf(k, n, p)               P(X <= k) for X ~ Binomial(n, p), exact
    clopper_pearson_upper(k, n, a)   exact upper confidence bound of a proportion: the
                                     true rate is above it with probability <= a (the
                                     baseline of the action-limits rule)
    one_sided_p_drop(kb, nb, k, n)   two-proportion z-test: is the new rate below the base?
    look_alpha(alpha, k)             significance of look k: alpha / 2**(k + 1)
    action_limits(reference, candidate, margin) -> Limits
    VersionStats                     the last N calls of a version (the pre-swap baseline)

Looks: a signal with minimum evidence ``m`` is judged when its evidence reaches m, 2m,
4m, ... (on exactly that many samples), at significance alpha/2, alpha/4, ...; the sum
is alpha, so however long the window (and however often a thread wakes up), the chance
that a signal rolls back a version no worse than its baseline stays below alpha.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from reflex_serve.runtime.policy import Policy

_NORMAL = NormalDist()
#: The quantile the latency rule is about (p99: 1% of calls may exceed the threshold).
LATENCY_QUANTILE = 0.99


def z_for(alpha: float) -> float:
    """The one-sided normal quantile for significance ``alpha``."""
    return _NORMAL.inv_cdf(1.0 - alpha)


def look_alpha(alpha: float, look: int) -> float:
    """The significance spent at look ``look`` (0, 1, 2, ...): ``alpha / 2**(look + 1)``."""
    return alpha / 2.0 ** (look + 1)


def wilson_lower(k: int, n: int, z: float) -> float:
    """Lower end of the Wilson score interval of ``k`` successes in ``n`` (0 if n == 0)."""
    if n <= 0:
        return 0.0
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / denom)


def _log_pmf(i: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if k <= n * p:  # the upper tail is large: 1 - P(X < k), k terms
        return max(0.0, 1.0 - sum(math.exp(_log_pmf(i, n, p)) for i in range(k)))
    total, i = 0.0, k
    while i <= n:  # terms shrink beyond the mode: stop once they no longer count
        term = math.exp(_log_pmf(i, n, p))
        total += term
        if term < 1e-18 * total:
            break
        i += 1
    return min(1.0, total)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    if k >= n * p:  # the lower tail is large: 1 - P(X >= k + 1), a short upper tail
        return max(0.0, 1.0 - binom_sf(k + 1, n, p))
    return min(1.0, sum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """The exact one-sided upper confidence bound of a proportion, ``k`` of ``n``: the
    rate ``u`` with P(Binomial(n, u) <= k) = ``alpha``, so that P(true rate > u) <=
    alpha whatever the true rate. 1.0 without evidence (n == 0) or when k == n."""
    if n <= 0 or k >= n:
        return 1.0
    if k <= 0:
        return -math.expm1(math.log(alpha) / n)  # 1 - alpha ** (1 / n)
    lo, hi = k / n, 1.0  # P(X <= k) falls as the rate rises: bisect
    for _ in range(200):
        if hi - lo <= 1e-12 * hi:
            break
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi  # the upper end: never below the exact bound


def one_sided_p_drop(k_base: int, n_base: int, k_new: int, n_new: int) -> float:
    """p-value of "the new success rate is lower than the baseline's" (pooled z-test).

    1.0 when there is no variance to test against (both rates 0 or both 1).
    """
    if n_base <= 0 or n_new <= 0:
        return 1.0
    pooled = (k_base + k_new) / (n_base + n_new)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_base + 1 / n_new))
    if se == 0:
        return 1.0
    z = (k_base / n_base - k_new / n_new) / se
    return 1.0 - _NORMAL.cdf(z)


@dataclass(frozen=True)
class Limits:
    """Per-dimension action limits, float64 (A,), and where they came from."""

    low: np.ndarray
    high: np.ndarray
    source: str

    def violated(self, actions: np.ndarray) -> bool:
        """Whether a chunk (H, A) has a value outside the limits, or a NaN / Inf."""
        a = np.asarray(actions, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return bool(np.any(~np.isfinite(a) | (a < self.low) | (a > self.high)))

    def to_dict(self) -> dict:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "source": self.source}


def _explicit(policy: Policy) -> Limits | None:
    declared = policy.manifest.action_limits
    if not declared:
        return None
    low = declared.get("low", declared.get("min"))
    high = declared.get("high", declared.get("max"))
    if low is None or high is None:
        return None
    dim = policy.manifest.action_dim
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if low.shape != (dim,) or high.shape != (dim,):
        return None
    return Limits(low, high, f"action_limits of {policy.version}'s manifest")


def action_limits(reference: Policy, candidate: Policy | None = None, margin: float = 0.1) -> Limits:
    """The limits a candidate's chunks are held to (the gates' S2 convention): the
    reference's declared ``action_limits``, else the candidate's, else the reference's
    data range (``stats.json`` min / max) widened by ``margin`` x its width each side."""
    for policy in (reference, candidate):
        limits = _explicit(policy) if policy is not None else None
        if limits is not None:
            return limits
    low = reference.stats.action.min.astype(np.float64)
    high = reference.stats.action.max.astype(np.float64)
    pad = margin * np.maximum(high - low, 1e-6)
    return Limits(low - pad, high + pad,
                  f"{reference.version}'s data range widened by {margin:g} x width")


@dataclass(frozen=True)
class Baseline:
    """A version's last calls, frozen at a swap: the yardstick of the new version."""

    version: str
    requests: int
    errors: int
    chunks: int
    violations: int
    latencies_ms: np.ndarray

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def violation_rate(self) -> float:
        return self.violations / self.chunks if self.chunks else 0.0

    def latency_quantile(self, q: float = LATENCY_QUANTILE) -> float | None:
        if len(self.latencies_ms) == 0:
            return None
        return float(np.quantile(self.latencies_ms, q))

    def to_dict(self) -> dict:
        p99 = self.latency_quantile()
        return {"version": self.version, "requests": self.requests, "errors": self.errors,
                "chunks": self.chunks, "violations": self.violations,
                "error_rate": self.error_rate, "violation_rate": self.violation_rate,
                "latency_p99_ms": p99, "latencies": len(self.latencies_ms)}


class VersionStats:
    """The last ``size`` calls of one version: server latency, 5xx errors, chunks outside
    ``limits``. O(1) per call (hooks run on the event loop); thread-safe."""

    def __init__(self, version: str, limits: Limits, size: int) -> None:
        self.version = version
        self.limits = limits
        self._calls: deque[tuple[float, bool, bool]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add_success(self, latency_ms: float, actions: np.ndarray) -> bool:
        """Record a served chunk; returns whether it violated the limits."""
        violated = self.limits.violated(actions)
        with self._lock:
            self._calls.append((latency_ms, False, violated))
        return violated

    def add_error(self) -> None:
        with self._lock:
            self._calls.append((math.nan, True, False))

    def snapshot(self) -> Baseline:
        with self._lock:
            calls = list(self._calls)
        lat = np.array([c[0] for c in calls if not c[1]], dtype=np.float64)
        errors = sum(1 for c in calls if c[1])
        return Baseline(self.version, len(calls), errors, len(calls) - errors,
                        sum(1 for c in calls if c[2]), lat)
