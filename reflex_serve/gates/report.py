"""Print a gate report as a table an operator reads at a glance, or write it as JSON.

The JSON format (``"format": "reflex-gates/1"``) is documented in docs/gates.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from .results import FAIL, NOT_EVALUATED, PASS, GateReport, GateResult

_COUNT_GATES = ("S1", "S2")


def fmt_number(x: float | None, gate: str = "") -> str:
    """A value or threshold for the table (counts as integers, else 4 significant digits)."""
    if x is None:
        return "-"
    if gate in _COUNT_GATES:
        return f"{int(x)}"
    return f"{x:.4g}"


def verdict_text(r: GateResult) -> str:
    """The verdict cell: ``pass``, ``FAIL``, ``not evaluated``, or ``overridden``."""
    if r.overridden is not None and r.verdict != PASS:
        from rich.markup import escape

        return f"[magenta]overridden[/] ({escape(r.overridden['operator'])})"
    return {
        PASS: "[green]pass[/]",
        FAIL: "[bold red]FAIL[/]",
        NOT_EVALUATED: "[yellow]not evaluated[/]",
    }[r.verdict]


def render(report: GateReport, console=None) -> None:
    """Print the table, the evidence, the overrides and the ship verdict."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=max(160, Console().width))
    c, ref = report.candidate, report.reference
    table = Table(
        title=f"gates: candidate {c['version']} ({c['num_steps']} step(s)) vs "
        f"reference {ref['version']} ({ref['num_steps']} steps)"
    )
    for col in ("gate", "kind", "metric", "threshold", "value", "evidence", "verdict", "detail"):
        table.add_column(col, overflow="fold", no_wrap=col in ("gate", "kind", "verdict"))
    for r in report.results:
        threshold = f"{r.comparison} {fmt_number(r.threshold, r.gate)}"
        table.add_row(
            f"{r.gate} {r.name}",
            r.kind,
            r.metric,
            threshold,
            fmt_number(r.value, r.gate),
            str(r.evidence),
            verdict_text(r),
            escape(r.detail),
        )
    console.print(table)
    ev = report.evidence
    console.print(
        f"evidence: {escape(str(ev.get('replay_source')))}; probes: "
        f"{', '.join(ev.get('probes', [])) or 'none'}; {ev.get('samples')} draws per "
        f"observation; run {report.run_id} by {escape(report.actor or 'unknown')}, "
        f"{report.started_at}"
    )
    for note in ev.get("replay_notes", []):
        console.print(f"  note: {escape(note)}")
    for o in report.overrides:
        status = "[magenta]accepted[/]" if o["status"] == "accepted" else "[red]refused[/]"
        why = f" ({o['refusal']})" if o.get("refusal") else ""
        console.print(
            f"override {o['gate']} {status} by {escape(o['operator'])} at {o['at']}: "
            f"{escape(o['reason'] + why)}"
        )
    if report.may_ship:
        extra = " (with overrides)" if any(r.overridden for r in report.results) else ""
        console.print(f"[bold green]MAY SHIP[/]{extra}")
    else:
        blocking = ", ".join(f"{r.gate} {r.name}" for r in report.blocking())
        console.print(f"[bold red]MAY NOT SHIP[/]: blocked by {blocking}")


def to_json(report: GateReport) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str)


def write_json(report: GateReport, path: Path | str) -> None:
    """Write the JSON report to ``path`` (``-``: stdout)."""
    if str(path) == "-":
        print(to_json(report))
    else:
        Path(path).write_text(to_json(report) + "\n")
