"""Prometheus metrics of one app, in the app's own :class:`CollectorRegistry`.

Each app owns a registry (never the process-global one), so several apps can live in
one process (tests, a shadow app) without clashing names.

Exported:

    reflex_act_requests_total{status,version,transport}   counter; status is the HTTP
        status code ("200", "422", ...); transport is http_json, http_msgpack or websocket
    reflex_act_latency_seconds{version}                    histogram of server time of
        successful calls (request received to response encoded), 1 ms .. 1 s buckets
    reflex_act_stage_seconds{version,stage}                histogram: prefix / expert / total
    reflex_prefix_cache_{hits,misses,evictions}_total      counters   } read from
    reflex_prefix_cache_{bytes,entries,max_bytes}           gauges     } policy.cache.stats()
    reflex_model_info{version,policy_kind,...}              1 per served version     } read at
    reflex_active_version_info{version,policy_kind,...}     1: the version on /act   } scrape
    reflex_ready                                            1 once warm-up is done   } time
    reflex_websocket_connections                            open websocket connections
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from reflex_serve.server.codec import is_msgpack

if TYPE_CHECKING:
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.runtime.types import ActResult

#: Latency buckets for 1-500 ms control loops (seconds).
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
)
NO_VERSION = "none"


def http_transport(content_type: str | None) -> str:
    """The ``transport`` label of an HTTP request: ``http_msgpack`` or ``http_json``."""
    return "http_msgpack" if is_msgpack(content_type) else "http_json"


class _PolicyCollector(Collector):
    """Reads model info and prefix-cache statistics at scrape time."""

    def __init__(
        self,
        policies: Callable[[], Iterable[Policy]],
        ready: Callable[[], bool],
        active: Callable[[], Policy | None] | None = None,
    ):
        self._policies = policies
        self._ready = ready
        self._active = active

    def collect(self) -> Iterable[Metric]:
        policies = list(self._policies())
        info = GaugeMetricFamily(
            "reflex_model_info",
            "Served model versions (value 1).",
            labels=[
                "version",
                "policy_kind",
                "num_steps",
                "chunk_size",
                "action_dim",
                "state_dim",
                "parent_version",
            ],
        )
        for p in policies:
            m = p.manifest
            info.add_metric(
                [
                    p.version,
                    m.policy_kind,
                    str(m.num_steps),
                    str(m.chunk_size),
                    str(m.action_dim),
                    str(m.state_dim),
                    m.parent_version or "",
                ],
                1.0,
            )
        yield info
        active = self._active() if self._active is not None else None
        if active is not None:
            m = active.manifest
            yield InfoMetricFamily(
                "reflex_active_version",
                "The version answering /act (value 1; changes on a swap or rollback).",
                value={
                    "version": active.version,
                    "policy_kind": m.policy_kind,
                    "num_steps": str(active.num_steps),
                    "parent_version": m.parent_version or "",
                },
            )
        yield GaugeMetricFamily(
            "reflex_ready", "1 once warm-up is done.", value=1.0 if self._ready() else 0.0
        )
        # Versions may share one cache (a student reuses its teacher's prefix): count once.
        caches = {id(p.cache): p.cache for p in policies if p.cache is not None}
        stats = [c.stats() for c in caches.values()]
        for name, attr, doc in (
            ("hits", "hits", "Prefix KV cache hits."),
            ("misses", "misses", "Prefix KV cache misses."),
            ("evictions", "evictions", "Prefix KV cache LRU evictions."),
        ):
            yield CounterMetricFamily(
                f"reflex_prefix_cache_{name}", doc, value=sum(getattr(s, attr) for s in stats)
            )
        for name, attr, doc in (
            ("bytes", "bytes", "Bytes held by the prefix KV cache."),
            ("entries", "entries", "Entries in the prefix KV cache."),
            ("max_bytes", "max_bytes", "Capacity of the prefix KV cache in bytes."),
        ):
            yield GaugeMetricFamily(
                f"reflex_prefix_cache_{name}", doc, value=sum(getattr(s, attr) for s in stats)
            )


class ServerMetrics:
    """The metrics of one app.

    Args:
        policies: returns the policies currently served (read at scrape time).
        ready: returns whether warm-up is done.
        active: returns the version answering /act (``reflex_active_version_info``);
            None: that metric is not exported.
    """

    def __init__(
        self,
        policies: Callable[[], Iterable[Policy]],
        ready: Callable[[], bool],
        active: Callable[[], Policy | None] | None = None,
    ):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "reflex_act_requests",
            "Policy calls by outcome.",
            ["status", "version", "transport"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "reflex_act_latency_seconds",
            "Server time of successful policy calls.",
            ["version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "reflex_act_stage_seconds",
            "Policy time by stage.",
            ["version", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.websockets = Gauge(
            "reflex_websocket_connections",
            "Open websocket connections.",
            registry=self.registry,
        )
        self.registry.register(_PolicyCollector(policies, ready, active))

    def observe_success(self, result: ActResult, transport: str, server_s: float) -> None:
        """Count one served chunk and record its latencies."""
        version = result.version
        self.requests.labels("200", version, transport).inc()
        self.latency.labels(version).observe(server_s)
        self.stages.labels(version, "prefix").observe(result.prefix_ms / 1e3)
        self.stages.labels(version, "expert").observe(result.expert_ms / 1e3)
        self.stages.labels(version, "total").observe(result.total_ms / 1e3)

    def observe_error(self, status: int, transport: str, version: str | None = None) -> None:
        """Count one failed call (``version`` is ``"none"`` if no policy was picked)."""
        self.requests.labels(str(status), version or NO_VERSION, transport).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
