"""The summary of ``reflex demo`` (:mod:`reflex_serve.loop.demo`): a dict and its markdown.

    summary = summarize(rounds, run, started_at_s, router, elapsed_s)
    text = to_markdown(summary)

Phases of traffic: ``before`` (rounds finished before the first distill run started,
all served by the teacher), ``during`` (the rest until the run ended), ``after`` (rounds
served by the promoted version alone: after its promote, when the worker has nothing left
but to record the monitor stage).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..sim.report import wilson_interval


def quantile(xs: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``xs`` (ms), None for no samples."""
    return float(np.quantile(xs, q)) if xs else None


def phase(rounds: list) -> dict[str, Any]:
    """Pooled success (Wilson 95%) and /act latency of some rounds."""
    n, k = sum(r.episodes for r in rounds), sum(r.successes for r in rounds)
    lat = [x for r in rounds for x in r.latencies_ms]
    srv = [x for r in rounds for x in r.server_ms]
    lo, hi = wilson_interval(k, n) if n else (0.0, 0.0)
    return {"rounds": len(rounds), "episodes": n, "successes": k,
            "success_rate": k / n if n else None, "wilson_95": [lo, hi], "act_calls": len(lat),
            "p50_ms": quantile(lat, 0.5), "p99_ms": quantile(lat, 0.99),
            "server_p50_ms": quantile(srv, 0.5)}


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} ms"


def _fmt_rate(p: dict[str, Any]) -> str:
    if not p["episodes"]:
        return "-"
    lo, hi = p["wilson_95"]
    return f"{p['successes']}/{p['episodes']} ({p['success_rate']:.1%}) [{lo:.1%}, {hi:.1%}]"


def summarize(rounds: list, run: dict[str, Any] | None, started_at_s: float | None,
              router: dict[str, Any] | None, elapsed_s: float) -> dict[str, Any]:
    """Everything the demo reports, JSON-ready.

    Args:
        rounds: the :class:`~reflex_serve.loop.demo.Round` list in order.
        run: the last non-skipped distill run (``GET /admin/distill/runs/{id}``) or None.
        started_at_s: demo time (s) the first run was seen, None if none.
        router: ``GET /admin/router`` at the end (its monitor), or None.
        elapsed_s: the demo's wall time, s.
    """
    promoted = (run or {}).get("promoted_version")
    before = [r for r in rounds if started_at_s is None or r.finished_s <= started_at_s]
    after = [r for r in rounds if promoted and r.version == promoted]
    during = [r for r in rounds if r not in before and r not in after]
    phases = {"before": phase(before), "during": phase(during), "after": phase(after)}
    speedup = None
    b, a = phases["before"]["p50_ms"], phases["after"]["p50_ms"]
    if b and a:
        speedup = {"client_p50": b / a,
                   "server_p50": (phases["before"]["server_p50_ms"] or 0)
                   / max(phases["after"]["server_p50_ms"] or 1e-9, 1e-9)}
    chosen = next((c for c in (run or {}).get("candidates", []) if c["verdict"] == "chosen"), None)
    monitor = (router or {}).get("monitor")
    return {
        "elapsed_min": round(elapsed_s / 60, 2),
        "teacher": rounds[0].version if rounds else None,
        "run": None if run is None else {
            k: run.get(k) for k in ("id", "trigger", "status", "teacher_version",
                                    "promoted_version", "duration_s", "error")},
        "stages": [{k: s.get(k) for k in ("stage", "status", "duration_s", "detail")}
                   for s in (run or {}).get("stages", [])],
        "candidates": (run or {}).get("candidates", []),
        "chosen": chosen,
        "phases": phases,
        "speedup": speedup,
        "monitor": None if not monitor else {
            "version": monitor.get("version"), "signals": monitor.get("signals")},
    }


def _stage_line(s: dict[str, Any]) -> str:
    detail = s.get("detail") or {}
    keys = ("rows", "steps", "version", "chosen", "reason", "swap_id", "divergence_mean")
    shown = ", ".join(f"{k} {detail[k]}" for k in keys if k in detail and detail[k] is not None)
    dur = "-" if s.get("duration_s") is None else f"{s['duration_s']:.0f} s"
    return f"| {s['stage']} | {s['status']} | {dur} | {shown} |"


def to_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown page (``summary.md``)."""
    run, ph = summary["run"], summary["phases"]
    lines = ["# reflex demo: the self-distilling loop", "",
             f"{summary['elapsed_min']:.1f} min in all; teacher {summary['teacher']}.", ""]
    if run is None:
        lines += ["No distill run started (too little traffic before the time limit).", ""]
    else:
        lines += [f"Run {run['id']} ({run['trigger']}): **{run['status']}**"
                  + (f", {run['promoted_version']} promoted" if run["promoted_version"] else "")
                  + (f" ({run['error']})" if run.get("error") else "")
                  + (f" in {run['duration_s']:.0f} s" if run.get("duration_s") else "") + ".", "",
                  "| stage | status | time | detail |", "|---|---|---|---|"]
        lines += [_stage_line(s) for s in summary["stages"]] + [""]
        if summary["candidates"]:
            lines += ["| candidate | NFE | version | verdict | p50 ratio (P4) | reason |",
                      "|---|---|---|---|---|---|"]
            for c in summary["candidates"]:
                ratio = "-" if c.get("p50_ratio") is None else f"{c['p50_ratio']:.2f}"
                lines.append(f"| {c['name']} | {c['num_steps']} | {c['version']} | "
                             f"{c['verdict']} | {ratio} | {c['reason']} |")
            lines.append("")
    lines += ["| traffic | rounds | success (Wilson 95%) | /act calls | client p50 | client p99 | server p50 |",
              "|---|---|---|---|---|---|---|"]
    for name in ("before", "during", "after"):
        p = ph[name]
        lines.append(f"| {name} | {p['rounds']} | {_fmt_rate(p)} | {p['act_calls']} | "
                     f"{_fmt_ms(p['p50_ms'])} | {_fmt_ms(p['p99_ms'])} | {_fmt_ms(p['server_p50_ms'])} |")
    lines.append("")
    if summary["speedup"]:
        s = summary["speedup"]
        lines += [
            (f"Speed-up after the swap: /act p50 {s['client_p50']:.2f}x (client), "
            f"{s['server_p50']:.2f}x (server)."),
            "",
        ]
    if summary["monitor"]:
        sig = summary["monitor"]["signals"] or {}
        shown = ", ".join(f"{k} {v.get('state')} ({v.get('evidence')})" for k, v in sig.items())
        lines += [f"Post-swap monitor on {summary['monitor']['version']}: {shown}.", ""]
    return "\n".join(lines)
