"""`reflex serve --collect-data` as a real process: SIGTERM flushes every record, SIGKILL
loses at most the last flush interval and leaves the store readable (SQLite and PostgreSQL)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest

from reflex_serve.server import codec
from reflex_serve.server.runner import spawn_server
from reflex_serve.storage.models import Request
from reflex_serve.storage.store import Store

# Fixtures that run each test on SQLite and on PostgreSQL.

MSGPACK = {"Content-Type": "application/msgpack"}
BODY = codec.packb(
    {
        "images": {
            "corner2": np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        },
        "state": np.zeros(39, np.float32),
        "instruction": "reach",
        "episode_id": "ep-load",
    }
)


def start_server(export, store_url: str, *extra: str) -> tuple[subprocess.Popen, str]:
    return spawn_server(export, "--collect-data", "--store", store_url, *extra)


def load(url: str, threads: int, stop: threading.Event, limit: int | None = None):
    """Post /act from ``threads`` clients until ``stop`` (or ``limit`` requests in all).

    Returns a list of (request id, acknowledged at, time.monotonic()) filled as answers
    arrive, and a list of every request id sent.
    """
    acked: list[tuple[str, float]] = []
    sent: list[str] = []
    counter = iter(range(10**9))

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                i = next(counter)
                if limit is not None and i >= limit:
                    return
                rid = f"c{k}-{i}"
                sent.append(rid)
                try:
                    r = http.post("/act", content=BODY, headers={**MSGPACK, "X-Request-ID": rid})
                except httpx.TransportError:
                    return
                assert r.status_code == 200, r.text
                acked.append((rid, time.monotonic()))

    workers = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    return workers, acked, sent


def stored_ids(store_url: str) -> set[str]:
    store = Store.open(store_url)
    with store.session() as s:
        ids = set(s.scalars(s.query(Request.request_id).statement))
    store.close()
    return ids


@pytest.mark.timeout(180)
def test_sigterm_flushes_every_queued_record(tiny_export, store_url):
    # A 30 s flush interval: without the flush on SIGTERM nothing would be committed.
    proc, url = start_server(tiny_export, store_url, "--collect-flush-s", "30")
    try:
        stop = threading.Event()
        workers, acked, _sent = load(url, threads=4, stop=stop, limit=120)
        for w in workers:
            w.join(60)
        assert len(acked) == 120
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "reflex-serve: stopped" in out
    assert stored_ids(store_url) == {rid for rid, _ in acked}


@pytest.mark.timeout(180)
def test_sigkill_mid_load_loses_at_most_one_flush_interval(tiny_export, store_url):
    flush_s, margin_s = 1.0, 0.5
    proc, url = start_server(tiny_export, store_url, "--collect-flush-s", str(flush_s))
    stop = threading.Event()
    try:
        workers, acked, sent = load(url, threads=3, stop=stop)
        time.sleep(4.0)
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    for w in workers:
        w.join(15)
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ids = stored_ids(store_url)
    must_have = {rid for rid, t in acked if t < killed_at - flush_s - margin_s}
    assert len(must_have) > 20
    assert must_have <= ids, f"lost {len(must_have - ids)} records older than one flush interval"
    assert ids <= set(sent)
    lost = {rid for rid, _ in acked} - ids
    recent = {rid for rid, t in acked if t >= killed_at - flush_s - margin_s}
    assert lost <= recent


def test_serve_refuses_a_store_from_a_newer_release_before_listening(tiny_export, store_url):
    from sqlalchemy import text
    from typer.testing import CliRunner

    from reflex_serve.cli import app

    Store.open(store_url).close()
    store = Store.open(store_url)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    store.close()
    res = CliRunner().invoke(
        app,
        ["serve", str(tiny_export), "--port", "0", "--collect-data", "--store", store_url],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 2
    assert "schema revision '0099'" in res.output and "newer reflex-serve" in res.output


def test_store_options_need_collect_data(tiny_export, tmp_path):
    from typer.testing import CliRunner

    from reflex_serve.cli import app

    res = CliRunner().invoke(
        app, ["serve", str(tiny_export), "--data-dir", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 2 and "needs --collect-data" in res.output
