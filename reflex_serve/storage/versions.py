"""Model versions in the store: registration by digest and an audited lifecycle.

States: ``candidate``, ``shadow``, ``canary``, ``active``, ``retired``, ``rolled_back``.
Every change is a ``version_transitions`` row (from, to, time, actor, reason) that is
never updated; the router and the gates (later work) drive the transitions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from reflex_serve.storage.models import (
    LIFECYCLE_STATES,
    ModelVersion,
    VersionTransition,
    utcnow,
)
from reflex_serve.storage.store import Store


def _check_state(state: str) -> None:
    if state not in LIFECYCLE_STATES:
        raise ValueError(f"state must be one of {LIFECYCLE_STATES}, got {state!r}")


def register_version(
    store: Store,
    manifest: dict[str, Any],
    state: str = "candidate",
    *,
    actor: str,
    reason: str = "",
    location: str | None = None,
) -> ModelVersion:
    """Record an export (by ``manifest["digest"]``) if it is new; return its row.

    A new version gets ``state`` and a transition ``None -> state``; a known one is
    returned unchanged (its state is the lifecycle's business, not the caller's), except
    that a given ``location`` (where its export directory is) replaces the recorded one.

    Raises:
        ValueError: unknown state, or a manifest without a digest.
    """
    _check_state(state)
    digest = manifest.get("digest")
    if not digest:
        raise ValueError("manifest has no digest")
    now = utcnow()
    row = {
        "digest": digest,
        "version": digest.split(":")[-1][:12],
        "parent_digest": manifest.get("parent_version"),
        "manifest": manifest,
        "state": state,
        "created_at": now,
        "location": location,
    }
    with store.session() as s:
        if s.get(ModelVersion, digest) is None and store.insert_ignore(s, ModelVersion, [row]):
            s.add(
                VersionTransition(
                    digest=digest,
                    from_state=None,
                    to_state=state,
                    at=now,
                    actor=actor,
                    reason=reason,
                )
            )
        version = s.get(ModelVersion, digest)
        if location is not None and version.location != location:
            version.location = location
        return version


def set_version_state(
    store: Store, digest: str, state: str, *, actor: str, reason: str = ""
) -> VersionTransition:
    """Move a version to ``state`` and log the transition (from, to, time, actor, reason).

    Raises:
        ValueError: unknown state. KeyError: unknown digest.
    """
    _check_state(state)
    with store.session() as s:
        version = s.get(ModelVersion, digest, with_for_update=True)
        if version is None:
            raise KeyError(f"no model version {digest!r}")
        transition = VersionTransition(
            digest=digest,
            from_state=version.state,
            to_state=state,
            at=utcnow(),
            actor=actor,
            reason=reason,
        )
        version.state = state
        s.add(transition)
        return transition


def transitions(store: Store, digest: str) -> list[VersionTransition]:
    """A version's transitions, oldest first."""
    stmt = select(VersionTransition).where(VersionTransition.digest == digest)
    with store.session() as s:
        return list(s.scalars(stmt.order_by(VersionTransition.id)))
