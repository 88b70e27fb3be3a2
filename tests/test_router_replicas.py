"""`reflex serve --admin-key` processes on one PostgreSQL store: the store's active
version wins at start, a replica started inside a monitoring window monitors too, and
all converge within 5 s after a promote on one of them and after a rollback on another
(default sync interval, 1 s)."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from conftest import _reset_pg
from router_helpers import ADMIN_KEY, MSGPACK, WIDE_LIMITS, act_body, admin, record_gates, variant

from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.tiny import make_tiny_export
from reflex_serve.server.runner import spawn_server
from reflex_serve.storage.store import Store

CONVERGE_S = 5.0


def served_version(url: str) -> str:
    return httpx.get(url + "/health").json()["model_version"]


def converge(url: str, version: str) -> float:
    """Seconds until ``url`` serves ``version`` (fails after CONVERGE_S)."""
    start = time.monotonic()
    while served_version(url) != version:
        if time.monotonic() - start > CONVERGE_S:
            pytest.fail(f"{url} still serves {served_version(url)}, not {version}, "
                        f"{CONVERGE_S} s later")
        time.sleep(0.05)
    return time.monotonic() - start


def test_replicas_on_one_postgresql_store_converge_and_monitor_together(pg_database, tmp_path):
    _reset_pg(pg_database)
    base = make_tiny_export(tmp_path / "base")
    teacher = variant(base, tmp_path / "teacher", tag="teacher", action_limits=WIDE_LIMITS)
    student = variant(base, tmp_path / "student", tag="student", action_limits=WIDE_LIMITS)
    old, new = read_manifest(teacher).version, read_manifest(student).version
    args = ("--admin-key", ADMIN_KEY, "--store", pg_database)
    procs = []
    try:
        a, url_a = spawn_server(teacher, *args)
        procs.append(a)
        b, url_b = spawn_server(student, *args)  # started with another export...
        procs.append(b)
        assert served_version(url_b) == old  # ...it serves the store's active version
        assert admin(url_a, "POST", "/admin/versions",
                     json={"path": str(student), "actor": "ci"}).status_code == 201
        store = Store.open(pg_database)
        record_gates(store, student, teacher)
        store.close()
        r = admin(url_a, "POST", f"/admin/versions/{new}/promote", json={"actor": "ci"})
        assert r.status_code == 200, r.text
        assert served_version(url_a) == new
        took = converge(url_b, new)
        answer = httpx.post(url_b + "/act", content=act_body(0), headers=MSGPACK)
        assert answer.headers["x-reflex-model-version"] == new
        status_b = admin(url_b, "GET", "/admin/router").json()
        assert status_b["previous"] == old and status_b["monitor"]["version"] == new
        c, url_c = spawn_server(teacher, *args)  # a replica started inside the window...
        procs.append(c)
        status_c = admin(url_c, "GET", "/admin/router").json()
        assert (status_c["active"], status_c["previous"]) == (new, old)  # ...monitors too
        assert status_c["monitor"]["version"] == new
        r = admin(url_b, "POST", "/admin/rollback", json={"actor": "ci", "reason": "drill"})
        assert r.status_code == 200 and r.json()["to_version"] == old
        took_back = max(converge(url_a, old), converge(url_c, old))
        assert admin(url_a, "GET", "/admin/router").json()["monitor"] is None
        assert max(took, took_back) < CONVERGE_S
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
