"""--collect-data: what logging every /act call costs, and how much load it absorbs.

    python bench/bench_collect.py [--export DIR] [--rounds 1500] [--seconds 60]
                                  [--clients 4] [--pg URL] [--note TEXT] [--write-docs]

1. Latency, collection on vs off: two `reflex serve` processes (same export, one with
   --collect-data into SQLite), one client alternating requests between them (bench/
   common.py `interleaved`), so machine noise hits both alike. Client-side round trip.
2. Sustained load: one collecting server at its maximum throughput (``--clients``
   closed-loop client threads) for ``--seconds``; then SIGTERM; rows in the store vs
   requests answered, drops from /metrics.
3. Where drops begin: the same load for 10 s against servers with small collect queues.
4. Writer capacity: records per second one StoreWriter commits (in-process, SQLite and,
   with --pg, PostgreSQL): the sustained rate beyond which a default queue drops.

Every request carries a distinct random 64x64 image (real camera frames never repeat),
so each record costs a PNG encode. ``--write-docs`` replaces the "Data collection"
section of docs/benchmarks.md with the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, summary

from reflex_serve.server import codec
from reflex_serve.server.runner import spawn_server
from reflex_serve.storage.models import Request
from reflex_serve.storage.records import FrameRecord
from reflex_serve.storage.store import Store
from reflex_serve.storage.writer import StoreWriter, WriterConfig

MSGPACK = {"Content-Type": "application/msgpack"}
DOCS = Path(__file__).parent.parent / "docs" / "benchmarks.md"
SECTION = "## Data collection"


def resolve_export(given: Path | None, tmp: Path) -> tuple[Path, str]:
    """The export to serve and a description of it."""
    if given is not None:
        return given, str(given)
    try:
        from reflex_serve.assets import default_teacher

        return default_teacher(), "the shipped MetaWorld teacher"
    except FileNotFoundError:
        from reflex_serve.export.tiny import make_tiny_export

        path = make_tiny_export(tmp / "tiny", width=128)
        return path, "an untrained width-128 export (make_tiny_export; no shipped teacher)"


def start_server(export: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`reflex serve` on a free loopback port, ready; returns the process and its URL."""
    return spawn_server(export, *extra)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def make_body(rng: np.random.Generator, episode: str, step: int) -> bytes:
    return codec.packb(
        {
            "images": {"corner2": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
            "state": rng.standard_normal(39).astype(np.float32),
            "instruction": "push the puck to the goal",
            "episode_id": episode,
            "step": step,
        }
    )


def metric(url: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", httpx.get(url + "/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def count_rows(store_url: str) -> int:
    store = Store.open(store_url)
    n = store.count(Request)
    store.close()
    return n


def cpu_s(proc: subprocess.Popen) -> float:
    """User + system CPU seconds used so far by a process (Linux /proc)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def part_latency(export: Path, rounds: int, tmp: Path) -> dict:
    on, on_url = start_server(export, "--collect-data", "--data-dir", str(tmp / "lat"))
    off, off_url = start_server(export)
    rng = np.random.default_rng(0)
    pairs = rounds // 4
    bodies = [make_body(rng, f"ep{i // 50}", i % 50) for i in range(rounds + 2 * pairs + 20)]
    try:
        with httpx.Client(base_url=on_url) as c_on, httpx.Client(base_url=off_url) as c_off:
            it_on, it_off = iter(bodies), iter(bodies)

            def call(client: httpx.Client, it) -> None:
                assert client.post("/act", content=next(it), headers=MSGPACK).status_code == 200

            cpu0 = {"collection off": cpu_s(off), "collection on": cpu_s(on)}
            times = interleaved(
                {
                    "collection off": lambda: call(c_off, it_off),
                    "collection on": lambda: call(c_on, it_on),
                },
                rounds,
                warmup=5,
            )
            time.sleep(1.5)  # let the last batch commit: its CPU belongs to these calls
            cpu = {
                k: (cpu_s(p) - cpu0[k]) / (rounds + 5) * 1e3
                for k, p in (("collection off", off), ("collection on", on))
            }
            # Two calls in a row on one keep-alive connection: the second waits until the
            # first one's after-response hook has run (uvicorn serves a connection in order).
            back_to_back = interleaved(
                {
                    "collection off": lambda: (call(c_off, it_off), call(c_off, it_off)),
                    "collection on": lambda: (call(c_on, it_on), call(c_on, it_on)),
                },
                pairs,
                warmup=2,
            )
    finally:
        stop_server(on)
        stop_server(off)
    rows = count_rows(f"sqlite:///{tmp / 'lat' / 'store.sqlite'}")
    return {
        "times": times,
        "pairs": back_to_back,
        "rows": rows,
        "cpu_ms": cpu,
        "sent": rounds + 5 + 2 * (pairs + 2),
    }


def drive(url: str, clients: int, seconds: float) -> dict:
    """Closed-loop load from ``clients`` threads for ``seconds``; latencies in ms."""
    stop, lat, errors = threading.Event(), [[] for _ in range(clients)], [0]

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=url, timeout=30) as http:
            step = 0
            while not stop.is_set():
                body = make_body(rng, f"c{k}-ep{step // 100}", step % 100)
                t0 = time.perf_counter()
                r = http.post("/act", content=body, headers=MSGPACK)
                if r.status_code != 200:
                    errors[0] += 1
                    continue
                lat[k].append((time.perf_counter() - t0) * 1e3)
                step += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    all_lat = np.concatenate([np.asarray(v) for v in lat])
    return {
        "requests": len(all_lat),
        "errors": errors[0],
        "rps": len(all_lat) / elapsed,
        "p50": float(np.percentile(all_lat, 50)),
        "p99": float(np.percentile(all_lat, 99)),
    }


def part_sustained(
    export: Path, store_url: str, clients: int, seconds: float, queue: int | None = None
) -> dict:
    extra = ["--collect-data", "--store", store_url]
    if queue is not None:
        extra += ["--collect-queue", str(queue)]
    proc, url = start_server(export, *extra)
    try:
        load = drive(url, clients, seconds)
        load["dropped"] = int(metric(url, "reflex_collect_dropped_total"))
        load["enqueued"] = int(metric(url, "reflex_collect_enqueued_total"))
    finally:
        stop_server(proc)
    load["rows"] = count_rows(store_url)
    return load


def part_capacity(store_url: str, n: int) -> float:
    """Records per second one StoreWriter commits (distinct 64x64 images)."""
    rng = np.random.default_rng(1)
    frames = [
        FrameRecord(
            request_id=f"cap{i}",
            source="served",
            received_at=datetime.now(UTC),
            episode_id=f"cap-ep{i // 100}",
            step=i % 100,
            instruction="push",
            state=rng.standard_normal(39).astype(np.float32),
            actions=rng.standard_normal((8, 4)).astype(np.float32),
            images={"corner2": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
        )
        for i in range(n)
    ]
    store = Store.open(store_url)
    writer = StoreWriter(store, WriterConfig(queue_size=n + 1)).start()
    t0 = time.perf_counter()
    for f in frames:
        writer.submit(f)
    writer.close(600)
    rate = n / (time.perf_counter() - t0)
    store.close()
    return rate


def pg_fresh(url: str) -> str:
    """A fresh database next to ``url`` (dropped by the caller with pg_drop)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"reflex_bench_{int(time.time())}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def pg_drop(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--export", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=1500, help="latency rounds per variant")
    ap.add_argument("--seconds", type=float, default=60.0, help="sustained-load duration")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop client threads")
    ap.add_argument("--queues", default="1,4,16,64,256", help="small queue sizes for drop onset")
    ap.add_argument("--capacity-n", type=int, default=3000, help="records for writer capacity")
    ap.add_argument("--pg", default=None, help="PostgreSQL admin URL for capacity / load runs")
    ap.add_argument("--note", default="", help="a sentence added to the docs section")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    export, what = resolve_export(args.export, tmp)
    load_avg = Path("/proc/loadavg").read_text().split()[:3]
    print(f"export: {what}; load average at start {' '.join(load_avg)}\n", flush=True)

    lat = part_latency(export, args.rounds, tmp)
    print("/act round trip, collection on vs off (interleaved, 1 client)")
    print(summary(lat["times"], "collection off"))
    print("two back-to-back calls on one connection (time of the pair)")
    print(summary(lat["pairs"], "collection off"))
    print(
        "server CPU per request: " + ", ".join(f"{k} {v:.2f} ms" for k, v in lat["cpu_ms"].items())
    )
    print(
        f"rows stored by the collecting server: {lat['rows']} of {lat['sent']} sent\n", flush=True
    )

    sqlite_url = f"sqlite:///{tmp / 'load' / 'store.sqlite'}"
    (tmp / "load").mkdir()
    runs = {"SQLite": part_sustained(export, sqlite_url, args.clients, args.seconds)}
    pg_urls = []
    if args.pg:
        pg_urls.append(pg_fresh(args.pg))
        runs["PostgreSQL"] = part_sustained(export, pg_urls[-1], args.clients, args.seconds)
    for name, r in runs.items():
        print(f"sustained {args.seconds:.0f} s, {args.clients} clients, {name}: {r}", flush=True)

    onset = {}
    for q in (int(x) for x in args.queues.split(",")):
        d = tmp / f"q{q}"
        d.mkdir()
        onset[q] = part_sustained(export, f"sqlite:///{d / 'store.sqlite'}", args.clients, 10, q)
        print(f"queue {q}: {onset[q]}", flush=True)

    capacity = {"SQLite": part_capacity(f"sqlite:///{tmp / 'cap.sqlite'}", args.capacity_n)}
    if args.pg:
        pg_urls.append(pg_fresh(args.pg))
        capacity["PostgreSQL"] = part_capacity(pg_urls[-1], args.capacity_n)
    for name, rate in capacity.items():
        print(f"writer capacity {name}: {rate:.0f} records/s", flush=True)
    for url in pg_urls:
        pg_drop(args.pg, url)

    end_load = Path("/proc/loadavg").read_text().split()[:3]
    text = render(args, what, lat, runs, onset, capacity, load_avg, end_load)
    print("\n" + text)
    if args.write_docs:
        write_docs(text)


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def percentiles(times: dict) -> list[list]:
    rows = [
        [k, f"{np.percentile(v, 50):.2f}", f"{np.percentile(v, 99):.2f}"] for k, v in times.items()
    ]
    return rows + [["ratio on / off", f"{_ratio(times, 50):.3f}", f"{_ratio(times, 99):.3f}"]]


def render(args, what, lat, runs, onset, capacity, load_start, load_end) -> str:
    argv = [a for a in sys.argv[1:] if a != "--write-docs"]
    if "--note" in argv:
        del argv[argv.index("--note") : argv.index("--note") + 2]
    cmd = "python bench/bench_collect.py " + " ".join(shlex.quote(a) for a in argv)
    blocks = [
        SECTION,
        (
            f"Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU), {what}; "
            f"load average {' '.join(load_start)} at start, {' '.join(load_end)} at the end. "
            f"{args.note} Command:"
        ).replace("  ", " "),
        f"    {cmd.strip()}",
        (
            "/act round trip, one client alternating between two `reflex serve` processes, one "
            "with `--collect-data` (SQLite, WAL), every request with a distinct random 64x64 "
            f"image ({len(lat['times']['collection off'])} requests each):"
        ),
        table(["variant", "p50 ms", "p99 ms"], percentiles(lat["times"])),
        (
            "Two calls back to back on one keep-alive connection (the second waits until the "
            "first one's after-response hook has run, as uvicorn serves a connection in order), "
            f"time of the pair ({len(lat['pairs']['collection off'])} pairs each):"
        ),
        table(["variant", "p50 ms", "p99 ms"], percentiles(lat["pairs"])),
        (
            "Server CPU time per request (user + system, from /proc, over the single-call "
            "rounds, the last batch's commit included): "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in lat["cpu_ms"].items())
            + f". The collecting server stored {lat['rows']} rows for {lat['sent']} requests "
            "(warm-up included)."
        ),
        (
            f"Sustained load: {args.clients} closed-loop client threads for {args.seconds:.0f} s "
            "at the server's maximum throughput, then SIGTERM; rows counted in the store:"
        ),
        table(
            ["store", "requests", "req/s", "p50 ms", "p99 ms", "rows", "dropped"],
            [
                [
                    k,
                    r["requests"],
                    f"{r['rps']:.0f}",
                    f"{r['p50']:.1f}",
                    f"{r['p99']:.1f}",
                    r["rows"],
                    r["dropped"],
                ]
                for k, r in runs.items()
            ],
        ),
        (
            "Where drops begin: the same load for 10 s against servers with a small "
            "`--collect-queue` (the writer also holds up to one batch of 256 while it commits):"
        ),
        table(
            ["queue", "requests", "rows", "dropped"],
            [[q, r["requests"], r["rows"], r["dropped"]] for q, r in onset.items()],
        ),
        (
            "Writer capacity (records committed per second by one writer thread, in-process, "
            "distinct images, batches of 256):"
        ),
        "\n".join(f"- {k}: {rate:.0f} records/s" for k, rate in capacity.items()),
        (
            "With the default queue (8192) drops begin only when the sustained request rate "
            "exceeds the writer capacity (a burst above it is absorbed for queue / (rate - "
            "capacity) seconds)."
        ),
    ]
    return "\n\n".join(blocks) + "\n"


def _ratio(times: dict, q: float) -> float:
    return float(
        np.percentile(times["collection on"], q) / np.percentile(times["collection off"], q)
    )


def write_docs(text: str) -> None:
    """Replace (or append) the Data collection section of docs/benchmarks.md."""
    DOCS.parent.mkdir(exist_ok=True)
    old = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("" if nxt < 0 else "\n" + old[nxt + 1 :])
    DOCS.write_text(new)
    print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
