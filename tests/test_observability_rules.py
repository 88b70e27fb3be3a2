"""The alert rules (docker/prometheus/alerts.yml): Prometheus's own ``promtool`` checks
them and runs their unit tests (alerts_test.yml), every alert has a case where it fires
and one where it stays quiet, the tests catch a broken threshold, and every alert tells
the paged operator where to read on (docs/operations.md)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from observability_helpers import (
    ALERTS,
    ALERTS_TEST,
    REPO,
    grafana_promql,
    metric_names,
    rule_exprs,
    used_metric_names,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package prometheus; scripts/install.sh)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], check=False, capture_output=True, text=True, timeout=60)


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
            if "alert" in r]


@needs_promtool
def test_promtool_check_rules_passes():
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in r.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    r = promtool("test", "rules", str(ALERTS_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_the_unit_tests_catch_a_budget_raised_past_the_slow_version(tmp_path):
    rules = ALERTS.read_text()
    assert rules.count("> 0.1\n") == 1
    (tmp_path / "alerts.yml").write_text(rules.replace("> 0.1\n", "> 0.3\n"))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    r = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    out = r.stdout + r.stderr
    assert r.returncode == 1
    assert "FAILED" in out and "alertname: ReflexActLatencySLO, time: 10m" in out


@needs_promtool
def test_promtool_rejects_a_rule_that_does_not_parse(tmp_path):
    bad = ALERTS.read_text().replace("up{job=\"reflex\"} == 0", "up{job=\"reflex\" == 0")
    (tmp_path / "alerts.yml").write_text(bad)
    r = promtool("check", "rules", str(tmp_path / "alerts.yml"))
    assert r.returncode == 1 and "ReflexServerDown" in r.stderr + r.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
             for case in test["alert_rule_test"]]
    names = [r["alert"] for r in alert_rules()]
    assert len(names) >= 10 and len(set(names)) == len(names)
    required = {"ReflexGateFailed", "ReflexRollback", "ReflexActLatencySLO",
                "ReflexCollectorDropping", "ReflexDistillRunFailed", "ReflexDistillRunsFailing"}
    assert required <= set(names)
    for name in names:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no case where it is quiet"
    assert {c["alertname"] for c in cases} <= set(names), "a test names an unknown alert"


def test_every_alert_tells_the_operator_what_happened_and_where_to_read_on():
    operations = (REPO / "docs" / "operations.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", operations, re.MULTILINE)}
    for rule in alert_rules():
        name, notes = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert notes["summary"] and len(notes["description"]) > 80, name
        assert "reflex " in notes["description"] or "docker compose" in notes["description"], (
            f"{name}: the description names no command to run")
        assert notes["runbook"] == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/operations.md has no section {name}"


def test_metric_names_reads_selectors_only():
    expr = ('histogram_quantile(0.99, sum by (version, le) (rate(a_bucket{le="0.1", '
            'version=~"v.*"}[5m]))) / on (version) group_left b_total > bool time() '
            'and label_replace(c, "x", "$1", "y", "(.*)") or vector(1)')
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert grafana_promql("label_values(reflex_act_latency_seconds_count, version)") == (
        "reflex_act_latency_seconds_count")
    assert metric_names(grafana_promql(
        "rate(x_total{version=~\"$version\"}[$__rate_interval])")) == {"x_total"}
    with pytest.raises(ValueError, match="without a metric name"):
        metric_names('{version="v1"}')


def test_the_rules_and_dashboard_use_the_metrics_an_operator_watches():
    used = used_metric_names()
    for name in ("reflex_active_version_info", "reflex_act_latency_seconds_bucket",
                 "reflex_gate_passed", "reflex_router_swaps_total",
                 "reflex_router_rollbacks_total", "reflex_collect_queue_depth",
                 "reflex_collect_dropped_total", "reflex_prefix_cache_hits_total",
                 "reflex_distill_runs_total", "reflex_distill_run_duration_seconds_sum",
                 "reflex_monitor_window_remaining_seconds", "reflex_shadow_divergence_bucket"):
        assert any(w.startswith("dashboard: ") for w in used.get(name, [])), name
    for name in ("reflex_gate_passed", "reflex_router_rollbacks_total",
                 "reflex_act_latency_seconds_bucket", "reflex_collect_dropped_total",
                 "reflex_distill_runs_total"):
        assert any(w.startswith("alerts.yml: ") for w in used[name]), name
