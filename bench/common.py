"""Helpers for benchmarks: interleaved timing so that A and B see the same machine noise."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 5) -> dict[str, np.ndarray]:
    """Call each function once per round, in alternating order; wall times in ms per name."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            out[n].append((time.perf_counter() - t0) * 1e3)
    return {n: np.asarray(v) for n, v in out.items()}


def summary(times: dict[str, np.ndarray], baseline: str) -> str:
    """A table of p50 / p90 / p99 (ms) per name and the p50 ratio to ``baseline``."""
    base = float(np.percentile(times[baseline], 50))
    lines = [f"{'variant':<28} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'p50 ratio':>10}"]
    for name, t in times.items():
        p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
        lines.append(f"{name:<28} {p50:9.3f} {p90:9.3f} {p99:9.3f} {p50 / base:10.3f}")
    return "\n".join(lines)


def parse_named(
    values: list[str], reserved: Collection[str] = (), flag: str = "--student"
) -> dict[str, Path]:
    """``NAME=DIR`` pairs of a repeatable option (``flag``); names must be new.

    Raises:
        SystemExit: a malformed pair, or a name in ``reserved``.
    """
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path or name in reserved:
            raise SystemExit(f"{flag}: expected NAME=DIR with a new name, got {v!r}")
        out[name] = Path(path)
    return out
