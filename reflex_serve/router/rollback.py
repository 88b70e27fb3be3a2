"""The two ends of a monitoring window: roll back, or keep.

    rollback  switch back to the previous version at once (it is loaded and warm), then
              record it: the new version ``rolled_back``, the previous ``active``, a
              ``rollback`` swap row with the signal (``operator`` by hand) and the
              figures, the promote row ``rolled_back``. A rollback the store cannot take
              yet is kept pending and retried by the sync loop.
    keep      the window ended without a breach: the promote row becomes ``kept`` with
              the monitor's final state, and the previous version is unloaded.

The caller (:class:`~reflex_serve.router.promote.Controller`) holds its swap lock.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from reflex_serve.router.errors import RouterError, StageError
from reflex_serve.storage.models import utcnow
from reflex_serve.storage.routing import RouterChange, apply_change, open_swap, swaps

if TYPE_CHECKING:
    from reflex_serve.router.monitor import Breach, Monitor
    from reflex_serve.router.promote import Controller
    from reflex_serve.router.router import Routes
    from reflex_serve.runtime.policy import Policy

log = logging.getLogger(__name__)
MONITOR_ACTOR = "monitor"


def rollback(controller: Controller, *, actor: str, reason: str = "", to: str | None = None,
             breach: Breach | None = None) -> dict[str, Any]:
    """Make the previous version (or ``to``, a version that was active before) active.

    Raises:
        RouterError: 404 unknown ``to``; 409 nothing to roll back to, never active, or
            (``breach``) the monitored version is no longer active; 422 ``to`` cannot be
            loaded (recorded).
    """
    router = controller.router
    started = utcnow()
    routes, current = router.routes, router.active
    monitor = router.monitor
    if breach is not None and (monitor is None or monitor.new_version != current.version):
        raise RouterError(409, "the monitored version is no longer active", code="conflict")
    target, figures = _target(controller, routes, current, to, actor, reason)
    router.switch(target, keep_previous=False)
    router.start_monitor(None)
    if breach is not None:
        router.metrics.breach_to_rollback.observe(time.monotonic() - breach.evidence_at)
        figures.update(breach.figures)
        figures["signals"] = monitor.status()["signals"]
    signal = breach.signal if breach is not None else "operator"
    router.metrics.rollbacks.labels(signal).inc()
    router.metrics.swaps.labels("rollback", "ok").inc()
    row = controller.swap_row("rollback", "done", current, target, actor, reason,
                              signal=signal, figures=figures, started_at=started,
                              finished_at=utcnow())
    opened = open_swap(controller.store)
    promoted = opened is not None and opened.to_digest == current.manifest.digest
    record(controller, RouterChange(
        actor, reason or f"roll back to {target.version}",
        slots={"active": (target.manifest.digest, 1.0)},
        states=[(current.manifest.digest, "rolled_back"), (target.manifest.digest, "active")],
        new_swaps=[row], expect_active=current.manifest.digest,
        swap_status=[(opened.id, ("monitoring",), "rolled_back",
                      {"rollback": row["id"], "signal": signal})] if promoted else []))
    log.warning("rolled back %s -> %s (%s): %s", current.version, target.version, signal,
                reason)
    return {**row, "started_at": row["started_at"].isoformat(),
            "finished_at": row["finished_at"].isoformat()}


def _target(controller: Controller, routes: Routes, current: Policy, to: str | None,
            actor: str, reason: str) -> tuple[Policy, dict[str, Any]]:
    """The version to return to, loaded (and warmed if it was not)."""
    if to is None:
        if routes.previous is not None:
            return routes.previous, {"previous_loaded": True}
        digest = current.manifest.digest
        last = next((s for s in swaps(controller.store, 20, digest)
                     if s.kind == "promote" and s.to_digest == digest and s.from_digest), None)
        if last is None:
            raise RouterError(409, f"nothing to roll back to: no promote to {current.version} "
                              "is recorded; name a version (--to, or 'to' in the request body)", code="conflict",
                              field="to")
        to = last.from_digest
    info = controller.registry.resolve(to, field="to")
    if info.version == current.version:
        raise RouterError(409, f"to: {info.version} is already active", field="to",
                          code="conflict")
    if not controller.registry.was_active(info):
        raise RouterError(409, f"to: {info.version} was never active; promote it instead "
                          "(promotion checks its gates)", field="to", code="conflict")
    loaded = controller.router.find(info.version)
    if loaded is not None:
        return loaded, {"previous_loaded": True}
    try:
        policy, figures = controller.prepare(info, current)
    except StageError as exc:
        raise controller.fail(exc, info, current, actor, reason) from None
    return policy, {**figures, "previous_loaded": False}


def record(controller: Controller, change: RouterChange) -> None:
    """Write a change already applied in process; kept pending if the store fails."""
    try:
        revision = apply_change(controller.store, change)
    except Exception:
        log.exception("could not record the rollback; retrying from the sync loop")
        controller.router.metrics.failures.labels("store").inc()
        controller.pending = change
        return
    controller.pending = None
    if revision is not None:
        controller.router.revision = revision


def keep(controller: Controller, monitor: Monitor) -> None:
    """Record the end of a window without a breach and unload the previous version."""
    router = controller.router
    if router.monitor is not monitor:
        return
    try:
        opened = open_swap(controller.store)
        if opened is not None and opened.id == monitor.swap_id:
            apply_change(controller.store, RouterChange(
                MONITOR_ACTOR, "monitoring window ended without a breach",
                swap_status=[(opened.id, ("monitoring",), "kept",
                              {"monitor": monitor.status()})]))
    except Exception:
        log.exception("could not record the end of the monitoring window")
        return
    router.start_monitor(None)
    router.drop_previous()
    log.info("%s kept after its monitoring window", monitor.new_version)
