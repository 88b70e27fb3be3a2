"""Choosing among gated candidates, and the one-line reason behind each verdict.

:func:`choose` takes what the gates said about each candidate (:class:`Gated`) and gives
every candidate a verdict, ``chosen``, ``kept`` (passed all nine, not chosen) or
``refused``, with a reason an operator can read in a run record. The rule is in
:mod:`reflex_serve.loop.candidates`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..gates.results import NOT_EVALUATED, PASS, GateReport, GateResult

CHOSEN, KEPT, REFUSED = "chosen", "kept", "refused"


def _num(x: float) -> str:
    return f"{x:.3g}"


def describe_failure(r: GateResult) -> str:
    """One gate that did not pass, for a reason line:
    ``P3 action_agreement 1.31 (needs <= 0.5): relative energy 1.310 > 0.5``, or
    ``P1 task_success not evaluated: 10 episodes cannot show ...``."""
    head = f"{r.gate} {r.name}"
    if r.verdict == NOT_EVALUATED:
        return f"{head} not evaluated: {r.detail}"
    if r.value is None:
        return f"{head} failed: {r.detail}"
    if r.threshold is None:
        return f"{head} {_num(r.value)}: {r.detail}"
    digits = 3  # enough digits that a value just short of its threshold does not read equal
    while digits < 8 and f"{r.value:.{digits}g}" == f"{r.threshold:.{digits}g}" != f"{r.value}":
        digits += 1
    value, bar = f"{r.value:.{digits}g}", f"{r.threshold:.{digits}g}"
    return f"{head} {value} (needs {r.comparison} {bar}): {r.detail}"


@dataclass
class Gated:
    """One candidate after its gates.

    Attributes:
        name, num_steps: from its spec (NFE: expert calls per /act).
        version: its 12-hex version ("" when unreadable).
        run_id: the stored gate run (None when the gates could not run).
        passed: all nine passed on their own.
        p50_ratio: P4's value (candidate p50 / teacher p50), None if not measured.
        energy: P3's value (relative energy distance), None if not measured.
        failures: one line per gate that did not pass (:func:`describe_failure`).
        error: why the gates could not run at all.
    """

    name: str
    num_steps: int
    version: str
    run_id: str | None = None
    passed: bool = False
    p50_ratio: float | None = None
    energy: float | None = None
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def from_report(cls, name: str, num_steps: int, report: GateReport, run_id: str) -> Gated:
        return cls(
            name=name,
            num_steps=num_steps,
            version=report.candidate["version"],
            run_id=run_id,
            passed=report.passed,
            p50_ratio=report.result("P4").value,
            energy=report.result("P3").value,
            failures=failure_lines(report.results),
        )


def failure_lines(results: list[GateResult]) -> list[str]:
    """:func:`describe_failure` of each gate that did not pass; gates whose suite was
    skipped because another failed (``[sim] only_if_passing``) are one closing item."""
    bad = [r for r in results if r.verdict != PASS]
    skipped = [r.gate for r in bad if r.verdict == NOT_EVALUATED and r.detail.startswith("skipped:")]
    lines = [describe_failure(r) for r in bad if r.gate not in skipped]
    if skipped:
        lines.append(f"{', '.join(skipped)} not run (the closed-loop suite runs only when the rest pass)")
    return lines


def _ratio(g: Gated) -> str:
    return f"{g.p50_ratio:.2f}x" if g.p50_ratio is not None else "unmeasured"


def _why_not(g: Gated, best: Gated, tie_within: float) -> str:
    """Why a candidate that passed all nine was not chosen over ``best``."""
    lead = f"passed all nine, not chosen: p50 {_ratio(g)} the teacher's"
    if g.p50_ratio > best.p50_ratio * (1 + tie_within):
        return f"{lead}, slower than {best.name} ({_ratio(best)})"
    tie = f"{lead}, as fast as {best.name} ({_ratio(best)}) within {tie_within:.0%}"
    if g.num_steps != best.num_steps:
        return f"{tie}, but {g.num_steps} NFE against {best.num_steps}"
    if g.energy != best.energy:
        return (
            f"{tie} at {g.num_steps} NFE, but P3 relative energy {_num(g.energy)} "
            f"against {_num(best.energy)}"
        )
    return f"{tie}, equal on NFE and P3; {best.name} was tried first"


def choose(gated: list[Gated], tie_within: float) -> list[tuple[str, str]]:
    """(verdict, reason) for each candidate, in order.

    The fastest that passed all nine: lowest P4 p50 ratio, ratios within ``tie_within``
    (relative) of the lowest tie, a tie goes to fewer NFE, then lower P3 energy, then
    the earlier candidate.

    Raises:
        ValueError: ``tie_within`` < 0.
    """
    if tie_within < 0:
        raise ValueError(f"tie_within must be >= 0, got {tie_within}")
    passed = [g for g in gated if g.passed and g.p50_ratio is not None]
    best = None
    if passed:
        fastest = min(g.p50_ratio for g in passed)
        tied = [g for g in passed if g.p50_ratio <= fastest * (1 + tie_within)]
        best = min(tied, key=lambda g: (g.num_steps, g.energy, gated.index(g)))
    out = []
    for g in gated:
        if g.error is not None:
            out.append((REFUSED, f"the gates could not run: {g.error}"))
        elif not g.passed or g.p50_ratio is None:
            failures = "; ".join(g.failures) or "P4 latency_speedup not measured"
            out.append((REFUSED, f"gates not passed: {failures}"))
        elif g is best:
            others = [f"{o.name} {_ratio(o)}" for o in passed if o is not g]
            tail = (
                f"fastest of {len(passed)} that passed (others: {', '.join(others)})"
                if others
                else f"the only one of {len(gated)} candidate(s) that passed"
            )
            lead = f"passed all nine; p50 {_ratio(g)} the teacher's at {g.num_steps} NFE"
            out.append((CHOSEN, f"{lead}; {tail}"))
        else:
            out.append((KEPT, _why_not(g, best, tie_within)))
    return out
