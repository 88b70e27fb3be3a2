"""``--collect-data``: what a serving app needs to log every /act call into the store.

:class:`DataCollector` bundles the store, the :class:`~.writer.StoreWriter` and the set of
episode ids the server has seen. The app calls :meth:`DataCollector.hook` after each
served chunk (O(1): remember the episode id, enqueue the record), :meth:`start` on
startup and :meth:`close` on shutdown (which commits everything queued).

Outcome reports and the asynchronous writer: an episode row is written with its first
batch, up to one flush interval after its first request. An outcome that arrives before
that (or after the episode's records were dropped) is still accepted when the server
has seen the episode id, and creates the episode row itself; the writer then fills in
its instruction and time range. An episode id never seen by this server and absent from
the store is unknown (404). The seen set holds the last ``max_seen_episodes`` ids.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from reflex_serve.storage.engine import display_url
from reflex_serve.storage.records import Privacy
from reflex_serve.storage.store import OutcomeReport, Store
from reflex_serve.storage.versions import register_version
from reflex_serve.storage.writer import StoreWriter, WriterConfig

if TYPE_CHECKING:
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.server.state import ActRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectOptions:
    """The ``reflex serve --collect-data`` options.

    Attributes:
        store: store URL (``--store``); ``None`` for ``$REFLEX_STORE`` or the SQLite file
            in ``data_dir``.
        data_dir: directory of the embedded SQLite store (``--data-dir``).
        privacy: instruction hashing / image storage.
        writer: queue size, batch size, flush interval.
        max_seen_episodes: episode ids remembered for outcome reports.
    """

    store: str | None = None
    data_dir: Path | None = None
    privacy: Privacy = field(default_factory=Privacy)
    writer: WriterConfig = field(default_factory=WriterConfig)
    max_seen_episodes: int = 100_000


class DataCollector:
    """Logs served calls into a store without blocking them.

    Args:
        store: an open store.
        options: privacy, writer and episode-tracking settings.
        registry: Prometheus registry for the writer's metrics (the app's).
    """

    def __init__(
        self,
        store: Store,
        options: CollectOptions | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.options = options or CollectOptions()
        self.writer = StoreWriter(store, self.options.writer, self.options.privacy, registry)
        self._seen: dict[str, None] = {}
        self._seen_lock = threading.Lock()

    @classmethod
    def open(
        cls, options: CollectOptions, registry: CollectorRegistry | None = None
    ) -> DataCollector:
        """Open (create or upgrade) the store named by ``options`` and build a collector.

        Raises:
            StoreError: bad URL, unreachable server, or a store from a newer reflex-serve.
        """
        return cls(Store.open(options.store, options.data_dir), options, registry)

    def start(self, policies: Iterable[Policy] = ()) -> None:
        """Start the writer and record the served versions in ``model_versions``.

        A version new to the store is registered as ``active`` (actor ``reflex-serve``).
        """
        for policy in policies:
            register_version(
                self.store,
                policy.manifest.to_dict(),
                "active",
                actor="reflex-serve",
                reason="served by a --collect-data server",
            )
        self.writer.start()
        log.info("data collection into %s", display_url(self.store.url))

    def hook(self, record: ActRecord) -> None:
        """The app's act hook: O(1), never blocks (see :meth:`StoreWriter.submit`)."""
        episode_id = record.params.episode_id
        if episode_id is not None:
            self._remember(episode_id)
        self.writer.submit(record)

    def _remember(self, episode_id: str) -> None:
        with self._seen_lock:
            if episode_id in self._seen:
                return
            self._seen[episode_id] = None
            if len(self._seen) > self.options.max_seen_episodes:
                del self._seen[next(iter(self._seen))]

    def has_seen(self, episode_id: str) -> bool:
        """Whether this server has served a request of ``episode_id`` (recently)."""
        with self._seen_lock:
            return episode_id in self._seen

    def report_outcome(
        self, episode_id: str, outcome: str, reward: float | None = None, note: str | None = None
    ) -> OutcomeReport | None:
        """Store an outcome synchronously (see the module docstring for unknown episodes).

        Returns:
            The stored outcome, or ``None`` if the episode is unknown.
        """
        create_as = "served" if self.has_seen(episode_id) else None
        return self.store.report_outcome(episode_id, outcome, reward, note, create_as=create_as)

    def close(self, timeout_s: float | None = None) -> bool:
        """Commit everything queued and stop the writer (the store stays open).

        Returns:
            ``True`` if every queued record was handled in time.
        """
        if not self.writer.running:
            return self.writer.close(timeout_s)
        done = self.writer.close(timeout_s)
        counts = self.writer.counts()
        log.info(
            "data collection stopped: %(written)d written, %(dropped)d dropped, %(failed)d failed",
            counts,
        )
        return done
