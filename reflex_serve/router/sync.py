"""Replicas converge on the store's routing slots; the monitor thread judges and acts.

    bootstrap(controller)      at start: the store's active version wins (loaded from
                               its registered location); a store without one takes the
                               version this process was started with
    follow(controller, slots)  make the in-process routes what the slots say: switch
                               the active version (instantly when it is the previous
                               one: a rollback), load shadow / canary, adopt an open
                               monitoring window
    Background(controller)     two daemon threads: ``reflex-sync`` reads the slots every
                               ``sync.interval_s`` (one small query), ``reflex-monitor``
                               judges the monitor's looks when woken (a look was
                               queued) or every ``monitor.check_interval_s``, rolls back
                               on a breach and keeps the version when the window ends

With several replicas on one PostgreSQL store each one monitors its own traffic (and
the shared episode outcomes); the first to see a breach rolls back in the store and the
others follow within one sync interval.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from reflex_serve.router.errors import RouterError, StageError
from reflex_serve.router.stats import Baseline
from reflex_serve.storage.models import utcnow

if TYPE_CHECKING:
    from reflex_serve.router.promote import Controller
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.storage.routing import Slots

log = logging.getLogger(__name__)
START_ACTOR = "reflex-serve"


def bootstrap(controller: Controller) -> None:
    """Register the version this process was started with; adopt the store's routes.

    Raises:
        RouterError: the store's active version cannot be loaded here (this replica
            would serve something else than the others).
    """
    from reflex_serve.storage.routing import RouterChange, apply_change
    from reflex_serve.storage.versions import register_version

    router, store = controller.router, controller.store
    active = router.active
    register_version(store, active.manifest.to_dict(), "candidate", actor=START_ACTOR,
                     reason="served at start", location=str(active.export_dir.resolve()))
    slots = controller.registry.slots()
    if slots.active.digest is None:
        digest = active.manifest.digest
        apply_change(store, RouterChange(
            START_ACTOR, "the first version served from this store",
            slots={"active": (digest, 1.0)}, states=[(digest, "active")], expect_active=None))
        slots = controller.registry.slots()
    with controller.swap_lock:
        error = _follow(controller, slots)
    if error is not None:
        raise RouterError(503, f"cannot serve the store's active version "
                          f"{slots.active.version}: {error}", code="not_ready")


def _load(controller: Controller, digest: str, reference: Policy) -> Policy:
    router = controller.router
    info = controller.registry.resolve(digest)
    loaded = router.find(info.version)
    if loaded is not None:
        return loaded
    policy, _ = controller.prepare(info, reference)
    return policy


def follow(controller: Controller, slots: Slots) -> bool:
    """Apply ``slots`` in process (the caller holds ``controller.swap_lock``); False if
    a version could not be loaded (retried on the next tick)."""
    return _follow(controller, slots) is None


def _follow(controller: Controller, slots: Slots) -> str | None:
    """:func:`follow`; None when done, else why not (logged)."""
    from reflex_serve.storage.routing import open_swap

    router = controller.router
    if slots.revision == router.revision:
        return True
    routes = router.routes
    want = slots.active
    try:
        if want.digest is not None and want.version != routes.active.version:
            target = _load(controller, want.digest, routes.active)
            opened = open_swap(controller.store)
            keep = (opened is not None and opened.to_digest == want.digest
                    and opened.from_digest == routes.active.manifest.digest
                    and opened.monitor_until > utcnow())
            baseline = router.switch(target, keep_previous=keep)
            router.start_monitor(None)
            if keep:
                router.start_monitor(controller.monitor_for(
                    opened.id, target, routes.active, baseline, opened.started_at,
                    opened.monitor_until))
            router.metrics.swaps.labels("follow", "ok").inc()
            log.info("following the store: %s -> %s (revision %d)", routes.active.version,
                     target.version, slots.revision)
        elif router.monitor is None:
            _adopt_window(controller)
        for slot in ("shadow", "canary"):
            row, held = getattr(slots, slot), getattr(router.routes, slot)
            if row.digest is None:
                if held is not None:
                    router.set_traffic(slot, None, 0.0)
            elif held is None or held.version != row.version:
                router.set_traffic(slot, _load(controller, row.digest, router.active),
                                   row.fraction)
            elif getattr(router.routes, f"{slot}_fraction") != row.fraction:
                router.set_traffic(slot, held, row.fraction)
    except (RouterError, StageError, SQLAlchemyError) as exc:
        router.metrics.swaps.labels("follow", "failed").inc()
        router.metrics.sync_errors.inc()
        log.error("cannot follow the store's revision %d: %s", slots.revision, exc)
        return str(exc)
    router.revision = slots.revision
    return None


def _adopt_window(controller: Controller) -> None:
    """Monitor the active version if the store says its window is open (a restart)."""
    from reflex_serve.storage.routing import open_swap

    router = controller.router
    opened = open_swap(controller.store)
    active = router.active
    if (opened is None or opened.to_digest != active.manifest.digest
            or opened.monitor_until <= utcnow()):
        return
    previous = None
    if opened.from_digest:
        try:
            previous = _load(controller, opened.from_digest, active)
            router.keep_previous(previous)
        except (RouterError, StageError) as exc:
            log.warning("previous version %s not loaded: %s", opened.from_version, exc)
    empty = Baseline(opened.from_version or "", 0, 0, 0, 0, np.empty(0))
    router.start_monitor(controller.monitor_for(
        opened.id, active, previous, empty, opened.started_at, opened.monitor_until,
        previous_version=opened.from_version))


class Background:
    """The sync and monitor threads of one controller."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for name, target in (("reflex-sync", self._sync_loop),
                             ("reflex-monitor", self._monitor_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.controller.router.wake.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []

    def sync_once(self) -> None:
        """Read the slots and follow them (skipped while a swap runs here)."""
        controller = self.controller
        if not controller.flush_pending():
            return
        try:
            slots = controller.registry.slots()
        except SQLAlchemyError as exc:
            controller.router.metrics.sync_errors.inc()
            log.warning("cannot read the routing slots: %s", exc)
            return
        if slots.revision == controller.router.revision:
            return
        if controller.swap_lock.acquire(blocking=False):
            try:
                follow(controller, slots)
            finally:
                controller.swap_lock.release()

    def _sync_loop(self) -> None:
        interval = self.controller.config.sync.interval_s
        while not self._stop.wait(interval):
            self.sync_once()

    def check_once(self) -> None:
        """Judge the monitor's queued looks; roll back on a breach, keep at the end."""
        controller = self.controller
        monitor = controller.router.monitor
        if monitor is None:
            return
        try:
            breach = monitor.evaluate()
        except Exception:
            log.exception("monitor evaluation failed")
            return
        if breach is not None:
            log.warning("breach of %s on %s: %s", breach.signal, monitor.new_version,
                        breach.reason)
            try:
                controller.rollback(actor="monitor", reason=breach.reason, breach=breach)
            except RouterError as exc:
                log.warning("automatic rollback not done: %s", exc.message)
        elif monitor.expired(utcnow()):
            controller.keep(monitor)

    def _monitor_loop(self) -> None:
        router = self.controller.router
        interval = self.controller.config.monitor.check_interval_s
        while not self._stop.is_set():
            router.wake.wait(interval)
            router.wake.clear()
            if not self._stop.is_set():
                self.check_once()
