"""Builders for the router tests: export variants, recorded gate runs, a loopback load.

Variants copy a real export and change only what a test needs, then rewrite the
manifest (so the digest, hence the version, is new):

- ``tag``: a provenance note only: the same network, the same chunks (a healthy twin);
- ``action_shift``: the action mean of ``stats.json`` moved, so every chunk moves by it
  (with explicit ``action_limits`` a large shift puts every chunk outside them);
- ``break_expert``: expert.onnx replaced by junk bytes (a version that cannot load).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import httpx
import numpy as np

from reflex_serve.export.manifest import EXPERT_ONNX, STATS, read_manifest, write_manifest
from reflex_serve.server import codec

WIDE_LIMITS = {"low": [-50.0] * 4, "high": [50.0] * 4}
MSGPACK = {"Content-Type": "application/msgpack"}
ADMIN_KEY = "admin-secret"


def variant(src: Path, dst: Path, *, tag: str, action_shift: float = 0.0,
            action_limits: dict | None = None, break_expert: bool = False) -> Path:
    """A copy of the export ``src`` at ``dst`` with a new digest (module docstring)."""
    shutil.copytree(src, dst)
    if action_shift:
        stats = json.loads((dst / STATS).read_text())
        stats["action"]["mean"] = [m + action_shift for m in stats["action"]["mean"]]
        (dst / STATS).write_text(json.dumps(stats))
    if break_expert:
        (dst / EXPERT_ONNX).write_bytes(b"not an onnx graph")
    manifest = read_manifest(dst)
    manifest.provenance = {**manifest.provenance, "variant": tag}
    if action_limits is not None:
        manifest.action_limits = action_limits
    write_manifest(dst, manifest)
    return dst


def record_gates(store, candidate: Path, reference: Path, *, fail: str | None = None,
                 override: bool = False) -> str:
    """Persist a gate run of ``candidate`` in which every gate passed, or ``fail`` (a gate
    id) failed, overridden by an operator when ``override``; returns the version."""
    from reflex_serve.gates.audit import override as override_gate
    from reflex_serve.gates.audit import persist
    from reflex_serve.gates.results import FAIL, GATES, PASS, GateReport, GateResult

    cand, ref = read_manifest(candidate), read_manifest(reference)
    results = [GateResult.make(g.id, "<=", 1.0, 0.5, 100, FAIL if g.id == fail else PASS,
                               "recorded by the router tests") for g in GATES]
    now = datetime.now(UTC).isoformat()
    report = GateReport(
        run_id=uuid.uuid4().hex, candidate={"digest": cand.digest, "version": cand.version},
        reference={"digest": ref.digest, "version": ref.version}, started_at=now,
        finished_at=now, evidence={}, config={}, results=results, actor="tests")
    persist(store, report, cand.to_dict())
    if fail is not None and override:
        override_gate(store, cand.version, fail, "ops-on-call", "shipping the fix tonight")
    return cand.version


def observation(i: int = 0) -> dict:
    rng = np.random.default_rng(i)
    return {"images": {"corner2": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
            "state": rng.standard_normal(39).astype(np.float32), "instruction": "reach"}


def act_body(i: int = 0, episode_id: str | None = None, step: int | None = None) -> bytes:
    body = observation(i % 8)
    if episode_id is not None:
        body["episode_id"] = episode_id
    if step is not None:
        body["step"] = step
    return codec.packb(body)


def admin(url: str, method: str, path: str, key: str = ADMIN_KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, url + path, headers=headers, timeout=60, **kwargs)


class Load:
    """Clients posting /act in a loop until stopped; every answer is kept.

    ``results``: (status, version from the header, version from the body, error text)
    """

    def __init__(self, url: str, clients: int = 2, episodes: bool = False) -> None:
        self.url, self.clients, self.episodes = url, clients, episodes
        self.results: list[tuple[int, str | None, str | None, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True)
                         for k in range(clients)]

    def _run(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = 0
            while not self._stop.is_set():
                episode = f"load-{k}-{i // 10}" if self.episodes else None
                try:
                    r = http.post("/act", content=act_body(i, episode, i % 10), headers=MSGPACK)
                    body = codec.unpackb(r.content) if r.status_code == 200 else {}
                    self.results.append((r.status_code, r.headers.get("x-reflex-model-version"),
                                         body.get("model_version"), None))
                except httpx.HTTPError as exc:
                    self.results.append((0, None, None, repr(exc)))
                i += 1

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value; that value, or raise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def fast_config(**sections):
    """Router settings for tests: a short window, quick wake-ups and syncs; latency
    judged only on gross slowdowns (the test machine is shared: its load moves p99)."""
    from reflex_serve.router.config import load_router_config

    defaults = {"monitor": {"window_s": 60.0, "check_interval_s": 0.1},
                "sync": {"interval_s": 0.2}, "latency": {"min_increase_ms": 500.0},
                "promote": {"logged_observations": 8}}
    for name, values in sections.items():
        defaults[name] = {**defaults.get(name, {}), **values}
    return load_router_config(**defaults)


@contextmanager
def router_server(teacher: Path, store_url: str, *, config=None, collect: bool = False,
                  admin_key: str | None = ADMIN_KEY, api_key: str | None = None) -> Iterator:
    """A real server on loopback with a router over ``store_url``, serving ``teacher``
    (or the store's active version). Yields (server, controller, store)."""
    from reflex_serve.router import open_router
    from reflex_serve.runtime.cache import PrefixCache
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.server.app import create_app
    from reflex_serve.server.runner import BackgroundServer
    from reflex_serve.server.settings import ServerSettings
    from reflex_serve.storage.collector import CollectOptions, DataCollector
    from reflex_serve.storage.store import Store
    from reflex_serve.storage.writer import WriterConfig

    store = Store.open(store_url)
    cache = PrefixCache(32 << 20)
    policy = Policy(teacher, cache=cache)
    controller = open_router(policy, store, config or fast_config(), cache=cache)
    collector = None
    if collect:
        collector = DataCollector(store, CollectOptions(writer=WriterConfig(flush_interval_s=0.05)))
    settings = ServerSettings(admin_key=admin_key, api_key=api_key, warmup_iters=1)
    app = create_app(policy, settings, router=controller, collector=collector)
    try:
        with BackgroundServer(app) as server:
            yield server, controller, store
    finally:
        store.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
