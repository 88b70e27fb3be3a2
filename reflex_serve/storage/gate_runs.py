"""Gate runs, their results and the override audit log in the store.

The gate logic (which gates exist, what may be overridden, when a version may ship)
lives in :mod:`reflex_serve.gates`; this module only reads and writes rows:

    save_gate_run(store, run, results, candidate_manifest)   one transaction
    latest_gate_run(store, digest) -> StoredRun | None       with its overrides
    latest_gate_runs(store, limit) -> [StoredRun]            the newest run of each version
    add_override(store, ...)                                 append-only audit rows
    find_version(store, "3f2a9c01b7de" | "sha256:...")       a model version by id
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from reflex_serve.storage.models import (
    GATE_KINDS,
    GATE_VERDICTS,
    OVERRIDE_STATUSES,
    GateOverride,
    GateResult,
    GateRun,
    ModelVersion,
    utcnow,
)
from reflex_serve.storage.store import Store
from reflex_serve.storage.versions import register_version

MAX_OPERATOR = 128


@dataclass(frozen=True)
class StoredResult:
    """One row of ``gate_results``."""

    gate: str
    name: str
    kind: str
    metric: str
    comparison: str
    threshold: float | None
    value: float | None
    evidence: int
    verdict: str
    detail: str


@dataclass(frozen=True)
class StoredOverride:
    """One row of ``gate_overrides`` (``status`` accepted or refused)."""

    id: int
    run_id: str
    digest: str
    gate: str
    operator: str
    reason: str
    status: str
    refusal: str | None
    at: datetime


@dataclass(frozen=True)
class StoredRun:
    """A gate run with its results (in gate order) and every override attempt on it."""

    id: str
    candidate_digest: str
    candidate_version: str
    reference_digest: str
    reference_version: str
    started_at: datetime
    finished_at: datetime
    actor: str
    passed: bool
    config: dict[str, Any]
    report: dict[str, Any]
    results: list[StoredResult] = field(default_factory=list)
    overrides: list[StoredOverride] = field(default_factory=list)


def _check_result(row: dict[str, Any]) -> None:
    if row["kind"] not in GATE_KINDS:
        raise ValueError(f"gate {row['gate']}: kind must be one of {GATE_KINDS}")
    if row["verdict"] not in GATE_VERDICTS:
        raise ValueError(f"gate {row['gate']}: verdict must be one of {GATE_VERDICTS}")


def save_gate_run(
    store: Store,
    run: dict[str, Any],
    results: list[dict[str, Any]],
    candidate_manifest: dict[str, Any],
) -> str:
    """Record a run and its results in one transaction; returns the run id.

    The candidate version is registered first (state ``candidate``) if the store does
    not know it yet.

    Args:
        run: ``id``, ``reference_digest``, ``reference_version``, ``started_at``,
            ``finished_at``, ``actor``, ``passed``, ``config``, ``report``.
        results: dicts with the :class:`StoredResult` fields.
        candidate_manifest: the candidate's manifest (with ``digest``).

    Raises:
        ValueError: an unknown kind or verdict, a manifest without digest.
    """
    for row in results:
        _check_result(row)
    version = register_version(
        store, candidate_manifest, "candidate", actor=run["actor"], reason="gate run"
    )
    with store.session() as s:
        s.add(GateRun(candidate_digest=version.digest, candidate_version=version.version, **run))
        s.flush()
        s.add_all(GateResult(run_id=run["id"], **row) for row in results)
    return run["id"]


def _results(s, run_id: str) -> list[StoredResult]:
    rows = s.scalars(select(GateResult).where(GateResult.run_id == run_id))
    out = [
        StoredResult(**{f: getattr(r, f) for f in StoredResult.__dataclass_fields__}) for r in rows
    ]
    return sorted(out, key=lambda r: (r.kind != "safety", r.gate))


def _overrides(s, run_id: str) -> list[StoredOverride]:
    stmt = select(GateOverride).where(GateOverride.run_id == run_id).order_by(GateOverride.id)
    return [
        StoredOverride(**{f: getattr(r, f) for f in StoredOverride.__dataclass_fields__})
        for r in s.scalars(stmt)
    ]


def _stored(s, run: GateRun) -> StoredRun:
    fields = {f: getattr(run, f) for f in StoredRun.__dataclass_fields__ if hasattr(run, f)}
    fields.pop("results", None)
    fields.pop("overrides", None)
    return StoredRun(**fields, results=_results(s, run.id), overrides=_overrides(s, run.id))


def latest_gate_run(store: Store, digest: str) -> StoredRun | None:
    """The newest run of a version (by start time), or ``None``."""
    stmt = (
        select(GateRun)
        .where(GateRun.candidate_digest == digest)
        .order_by(GateRun.started_at.desc(), GateRun.finished_at.desc())
        .limit(1)
    )
    with store.session() as s:
        run = s.scalars(stmt).first()
        return None if run is None else _stored(s, run)


def latest_gate_runs(store: Store, limit: int = 50) -> list[StoredRun]:
    """The newest run of each version, newest first, at most ``limit`` versions."""
    newest = (
        select(GateRun.candidate_digest, func.max(GateRun.started_at).label("started_at"))
        .group_by(GateRun.candidate_digest)
        .subquery()
    )
    stmt = (
        select(GateRun)
        .join(
            newest,
            (GateRun.candidate_digest == newest.c.candidate_digest)
            & (GateRun.started_at == newest.c.started_at),
        )
        .order_by(GateRun.started_at.desc())
        .limit(limit)
    )
    with store.session() as s:
        seen: set[str] = set()
        out = []
        for run in s.scalars(stmt):
            if run.candidate_digest not in seen:  # two runs started at the same instant
                seen.add(run.candidate_digest)
                out.append(_stored(s, run))
        return out


def add_override(
    store: Store,
    *,
    run_id: str,
    digest: str,
    gate: str,
    operator: str,
    reason: str,
    status: str,
    refusal: str | None = None,
) -> StoredOverride:
    """Append one override attempt to the audit log (never updated afterwards).

    Raises:
        ValueError: unknown status, an operator over 128 characters.
    """
    if status not in OVERRIDE_STATUSES:
        raise ValueError(f"status must be one of {OVERRIDE_STATUSES}, got {status!r}")
    if len(operator) > MAX_OPERATOR:
        raise ValueError(f"operator must be at most {MAX_OPERATOR} characters")
    row = GateOverride(
        run_id=run_id,
        digest=digest,
        gate=gate,
        operator=operator,
        reason=reason,
        status=status,
        refusal=refusal,
        at=utcnow(),
    )
    with store.session() as s:
        s.add(row)
        s.flush()
        return StoredOverride(**{f: getattr(row, f) for f in StoredOverride.__dataclass_fields__})


def find_version(store: Store, ident: str) -> ModelVersion | None:
    """A model version by its 12-hex version, its full digest, or the digest's hex."""
    ident = ident.strip()
    digest = ident if ident.startswith("sha256:") else f"sha256:{ident}"
    with store.session() as s:
        row = s.get(ModelVersion, digest)
        if row is None:
            row = s.scalars(select(ModelVersion).where(ModelVersion.version == ident)).first()
        return row
