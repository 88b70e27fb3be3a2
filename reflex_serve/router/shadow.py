"""Mirrored calls, off the response path: one version's chunk against another's.

Two uses:

- ``shadow``: a share of the active version's calls is replayed on a shadow candidate;
- ``monitor``: after a swap, a share of the new version's calls is replayed on the
  previous version (the monitor's divergence signal).

Both versions see the same observation and the same initial noise: the served chunk's
noise (the runtime reports it, so the served chunk is reused and only the other version
runs), else a fresh seed for both. When the two prefix graphs are the same file (a
SnapFlow student and its teacher) the mirrored call finds the prefix KV in the shared
cache.

Divergence: RMS over the chunk of (candidate - reference) / the reference's action std.
Jobs wait in a bounded queue (a full queue drops and counts); one thread runs them at a
lower CPU priority and writes the comparisons to the store in batches.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from reflex_serve.router.config import ShadowConfig

if TYPE_CHECKING:
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.runtime.types import ActResult, Observation
    from reflex_serve.server.observations import ActParams

log = logging.getLogger(__name__)
_MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class MirrorJob:
    """One mirrored call. ``served`` is the chunk the client got, from ``reference``
    (mode ``shadow``) or from ``candidate`` (mode ``monitor``)."""

    mode: str
    candidate: Policy
    reference: Policy
    obs: Observation
    params: ActParams
    served: ActResult
    request_id: str
    num_steps: int | None = None


@dataclass(frozen=True)
class Comparison:
    """The result of a mirrored call."""

    mode: str
    candidate_version: str
    reference_version: str
    divergence: float
    max_abs_diff: float
    candidate_ms: float
    reference_ms: float
    shared_prefix: bool
    cache_hit: bool

    def row(self, request_id: str, episode_id: str | None, at) -> dict[str, Any]:
        return {"at": at, "mode": self.mode, "candidate_version": self.candidate_version,
                "reference_version": self.reference_version, "request_id": request_id,
                "episode_id": episode_id, "divergence": self.divergence,
                "max_abs_diff": self.max_abs_diff, "candidate_ms": self.candidate_ms,
                "reference_ms": self.reference_ms, "shared_prefix": self.shared_prefix}


def divergence(candidate: np.ndarray, reference: np.ndarray, std: np.ndarray) -> float:
    """RMS of the difference in units of ``std`` (per action dimension)."""
    diff = (np.asarray(candidate, np.float64) - reference) / np.maximum(std, 1e-6)
    value = float(np.sqrt(np.mean(diff * diff)))
    return value if np.isfinite(value) else float("inf")


def compare(job: MirrorJob) -> Comparison:
    """Run the mirrored side(s) of ``job`` and compare (blocking).

    The served chunk is reused when its initial noise is known (the runtime reports it),
    so only the other version runs; otherwise both run on a fresh seed.
    """
    served_by_candidate = job.mode == "monitor"
    other = job.reference if served_by_candidate else job.candidate
    noise = job.served.extra.get("noise") if job.served.extra else None
    if noise is not None and noise.shape == other.noise_shape:
        mirrored = other.act(job.obs, num_steps=job.num_steps, noise=noise)
        cand, ref = (job.served, mirrored) if served_by_candidate else (mirrored, job.served)
    else:
        seed = job.params.seed if job.params.seed is not None else random.randrange(_MAX_SEED)
        ref = job.reference.act(job.obs, num_steps=job.num_steps, seed=seed)
        cand = job.candidate.act(job.obs, num_steps=job.num_steps, seed=seed)
    return Comparison(
        mode=job.mode,
        candidate_version=job.candidate.version,
        reference_version=job.reference.version,
        divergence=divergence(cand.actions, ref.actions, job.reference.stats.action.std),
        max_abs_diff=float(np.nanmax(np.abs(cand.actions.astype(np.float64) - ref.actions))),
        candidate_ms=cand.total_ms,
        reference_ms=ref.total_ms,
        shared_prefix=job.candidate.prefix_digest == job.reference.prefix_digest,
        cache_hit=bool(cand.cache_hit or ref.cache_hit),
    )


def lower_priority(nice: int) -> int | None:
    """Run the calling thread at niceness ``nice``, or leave it where it is if it already
    runs at a higher niceness (a server started with ``nice -n 19``: as root, setting 10
    would put mirrored calls above the requests). Linux: niceness is per thread, so the
    serving threads keep theirs. Returns the thread's niceness (None: not supported)."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if nice > current:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (AttributeError, OSError):
        return None


class Mirror:
    """The mirroring queue and its thread.

    Args:
        config: queue size, niceness, flush interval.
        on_result: called with (job, comparison) on the mirroring thread (the router
            feeds the monitor and the metrics).
        write: called with a list of comparison rows every ``flush_interval_s`` (the
            store), or None.
    """

    def __init__(self, config: ShadowConfig, on_result: Callable[[MirrorJob, Comparison], None],
                 write: Callable[[list[dict]], None] | None = None) -> None:
        self.config = config
        self._on_result = on_result
        self._write = write
        self._queue: queue.Queue[MirrorJob | None] = queue.Queue(config.queue_size)
        self._rows: list[dict] = []
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.failed = 0

    def submit(self, job: MirrorJob) -> bool:
        """Queue a job (O(1), never blocks); False when the queue is full (dropped)."""
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="reflex-mirror", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop after the queued jobs, then write the last rows."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def _run(self) -> None:
        lower_priority(self.config.nice)
        last_flush = time.monotonic()
        while True:
            try:
                job = self._queue.get(timeout=self.config.flush_interval_s)
            except queue.Empty:
                job = False
            if job is None:
                break
            if job:
                self._handle(job)
            if time.monotonic() - last_flush >= self.config.flush_interval_s:
                self._flush()
                last_flush = time.monotonic()
        self._flush()

    def _handle(self, job: MirrorJob) -> None:
        from reflex_serve.storage.models import utcnow

        try:
            result = compare(job)
        except Exception:
            self.failed += 1
            log.exception("mirrored call of %s failed", job.candidate.version)
            return
        try:
            self._on_result(job, result)
        except Exception:
            log.exception("mirror result handler failed")
        if self._write is not None:
            self._rows.append(result.row(job.request_id, job.params.episode_id, utcnow()))

    def _flush(self) -> None:
        rows, self._rows = self._rows, []
        if rows and self._write is not None:
            try:
                self._write(rows)
            except Exception:
                log.exception("could not record %d shadow comparisons", len(rows))
