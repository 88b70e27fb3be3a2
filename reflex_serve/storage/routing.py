"""The router's rows: routing slots, swaps, shadow comparisons, and the reads it needs.

    read_slots(store) -> Slots                      the three slots and the revision
    apply_change(store, change) -> int | None       ONE transaction: slots, lifecycle states
                                                    (with transitions), swap rows; refused
                                                    (None) when the active version is not
                                                    the one the change expects
    record_swap(store, row)                         a swap row alone (a failed promote)
    swaps(store, limit), open_swap(store)           history; the swap being monitored
    add_comparisons(store, rows)                    shadow / monitor comparisons
    comparison_stats(store, candidate_version)      count, mean and max divergence
    attributed_outcomes(store, version, ...)        episode outcomes served by one version
    recent_observations(store, version, limit)      logged observations, for warm-up
    version_rows(store), was_active(store, digest)

On PostgreSQL :func:`apply_change` locks the slot rows first, so changes made by several
replicas at once are serialised and the revision grows by one per change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import exists, func, select

from reflex_serve.storage.models import (
    ROUTER_SLOTS,
    Episode,
    ModelVersion,
    Request,
    RouterSlot,
    ShadowComparison,
    Swap,
    VersionTransition,
    utcnow,
)
from reflex_serve.storage.records import from_f32_bytes
from reflex_serve.storage.store import Store

#: ``RouterChange.expect_active`` default: apply whatever version is active.
ANY = object()


@dataclass(frozen=True)
class SlotRow:
    """One routing slot with its version's short id and export location."""

    slot: str
    digest: str | None
    version: str | None
    location: str | None
    fraction: float
    revision: int
    updated_at: datetime
    actor: str
    reason: str


@dataclass(frozen=True)
class Slots:
    """The three slots; ``revision`` is the largest of theirs (it grows on every change)."""

    active: SlotRow
    shadow: SlotRow
    canary: SlotRow

    @property
    def revision(self) -> int:
        return max(self.active.revision, self.shadow.revision, self.canary.revision)


@dataclass
class RouterChange:
    """What one router decision writes, all or nothing.

    Attributes:
        actor, reason: recorded on the slots and on every transition.
        slots: slot -> (digest or None, fraction).
        states: (digest, lifecycle state) pairs; a transition row is added for each
            version whose state changes.
        new_swaps: rows of ``swaps`` to insert (dicts of :class:`Swap` columns).
        swap_status: (swap id, statuses it may have, new status, figures to merge): a
            compare-and-set, skipped for a swap in another status.
        expect_active: the digest (or None) that must be active for the change to apply.
    """

    actor: str
    reason: str
    slots: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    states: list[tuple[str, str]] = field(default_factory=list)
    new_swaps: list[dict[str, Any]] = field(default_factory=list)
    swap_status: list[tuple[str, tuple[str, ...], str, dict | None]] = field(default_factory=list)
    expect_active: Any = ANY


def read_slots(store: Store) -> Slots:
    """The routing slots (one small query: every replica runs it once per sync tick)."""
    stmt = select(RouterSlot, ModelVersion.version, ModelVersion.location).outerjoin(
        ModelVersion, ModelVersion.digest == RouterSlot.digest
    )
    with store.session() as s:
        rows = {
            slot.slot: SlotRow(slot.slot, slot.digest, version, location, slot.fraction,
                               slot.revision, slot.updated_at, slot.actor, slot.reason)
            for slot, version, location in s.execute(stmt)
        }
    missing = set(ROUTER_SLOTS) - set(rows)
    if missing:
        raise RuntimeError(f"router_slots lacks rows {sorted(missing)} (migration 0003)")
    return Slots(rows["active"], rows["shadow"], rows["canary"])


def apply_change(store: Store, change: RouterChange) -> int | None:
    """Apply ``change`` in one transaction; returns the new revision, or None when the
    active version is not ``change.expect_active`` (nothing is written then).

    Raises:
        KeyError: a state change names an unknown digest (nothing is written).
    """
    now = utcnow()
    with store.session() as s:
        rows = {r.slot: r for r in s.scalars(select(RouterSlot).with_for_update())}
        if change.expect_active is not ANY and rows["active"].digest != change.expect_active:
            return None
        revision = max(r.revision for r in rows.values()) + 1
        for slot, (digest, fraction) in change.slots.items():
            row = rows[slot]
            row.digest, row.fraction, row.revision = digest, float(fraction), revision
            row.updated_at, row.actor, row.reason = now, change.actor, change.reason
        for digest, state in change.states:
            version = s.get(ModelVersion, digest, with_for_update=True)
            if version is None:
                raise KeyError(f"no model version {digest!r}")
            if version.state != state:
                s.add(VersionTransition(digest=digest, from_state=version.state, to_state=state,
                                        at=now, actor=change.actor, reason=change.reason))
                version.state = state
        for row in change.new_swaps:
            s.add(Swap(**row))
        for swap_id, expected, status, figures in change.swap_status:
            swap = s.get(Swap, swap_id, with_for_update=True)
            if swap is not None and swap.status in expected:
                swap.status, swap.finished_at = status, now
                if figures:
                    swap.figures = {**swap.figures, **figures}
        return revision


