"""/act latency of a teacher, its naive 1-step version and its students, side by side over HTTP.

    python bench/bench_student.py --teacher DIR --student snapflow=DIR [--student NAME=DIR ...]
        [--data DEMO_DIR] [--rounds 300]

One `reflex serve` process per export (prefix cache off, so every call computes the
prefix as in closed loop, where each observation is new); the naive 1-step teacher is
the teacher's server asked for ``num_steps=1``. Each round sends one observation to every
variant in alternating order, so machine noise hits all of them alike. Observations are
demonstration frames (``--data``), a different frame each round; without ``--data``
they are synthetic. Prints client round-trip and server-side p50 / p90 / p99 and the
p50 ratio of each variant to the 10-step teacher.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, parse_named, summary

from reflex_serve.client import ReflexClient
from reflex_serve.export.parity import random_observations
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import Observation
from reflex_serve.server.runner import spawn_server


def demo_observations(directory: Path, policy: Policy, n: int, seed: int = 0) -> list[Observation]:
    """``n`` demonstration frames drawn at random (seeded) from every task of ``directory``."""
    from reflex_serve.sim.dataset import load_demos

    demos = load_demos(directory)
    names = [c.name for c in policy.manifest.cameras]
    picks = np.random.default_rng(seed).choice(len(demos), size=n, replace=len(demos) < n)
    return [
        Observation(
            images={c: demos.images[i, k] for k, c in enumerate(names)},
            state=demos.state[i],
            instruction=demos.instruction(int(i)),
        )
        for i in picks
    ]


PARTS = ("prefix", "expert", "handling", "transport")


def record(parts: dict[str, list[float]], res) -> None:
    """Split one call's round trip into prefix, expert (all Euler steps), the server's
    request handling around ``Policy.act`` (decode, validate, encode, thread hand-off)
    and transport (HTTP on loopback and the client), in ms."""
    server, rtt = res.extra["server_ms"], res.extra["rtt_ms"]
    for key, value in zip(PARTS, (res.prefix_ms, res.expert_ms, server - res.total_ms, rtt - server)):
        parts.setdefault(key, []).append(value)


def budget(parts: dict[str, dict[str, list[float]]], baseline: str) -> str:
    """p50 of each part per variant, and the round-trip ratio a variant would have if
    its prefix, handling and transport (the parts a 1-step student cannot shorten) were
    the only cost: the floor of the /act p50 ratio for that model and machine."""
    p50 = {v: {k: float(np.median(x)) for k, x in d.items()} for v, d in parts.items()}
    base = sum(p50[baseline].values())
    lines = [f"{'variant':<12}" + "".join(f"{k:>11}" for k in PARTS) + f"{'sum':>9}{'ratio':>8}"]
    for v, d in p50.items():
        total = sum(d.values())
        lines.append(f"{v:<12}" + "".join(f"{d[k]:11.3f}" for k in PARTS) + f"{total:9.3f}{total / base:8.3f}")
    fixed = sum(p50[baseline][k] for k in ("prefix", "handling", "transport"))
    lines.append(f"fixed cost of every call (teacher's prefix + handling + transport): {fixed:.3f} ms "
                 f"= {fixed / base:.3f} of the teacher's round trip")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True, help="teacher export directory")
    ap.add_argument("--student", action="append", default=[], metavar="NAME=DIR", help="a student export")
    ap.add_argument("--data", type=Path, default=None, help="demo directory for observations")
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    students = parse_named(args.student, reserved=("teacher",))
    teacher = Policy(args.teacher)
    n_obs = args.rounds + 20
    obs = (demo_observations(args.data, teacher, n_obs) if args.data
           else random_observations(teacher, n_obs))
    with ExitStack() as stack:
        clients = {}
        for name, export in {"teacher": args.teacher, **students}.items():
            proc, url = spawn_server(export, "--cache-mb", "0")
            stack.callback(proc.wait, timeout=20)
            stack.callback(proc.terminate)
            clients[name] = ReflexClient(url)
            clients[name].wait_ready()
        server_ms: dict[str, list[float]] = {}
        parts: dict[str, dict[str, list[float]]] = {}
        calls: dict[str, int] = {}

        def call(name: str, client: ReflexClient, steps: int | None):
            def run() -> None:  # every variant walks the same observations in the same order
                i = calls[name] = calls.get(name, -1) + 1
                res = client.act(obs[i % n_obs], seed=i, num_steps=steps)
                server_ms.setdefault(name, []).append(res.total_ms)
                record(parts.setdefault(name, {}), res)
            return run

        variants = {f"teacher, {teacher.num_steps} steps": call("teacher", clients["teacher"], None),
                    "naive 1-step teacher": call("naive", clients["teacher"], 1)}
        for name, client in clients.items():
            if name != "teacher":
                variants[f"student {name}"] = call(name, client, None)

        times = interleaved(variants, args.rounds, warmup=10)
        src = f"demo frames of {args.data}" if args.data else "synthetic observations"
        print(f"teacher {teacher.version}, {args.rounds} rounds, {src}, prefix cache off\n")
        print("client round trip (HTTP msgpack, ReflexClient):")
        print(summary(times, f"teacher, {teacher.num_steps} steps"))
        print("\nserver-side total_ms (from the /act response):")
        server = {k: np.asarray(v) for k, v in server_ms.items()}
        print(summary(server, "teacher"))
        print("\nwhere the time goes (p50 ms of each part; docs/distillation.md, 'Latency'):")
        print(budget(parts, "teacher"))


if __name__ == "__main__":
    main()
