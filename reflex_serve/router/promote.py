"""Promote, roll back, shadow and canary: each decision in process and in the store.

    prepare   check the candidate fits the active version's interface (cameras, state,
              action and chunk sizes), load its sessions beside the old ones (sharing the
              prefix cache), warm them on synthetic and on logged observations, and check
              every warm-up chunk (shape, finite)
    promote   gates (may_ship) -> prepare -> record (slots, lifecycle, swap row: ONE
              transaction, refused if the active version changed meanwhile) -> switch the
              active reference -> start the post-swap monitor; the old version stays
              loaded for the window
    rollback, keep  the two ends of a monitoring window (:mod:`.rollback`)

A failure at any stage before the switch leaves the old version serving and is
recorded as a ``failed`` swap with its stage and error.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from reflex_serve.router.errors import RouterError, StageError
from reflex_serve.router.monitor import Breach, Monitor
from reflex_serve.router.registry import Registry, VersionInfo
from reflex_serve.router.shadow import lower_priority
from reflex_serve.router.stats import action_limits
from reflex_serve.router.sync import Background
from reflex_serve.storage.models import utcnow
from reflex_serve.storage.routing import RouterChange, apply_change, record_swap

if TYPE_CHECKING:
    from reflex_serve.router.router import VersionRouter
    from reflex_serve.runtime.cache import PrefixCache
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.storage.store import Store

log = logging.getLogger(__name__)
INTERFACE = ("state_dim", "action_dim", "chunk_size", "n_action_steps")


T = TypeVar("T")

def at_lower_priority(fn: Callable[[], T], nice: int) -> T:
    """``fn()`` in a new thread at niceness ``nice`` (:func:`.shadow.lower_priority`);
    waits for it and returns its result or raises its exception. The thread ends with
    the call, so no serving thread keeps the lower priority."""
    out: dict[str, Any] = {}

    def target() -> None:
        lower_priority(nice)
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc

    thread = threading.Thread(target=target, name="reflex-promote-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def replica_name() -> str:
    """``host:pid``, recorded with every swap."""
    return f"{socket.gethostname()}:{os.getpid()}"


def interface_problem(candidate: dict[str, Any], active: Policy) -> str | None:
    """Why a candidate's manifest cannot take the active version's clients, or None."""
    m = active.manifest
    for key in INTERFACE:
        if candidate.get(key) != getattr(m, key):
            return f"{key} is {candidate.get(key)}, the active version's is {getattr(m, key)}"
    cams = [(c["name"], c["height"], c["width"]) for c in candidate.get("cameras", [])]
    mine = [(c.name, c.height, c.width) for c in m.cameras]
    if cams != mine:
        return f"cameras are {cams}, the active version's are {mine}"
    return None


class Controller:
    """The router's decisions (thread-safe: one swap at a time).

    Args:
        router: the in-process routes. store: the registry's store.
        cache: the prefix cache versions share. threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, router: VersionRouter, store: Store, *, cache: PrefixCache | None = None,
                 threads: int = 1) -> None:
        self.router = router
        self.config = router.config
        self.store = store
        self.registry = Registry(store)
        self.cache = cache
        self.threads = threads
        self.replica = replica_name()
        self.swap_lock = threading.Lock()
        self.pending: RouterChange | None = None  # a rollback the store has not taken yet
        self.background = Background(self)

    def start(self) -> None:
        """Start mirroring, the sync loop and the monitor loop."""
        self.router.start()
        self.background.start()

    def close(self) -> None:
        self.background.close()
        self.router.close()

    # -- preparing a version ----------------------------------------------------------------

    def load(self, info: VersionInfo) -> Policy:
        """Load a version's sessions (no warm-up), its files checked against its digest.

        Raises:
            StageError: stage ``load`` (a missing or tampered file names both digests).
        """
        from reflex_serve.runtime.policy import Policy

        if not info.location:
            raise StageError("check", f"{info.version} has no export location registered")
        try:
            return Policy(info.location, intra_op_threads=self.threads, cache=self.cache,
                          verify=True)
        except (OSError, ValueError) as exc:  # ExportError is a ValueError
            raise StageError("load", f"cannot load {info.location}: {exc}") from None

    def prepare(self, info: VersionInfo, active: Policy) -> tuple[Policy, dict[str, Any]]:
        """Check, load and warm ``info`` beside ``active``; returns it and the figures.

        Loading and warm-up run in a thread of their own at niceness ``promote.nice``
        (Linux: per thread), below the threads answering /act, so that on a busy host the
        requests in flight during a swap keep their CPU share.

        Raises:
            StageError: stage check, load or warm.
        """
        return at_lower_priority(lambda: self._prepare(info, active), self.config.promote.nice)

    def _prepare(self, info: VersionInfo, active: Policy) -> tuple[Policy, dict[str, Any]]:
        from reflex_serve.runtime.types import Observation
        from reflex_serve.storage.routing import recent_observations

        problem = interface_problem(info.manifest, active)
        if problem:
            raise StageError("check", f"{info.version} cannot serve the active version's "
                              f"clients: {problem}")
        t0 = time.perf_counter()
        policy = self.load(info)
        t1 = time.perf_counter()
        if policy.version != info.version:
            raise StageError("check", f"{info.location} now holds {policy.version}, "
                              f"not {info.version}")
        promote = self.config.promote
        try:
            logged = recent_observations(self.store, active.version, promote.logged_observations)
        except (SQLAlchemyError, ValueError) as exc:
            log.warning("no logged observations for warm-up: %s", exc)
            logged = []
        m = policy.manifest
        blank = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in m.cameras}
        synthetic = Observation(blank, policy.stats.state.mean.copy(), "warm up")
        calls = [("synthetic observation", synthetic)] * promote.warmup_iters
        calls += [(f"logged observation {i}", Observation(*o)) for i, o in enumerate(logged)]
        times = []
        try:
            for i, (what, obs) in enumerate(calls):
                result = policy.act(obs, seed=i)
                times.append(result.total_ms)
                if result.actions.shape != (m.chunk_size, m.action_dim):
                    raise ValueError(f"{what}: chunk of shape {result.actions.shape}")
                if not np.all(np.isfinite(result.actions)):
                    raise ValueError(f"{what}: NaN or Inf in the chunk")
        except Exception as exc:  # noqa: BLE001 - any failure of the new sessions counts
            raise StageError("warm", f"warm-up of {info.version} failed: {exc}") from None
        t2 = time.perf_counter()
        self.router.metrics.swap_seconds.labels("load").observe(t1 - t0)
        self.router.metrics.swap_seconds.labels("warm").observe(t2 - t1)
        figures = {"load_ms": (t1 - t0) * 1e3, "warm_ms": (t2 - t1) * 1e3,
                   "warm_synthetic": promote.warmup_iters, "warm_logged": len(logged),
                   "warm_p50_ms": float(np.median(times)) if times else None,
                   "shared_prefix": policy.prefix_digest == active.prefix_digest}
        return policy, figures

    # -- swaps ------------------------------------------------------------------------------

    def swap_row(self, kind: str, status: str, old: Policy | VersionInfo | None,
                  new: Policy | VersionInfo, actor: str, reason: str, **extra: Any) -> dict:
        def ids(v):
            if v is None:
                return None, None
            return (v.manifest.digest, v.version) if hasattr(v, "act") else (v.digest, v.version)

        (from_digest, from_version), (to_digest, to_version) = ids(old), ids(new)
        row = {"id": uuid.uuid4().hex, "kind": kind, "status": status,
               "from_digest": from_digest, "from_version": from_version,
               "to_digest": to_digest, "to_version": to_version, "actor": actor,
               "reason": reason, "replica": self.replica, "started_at": utcnow(),
               "figures": {}, "stage": None, "error": None, "signal": None,
               "finished_at": None, "monitor_until": None}
        row.update(extra)
        return row

    def fail(self, exc: StageError, info: VersionInfo, active: Policy, actor: str,
              reason: str, figures: dict | None = None) -> RouterError:
        """Record a failed promote (the old version keeps serving); the error to raise."""
        row = self.swap_row("promote", "failed", active, info, actor, reason, stage=exc.stage,
                             error=str(exc), figures=figures or {}, finished_at=utcnow())
        try:
            record_swap(self.store, row)
        except Exception:
            log.exception("could not record the failed promote of %s", info.version)
            row["id"] = None
        self.router.metrics.failures.labels(exc.stage).inc()
        self.router.metrics.swaps.labels("promote", "failed").inc()
        log.warning("promote of %s failed at %s: %s (still serving %s)", info.version,
                    exc.stage, exc, active.version)
        status, code = {"gates": (409, "gates_not_passed"), "check": (422, "load_failed"),
                        "load": (422, "load_failed"), "warm": (422, "load_failed")}.get(
                            exc.stage, (503, "not_ready"))
        return RouterError(status, f"{exc} ({active.version} keeps serving)", code=code,
                           field="version" if exc.stage != "gates" else None,
                           swap_id=row["id"])

    def _acquire(self, blocking: bool = False) -> None:
        if not self.swap_lock.acquire(blocking, 60 if blocking else -1):
            raise RouterError(409, "another swap is in progress; retry when it is done",
                              code="conflict")

    def promote(self, ident: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        """Promote a version to active (gates first). Returns the swap record.

        Raises:
            RouterError: 404 unknown, 409 already active / gates / a concurrent change,
                422 check, load or warm-up failed (recorded), 503 store unavailable.
        """
        self._acquire()
        try:
            info = self.registry.resolve(ident)
            old = self.router.active
            if info.version == old.version:
                raise RouterError(409, f"version: {info.version} is already active",
                                  field="version", code="conflict")
            decision = self.registry.ship_decision(info)
            if not decision.may_ship:
                raise self.fail(StageError("gates", f"{info.version} may not ship: "
                                             f"{decision.reason}"), info, old, actor, reason)
            figures: dict[str, Any] = {"gates": decision.to_dict()}
            new = self.router.find(info.version)
            if new is None:
                try:
                    new, prepared = self.prepare(info, old)
                except StageError as exc:
                    raise self.fail(exc, info, old, actor, reason, figures) from None
                figures.update(prepared)
            return self._switch_to(new, old, actor, reason, figures)
        finally:
            self.swap_lock.release()

    def _switch_to(self, new: Policy, old: Policy, actor: str, reason: str,
                   figures: dict[str, Any]) -> dict[str, Any]:
        from reflex_serve.storage.routing import open_swap

        now = utcnow()
        until = now + timedelta(seconds=self.config.monitor.window_s)
        baseline = self.router.baseline()
        figures["baseline"] = baseline.to_dict()
        row = self.swap_row("promote", "monitoring", old, new, actor, reason,
                             figures=figures, started_at=now, monitor_until=until)
        routes = self.router.routes
        slots = {"active": (new.manifest.digest, 1.0)}
        for slot in ("shadow", "canary"):
            held = getattr(routes, slot)
            if held is not None and held.version == new.version:
                slots[slot] = (None, 0.0)
        superseded = open_swap(self.store)
        change = RouterChange(
            actor, reason or f"promote {new.version}", slots=slots,
            states=[(new.manifest.digest, "active"), (old.manifest.digest, "retired")],
            new_swaps=[row], expect_active=old.manifest.digest,
            swap_status=[(superseded.id, ("monitoring",), "superseded", None)]
            if superseded is not None else [])
        t0 = time.perf_counter()
        try:
            revision = apply_change(self.store, change)
        except SQLAlchemyError as exc:
            self.router.metrics.failures.labels("store").inc()
            raise RouterError(503, f"the store is unavailable, nothing changed: {exc}",
                              code="not_ready") from None
        if revision is None:
            raise RouterError(409, "the active version changed meanwhile (another replica?); "
                              "nothing changed", code="conflict")
        self.router.switch(new, keep_previous=True)
        self.router.revision = revision
        self.router.metrics.swap_seconds.labels("switch").observe(time.perf_counter() - t0)
        self.router.metrics.swaps.labels("promote", "ok").inc()
        self.router.start_monitor(self.monitor_for(row["id"], new, old, baseline, now, until))
        log.info("promoted %s (was %s); monitoring until %s", new.version, old.version, until)
        return {**row, "started_at": now.isoformat(), "monitor_until": until.isoformat(),
                "finished_at": None}

    def monitor_for(self, swap_id: str, new: Policy, previous: Policy | None, baseline,
                    started_at: datetime, until: datetime,
                    previous_version: str | None = None) -> Monitor:
        """The monitor of a swap to ``new`` (``previous``: loaded, for mirrored calls)."""
        from reflex_serve.storage.routing import attributed_outcomes

        def outcomes(version, since, until_, limit, newest_first):
            rows = attributed_outcomes(self.store, version, since=since, until=until_,
                                       limit=limit, newest_first=newest_first)
            return [ok for _, ok in rows]

        limits = action_limits(previous or new, new, self.config.action_limits.margin)
        return Monitor(swap_id, new.version,
                       previous.version if previous is not None else previous_version,
                       baseline, limits, self.config, started_at, until, outcomes,
                       mirrored=previous is not None, wake=self.router.wake.set)

    def rollback(self, *, actor: str, reason: str = "", to: str | None = None,
                 breach: Breach | None = None) -> dict[str, Any]:
        """Roll back now (:func:`.rollback.rollback`)."""
        from reflex_serve.router.rollback import rollback

        self._acquire(blocking=breach is not None)
        try:
            return rollback(self, actor=actor, reason=reason, to=to, breach=breach)
        finally:
            self.swap_lock.release()

    def flush_pending(self) -> bool:
        """Retry a rollback the store refused; True when nothing is pending."""
        from reflex_serve.router.rollback import record

        change = self.pending
        if change is None:
            return True
        record(self, change)
        return self.pending is None

    def keep(self, monitor: Monitor) -> None:
        """The window ended without a breach (:func:`.rollback.keep`)."""
        from reflex_serve.router.rollback import keep

        with self.swap_lock:
            keep(self, monitor)

    def set_traffic(self, slot: str, ident: str, fraction: float, *, actor: str,
                    reason: str = "") -> dict[str, Any]:
        """Shadow or canary traffic for a version (:func:`.traffic.set_traffic`)."""
        from reflex_serve.router.traffic import set_traffic

        self._acquire()
        try:
            return set_traffic(self, slot, ident, fraction, actor=actor, reason=reason)
        finally:
            self.swap_lock.release()

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.registry.swaps(limit)