def record_swap(store: Store, row: dict[str, Any]) -> None:
    """Insert one swap row (a failed promote: nothing else changes)."""
    with store.session() as s:
        s.add(Swap(**row))


def swaps(store: Store, limit: int = 50, digest: str | None = None) -> list[Swap]:
    """Swap rows, newest first (optionally those to or from one version)."""
    stmt = select(Swap).order_by(Swap.started_at.desc()).limit(limit)
    if digest is not None:
        stmt = stmt.where((Swap.to_digest == digest) | (Swap.from_digest == digest))
    with store.session() as s:
        return list(s.scalars(stmt))


def open_swap(store: Store) -> Swap | None:
    """The newest promote still in its monitoring window, or None."""
    stmt = (
        select(Swap)
        .where(Swap.kind == "promote", Swap.status == "monitoring")
        .order_by(Swap.started_at.desc())
        .limit(1)
    )
    with store.session() as s:
        return s.scalars(stmt).first()


def add_comparisons(store: Store, rows: list[dict[str, Any]]) -> None:
    """Insert comparison rows (dicts of :class:`ShadowComparison` columns)."""
    if rows:
        with store.session() as s:
            s.execute(ShadowComparison.__table__.insert(), rows)


def comparison_stats(
    store: Store, candidate_version: str, mode: str | None = None
) -> tuple[int, float | None, float | None]:
    """(count, mean divergence, max divergence) of a candidate's recorded comparisons."""
    stmt = select(
        func.count(), func.avg(ShadowComparison.divergence), func.max(ShadowComparison.divergence)
    ).where(ShadowComparison.candidate_version == candidate_version)
    if mode is not None:
        stmt = stmt.where(ShadowComparison.mode == mode)
    with store.session() as s:
        n, mean, top = s.execute(stmt).one()
    return int(n), None if mean is None else float(mean), None if top is None else float(top)


def attributed_outcomes(
    store: Store,
    version: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[tuple[datetime, bool]]:
    """(reported_at, success) of served episodes whose every logged request was served by
    ``version`` (short id), reported in [since, until), oldest first unless asked.

    An episode that spans a swap (requests of two versions) belongs to neither.
    """
    served_by = exists().where(
        Request.episode_id == Episode.id, Request.source == "served",
        Request.model_version == version,
    )
    served_by_other = exists().where(
        Request.episode_id == Episode.id, Request.source == "served",
        (Request.model_version != version) | Request.model_version.is_(None),
    )
    stmt = select(Episode.reported_at, Episode.outcome).where(
        Episode.outcome.is_not(None), served_by, ~served_by_other
    )
    if since is not None:
        stmt = stmt.where(Episode.reported_at >= since)
    if until is not None:
        stmt = stmt.where(Episode.reported_at < until)
    order = Episode.reported_at.desc() if newest_first else Episode.reported_at
    stmt = stmt.order_by(order, Episode.id).limit(limit)
    with store.session() as s:
        return [(at, outcome == "success") for at, outcome in s.execute(stmt)]


def recent_observations(
    store: Store, version: str | None, limit: int
) -> list[tuple[dict[str, np.ndarray], np.ndarray, str]]:
    """Up to ``limit`` of the newest logged observations (images by camera, state,
    instruction) served by ``version`` (any version if None); rows without images are
    skipped."""
    from reflex_serve.storage.reader import _load_images

    stmt = select(Request.id, Request.state, Request.state_dim, Request.instruction).where(
        Request.source == "served"
    )
    if version is not None:
        stmt = stmt.where(Request.model_version == version)
    stmt = stmt.order_by(Request.received_at.desc()).limit(limit)
    with store.session() as s:
        rows = list(s.execute(stmt))
    images = _load_images(store, [r.id for r in rows]) if rows else {}
    out = []
    for r in rows:
        if r.id in images:
            cams = {cam: img for cam, (_, img) in images[r.id].items()}
            out.append((cams, from_f32_bytes(r.state, (r.state_dim,)), r.instruction))
    return out


def version_rows(store: Store) -> list[ModelVersion]:
    """Every registered version, oldest first."""
    with store.session() as s:
        return list(s.scalars(select(ModelVersion).order_by(ModelVersion.created_at)))


def was_active(store: Store, digest: str) -> bool:
    """Whether the version was ever active (a rollback may return to it without gates)."""
    stmt = select(
        exists().where(VersionTransition.digest == digest, VersionTransition.to_state == "active")
    )
    with store.session() as s:
        return bool(s.scalar(stmt))
