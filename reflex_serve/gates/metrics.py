"""Prometheus metrics of gate results, read from the store at scrape time.

For the latest gate run of each version (the newest ``max_versions`` versions)::

    reflex_gate_passed{version,gate,kind}       1 passed or overridden, 0 otherwise
    reflex_gate_value{version,gate,kind}        the measured value (absent if none)
    reflex_gate_overridden{version,gate,kind}   1 when an accepted override applies
    reflex_gate_may_ship{version}               1 when the version may ship
    reflex_gate_run_timestamp_seconds{version}  when that run finished (Unix time)
    reflex_gate_scrape_errors_total             store reads that failed (the scrape goes on)

``reflex serve --collect-data`` registers :class:`GateCollector` on its ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .results import GATES_BY_ID, PASS

log = logging.getLogger(__name__)


class GateCollector(Collector):
    """Collects gate metrics from ``store`` on every scrape."""

    def __init__(self, store, max_versions: int = 20) -> None:
        self.store = store
        self.max_versions = max_versions
        self.errors = 0

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading the store (registration stays cheap)."""
        for name in (
            "reflex_gate_passed",
            "reflex_gate_value",
            "reflex_gate_overridden",
            "reflex_gate_may_ship",
            "reflex_gate_run_timestamp_seconds",
        ):
            yield GaugeMetricFamily(name, "")
        yield CounterMetricFamily("reflex_gate_scrape_errors", "")

    def collect(self) -> Iterable[Metric]:
        from sqlalchemy.exc import SQLAlchemyError

        from ..storage.gate_runs import latest_gate_runs
        from .audit import decide

        labels = ["version", "gate", "kind"]
        passed = GaugeMetricFamily(
            "reflex_gate_passed",
            "Latest gate result: 1 passed or overridden, 0 not.",
            labels=labels,
        )
        value = GaugeMetricFamily("reflex_gate_value", "Latest gate measurement.", labels=labels)
        overridden = GaugeMetricFamily(
            "reflex_gate_overridden", "1 when an accepted override applies.", labels=labels
        )
        ship = GaugeMetricFamily(
            "reflex_gate_may_ship",
            "1 when the version's latest gate run lets it ship.",
            labels=["version"],
        )
        stamp = GaugeMetricFamily(
            "reflex_gate_run_timestamp_seconds",
            "When the version's latest gate run finished.",
            labels=["version"],
        )
        try:
            runs = latest_gate_runs(self.store, self.max_versions)
        except SQLAlchemyError as exc:
            self.errors += 1
            log.warning("gate metrics: cannot read the store: %s", exc)
            runs = []
        for run in runs:
            ok, _, over = decide(run)
            v = run.candidate_version
            ship.add_metric([v], 1.0 if ok else 0.0)
            stamp.add_metric([v], run.finished_at.timestamp())
            for r in run.results:
                kind = GATES_BY_ID[r.gate].kind
                key = [v, r.gate, kind]
                passed.add_metric(key, 1.0 if r.verdict == PASS or r.gate in over else 0.0)
                overridden.add_metric(key, 1.0 if r.gate in over else 0.0)
                if r.value is not None:
                    value.add_metric(key, float(r.value))
        yield from (passed, value, overridden, ship, stamp)
        yield CounterMetricFamily(
            "reflex_gate_scrape_errors", "Failed store reads of gate metrics.", value=self.errors
        )
