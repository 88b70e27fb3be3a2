"""Prometheus metrics of the loop, read from the store at scrape time.

    reflex_distill_runs_total{result}                  runs ended succeeded | refused | failed
    reflex_distill_run_duration_seconds{result}        summary (_count, _sum) of their durations
    reflex_distill_last_run_timestamp_seconds{result}  when the newest such run ended
    reflex_distill_next_run_timestamp_seconds          the schedule's next fire time
    reflex_distill_running                             1 while a run is running, else 0

Read from the store (not counted in process) so that a crashed worker, a restarted
server and every replica show the same figures. A failed read skips the loop's metrics
for that scrape and is logged. Registered by the app on ``/metrics`` of any server with
a store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from reflex_serve.storage.loop_models import RESULT_STATUSES

log = logging.getLogger(__name__)


class DistillCollector(Collector):
    """Collects the loop's metrics from ``store`` on every scrape (``schedule``: the
    schedule row's name)."""

    def __init__(self, store, schedule: str | None = "distill") -> None:
        self.store = store
        self.schedule = schedule

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading the store."""
        yield CounterMetricFamily("reflex_distill_runs", "", labels=["result"])
        yield SummaryMetricFamily("reflex_distill_run_duration_seconds", "", labels=["result"])
        yield GaugeMetricFamily("reflex_distill_last_run_timestamp_seconds", "",
                                labels=["result"])
        yield GaugeMetricFamily("reflex_distill_next_run_timestamp_seconds", "")
        yield GaugeMetricFamily("reflex_distill_running", "")

    def collect(self) -> Iterable[Metric]:
        from sqlalchemy.exc import SQLAlchemyError

        from reflex_serve.storage.distill_runs import run_metrics

        try:
            m = run_metrics(self.store, self.schedule)
        except SQLAlchemyError as exc:
            log.warning("distill metrics: cannot read the store: %s", exc)
            return
        total = CounterMetricFamily("reflex_distill_runs", "Distill runs ended, by result.",
                                    labels=["result"])
        duration = SummaryMetricFamily("reflex_distill_run_duration_seconds",
                                       "Distill run durations, by result.", labels=["result"])
        last = GaugeMetricFamily("reflex_distill_last_run_timestamp_seconds",
                                 "When the newest distill run with this result ended.",
                                 labels=["result"])
        for result in RESULT_STATUSES:
            r = m["results"][result]
            total.add_metric([result], r["count"])
            duration.add_metric([result], count_value=r["count"], sum_value=r["sum_s"])
            if r["last"] is not None:
                last.add_metric([result], r["last"].timestamp())
        yield from (total, duration, last)
        nxt = GaugeMetricFamily("reflex_distill_next_run_timestamp_seconds",
                                "When the distill schedule fires next.")
        if m["next_run_at"] is not None:
            nxt.add_metric([], m["next_run_at"].timestamp())
            yield nxt
        yield GaugeMetricFamily("reflex_distill_running", "1 while a distill run is running.",
                                value=1.0 if m["running"] else 0.0)
