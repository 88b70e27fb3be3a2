"""The versioning router's costs on the shipped teacher, on one `reflex serve --admin-key`.

    python bench/bench_router.py [--rounds 40] [--block 25] [--rate 30] [--promotes 12]
        [--breaches 5]

1. shadow: /act round trip with a shadow version mirroring 10% of the calls vs without
   a shadow. Blocks of ``--block`` calls alternate between the two (the order swapped
   every round); the shadow is set and ended through the admin API between blocks, so
   a mirrored call that runs late slows the calls of its own variant.
2. promote: a steady open-loop load (``--rate`` calls/s from two client threads) while
   ``--promotes`` warm-swaps go from version to version, each to one not loaded yet
   (load, warm-up, record, switch). Requests in flight during a swap (promote sent to
   promote answered) against all the others: p99 ratio and failed requests.
3. rollback: under the same load, promotes of candidates whose chunks leave the action
   limits; the breach -> rollback time from ``reflex_router_breach_to_rollback_seconds``
   and the promote -> rollback time from the swap rows.

The other versions are copies of the teacher with a rewritten manifest (a new digest):
twins (the same files and chunks) and breaching ones (``stats.json`` moves the action
mean by +3 where the limits are [-1.2, 1.2]: a wrong normalization). Each is registered
through the admin API with a gate run recorded in the store, as the router tests do:
twins passed every gate; breaching ones failed P1, overridden with an audited reason.
Calls are synthetic observations with a seed, screened so that the teacher's chunks
stay inside the action limits (the monitor's hard limit would otherwise roll back a
twin on the 1 chunk in ~400 that leaves them on such input).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import summary

from reflex_serve.assets import default_teacher
from reflex_serve.client import ReflexClient
from reflex_serve.export.manifest import STATS, read_manifest, write_manifest
from reflex_serve.export.parity import random_observations
from reflex_serve.runtime.policy import Policy
from reflex_serve.server import codec
from reflex_serve.server.runner import spawn_server

KEY = "bench-admin-key"


def variant(src: Path, dst: Path, tag: str, action_shift: float = 0.0) -> str:
    """A copy of ``src`` with a new digest (``tag`` in its provenance); its version."""
    shutil.copytree(src, dst)
    if action_shift:
        stats = json.loads((dst / STATS).read_text())
        stats["action"]["mean"] = [m + action_shift for m in stats["action"]["mean"]]
        (dst / STATS).write_text(json.dumps(stats))
    manifest = read_manifest(dst)
    manifest.provenance = {**manifest.provenance, "variant": tag}
    return write_manifest(dst, manifest).version


def record_gates(store, candidate: Path, reference: Path, fail: str | None = None) -> None:
    """A gate run of ``candidate`` in the store: every gate passed, or ``fail`` failed
    and overridden (a performance gate)."""
    from reflex_serve.gates.audit import override, persist
    from reflex_serve.gates.results import FAIL, GATES, PASS, GateReport, GateResult

    cand, ref = read_manifest(candidate), read_manifest(reference)
    results = [GateResult.make(g.id, "<=", 1.0, 0.5, 100, FAIL if g.id == fail else PASS,
                               "recorded by bench/bench_router.py") for g in GATES]
    now = datetime.now(UTC).isoformat()
    persist(store, GateReport(uuid.uuid4().hex, {"digest": cand.digest, "version": cand.version},
                              {"digest": ref.digest, "version": ref.version}, now, now, {}, {},
                              results, actor="bench"), cand.to_dict())
    if fail is not None:
        override(store, cand.version, fail, "bench", "the post-swap monitor is what is measured")


def admin(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    r = httpx.request(method, url + path, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=120, **kwargs)
    if r.status_code >= 300:
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
    return r


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Load:
    """``threads`` clients posting /act at ``rate`` calls/s in all, each on its own
    schedule (a late call is sent at once, without catching up). ``calls``: (sent,
    answered) in perf_counter seconds, status, version header, error."""

    def __init__(self, url: str, bodies: list[bytes], rate: float, threads: int = 2) -> None:
        self.url, self.bodies, self.period = url, bodies, threads / rate
        self.calls: list[tuple[float, float, int, str | None, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k, threads), daemon=True)
                         for k in range(threads)]

    def _run(self, k: int, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            due, i = time.perf_counter() + self.period * k / n, k
            while not self._stop.is_set():
                time.sleep(max(0.0, due - time.perf_counter()))
                t0 = time.perf_counter()
                try:
                    r = http.post("/act", content=self.bodies[i % len(self.bodies)],
                                  headers={"Content-Type": "application/msgpack"})
                    call = (r.status_code, r.headers.get("x-reflex-model-version"), None)
                except httpx.HTTPError as exc:
                    call = (0, None, repr(exc))
                self.calls.append((t0, time.perf_counter(), *call))
                due, i = max(due + self.period, time.perf_counter()), i + n

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def screened_calls(policy: Policy, n: int) -> list[tuple[object, int]]:
    """``n`` (synthetic observation, seed) pairs on which the teacher's chunk stays 0.05
    inside the action limits: a twin (the same chunks) then never breaches them, as it
    would now and then on synthetic input against a clean baseline of a few calls."""
    from reflex_serve.router.stats import action_limits

    limits, out = action_limits(policy), []
    for seed, o in enumerate(random_observations(policy, 4 * n)):
        a = policy.act(o, seed=seed).actions
        if np.all((a > limits.low + 0.05) & (a < limits.high - 0.05)):
            out.append((o, seed))
    return out[:n]


def bench_shadow(url: str, calls, shadow: str, rounds: int, block: int) -> None:
    client = ReflexClient(url)
    rtt: dict[str, list[float]] = {"no shadow": [], "shadow 10%": []}
    server: dict[str, list[float]] = {"no shadow": [], "shadow 10%": []}
    i, on = 0, False

    def set_shadow(fraction: float) -> None:
        admin(url, "POST", f"/admin/versions/{shadow}/shadow",
              json={"fraction": fraction, "actor": "bench"})
        time.sleep(0.1)  # mirrored calls of the previous block finish

    for r in range(rounds + 1):  # round 0: warm-up, not counted
        for name in (("no shadow", "shadow 10%") if r % 2 else ("shadow 10%", "no shadow")):
            if on != (name == "shadow 10%"):
                on = not on
                set_shadow(0.1 if on else 0.0)
            for _ in range(block):
                t0 = time.perf_counter()
                o, seed = calls[i % len(calls)]
                res = client.act(o, seed=seed)
                if r:
                    rtt[name].append((time.perf_counter() - t0) * 1e3)
                    server[name].append(res.total_ms)
                i += 1
    if on:
        set_shadow(0.0)
    client.close()
    compared = metric(url, 'reflex_shadow_comparisons_total{mode="shadow"}')
    print(f"1. shadow mirroring: {rounds} rounds of {block} calls per variant, {compared:.0f} "
          f"mirrored calls compared (warm-up included)\n\nclient round trip:")
    t = {k: np.asarray(v) for k, v in rtt.items()}
    print(summary(t, "no shadow"))
    print("\npolicy time in the server (total_ms):")
    print(summary({k: np.asarray(v) for k, v in server.items()}, "no shadow"))
    p50 = [float(np.percentile(t[k], 50)) for k in ("shadow 10%", "no shadow")]
    print(f"\n/act p50 with shadow 10% / without: {p50[0] / p50[1]:.3f} (goal <= 1.1)\n")


def bench_promote(url: str, bodies, rate: float, twins: list[str]) -> None:
    windows, figures = [], []
    with Load(url, bodies, rate) as load:
        time.sleep(3.0)
        for version in twins:
            t0 = time.perf_counter()
            swap = admin(url, "POST", f"/admin/versions/{version}/promote",
                         json={"actor": "bench", "reason": "warm-swap benchmark"}).json()
            windows.append((t0, time.perf_counter()))
            figures.append(swap["figures"])
            time.sleep(2.0)
    during, steady = [], []
    for sent, answered, *_ in load.calls:
        inside = any(sent < end and answered > start for start, end in windows)
        (during if inside else steady).append((answered - sent) * 1e3)
    failed = [c for c in load.calls if c[2] != 200]
    t = {"steady state": np.asarray(steady), "in flight during a swap": np.asarray(during)}
    print(f"2. promote under load: {len(twins)} warm-swaps, {rate:g} calls/s, {len(load.calls)} "
          f"calls, {len(failed)} failed\n")
    print(summary(t, "steady state"))
    p99 = [float(np.percentile(t[k], 99)) for k in t]
    print(f"\n/act p99 during a swap / steady: {p99[1] / p99[0]:.3f} (goal <= 2); "
          f"calls during swaps: {len(during)}; failed: {len(failed)} (must be 0)")
    swap_ms = [(e - s) * 1e3 for s, e in windows]
    print("swap (promote call) ms: " + ", ".join(f"{x:.0f}" for x in swap_ms) + "; load ms: "
          + ", ".join(f"{f['load_ms']:.0f}" for f in figures) + "; warm-up ms: "
          + ", ".join(f"{f['warm_ms']:.0f}" for f in figures))
    rollbacks = [s for s in admin(url, "GET", "/admin/swaps?limit=100").json()
                 if s["kind"] == "rollback"]
    print(f"rollbacks by the monitor during the promotes: {len(rollbacks)} "
          f"{[r['signal'] for r in rollbacks]}; first failures: {failed[:3]}\n")


def bench_rollback(url: str, bodies, rate: float, wild: list[str]) -> None:
    rows = []
    with Load(url, bodies, rate) as load:
        time.sleep(1.0)
        for version in wild:
            before = (metric(url, "reflex_router_breach_to_rollback_seconds_sum"),
                      metric(url, "reflex_router_breach_to_rollback_seconds_count"))
            promote = admin(url, "POST", f"/admin/versions/{version}/promote",
                            json={"actor": "bench", "reason": "breach benchmark"}).json()
            deadline, back = time.monotonic() + 20, None
            while back is None and time.monotonic() < deadline:
                time.sleep(0.05)
                back = next((s for s in admin(url, "GET", "/admin/swaps").json()
                             if s["kind"] == "rollback" and s["from_version"] == version), None)
            if back is None:
                raise RuntimeError(f"{version} was not rolled back within 20 s")
            s = metric(url, "reflex_router_breach_to_rollback_seconds_sum") - before[0]
            n = metric(url, "reflex_router_breach_to_rollback_seconds_count") - before[1]
            promoted, rolled_back = (datetime.fromisoformat(x["started_at"]) for x in (promote, back))
            rows.append((version, back["signal"], back["figures"].get("n"), s * 1e3 / max(n, 1),
                         (rolled_back - promoted).total_seconds() * 1e3))
            time.sleep(0.5)
    served = {v: sum(c[3] == v for c in load.calls) for v in wild}
    failed = sum(c[2] != 200 for c in load.calls)
    print(f"3. breach -> rollback: {len(wild)} promotes of versions outside the action limits, "
          f"{rate:g} calls/s, {failed} failed calls\n")
    print(f"{'version':<14} {'signal':<14} {'chunks':>6} {'breach->rollback ms':>20} "
          f"{'promote->rollback ms':>21} {'calls served':>12}")
    for version, signal, n, b2r, p2r in rows:
        print(f"{version:<14} {signal:<14} {n!s:>6} {b2r:20.2f} {p2r:21.1f} {served[version]:12d}")
    b2r = [r[3] for r in rows]
    print(f"\nbreach -> rollback (previous version serving): median {np.median(b2r):.2f} ms, "
          f"max {max(b2r):.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40, help="shadow: rounds of two blocks")
    ap.add_argument("--block", type=int, default=25, help="shadow: calls per block")
    ap.add_argument("--rate", type=float, default=30.0, help="calls/s of the load")
    ap.add_argument("--promotes", type=int, default=12)
    ap.add_argument("--breaches", type=int, default=5)
    args = ap.parse_args()
    from reflex_serve.storage.store import Store

    teacher = default_teacher()
    policy = Policy(teacher)
    calls = screened_calls(policy, 64)
    bodies = [codec.packb({"images": o.images, "state": o.state, "instruction": o.instruction,
                           "seed": seed}) for o, seed in calls]
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        root = Path(tmp)
        twins = [variant(teacher, root / f"twin-{k}", f"twin-{k}") for k in range(args.promotes)]
        wild = [variant(teacher, root / f"wild-{k}", f"wild-{k}", action_shift=3.0)
                for k in range(args.breaches)]
        store_url = f"sqlite:///{root / 'store.sqlite'}"
        proc, url = spawn_server(teacher, "--cache-mb", "0", "--admin-key", KEY, "--store",
                                 store_url, "--monitor-window", "30s")
        log: list[str] = []  # the server's stderr, read so that its pipe never fills
        threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
        try:
            store = Store.open(store_url)
            for path in [*root.glob("twin-*"), *root.glob("wild-*")]:
                admin(url, "POST", "/admin/versions", json={"path": str(path), "actor": "bench"})
                record_gates(store, path, teacher, fail="P1" if path.name.startswith("wild") else None)
            store.close()
            print(f"teacher {policy.version} ({policy.num_steps} Euler steps), server {url}, "
                  f"prefix cache off, monitor window 30 s\n")
            bench_shadow(url, calls, twins[0], args.rounds, args.block)
            bench_promote(url, bodies, args.rate, twins)
            bench_rollback(url, bodies, args.rate, wild)
        except Exception:
            print("server log (tail):", "".join(log[-20:]), file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
