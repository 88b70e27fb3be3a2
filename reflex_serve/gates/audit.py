"""Persisted gate runs, audited overrides, and the question the router asks.

    persist(store, report)                      every run and result (one transaction)
    override(store, version, gate, operator, reason)
                                                a performance gate of the version's latest
                                                run; safety gates (and gates that passed)
                                                are refused, and the refusal is recorded
    may_ship(store, version) -> ShipDecision    latest run: every safety gate passed and
                                                every performance gate passed or overridden
    latest_report(store, version) -> GateReport the latest run with overrides applied

An override belongs to the run it was made on: a new run of the same version is new
evidence and needs its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .results import GATES, PASS, PERFORMANCE, SAFETY, GateReport, gate_spec


class AuditError(ValueError):
    """Bad input to an audit operation (unknown version or gate, empty reason...)."""


class OverrideRefused(Exception):
    """The override was refused; the attempt is in the audit log (``record``)."""

    def __init__(self, message: str, record) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class ShipDecision:
    """Whether a version may ship, on the evidence of its latest gate run."""

    version: str
    may_ship: bool
    run_id: str | None
    blocking: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def persist(store, report: GateReport, candidate_manifest: dict[str, Any]) -> str:
    """Record a run and its nine results; returns the run id."""
    from ..storage.gate_runs import save_gate_run

    run = {
        "id": report.run_id,
        "reference_digest": report.reference["digest"],
        "reference_version": report.reference["version"],
        "started_at": datetime.fromisoformat(report.started_at),
        "finished_at": datetime.fromisoformat(report.finished_at),
        "actor": report.actor or "unknown",
        "passed": report.passed,
        "config": report.config,
        "report": report.to_dict(),
    }
    return save_gate_run(store, run, [r.row() for r in report.results], candidate_manifest)


def _latest(store, ident: str):
    from ..storage.gate_runs import find_version, latest_gate_run

    version = find_version(store, ident)
    if version is None:
        raise AuditError(f"the store knows no model version {ident!r}")
    run = latest_gate_run(store, version.digest)
    if run is None:
        raise AuditError(f"version {version.version} has no gate run; run `reflex gates run` first")
    return version, run


def _accepted(run) -> dict[str, Any]:
    """Gate id -> the first accepted override of a performance gate in this run."""
    out: dict[str, Any] = {}
    for o in run.overrides:
        if o.status == "accepted" and gate_spec(o.gate).kind == PERFORMANCE:
            out.setdefault(o.gate, o)
    return out


def _override_dict(o) -> dict[str, Any]:
    return {
        "id": o.id,
        "gate": o.gate,
        "operator": o.operator,
        "reason": o.reason,
        "status": o.status,
        "refusal": o.refusal,
        "at": o.at.isoformat(),
    }


def latest_report(store, ident: str) -> GateReport:
    """The version's latest run as a report, with accepted overrides applied.

    Raises:
        AuditError: unknown version, or no run.
    """
    _, run = _latest(store, ident)
    report = GateReport.from_dict(run.report)
    accepted = _accepted(run)
    for r in report.results:
        if r.gate in accepted:
            r.overridden = _override_dict(accepted[r.gate])
    report.overrides = [_override_dict(o) for o in run.overrides]
    return report


def override(store, ident: str, gate: str, operator: str, reason: str):
    """Override a gate of the version's latest run; returns the audit row.

    Raises:
        AuditError: unknown gate or version, no run, an empty operator or reason
            (nothing is recorded).
        OverrideRefused: a safety gate, or a gate that passed (the refusal is recorded).
    """
    from ..storage.gate_runs import add_override

    try:
        spec = gate_spec(gate)
    except KeyError as exc:
        raise AuditError(str(exc.args[0])) from None
    if not operator.strip():
        raise AuditError("--operator must name who overrides (it is recorded)")
    if not reason.strip():
        raise AuditError("--reason must say why the gate is overridden (it is recorded)")
    version, run = _latest(store, ident)
    result = next((r for r in run.results if r.gate == spec.id), None)
    refusal = None
    if spec.kind == SAFETY:
        refusal = f"{spec.id} {spec.name} is a safety gate: safety gates can never be overridden"
    elif result is None:
        refusal = f"run {run.id} has no result for {spec.id}"
    elif result.verdict == PASS:
        refusal = f"{spec.id} {spec.name} passed in run {run.id}: there is nothing to override"
    row = add_override(
        store,
        run_id=run.id,
        digest=version.digest,
        gate=spec.id,
        operator=operator.strip(),
        reason=reason.strip(),
        status="refused" if refusal else "accepted",
        refusal=refusal,
    )
    if refusal:
        raise OverrideRefused(f"override refused: {refusal} (attempt recorded, id {row.id})", row)
    return row


def decide(run) -> tuple[bool, list[str], list[str]]:
    """(may ship, blocking gate ids, overridden gate ids) of a stored run."""
    accepted = _accepted(run)
    by_gate = {r.gate: r for r in run.results}
    blocking, overridden = [], []
    for g in GATES:
        r = by_gate.get(g.id)
        if r is not None and r.verdict == PASS:
            continue
        if r is not None and g.kind == PERFORMANCE and g.id in accepted:
            overridden.append(g.id)
        else:
            blocking.append(g.id)
    return not blocking, blocking, overridden


def may_ship(store, ident: str) -> ShipDecision:
    """May this version ship? Its latest gate run decides (module docstring).

    Unknown versions and versions without a run may not ship (``reason`` says why).
    """
    try:
        version, run = _latest(store, ident)
    except AuditError as exc:
        return ShipDecision(ident, False, None, reason=str(exc))
    ok, blocking, overridden = decide(run)
    reason = (
        "every gate passed"
        if ok and not overridden
        else (f"overridden: {', '.join(overridden)}" if ok else f"blocked by {', '.join(blocking)}")
    )
    return ShipDecision(version.version, ok, run.id, blocking, overridden, reason)
