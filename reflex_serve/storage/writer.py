"""The non-blocking writer: a bounded queue and one thread that commits in batches.

``submit`` is O(1) and never blocks: it puts a reference on a ``queue.Queue(maxsize)``
or, when the queue is full, drops the record and counts it (a Prometheus counter and a
log line at most every 10 s). The writer thread sleeps until ``batch_size`` records are
queued (or a small queue is half full) or ``flush_interval_s`` (1 s) has passed, then converts the queued records (PNG
encoding happens here, never on the request path) and commits them in batches of at
most ``batch_size``, each batch ONE transaction.

Durability: a record is durable once its batch commits, so a killed process loses at
most the records of the last flush interval (plus what was queued); the store itself
is never half-written (a batch is one transaction). :meth:`StoreWriter.close` commits
everything queued before it returns (the server calls it on shutdown / SIGTERM).

Failures: records that cannot be stored (malformed) are rejected one by one and counted
(``reflex_collect_failed_total{reason="invalid"}``); a batch the database refuses is
retried record by record (``reason="store"`` for those that still fail); while the
database is unreachable the batch is retried with back-off and new records queue up,
then drop.

Metrics (on the registry given, normally the app's)::

    reflex_collect_enqueued_total        records accepted by submit()
    reflex_collect_written_total         records committed
    reflex_collect_dropped_total         records dropped: queue full or writer closed
    reflex_collect_failed_total{reason}  records that could not be stored
    reflex_collect_queue_depth           records waiting in the queue
    reflex_collect_batch_seconds         time to convert and commit one batch
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from reflex_serve.storage.records import (
    FrameRecord,
    InvalidRecord,
    Privacy,
    apply_privacy,
    frame_from_act,
    validate_frame,
)
from reflex_serve.storage.store import Store

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0
_TRANSIENT = (OperationalError, InterfaceError)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class WriterConfig:
    """Writer settings.

    Attributes:
        queue_size: records waiting at most (memory: about the size of one request
            body each); beyond it records are dropped.
        batch_size: records committed at most per transaction.
        flush_interval_s: the longest a record waits before its batch commits; also the
            most a hard kill can lose.
        close_timeout_s: how long :meth:`StoreWriter.close` keeps trying to commit.
    """

    queue_size: int = 8192
    batch_size: int = 256
    flush_interval_s: float = 1.0
    close_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.batch_size < 1 or self.flush_interval_s <= 0:
            raise ValueError("queue_size and batch_size must be >= 1, flush_interval_s > 0")


class _WriterMetrics:
    def __init__(self, registry: CollectorRegistry, depth: Callable[[], int]) -> None:
        self.enqueued = Counter(
            "reflex_collect_enqueued", "Records accepted for the store.", registry=registry
        )
        self.written = Counter(
            "reflex_collect_written", "Records committed to the store.", registry=registry
        )
        self.dropped = Counter(
            "reflex_collect_dropped",
            "Records dropped because the collect queue was full or the writer closed.",
            registry=registry,
        )
        self.failed = Counter(
            "reflex_collect_failed",
            "Records that could not be stored.",
            ["reason"],
            registry=registry,
        )
        for reason in ("invalid", "store"):  # at 0 from the start: increase() sees the first
            self.failed.labels(reason)
        self.depth = Gauge(
            "reflex_collect_queue_depth", "Records waiting to be written.", registry=registry
        )
        self.depth.set_function(depth)
        self.batch = Histogram(
            "reflex_collect_batch_seconds",
            "Time to convert and commit one batch.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )


@dataclass
class _Marker:
    """A flush or stop request travelling through the queue behind earlier records."""

    stop: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class StoreWriter:
    """Writes :class:`FrameRecord` s (or server ``ActRecord`` s) to a store off-thread.

    Args:
        store: the store.
        config: queue, batch and flush settings.
        privacy: applied to every record before it is written.
        registry: a Prometheus registry to export the metrics to (the app's); they are
            also kept in a private registry read by :meth:`counts`.
    """

    def __init__(
        self,
        store: Store,
        config: WriterConfig | None = None,
        privacy: Privacy | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.config = config or WriterConfig()
        self.privacy = privacy or Privacy()
        self._queue: queue.Queue[Any] = queue.Queue(self.config.queue_size)
        self._registry = CollectorRegistry()
        self.metrics = _WriterMetrics(self._registry, self._queue.qsize)
        if registry is not None:
            self.export_metrics(registry)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        # Wake the thread once a batch is queued, or once a small queue is half full.
        self._wake_at = max(1, min(self.config.batch_size, self.config.queue_size // 2))
        self._lock = threading.Lock()
        self._open = False
        self._dropped_since_log = 0
        self._last_drop_log = 0.0

    def export_metrics(self, registry: CollectorRegistry) -> None:
        """Also expose the writer's metrics in ``registry`` (e.g. the app's /metrics)."""
        m = self.metrics
        for metric in (m.enqueued, m.written, m.dropped, m.failed, m.depth, m.batch):
            registry.register(metric)

    # -- producer side ----------------------------------------------------------------------

    def submit(self, record: Any) -> bool:
        """Queue a record for writing; O(1), never blocks, never raises.

        Args:
            record: a :class:`FrameRecord` or a server ``ActRecord``.

        Returns:
            ``False`` if the record was dropped (queue full or writer not running).
        """
        if self._open:
            try:
                self._queue.put_nowait(record)
                self.metrics.enqueued.inc()
                if self._queue.qsize() >= self._wake_at:
                    self._wake.set()
                return True
            except queue.Full:
                pass
        self.metrics.dropped.inc()
        self._log_drop()
        return False

    def _log_drop(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._dropped_since_log += 1
            if now - self._last_drop_log < LOG_EVERY_S:
                return
            count, self._dropped_since_log, self._last_drop_log = self._dropped_since_log, 0, now
        log.warning(
            "data collection: dropped %d record(s) (queue %d/%d full or writer stopped); "
            "total dropped %d",
            count,
            self._queue.qsize(),
            self.config.queue_size,
            self.counts()["dropped"],
        )

    def counts(self) -> dict[str, int]:
        """Totals so far: enqueued, written, dropped, failed (all reasons), queued."""
        get = self._registry.get_sample_value
        failed = sum(
            get("reflex_collect_failed_total", {"reason": r}) or 0 for r in ("invalid", "store")
        )
        return {
            "enqueued": int(get("reflex_collect_enqueued_total") or 0),
            "written": int(get("reflex_collect_written_total") or 0),
            "dropped": int(get("reflex_collect_dropped_total") or 0),
            "failed": int(failed),
            "queued": self._queue.qsize(),
        }

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the writer thread is accepting records."""
        return self._open

    def start(self) -> StoreWriter:
        """Start the writer thread (no-op if it runs)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="reflex-store-writer", daemon=True
                )
                self._thread.start()
            self._open = True
        return self

    def flush(self, timeout_s: float | None = None) -> bool:
        """Block until every record submitted before the call is committed (or failed).

        Returns:
            ``False`` on timeout or when the writer is not running.
        """
        return self._send(_Marker(stop=False), timeout_s or self.config.close_timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop accepting records, commit everything queued, stop the thread.

        Returns:
            ``True`` if everything queued was handled within ``timeout_s``.
        """
        with self._lock:
            self._open = False
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        done = self._send(_Marker(stop=True), timeout_s or self.config.close_timeout_s)
        self._thread.join(timeout_s or self.config.close_timeout_s)
        if done and not self._thread.is_alive():
            # A submit that raced with close may have queued behind the stop marker.
            late = []
            while not self._queue.empty():
                late.append(self._queue.get_nowait())
            self._commit([r for r in late if not isinstance(r, _Marker)], closing=True)
        return done

    def _send(self, marker: _Marker, timeout_s: float) -> bool:
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        self._wake.set()
        return marker.done.wait(max(0.0, deadline - time.monotonic()))

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        """Sleep until a batch is full, a flush or stop is asked, or the interval ends;
        then drain the queue, committing every ``batch_size`` records. The thread wakes
        once per batch, not once per record, so it takes little from the serving threads.
        """
        size = self.config.batch_size
        while True:
            self._wake.wait(self.config.flush_interval_s)
            self._wake.clear()
            batch: list[Any] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Marker):
                    batch = self._commit(batch, closing=item.stop)
                    item.done.set()
                    if item.stop:
                        return
                    continue
                batch.append(item)
                if len(batch) >= size:
                    batch = self._commit(batch)
            self._commit(batch)

    def _commit(self, batch: list[Any], closing: bool = False) -> list[Any]:
        """Convert and write ``batch``; always returns a new empty batch."""
        if not batch:
            return []
        start = time.perf_counter()
        frames = [f for f in map(self._convert, batch) if f is not None]
        if frames:
            self._write(frames, closing)
        self.metrics.batch.observe(time.perf_counter() - start)
        return []

    def _convert(self, item: Any) -> FrameRecord | None:
        try:
            frame = item if isinstance(item, FrameRecord) else frame_from_act(item)
            frame = apply_privacy(frame, self.privacy)
            validate_frame(frame)
            return frame
        except (InvalidRecord, AttributeError, TypeError, ValueError) as exc:
            self.metrics.failed.labels("invalid").inc()
            log.warning("data collection: record not stored: %s", exc)
            return None

    def _write(self, frames: list[FrameRecord], closing: bool) -> None:
        backoff, give_up = 0.1, time.monotonic() + self.config.close_timeout_s
        while True:
            try:
                self.store.write(frames)
                self.metrics.written.inc(len(frames))
                return
            except _TRANSIENT as exc:
                if closing and time.monotonic() > give_up:
                    self._fail(frames, "store", exc)
                    return
                log.warning("data collection: store unavailable (%s); retrying", exc.orig)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except SQLAlchemyError as exc:
                log.warning("data collection: batch refused (%s); writing one by one", exc)
                self._write_each(frames)
                return

    def _write_each(self, frames: list[FrameRecord]) -> None:
        for frame in frames:
            try:
                self.store.write([frame], trust_known_images=False)
                self.metrics.written.inc()
            except SQLAlchemyError as exc:
                self._fail([frame], "store", exc)

    def _fail(self, frames: list[FrameRecord], reason: str, exc: Exception) -> None:
        self.metrics.failed.labels(reason).inc(len(frames))
        log.error("data collection: %d record(s) not stored: %s", len(frames), exc)
