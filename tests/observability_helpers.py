"""What the operator's files (docker/) ask of the server's ``/metrics``, in one place.

The metric names that the alert rules and the Grafana dashboard use are not listed by
hand: they are read from ``docker/prometheus/alerts.yml`` and the dashboard JSON, whose
PromQL is parsed with ``promql-parser`` (the Rust ``promql-parser`` crate: the grammar of
Prometheus, so ``sum by (le)``, ``on()``, function names, label names and string
literals are never taken for metrics, which a regular expression over identifiers gets
wrong). The tests compare that set with what a running server exports.

``DISTILL_METRICS`` are the names of the distill loop (``reflex_serve.loop``): a server
exports them when it runs the loop (``--distill-schedule``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
ALERTS_TEST = DOCKER / "prometheus" / "alerts_test.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "reflex.json"

#: Series the Prometheus server writes itself for every target (not the server's).
PROMETHEUS_OWN = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped",
     "scrape_samples_post_metric_relabeling", "scrape_series_added"}
)

#: The distill loop's metrics (contract of ``reflex_serve.loop``), as sample names.
DISTILL_METRICS = frozenset(
    {"reflex_distill_runs_total", "reflex_distill_run_duration_seconds_count",
     "reflex_distill_run_duration_seconds_sum", "reflex_distill_last_run_timestamp_seconds",
     "reflex_distill_next_run_timestamp_seconds", "reflex_distill_running"}
)

#: Grafana's variables, replaced by values that parse before the PromQL is read.
_GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${version:regex}": ".*",
    "$version": ".*",
}
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<query>.+),\s*)?(?P<label>\w+)\)$")


def sample_names(exposition: str) -> set[str]:
    """Every sample name in a Prometheus text exposition: the names PromQL can select
    (``x_total`` of a counter, ``x_bucket`` / ``x_count`` / ``x_sum`` of a histogram,
    ``x_info`` of an info metric), read with prometheus_client's parser."""
    return {s.name for fam in text_string_to_metric_families(exposition) for s in fam.samples}


def samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name``."""
    return [(s.labels, s.value) for fam in text_string_to_metric_families(exposition)
            for s in fam.samples if s.name == name]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Raises:
        ValueError: ``expr`` does not parse, or selects series without naming a metric.
    """
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def grafana_promql(expr: str) -> str | None:
    """A dashboard query as plain PromQL (Grafana variables replaced); for a
    ``label_values(QUERY, LABEL)`` variable query, QUERY (None when it has none)."""
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    match = _LABEL_VALUES.match(expr.strip())
    if match:
        return match["query"]
    return expr


def rule_exprs(path: Path = ALERTS) -> dict[str, str]:
    """Alert or record name -> PromQL of every rule in a Prometheus rules file."""
    doc = yaml.safe_load(path.read_text())
    return {rule.get("alert") or rule["record"]: rule["expr"]
            for group in doc["groups"] for rule in group["rules"]}


def dashboard_exprs(path: Path = DASHBOARD) -> dict[str, str]:
    """``panel title / refId`` (``annotation NAME``, ``variable NAME``) -> PromQL of every
    query of the dashboard."""
    dash = json.loads(path.read_text())
    out: dict[str, str] = {}

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dash["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out[f"{panel['title']} / {target.get('refId', 'A')}"] = target["expr"]
    for note in dash.get("annotations", {}).get("list", []):
        if note.get("expr"):
            out[f"annotation {note['name']}"] = note["expr"]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and query:
            out[f"variable {var['name']}"] = query
    return out


def used_metric_names() -> dict[str, list[str]]:
    """Metric name -> where the rules and the dashboard use it (``alerts.yml: ALERT``,
    ``dashboard: PANEL / REF``)."""
    used: dict[str, list[str]] = defaultdict(list)
    for name, expr in rule_exprs().items():
        for metric in metric_names(expr):
            used[metric].append(f"alerts.yml: {name}")
    for where, expr in dashboard_exprs().items():
        promql = grafana_promql(expr)
        for metric in metric_names(promql) if promql else ():
            used[metric].append(f"dashboard: {where}")
    return dict(used)
