"""The version registry: exports by digest, their lifecycle, gate verdicts and swaps.

A thin layer over :mod:`reflex_serve.storage.versions` and
:mod:`reflex_serve.storage.routing` that speaks in :class:`VersionInfo` values and
:class:`~reflex_serve.router.errors.RouterError`; the gate verdict comes from
:func:`reflex_serve.gates.audit.may_ship` (every safety gate passed, every performance
gate passed or overridden with an audited reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reflex_serve.router.errors import RouterError

if TYPE_CHECKING:
    from reflex_serve.gates.audit import ShipDecision
    from reflex_serve.storage.models import Swap
    from reflex_serve.storage.routing import Slots
    from reflex_serve.storage.store import Store


@dataclass(frozen=True)
class VersionInfo:
    """A registered version."""

    digest: str
    version: str
    state: str
    parent_digest: str | None
    location: str | None
    created_at: datetime
    manifest: dict[str, Any]

    @classmethod
    def from_row(cls, row) -> VersionInfo:
        return cls(row.digest, row.version, row.state, row.parent_digest, row.location,
                   row.created_at, row.manifest)


def swap_dict(row: Swap) -> dict[str, Any]:
    """A ``swaps`` row as plain JSON-able data."""
    def iso(t):
        return t.isoformat() if t is not None else None

    return {"id": row.id, "kind": row.kind, "status": row.status,
            "from_version": row.from_version, "to_version": row.to_version,
            "from_digest": row.from_digest, "to_digest": row.to_digest, "actor": row.actor,
            "reason": row.reason, "stage": row.stage, "error": row.error, "signal": row.signal,
            "figures": row.figures, "replica": row.replica, "started_at": iso(row.started_at),
            "finished_at": iso(row.finished_at), "monitor_until": iso(row.monitor_until)}


class Registry:
    """Versions in ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def register(self, path: str | Path, *, actor: str, reason: str = "") -> tuple[VersionInfo, bool]:
        """Register the export directory at ``path`` (its digest checked against its
        files) as a ``candidate``; returns (the version, whether it is new).

        Raises:
            RouterError: 422 naming ``path`` if it is not a valid export.
        """
        from reflex_serve.export.manifest import ExportError, read_manifest
        from reflex_serve.storage.gate_runs import find_version
        from reflex_serve.storage.versions import register_version

        location = Path(path).expanduser()
        try:
            manifest = read_manifest(location, verify=True)
        except (ExportError, OSError, ValueError) as exc:
            raise RouterError(422, f"path: {exc}", field="path", code="invalid_field") from None
        known = find_version(self.store, manifest.digest) is not None
        row = register_version(self.store, manifest.to_dict(), "candidate", actor=actor,
                               reason=reason or "registered", location=str(location.resolve()))
        return VersionInfo.from_row(row), not known

    def resolve(self, ident: str, field: str = "version") -> VersionInfo:
        """A version by 12-hex id or digest.

        Raises:
            RouterError: 404 if the store does not know it.
        """
        from reflex_serve.storage.gate_runs import find_version

        row = find_version(self.store, ident) if ident and ident.strip() else None
        if row is None:
            raise RouterError(404, f"{field}: no registered model version {ident!r} "
                              "(register its export directory first)", field=field,
                              code="not_found")
        return VersionInfo.from_row(row)

    def versions(self) -> list[VersionInfo]:
        from reflex_serve.storage.routing import version_rows

        return [VersionInfo.from_row(r) for r in version_rows(self.store)]

    def ship_decision(self, version: VersionInfo) -> ShipDecision:
        from reflex_serve.gates.audit import may_ship

        return may_ship(self.store, version.digest)

    def was_active(self, version: VersionInfo) -> bool:
        from reflex_serve.storage.routing import was_active

        return was_active(self.store, version.digest)

    def slots(self) -> Slots:
        from reflex_serve.storage.routing import read_slots

        return read_slots(self.store)

    def transitions(self, version: VersionInfo) -> list[dict[str, Any]]:
        from reflex_serve.storage.versions import transitions

        return [{"from": t.from_state, "to": t.to_state, "at": t.at.isoformat(),
                 "actor": t.actor, "reason": t.reason}
                for t in transitions(self.store, version.digest)]

    def swaps(self, limit: int = 50, version: VersionInfo | None = None) -> list[dict[str, Any]]:
        from reflex_serve.storage.routing import swaps

        rows = swaps(self.store, limit, version.digest if version is not None else None)
        return [swap_dict(r) for r in rows]

    def comparisons(self, version: VersionInfo) -> dict[str, Any]:
        from reflex_serve.storage.routing import comparison_stats

        n, mean, top = comparison_stats(self.store, version.version)
        return {"count": n, "mean_divergence": mean, "max_divergence": top}
