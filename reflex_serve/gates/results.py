"""The nine gates and what a run of them produces.

SAFETY gates (S1-S3) can never be overridden, and one that cannot be evaluated fails.
PERFORMANCE gates (P1-P6) can be overridden by an operator with a reason; one that
cannot be evaluated reports ``not_evaluated``, which fails unless overridden.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SAFETY, PERFORMANCE = "safety", "performance"
PASS, FAIL, NOT_EVALUATED = "pass", "fail", "not_evaluated"
REPORT_FORMAT = "reflex-gates/1"


@dataclass(frozen=True)
class GateSpec:
    """A gate of the catalogue: id, name, kind and what its value measures."""

    id: str
    name: str
    kind: str
    metric: str


GATES: tuple[GateSpec, ...] = (
    GateSpec("S1", "finite", SAFETY, "non-finite action values"),
    GateSpec("S2", "action_limits", SAFETY, "action values outside the limits"),
    GateSpec("S3", "motion_smoothness", SAFETY, "p99 step change / teacher's"),
    GateSpec("P1", "task_success", PERFORMANCE, "Wilson lower bound of success"),
    GateSpec("P2", "per_task_regression", PERFORMANCE, "largest per-task drop"),
    GateSpec("P3", "action_agreement", PERFORMANCE, "pooled relative energy distance"),
    GateSpec("P4", "latency_speedup", PERFORMANCE, "act p50 / teacher's"),
    GateSpec("P5", "latency_p99_budget", PERFORMANCE, "act p99, ms"),
    GateSpec("P6", "resources", PERFORMANCE, "memory and bytes / teacher's"),
)
GATES_BY_ID = {g.id: g for g in GATES}


def gate_spec(ident: str) -> GateSpec:
    """A gate by id (``P4``, ``p4``) or name (``latency_speedup``).

    Raises:
        KeyError: unknown gate, with the known ids in the message.
    """
    key = ident.strip()
    for g in GATES:
        if key.upper() == g.id or key.lower() == g.name:
            return g
    known = ", ".join(f"{g.id} ({g.name})" for g in GATES)
    raise KeyError(f"unknown gate {ident!r}; the gates are {known}")


def _finite_or_none(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class GateResult:
    """The outcome of one gate.

    Attributes:
        gate, name, kind: from the catalogue.
        metric: what ``value`` measures.
        comparison, threshold: the pass condition, ``value <comparison> threshold``
            (``"<="``, ``">="``, ``"=="``); threshold ``None`` when it could not be set.
        value: the measured value (``None`` when not measured; never NaN in JSON).
        evidence: how many samples it rests on (chunks, episodes, timed calls...).
        verdict: ``pass``, ``fail`` or ``not_evaluated``.
        detail: one line an operator can act on.
        data: supporting figures (per task rates, percentiles, ...).
        overridden: set when an accepted override applies (reports shown later).
    """

    gate: str
    name: str
    kind: str
    metric: str
    comparison: str
    threshold: float | None
    value: float | None
    evidence: int
    verdict: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    overridden: dict[str, Any] | None = None

    @classmethod
    def make(
        cls,
        gate: str,
        comparison: str,
        threshold: float | None,
        value: float | None,
        evidence: int,
        verdict: str,
        detail: str = "",
        **data: Any,
    ) -> GateResult:
        """A result for gate ``gate`` (name, kind and metric from the catalogue).

        A safety gate that cannot be evaluated fails: ``not_evaluated`` becomes ``fail``
        there, with the detail saying so.
        """
        spec = GATES_BY_ID[gate]
        if spec.kind == SAFETY and verdict == NOT_EVALUATED:
            verdict, detail = FAIL, f"cannot be evaluated, so it fails: {detail}"
        return cls(
            gate=gate,
            name=spec.name,
            kind=spec.kind,
            metric=spec.metric,
            comparison=comparison,
            threshold=_finite_or_none(threshold),
            value=_finite_or_none(value),
            evidence=int(evidence),
            verdict=verdict,
            detail=detail,
            data=data,
        )

    @property
    def effective_pass(self) -> bool:
        """Passed, or a performance gate with an accepted override."""
        return self.verdict == PASS or (self.kind == PERFORMANCE and self.overridden is not None)

    def row(self) -> dict[str, Any]:
        """The fields stored in ``gate_results``."""
        keys = ("gate", "name", "kind", "metric", "comparison", "threshold", "value")
        return {
            **{k: getattr(self, k) for k in keys},
            "evidence": self.evidence,
            "verdict": self.verdict,
            "detail": self.detail,
        }


def not_evaluated(
    gate: str,
    detail: str,
    evidence: int = 0,
    comparison: str = "<=",
    threshold: float | None = None,
) -> GateResult:
    """A gate without enough evidence (a safety gate then fails, see :meth:`GateResult.make`)."""
    return GateResult.make(gate, comparison, threshold, None, evidence, NOT_EVALUATED, detail)


@dataclass
class GateReport:
    """One run of the nine gates."""

    run_id: str
    candidate: dict[str, Any]
    reference: dict[str, Any]
    started_at: str
    finished_at: str
    evidence: dict[str, Any]
    config: dict[str, Any]
    results: list[GateResult]
    actor: str = ""
    overrides: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every gate passed on its own (no overrides counted)."""
        return all(r.verdict == PASS for r in self.results)

    @property
    def may_ship(self) -> bool:
        """Every safety gate passed and every performance gate passed or overridden."""
        return len(self.results) == len(GATES) and all(r.effective_pass for r in self.results)

    def blocking(self) -> list[GateResult]:
        """The gates that keep the candidate from shipping."""
        return [r for r in self.results if not r.effective_pass]

    def result(self, gate: str) -> GateResult:
        return next(r for r in self.results if r.gate == gate_spec(gate).id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "run_id": self.run_id,
            "candidate": self.candidate,
            "reference": self.reference,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "actor": self.actor,
            "passed": self.passed,
            "may_ship": self.may_ship,
            "blocking": [r.gate for r in self.blocking()],
            "gates": [asdict(r) for r in self.results],
            "overrides": self.overrides,
            "evidence": self.evidence,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateReport:
        results = [GateResult(**r) for r in data["gates"]]
        keys = (
            "run_id",
            "candidate",
            "reference",
            "started_at",
            "finished_at",
            "evidence",
            "config",
        )
        return cls(
            **{k: data[k] for k in keys},
            results=results,
            actor=data.get("actor", ""),
            overrides=list(data.get("overrides", [])),
        )
