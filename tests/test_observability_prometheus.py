"""A real Prometheus scrapes a real ``reflex serve`` and finds every metric that the alert
rules and the Grafana dashboard use; every query of the dashboard and the rules names only
metrics the server exports, and Prometheus itself evaluates all of them without error.

The server (``reflex serve`` as a subprocess: the shipped teacher, a SQLite store, data
collection, the admin key, a distill schedule that is not due) has served /act calls,
promoted a variant of the teacher whose gate run is in the store (so the post-swap
monitor runs) and has one failed distill run in its store. Prometheus (the Debian
``prometheus`` binary, on a free loopback port, its TSDB under tmp_path) scrapes it every
second and evaluates docker/prometheus/alerts.yml. Both are killed at the end.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml
from observability_helpers import (
    ALERTS,
    DISTILL_METRICS,
    PROMETHEUS_OWN,
    REPO,
    dashboard_exprs,
    grafana_promql,
    rule_exprs,
    sample_names,
    used_metric_names,
)
from prometheus_client.parser import text_string_to_metric_families
from router_helpers import ADMIN_KEY, MSGPACK, act_body, admin, record_gates, variant

from reflex_serve.export.manifest import read_manifest
from reflex_serve.server.runner import spawn_server
from reflex_serve.storage.store import Store

PROMETHEUS = shutil.which("prometheus")
TEACHER = REPO / "reflex_serve" / "assets" / "teacher-metaworld"
NOT_DUE = "0 0 29 2 *"  # a cron schedule that fires on 29 February only
DEADLINE_S = 30.0

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus binary is not installed (Debian package prometheus; "
           "scripts/install.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def record_failed_distill_run(url: str) -> None:
    """One distill run that ended failed (a killed worker), through the loop's store API."""
    from reflex_serve.storage.distill_runs import claim_queued, fail_run, queue_manual

    store = Store.open(url)
    try:
        now = datetime.now(UTC)
        run_id, _ = queue_manual(store, now, stale_before=now - timedelta(hours=1), actor="tests")
        assert claim_queued(store, "tests", now) == run_id
        assert fail_run(store, run_id, "worker killed by the tests")
    finally:
        store.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(server URL, its /metrics text, Prometheus URL) once Prometheus has scraped."""
    tmp = tmp_path_factory.mktemp("observability-prometheus")
    store_url = f"sqlite:///{tmp / 'store.sqlite'}"
    Store.open(store_url).close()  # the schema
    record_failed_distill_run(store_url)
    candidate = variant(TEACHER, tmp / "candidate", tag="observability")
    args = ["--collect-data", "--store", store_url, "--admin-key", ADMIN_KEY,
            "--collect-flush-s", "0.1", "--distill-schedule", NOT_DUE,
            "--min-new-samples", "1000000"]
    procs = []
    try:
        server, url = spawn_server(TEACHER, *args, timeout_s=DEADLINE_S)
        procs.append(server)
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(6):
                assert http.post("/act", content=act_body(i), headers=MSGPACK).status_code == 200
            new = read_manifest(candidate).version
            r = admin(url, "POST", "/admin/versions", json={"path": str(candidate), "actor": "ci"})
            assert r.status_code == 201, r.text
            store = Store.open(store_url)
            try:
                record_gates(store, candidate, TEACHER)
            finally:
                store.close()
            r = admin(url, "POST", f"/admin/versions/{new}/promote", json={"actor": "ci"})
            assert r.status_code == 200, r.text
            for i in range(4):
                assert http.post("/act", content=act_body(i), headers=MSGPACK).status_code == 200
            metrics = http.get("/metrics").text

        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "reflex", "static_configs": [
                {"targets": [url.removeprefix("http://")]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{port}"
        wait_until_scraped(prom, prom_url, sample_names(metrics) & set(used_metric_names()))
        yield url, metrics, prom_url
    finally:
        for proc in reversed(procs):
            stop(proc)


def wait_until_scraped(prom: subprocess.Popen, prom_url: str, expected: set[str]) -> None:
    """Poll Prometheus until it holds series of every ``expected`` name (or fail)."""
    deadline = time.monotonic() + DEADLINE_S
    names: set[str] = set()
    while time.monotonic() < deadline:
        if prom.poll() is not None:
            raise RuntimeError(f"prometheus exited {prom.returncode}: {prom.stderr.read()}")
        try:
            names = set(query(prom_url, "/api/v1/label/__name__/values"))
        except httpx.HTTPError:
            names = set()
        if expected <= names:
            return
        time.sleep(0.25)
    raise AssertionError(f"Prometheus has no series of {sorted(expected - names)} after "
                         f"{DEADLINE_S} s")


def query(prom_url: str, path: str, **params) -> list | dict:
    r = httpx.get(prom_url + path, params=params, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def split_used() -> tuple[set[str], set[str]]:
    """(serving names, distill names) that the rules and the dashboard use (Prometheus's
    own series left out)."""
    used = set(used_metric_names()) - PROMETHEUS_OWN
    return used - DISTILL_METRICS, used & DISTILL_METRICS


def test_prometheus_holds_every_serving_metric_the_rules_and_dashboard_use(stack):
    _, _, prom_url = stack
    serving, _ = split_used()
    names = set(query(prom_url, "/api/v1/label/__name__/values"))
    assert serving - names == set()
    assert "up" in names and len(serving) >= 25
    (up,) = query(prom_url, "/api/v1/query", query='up{job="reflex"}')["result"]
    assert up["value"][1] == "1"
    (active,) = query(prom_url, "/api/v1/query", query="reflex_active_version_info")["result"]
    assert active["metric"]["version"] != read_manifest(TEACHER).version  # the promoted one


def test_prometheus_holds_the_distill_loop_metrics(stack):
    _, _, prom_url = stack
    _, distill = split_used()
    assert distill == DISTILL_METRICS
    assert distill - set(query(prom_url, "/api/v1/label/__name__/values")) == set()
    runs = query(prom_url, "/api/v1/query", query="reflex_distill_runs_total")["result"]
    assert {r["metric"]["result"]: r["value"][1] for r in runs} == {
        "succeeded": "0", "refused": "0", "failed": "1"}


def test_every_query_names_only_metrics_the_server_exports(stack):
    _, metrics, _ = stack
    exported = sample_names(metrics)
    missing = {name: where for name, where in used_metric_names().items()
               if name not in exported and name not in PROMETHEUS_OWN}
    assert missing == {}, f"not on the server's /metrics: {missing}"
    assert "reflex_act_latency_seconds_bucket" in exported  # names as PromQL sees them


def test_prometheus_evaluates_every_rule_and_dashboard_query(stack):
    _, _, prom_url = stack
    deadline = time.monotonic() + DEADLINE_S
    while True:  # a rule evaluated before the first scrape is not firing yet: wait for it
        groups = query(prom_url, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        fired = any(r["name"] == "ReflexDistillRunFailed" and r["state"] == "firing"
                    for r in rules)
        if (evaluated and fired) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert {r["name"] for r in rules} == set(rule_exprs())
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules
            if r["health"] != "ok"] == []
    firing = {r["name"] for r in rules if r["state"] == "firing"}
    assert "ReflexDistillRunFailed" in firing
    assert not firing & {"ReflexServerDown", "ReflexRollback", "ReflexCollectorDropping"}
    refused = {}
    for where, expr in dashboard_exprs().items():
        promql = grafana_promql(expr)
        if promql:
            body = httpx.get(prom_url + "/api/v1/query", params={"query": promql}).json()
            if body["status"] != "success":
                refused[where] = body.get("error")
    assert refused == {}, "Prometheus refuses these dashboard queries"


def test_the_metric_reference_documents_exactly_what_the_server_exports(stack):
    _, metrics, _ = stack
    exported = {f.name + ("_total" if f.type == "counter" else "")
                for f in text_string_to_metric_families(metrics)
                if f.name.startswith("reflex_") and not f.name.endswith("_created")}
    operations = (REPO / "docs" / "operations.md").read_text()
    reference = operations[operations.index("## Metric reference"):]
    documented = set(re.findall(r"^\| `(reflex_\w+)` \|", reference, re.MULTILINE))
    assert exported - documented == set(), "exported but not in docs/operations.md"
    assert documented - exported == set(), "in docs/operations.md but not exported"
