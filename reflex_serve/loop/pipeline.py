"""The stages of one loop run, each recorded in ``run_stages``::

    data        the teacher's served rows in the store (train split, received before the
                run started); refused when fewer than ``min_rows``
    distill     a SnapFlow student trained on them, exported (parity checked)
    candidates  the student and the teacher at fewer steps through the nine gates
                (:mod:`reflex_serve.loop.candidates`); the fastest that passes all nine
                is chosen, or the run is refused; every candidate is recorded
    shadow      the chosen candidate registered with the serving process and shadowed for
                ``shadow_s`` on ``shadow_fraction`` of the calls; its divergence recorded
                (refused above ``max_shadow_divergence``); skipped when ``shadow_s`` is 0
    promote     the serving process's promote (gates, load, warm, atomic switch)
    monitor     the swap the router's post-swap monitor now watches (it rolls back on
                its own); the run links the swap

A stage raises :class:`Refused` to end the run as refused; any other exception ends it
as failed with the stage and error recorded. :func:`run_pipeline` takes the stage list,
so tests can swap a stage; ``LoopConfig.candidate_stage`` swaps the candidates stage of
a worker process.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from reflex_serve.loop.admin import AdminClient
from reflex_serve.loop.config import LoopConfig
from reflex_serve.storage import distill_runs as runs
from reflex_serve.storage.store import Store

log = logging.getLogger(__name__)
ACTOR = "distill-loop"


def failed_gates(reason: str) -> str:
    """The gate ids a refusal reason names (``"S3, P3 failed"``, ``"P1, P2 not
    evaluated"``), else the reason. Gates skipped because others failed are not named."""
    found = re.findall(
        r"(?:^|: |; )([SP][1-6]) [a-z_]+ (?!not evaluated: skipped)(not evaluated)?", reason
    )
    groups = [
        f"{', '.join(dict.fromkeys(g for g, unevaluated in found if bool(unevaluated) == flag))} {what}"
        for flag, what in ((False, "failed"), (True, "not evaluated"))
        if any(bool(unevaluated) == flag for _, unevaluated in found)
    ]
    return " and ".join(groups) if groups else reason


class Refused(Exception):
    """A stage decided the run ships nothing (``detail`` is recorded with the stage)."""

    def __init__(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or {}


class Skipped(Exception):
    """A stage that does not apply to this run (recorded as skipped; the run goes on)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RunContext:
    """What the stages share.

    Attributes:
        run_id, store, config: the run, its store, the loop settings.
        run_dir: the run's directory (``config.json``, ``worker.log``, exports).
        teacher_dir, teacher_version: the version served when the run started.
        data_until: rows received after this (the run's start) are not read.
        admin: the serving process's admin API.
        state: what earlier stages left for later ones (data, student_dir, chosen, swap).
    """

    run_id: str
    store: Store
    config: LoopConfig
    run_dir: Path
    teacher_dir: Path
    teacher_version: str
    data_until: datetime
    admin: AdminClient
    state: dict[str, Any] = field(default_factory=dict)


Stage = Callable[[RunContext], dict[str, Any]]


def data_stage(ctx: RunContext) -> dict[str, Any]:
    """Read the teacher's served rows (train split) up to the run's start."""
    from reflex_serve.distill.data import DataError, DataSpec, load_data
    from reflex_serve.distill.teacher import load_teacher

    teacher = load_teacher(ctx.teacher_dir)
    ctx.state["teacher"] = teacher
    spec = DataSpec(data=ctx.store.url, source="served", model_version=ctx.teacher_version,
                    until=ctx.data_until)
    try:
        rows = load_data(spec, teacher.manifest, teacher.stats, teacher.path)
    except DataError as exc:
        raise Refused(f"no usable data: {exc}") from None
    detail = {"rows": rows.size, "until": ctx.data_until.isoformat(),
              "teacher": ctx.teacher_version, "min_rows": ctx.config.min_rows}
    if rows.size < ctx.config.min_rows:
        raise Refused(f"{rows.size} served rows of teacher {ctx.teacher_version} in the "
                      f"train split, fewer than min_rows {ctx.config.min_rows}", detail)
    ctx.state["data"] = rows
    return detail


def distill_stage(ctx: RunContext) -> dict[str, Any]:
    """Train and export the SnapFlow student (``run_dir/student``)."""
    from reflex_serve.distill.student_export import export_student
    from reflex_serve.distill.trainer import DistillConfig, distill

    c = ctx.config
    cfg = DistillConfig(steps=c.distill_steps, batch_size=c.batch_size, lr=c.lr, seed=c.seed,
                        threads=c.threads, progress=False,
                        checkpoint_every=max(1000, c.distill_steps // 4))
    teacher, rows = ctx.state["teacher"], ctx.state["data"]
    result = distill(teacher, rows, cfg, ctx.run_dir / "distill", echo=log.info)
    manifest, parity = export_student(result, teacher, ctx.run_dir / "student", data=rows)
    ctx.state["student_dir"] = ctx.run_dir / "student"
    last = {k: v for k, v in result.losses.get("last", {}).items() if k != "lr"}
    return {"student": manifest.version, "steps": result.steps,
            "step_ms": round(result.step_ms, 2), "last_loss": last,
            "parity_max_abs_diff": parity, "export_dir": str(ctx.run_dir / "student")}


def gated_candidates(ctx: RunContext) -> tuple[Any, list[Any]]:
    """The default candidate step: the student and the teacher at ``teacher_steps``
    through the nine gates (:func:`reflex_serve.loop.candidates.gate_candidates`), with
    ``[sim] only_if_passing`` on: the closed-loop suite, the longest part, runs only for a
    candidate that passed the other seven."""
    from reflex_serve.gates.config import load_config
    from reflex_serve.loop.candidates import GateOptions, default_specs, gate_candidates

    specs = default_specs(ctx.teacher_dir, ctx.state.get("student_dir"),
                          ctx.config.teacher_steps, work_dir=ctx.run_dir / "candidates")
    gates = load_config(ctx.config.gates_config).replace("sim", only_if_passing=True)
    options = GateOptions(config=gates, actor=ACTOR, progress=lambda msg: log.info("gates %s", msg))
    return gate_candidates(ctx.teacher_dir, specs, ctx.store.url, options)


def _candidate_step(config: LoopConfig) -> Callable[[RunContext], tuple[Any, list[Any]]]:
    if config.candidate_stage is None:
        return gated_candidates
    module, name = config.candidate_stage.split(":")
    return getattr(importlib.import_module(module), name)


def candidates_stage(ctx: RunContext) -> dict[str, Any]:
    """Gate the candidates, record each with its verdict; refuse when none passed."""
    chosen, outcomes = _candidate_step(ctx.config)(ctx)
    runs.add_candidates(ctx.store, ctx.run_id, [{
        "name": o.spec.name, "kind": o.spec.kind, "num_steps": o.spec.num_steps,
        "version": o.version or None, "gate_run_id": o.gate_run_id, "passed": o.passed,
        "p50_ratio": o.p50_ratio, "verdict": o.verdict, "reason": o.reason}
        for o in outcomes])
    detail = {"tried": [o.spec.name for o in outcomes],
              "chosen": chosen.spec.name if chosen is not None else None}
    if chosen is None:
        why = "; ".join(f"{o.spec.name}: {failed_gates(o.reason)}" for o in outcomes) or "no candidates"
        raise Refused(f"no candidate passed all nine gates ({why})", detail)
    ctx.state["chosen"] = chosen
    return {**detail, "version": chosen.version, "kind": chosen.spec.kind,
            "num_steps": chosen.spec.num_steps, "gate_run_id": chosen.gate_run_id,
            "p50_ratio": chosen.p50_ratio, "reason": chosen.reason}


def _register(ctx: RunContext) -> str:
    chosen = ctx.state["chosen"]
    if "registered" not in ctx.state:
        body = ctx.admin.register(chosen.spec.export_dir, actor=ACTOR,
                                  reason=f"distill run {ctx.run_id}: {chosen.spec.name}")
        ctx.state["registered"] = body["version"]
    return ctx.state["registered"]


def shadow_stage(ctx: RunContext) -> dict[str, Any]:
    """Shadow the chosen candidate for ``shadow_s`` and read its divergence."""
    version = _register(ctx)
    c = ctx.config
    if c.shadow_s <= 0:
        raise Skipped("shadow_s is 0")
    ctx.admin.traffic(version, "shadow", c.shadow_fraction, actor=ACTOR,
                      reason=f"distill run {ctx.run_id}")
    try:
        time.sleep(c.shadow_s)
    finally:
        ctx.admin.traffic(version, "shadow", 0.0, actor=ACTOR,
                          reason=f"distill run {ctx.run_id}: shadow over")
    comparisons = ctx.admin.version(version).get("comparisons", {})
    detail = {"version": version, "fraction": c.shadow_fraction, "seconds": c.shadow_s,
              **comparisons}
    mean, limit = comparisons.get("mean_divergence"), c.max_shadow_divergence
    if limit is not None and mean is not None and mean > limit:
        raise Refused(f"shadow divergence {mean:.3g} > max_shadow_divergence {limit:g}", detail)
    return detail


def promote_stage(ctx: RunContext) -> dict[str, Any]:
    """Promote through the serving process (its gates check, load, warm, switch)."""
    version = _register(ctx)
    status, body = ctx.admin.promote(version, actor=ACTOR,
                                     reason=f"distill run {ctx.run_id}")
    if status == 409:
        raise Refused(f"promote refused: {body.get('error', {}).get('message', body)}")
    if status != 200:
        raise RuntimeError(f"promote answered {status}: {body}")
    ctx.state["swap"] = body
    return {"version": version, "swap_id": body.get("id"), "from": body.get("from_version"),
            "figures": {k: v for k, v in body.get("figures", {}).items() if k != "baseline"}}


def monitor_stage(ctx: RunContext) -> dict[str, Any]:
    """Link the swap the router's post-swap monitor now watches."""
    swap = ctx.state["swap"]
    return {"swap_id": swap.get("id"), "version": swap.get("to_version"),
            "monitor_until": swap.get("monitor_until"),
            "note": "the router's post-swap monitor compares it with the previous version "
                    "and rolls back on its own; see reflex models status"}


STAGES: list[tuple[str, Stage]] = [
    ("data", data_stage), ("distill", distill_stage), ("candidates", candidates_stage),
    ("shadow", shadow_stage), ("promote", promote_stage), ("monitor", monitor_stage),
]


def run_pipeline(ctx: RunContext, stages: list[tuple[str, Stage]] | None = None) -> str:
    """Run the stages in order, recording each; end the run. Returns its status:
    ``succeeded`` (promoted), ``refused`` or ``failed``."""
    for position, (name, fn) in enumerate(stages or STAGES):
        runs.start_stage(ctx.store, ctx.run_id, name, position)
        try:
            detail = fn(ctx)
        except Skipped as exc:
            runs.finish_stage(ctx.store, ctx.run_id, name, "skipped", {"reason": exc.reason})
            continue
        except Refused as exc:
            runs.finish_stage(ctx.store, ctx.run_id, name, "refused",
                              {**exc.detail, "reason": exc.reason})
            runs.finish_run(ctx.store, ctx.run_id, "refused", error=f"{name}: {exc.reason}")
            return "refused"
        except Exception as exc:
            log.exception("stage %s failed", name)
            error = f"{name}: {type(exc).__name__}: {exc}"
            runs.finish_stage(ctx.store, ctx.run_id, name, "failed", {"error": error})
            runs.finish_run(ctx.store, ctx.run_id, "failed", error=error)
            return "failed"
        runs.finish_stage(ctx.store, ctx.run_id, name, "passed", detail)
    chosen = ctx.state.get("chosen")
    promoted = ctx.state.get("swap", {}).get("to_version")
    runs.finish_run(ctx.store, ctx.run_id, "succeeded", promoted_version=promoted,
                    summary={"chosen": chosen.spec.name if chosen is not None else None,
                             "swap_id": ctx.state.get("swap", {}).get("id")})
    return "succeeded"
