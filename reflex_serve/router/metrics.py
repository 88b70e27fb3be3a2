"""Prometheus metrics of the router (served on the app's ``/metrics``).

    reflex_router_swaps_total{kind,outcome}            promote / rollback / follow (a
                                                       replica applying the store's
                                                       change); ok / failed
    reflex_router_swap_failures_total{stage}           gates, check, load, warm, store
    reflex_router_rollbacks_total{signal}              automatic (errors, latency_p99,
                                                       action_limits, divergence,
                                                       episode_success) or operator
    reflex_router_swap_seconds{stage}                  load, warm, switch (histogram)
    reflex_router_breach_to_rollback_seconds           evidence complete -> old version
                                                       serving (histogram)
    reflex_router_version{role,version}                1 per loaded version: active,
                                                       previous, shadow, canary     } read at
    reflex_router_fraction{role}                       shadow / canary share          } scrape
    reflex_router_revision                             routing revision applied here } time
    reflex_router_sync_errors_total                    failed reads / applies of the store
    reflex_monitor_evidence{signal}                    samples since the swap         }
    reflex_monitor_window_remaining_seconds            0 when no monitor runs         }
    reflex_shadow_comparisons_total{mode}              mirrored calls compared
    reflex_shadow_divergence{mode}                     histogram of the divergence
    reflex_shadow_dropped_total                        mirrored calls dropped (queue full)

Every label value of the counters and histograms above exists from the start at 0 (their
label sets are fixed and small): ``increase()`` and ``rate()`` in alert rules see the
first rollback or mirrored call, which a series born at 1 would hide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reflex_serve.router.monitor import SIGNALS

if TYPE_CHECKING:
    from reflex_serve.router.router import VersionRouter

SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DIVERGENCE_BUCKETS = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1, 2, 5)
#: ``signal`` of reflex_router_rollbacks_total: the monitor's signals, or an operator.
ROLLBACK_SIGNALS = (*SIGNALS, "operator")
#: ``mode`` of mirrored calls: shadow traffic, or the previous version during a window.
MIRROR_MODES = ("shadow", "monitor")


class _RouterState(Collector):
    """Versions, fractions, revision and monitor evidence, read at scrape time."""

    def __init__(self, router: Callable[[], VersionRouter]) -> None:
        self._router = router

    def collect(self) -> Iterable[Metric]:
        router = self._router()
        routes = router.routes
        versions = GaugeMetricFamily("reflex_router_version", "Loaded versions by role.",
                                     labels=["role", "version"])
        fractions = GaugeMetricFamily("reflex_router_fraction",
                                      "Share of requests (shadow) or episodes (canary).",
                                      labels=["role"])
        for role in ("active", "previous", "shadow", "canary"):
            policy = getattr(routes, role)
            if policy is not None:
                versions.add_metric([role, policy.version], 1.0)
        fractions.add_metric(["shadow"], routes.shadow_fraction if routes.shadow else 0.0)
        fractions.add_metric(["canary"], routes.canary_fraction if routes.canary else 0.0)
        yield versions
        yield fractions
        yield GaugeMetricFamily("reflex_router_revision", "Routing revision applied here.",
                                value=router.revision)
        yield CounterMetricFamily("reflex_shadow_dropped", "Mirrored calls dropped (queue full).",
                                  value=router.mirror.dropped)
        evidence = GaugeMetricFamily("reflex_monitor_evidence",
                                     "Samples of each signal since the swap.", labels=["signal"])
        monitor = router.monitor
        remaining = 0.0
        if monitor is not None:
            for signal in monitor.signals:
                evidence.add_metric([signal.name], float(signal.n))
            remaining = max(0.0, (monitor.until - datetime.now(UTC)).total_seconds())
        yield evidence
        yield GaugeMetricFamily("reflex_monitor_window_remaining_seconds",
                                "Seconds left in the post-swap window.", value=remaining)


class RouterMetrics:
    """The router's counters and histograms, in its own registry (forwarded to the
    app's registry by :meth:`export`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.swaps = Counter("reflex_router_swaps", "Swaps by kind and outcome.",
                             ["kind", "outcome"], registry=r)
        self.failures = Counter("reflex_router_swap_failures", "Failed swaps by stage.",
                                ["stage"], registry=r)
        self.rollbacks = Counter("reflex_router_rollbacks", "Rollbacks by signal.", ["signal"],
                                 registry=r)
        self.swap_seconds = Histogram("reflex_router_swap_seconds", "Swap stages.", ["stage"],
                                      buckets=SECONDS_BUCKETS, registry=r)
        self.breach_to_rollback = Histogram(
            "reflex_router_breach_to_rollback_seconds",
            "From the evidence of a breach to the previous version serving.",
            buckets=SECONDS_BUCKETS, registry=r)
        self.sync_errors = Counter("reflex_router_sync_errors", "Failed store syncs.",
                                   registry=r)
        self.comparisons = Counter("reflex_shadow_comparisons", "Mirrored calls compared.",
                                   ["mode"], registry=r)
        self.divergence = Histogram("reflex_shadow_divergence",
                                    "Divergence of mirrored calls (action std units).",
                                    ["mode"], buckets=DIVERGENCE_BUCKETS, registry=r)
        for kind in ("promote", "rollback", "follow"):
            for outcome in ("ok", "failed"):
                self.swaps.labels(kind, outcome)
        for stage in ("gates", "check", "load", "warm", "store"):
            self.failures.labels(stage)
        for signal in ROLLBACK_SIGNALS:
            self.rollbacks.labels(signal)
        for mode in MIRROR_MODES:
            self.comparisons.labels(mode)
            self.divergence.labels(mode)

    def bind(self, router: VersionRouter) -> None:
        """Add the scrape-time gauges of ``router``."""
        self.registry.register(_RouterState(lambda: router))

    def export(self, registry: CollectorRegistry) -> None:
        """Serve these metrics from ``registry`` (the app's)."""
        own = self.registry

        class _Forward(Collector):
            def collect(self) -> Iterable[Metric]:
                return own.collect()

        registry.register(_Forward())
