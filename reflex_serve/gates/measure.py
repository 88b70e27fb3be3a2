"""Measurements of the performance gates: latency side by side, resources in child
processes, closed-loop success in MetaWorld. The verdicts are in :mod:`.performance`.

Resources are measured by this module run as a program, one process per policy::

    python -m reflex_serve.gates.measure EXPORT_DIR --acts 20 --threads 1

prints one JSON object: ``base_kib`` (peak RSS after the imports), ``peak_kib`` (peak
RSS after loading the policy and ``acts`` calls), ``policy_kib`` (their difference) and
``model_bytes`` (prefix.onnx + expert.onnx). The peak is Linux's ``VmHWM`` of the
process's own address space: ``getrusage``'s ``ru_maxrss`` survives fork and exec, so a
child of a large parent would report the parent's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..export.manifest import EXPERT_ONNX, PREFIX_ONNX
from ..runtime.types import Observation


@dataclass
class Latency:
    """Interleaved ``act`` timings in ms, candidate and reference (same observations)."""

    candidate_ms: list[float]
    reference_ms: list[float]

    def percentile(self, which: str, q: float) -> float:
        return float(np.percentile(getattr(self, f"{which}_ms"), q))


def measure_latency(
    candidate_dir: Path,
    reference_dir: Path,
    observations: list[Observation],
    calls: int,
    warmup: int,
    threads: int,
) -> Latency:
    """Time ``calls`` act calls of each policy, interleaved (ABBA order), on fresh
    sessions without a prefix cache: every call computes its prefix, as in closed loop.

    Each policy runs at its manifest's ``num_steps``; call ``i`` of both uses
    observation ``i mod len(observations)`` and noise seed ``i``.
    """
    from ..runtime.policy import Policy

    cand = Policy(candidate_dir, intra_op_threads=threads, cache=None)
    ref = Policy(reference_dir, intra_op_threads=threads, cache=None)
    for i in range(warmup):
        obs = observations[i % len(observations)]
        cand.act(obs, seed=i)
        ref.act(obs, seed=i)
    out: dict[str, list[float]] = {"c": [], "r": []}
    for i in range(calls):
        obs = observations[i % len(observations)]
        order = (("c", cand), ("r", ref)) if i % 2 == 0 else (("r", ref), ("c", cand))
        for key, policy in order:
            t0 = time.perf_counter()
            policy.act(obs, seed=i)
            out[key].append((time.perf_counter() - t0) * 1e3)
    return Latency(out["c"], out["r"])


def model_bytes(export_dir: Path) -> int:
    """Bytes of the ONNX graphs the runtime loads (prefix.onnx + expert.onnx)."""
    return sum((Path(export_dir) / name).stat().st_size for name in (PREFIX_ONNX, EXPERT_ONNX))


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


_RESOURCE_CACHE: dict[tuple, dict[str, Any]] = {}


class ResourceMeasurement:
    """The measurement program run once per export, in child processes started at once.

    Start it, do other work that does not time anything (the closed-loop suite), then
    call :meth:`results`. The children compete for CPU with that work, never for memory
    accounting: each reads its own address space's peak. An export measured before in
    this process (same digest, ``acts`` and ``threads``) is not measured again: gating
    several candidates against one teacher measures the teacher once.
    """

    def __init__(self, export_dirs: list[Path], acts: int, threads: int, timeout_s: float) -> None:
        from ..export.manifest import read_manifest

        self.export_dirs = [Path(d) for d in export_dirs]
        self.timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._keys = [(read_manifest(d).digest, acts, threads) for d in self.export_dirs]
        self._procs = [
            None
            if key in _RESOURCE_CACHE
            else subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reflex_serve.gates.measure",
                    str(d),
                    "--acts",
                    str(acts),
                    "--threads",
                    str(threads),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_child_env(threads),
            )
            for d, key in zip(self.export_dirs, self._keys)
        ]

    def results(self) -> list[dict[str, Any]]:
        """One dict per export (module docstring).

        Raises:
            RuntimeError: a child failed or ran past the timeout (its last stderr line
                in the message).
        """
        out = []
        try:
            for d, key, p in zip(self.export_dirs, self._keys, self._procs):
                if p is None:
                    out.append({**_RESOURCE_CACHE[key], "export_dir": str(d)})
                    continue
                try:
                    stdout, stderr = p.communicate(
                        timeout=max(1.0, self._deadline - time.monotonic())
                    )
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"measuring {d} took over {self.timeout_s:g} s") from None
                if p.returncode != 0:
                    tail = stderr.strip().splitlines()[-1:] or ["no message"]
                    raise RuntimeError(f"measuring {d} failed (exit {p.returncode}): {tail[0]}")
                _RESOURCE_CACHE[key] = json.loads(stdout.strip().splitlines()[-1])
                out.append(_RESOURCE_CACHE[key])
        finally:
            self.close()
        return out

    def close(self) -> None:
        """Kill children still running (a run that ends early)."""
        for p in self._procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def measure_resources(
    export_dirs: list[Path], acts: int, threads: int, timeout_s: float
) -> list[dict[str, Any]]:
    """Measure each export in its own process, concurrently; one dict each."""
    return ResourceMeasurement(export_dirs, acts, threads, timeout_s).results()


class _SeededClient:
    """The simulator's ActClient over a Policy, with reproducible noise (seed per call)."""

    def __init__(self, policy, seed: int) -> None:
        self.policy = policy
        self.n_action_steps = policy.manifest.n_action_steps
        self._seed, self._calls = seed, 0

    def act(self, obs: Observation, *, episode_id: str, step: int, num_steps: int | None):
        self._calls += 1
        return self.policy.act(obs, num_steps=num_steps, seed=self._seed + self._calls)


