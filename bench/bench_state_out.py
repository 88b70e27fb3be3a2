"""/act latency of a pi0.5 teacher vs its ``--state-out`` student on a fixed image stream.

    python bench/bench_state_out.py --teacher DIR --student state-out=DIR [--student NAME=DIR ...]
        [--rounds 300] [--threads 1]

One `reflex serve` process per export, the prefix cache ON (its default size). Every
round sends the same images and instruction with a new state (drawn around the
statistics' mean) to every variant, in alternating order: a robot standing in front of
an unchanged scene, or a camera stream slower than the control rate. The teacher writes
the state into its prompt, so each call misses the prefix cache; the state-out student's
prompt holds no state, so after the first call every prefix is a hit. Prints the client
round trip and server-side p50 / p90 / p99, the p50 ratio to the 10-step teacher, the
cache-hit rate of each variant and where the time goes (bench_student.budget).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_student import budget, record
from common import interleaved, parse_named, summary

from reflex_serve.client import ReflexClient
from reflex_serve.export.parity import random_observations
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import Observation
from reflex_serve.server.runner import spawn_server


def state_stream(policy: Policy, n: int, seed: int = 0) -> list[Observation]:
    """``n`` observations: one set of images and one instruction, a new state each (mean
    + 0.5 std * N(0, 1) per dimension, so the teacher's state bins change every call)."""
    base = random_observations(policy, 1, seed=seed)[0]
    rng = np.random.default_rng(seed)
    mean, std = policy.stats.state.mean, policy.stats.state.std
    return [
        Observation(
            images=base.images,
            state=(mean + 0.5 * std * rng.standard_normal(mean.shape)).astype(np.float32),
            instruction=base.instruction,
        )
        for _ in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True, help="the pi0.5 teacher export")
    ap.add_argument("--student", action="append", default=[], metavar="NAME=DIR", help="a student export")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per server")
    args = ap.parse_args()
    students = parse_named(args.student, reserved=("teacher",))
    teacher = Policy(args.teacher)
    n_obs = args.rounds + 10  # warm-up and rounds: no state repeats
    obs = state_stream(teacher, n_obs)
    with ExitStack() as stack:
        clients = {}
        for name, export in {"teacher": args.teacher, **students}.items():
            proc, url = spawn_server(export, "--threads", str(args.threads))
            stack.callback(proc.wait, timeout=20)
            stack.callback(proc.terminate)
            clients[name] = ReflexClient(url)
            clients[name].wait_ready()
        server_ms: dict[str, list[float]] = {}
        hits: dict[str, list[bool]] = {}
        parts: dict[str, dict[str, list[float]]] = {}
        # each variant walks the same sequence of observations, one new state per call
        # (warm-up calls included), whatever order interleaved() calls them in
        counters = {name: 0 for name in clients}

        def call(name: str, client: ReflexClient):
            def run() -> None:
                i = counters[name]
                counters[name] += 1
                res = client.act(obs[i % n_obs], seed=i)
                server_ms.setdefault(name, []).append(res.total_ms)
                hits.setdefault(name, []).append(res.cache_hit)
                record(parts.setdefault(name, {}), res)

            return run

        label = {"teacher": f"teacher, {teacher.num_steps} steps"}
        fns = {label.get(n, f"student {n}"): call(n, c) for n, c in clients.items()}
        times = interleaved(fns, args.rounds, warmup=10)
        print(f"teacher {teacher.version}, {args.rounds} rounds, one image set, a new state "
              f"each round, prefix cache on, {args.threads} ONNX Runtime thread(s) per server\n")
        print("client round trip (HTTP msgpack, ReflexClient):")
        print(summary(times, label["teacher"]))
        print("\nserver-side total_ms (from the /act response):")
        print(summary({k: np.asarray(v) for k, v in server_ms.items()}, "teacher"))
        print("\nprefix cache hit rate (warm-up included): "
              + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in hits.items()))
        print("\nwhere the time goes (p50 ms of each part):")
        print(budget(parts, "teacher"))


if __name__ == "__main__":
    main()
