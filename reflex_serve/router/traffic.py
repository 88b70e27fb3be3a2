"""Shadow and canary traffic for a candidate version, in process and in the store.

- shadow: a share of the active version's requests is mirrored to the candidate off the
  response path (clients never see it, so no gates are needed);
- canary: a share of episodes is served by the candidate (clients see it, so the
  candidate must be allowed to ship, as for a promote).

A version holds at most one of the two slots; a fraction of 0 ends it (the version goes
back to ``candidate``). The candidate is loaded and warmed like a promote, and a failure
is recorded the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from reflex_serve.router.errors import RouterError, StageError
from reflex_serve.storage.routing import RouterChange, apply_change

if TYPE_CHECKING:
    from reflex_serve.router.promote import Controller

SLOTS = ("shadow", "canary")


def set_traffic(controller: Controller, slot: str, ident: str, fraction: float, *,
                actor: str, reason: str = "") -> dict[str, Any]:
    """Send ``fraction`` of requests (shadow) or episodes (canary) to a version; 0 ends
    it. The caller holds ``controller.swap_lock``.

    Raises:
        RouterError: 404 unknown version; 409 the active version, not in that slot, or a
            canary that may not ship; 422 bad fraction or a failed load (recorded).
    """
    if slot not in SLOTS:
        raise ValueError(f"slot must be one of {SLOTS}, got {slot!r}")
    if not 0.0 <= fraction <= 1.0:
        raise RouterError(422, f"fraction: must be in [0, 1], got {fraction}",
                          field="fraction", code="invalid_field")
    router = controller.router
    info = controller.registry.resolve(ident)
    routes, active = router.routes, router.active
    if info.version == active.version:
        raise RouterError(409, f"version: {info.version} is the active version",
                          field="version", code="conflict")
    held = getattr(routes, slot)
    states: list[tuple[str, str]] = []
    slots: dict[str, tuple[str | None, float]] = {}
    if fraction == 0.0:
        if held is None or held.version != info.version:
            raise RouterError(409, f"version: {info.version} is not the {slot}",
                              field="version", code="conflict")
        policy = None
        slots[slot] = (None, 0.0)
        states.append((info.digest, "candidate"))
    else:
        if slot == "canary":
            decision = controller.registry.ship_decision(info)
            if not decision.may_ship:
                raise RouterError(409, f"{info.version} may not ship, so it may not serve "
                                  f"canary traffic: {decision.reason}", code="gates_not_passed")
        policy = router.find(info.version)
        if policy is None:
            try:
                policy, _ = controller.prepare(info, active)
            except StageError as exc:
                raise controller.fail(exc, info, active, actor, f"{slot}: {reason}") from None
        slots[slot] = (info.digest, fraction)
        states.append((info.digest, slot))
        other = SLOTS[1 - SLOTS.index(slot)]
        other_held = getattr(routes, other)
        if other_held is not None and other_held.version == info.version:
            slots[other] = (None, 0.0)
        if held is not None and held.version != info.version:
            states.append((held.manifest.digest, "candidate"))
    change = RouterChange(actor, reason or f"{slot} {info.version} at {fraction:g}",
                          slots=slots, states=states, expect_active=active.manifest.digest)
    try:
        revision = apply_change(controller.store, change)
    except SQLAlchemyError as exc:
        raise RouterError(503, f"the store is unavailable, nothing changed: {exc}",
                          code="not_ready") from None
    if revision is None:
        raise RouterError(409, "the active version changed meanwhile; nothing changed",
                          code="conflict")
    router.set_traffic(slot, policy, fraction)
    router.revision = revision
    return {"slot": slot, "version": info.version, "fraction": fraction, "revision": revision}