_SUITE_CACHE: dict[tuple, Any] = {}
_SUITE_CACHE_SIZE = 8


def run_suite(
    export_dir: Path, tasks: list[str], episodes: int, seed: int, max_steps: int, threads: int = 1
):
    """Closed-loop MetaWorld success of one export: an :class:`~reflex_serve.sim.report.EvalReport`.

    Rollouts are deterministic (seeded episodes, seeded noise per call, MuJoCo), so a
    result is kept in this process by (digest, tasks, episodes, seed, horizon): gating
    several candidates against one teacher runs the teacher's suite once.

    Raises:
        ValueError: the export's cameras or state size fit no MetaWorld observation.
        Whatever the rollout raises (a non-finite action: ``InvalidAction``).
    """
    from ..export.manifest import read_manifest
    from ..runtime.policy import Policy
    from ..sim.evaluate import evaluate, sim_settings_from_manifest

    key = (read_manifest(export_dir).digest, tuple(tasks), episodes, seed, max_steps)
    if key in _SUITE_CACHE:
        return _SUITE_CACHE[key]
    policy = Policy(export_dir, intra_op_threads=threads, cache=None)
    settings = sim_settings_from_manifest(policy.manifest)
    report = evaluate(
        _SeededClient(policy, seed),
        tasks,
        episodes,
        seed,
        progress=False,
        max_steps=max_steps or None,
        **settings,
    )
    if len(_SUITE_CACHE) >= _SUITE_CACHE_SIZE:
        _SUITE_CACHE.pop(next(iter(_SUITE_CACHE)))
    _SUITE_CACHE[key] = report
    return report


def peak_rss_kib() -> int:
    """Peak resident memory of this process's address space, KiB (VmHWM on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m reflex_serve.gates.measure")
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--acts", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from ..runtime.policy import Policy  # imported before the baseline is read

    base = peak_rss_kib()
    policy = Policy(args.export_dir, intra_op_threads=args.threads, cache=None)
    policy.warmup(args.acts)
    peak = peak_rss_kib()
    print(
        json.dumps(
            {
                "export_dir": str(args.export_dir),
                "base_kib": base,
                "peak_kib": peak,
                "policy_kib": peak - base,
                "model_bytes": model_bytes(args.export_dir),
                "acts": args.acts,
            }
        )
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
