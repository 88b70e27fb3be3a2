"""Run the nine gates on a candidate export against a reference export.

    report = run_gates(candidate_dir, reference_dir, load_config(), store=store)

Order: replay and probes (S1, S2, S3, P3), latency (P4, P5), then the closed-loop suite
(P1, P2), the longest, while the resource measurement (P6) runs in child processes. With
``[sim] only_if_passing`` the suite is skipped (P1, P2 not evaluated, saying why) when an
earlier gate did not pass: the candidate is refused either way.
Every gate gets a result: a measurement that fails is reported in the gate's detail,
never raised. Only bad input raises
:class:`GateInputError` (missing or invalid exports, exports of different dimensions, a
demo directory that does not fit).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..export.manifest import ExportError, Manifest, read_manifest
from . import performance, safety
from .config import GateConfig
from .evidence import EvidenceError, draw, probe_observations, replay_observations
from .measure import ResourceMeasurement, measure_latency, run_suite
from .results import GATES, PASS, GateReport, GateResult, not_evaluated

Progress = Callable[[str], None]


class GateInputError(ValueError):
    """The gates cannot run on this input (the message names the argument or field)."""


def _load(path: Path, what: str) -> Manifest:
    try:
        return read_manifest(path, verify=True)
    except (ExportError, FileNotFoundError) as exc:
        raise GateInputError(f"{what}: {exc}") from None


def check_compatible(candidate: Manifest, reference: Manifest) -> None:
    """Both exports take the same observations and return chunks of one shape.

    Raises:
        GateInputError: naming the field and both values.
    """
    for name in ("state_dim", "action_dim", "chunk_size"):
        a, b = getattr(candidate, name), getattr(reference, name)
        if a != b:
            raise GateInputError(
                f"candidate and reference differ in {name}: candidate {a}, reference {b}"
            )
    if candidate.cameras != reference.cameras:
        raise GateInputError(
            f"candidate and reference differ in cameras: candidate "
            f"{candidate.cameras}, reference {reference.cameras}"
        )


def _describe(path: Path, m: Manifest) -> dict[str, Any]:
    return {
        "path": str(path),
        "version": m.version,
        "digest": m.digest,
        "num_steps": m.num_steps,
        "parent_version": m.parent_version,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _safety_and_agreement(
    cand, ref, cfg: GateConfig, store, data, say: Progress
) -> tuple[dict[str, GateResult], dict[str, Any], list]:
    ev = cfg.evidence
    try:
        replay = replay_observations(
            ref.manifest,
            ref.stats,
            ev.observations,
            store=store,
            data=data,
            holdout_pct=ev.holdout_pct,
            min_store=ev.min_observations,
        )
    except EvidenceError as exc:
        raise GateInputError(str(exc)) from None
    base = replay.observations[0] if replay.observations else None
    probes = probe_observations(ref.manifest, ref.stats, base) if ev.probes else []
    say(
        f"replaying {len(replay.observations)} observations and {len(probes)} probes, "
        f"{ev.samples} draws each ({replay.source})"
    )
    draws = draw(cand, ref, replay.observations, probes, ev.samples, ev.seed)
    results: dict[str, GateResult] = {"S1": safety.finite(draws)}
    try:
        limits = (
            safety.explicit_limits(ref.manifest.action_limits, ref.manifest.action_dim)
            or safety.explicit_limits(cand.manifest.action_limits, ref.manifest.action_dim)
            or safety.derived_limits(
                draws, ref.stats.action.min, ref.stats.action.max, cfg.action_limits
            )
        )
    except ValueError as exc:
        limits = None
        results["S2"] = not_evaluated("S2", str(exc), comparison="==", threshold=0)
        results["S3"] = not_evaluated("S3", f"no action limits: {exc}")
    if limits is not None:
        results["S2"] = safety.action_limits(draws, limits)
        results["S3"] = safety.motion_smoothness(draws, limits, cfg.motion_smoothness)
    results["P3"] = performance.action_agreement(draws, ref.stats.action, cfg.action_agreement, ev)
    evidence = {
        "replay_kind": replay.kind,
        "replay_source": replay.source,
        "replay_observations": len(replay.observations),
        "replay_notes": replay.notes,
        "probes": [name for name, _ in probes],
        "samples": ev.samples,
    }
    timing_obs = replay.observations or [o for _, o in probes]
    return results, evidence, timing_obs


def _latency(
    cand_dir: Path, ref_dir: Path, observations: list, cfg: GateConfig, say: Progress
) -> list[GateResult]:
    lat, error = None, None
    if not observations:
        error = "no observations to time"
    else:
        say(f"timing {cfg.latency.calls} interleaved act calls of each policy")
        try:
            lat = measure_latency(
                cand_dir,
                ref_dir,
                observations,
                cfg.latency.calls,
                cfg.latency.warmup,
                cfg.latency.threads,
            )
        except Exception as exc:  # noqa: BLE001 (reported in the gate's detail)
            error = f"{type(exc).__name__}: {exc}"
    return [
        performance.latency_speedup(lat, error, cfg.latency_speedup, cfg.latency),
        performance.latency_p99_budget(lat, error, cfg.latency_p99_budget, cfg.latency),
    ]


def _resources(measurement, error: str | None, cfg: GateConfig) -> GateResult:
    if measurement is None:
        return performance.resources(None, None, error, cfg.resources)
    try:
        c, ref = measurement.results()
    except (RuntimeError, OSError, ValueError) as exc:
        return performance.resources(None, None, str(exc), cfg.resources)
    return performance.resources(c, ref, None, cfg.resources)


def _suite(cand_dir: Path, ref_dir: Path, cfg: GateConfig, say: Progress) -> list[GateResult]:
    from ..sim.env import InvalidAction

    s = cfg.sim
    tasks = s.task_list()
    if not tasks:
        return performance.suite_not_evaluated(
            "no simulation suite configured ([sim] suite = none)"
        )
    runs = {}
    for who, path in (("reference", ref_dir), ("candidate", cand_dir)):
        say(f"closed loop: {who} on {', '.join(tasks)}, {s.episodes} episodes each")
        try:
            runs[who] = run_suite(path, tasks, s.episodes, s.seed, s.max_steps, cfg.latency.threads)
        except InvalidAction as exc:
            if who == "reference":
                return performance.suite_not_evaluated(f"the teacher's rollout failed: {exc}")
            detail = f"the candidate's rollout failed: {exc}"
            return [
                GateResult.make(g, op, None, None, 0, "fail", detail)
                for g, op in (("P1", ">="), ("P2", "<="))
            ]
        except (ValueError, ImportError, RuntimeError) as exc:
            return performance.suite_not_evaluated(f"the suite cannot run: {exc}")
    return [
        performance.task_success(runs["candidate"], runs["reference"], cfg.task_success),
        performance.per_task_regression(
            runs["candidate"], runs["reference"], cfg.per_task_regression
        ),
    ]


def run_gates(
    candidate_dir: Path | str,
    reference_dir: Path | str,
    cfg: GateConfig,
    *,
    store=None,
    data: Path | str | None = None,
    actor: str = "",
    progress: Progress | None = None,
) -> GateReport:
    """Evaluate the nine gates; returns the report (not persisted: see :mod:`.audit`).

    Args:
        store: an open Store (or URL) whose held-out split supplies replay observations.
        data: a demonstration directory, used when the store has no held-out rows.
        progress: called with one line per stage.

    Raises:
        GateInputError: see the module docstring.
        ConfigError: an unknown task in ``[sim] tasks``.
    """
    from ..runtime.policy import Policy

    say = progress or (lambda _msg: None)
    started, t0 = _now(), time.perf_counter()
    cand_dir, ref_dir = Path(candidate_dir), Path(reference_dir)
    cm, rm = _load(cand_dir, "CANDIDATE"), _load(ref_dir, "--reference")
    check_compatible(cm, rm)
    cfg.sim.task_list()  # unknown tasks are a config error before anything runs
    cand = Policy(cand_dir, intra_op_threads=cfg.latency.threads, cache=None)
    ref = Policy(ref_dir, intra_op_threads=cfg.latency.threads, cache=None)
    results, evidence, timing_obs = _safety_and_agreement(cand, ref, cfg, store, data, say)
    results.update(zip(("P4", "P5"), _latency(cand_dir, ref_dir, timing_obs, cfg, say)))
    # the resource children run while the suite runs (nothing is timed meanwhile)
    say("measuring memory and model size, one process per policy")
    measurement, error = None, None
    try:
        r = cfg.resources
        measurement = ResourceMeasurement(
            [cand_dir, ref_dir], r.acts, cfg.latency.threads, r.timeout_s
        )
    except OSError as exc:
        error = f"cannot start the measurement: {exc}"
    try:
        failed = [g for g, r in sorted(results.items()) if r.verdict != PASS]
        if cfg.sim.only_if_passing and failed:
            say(f"closed loop skipped: {', '.join(failed)} did not pass")
            suite = performance.suite_not_evaluated(
                f"skipped: {', '.join(failed)} did not pass ([sim] only_if_passing)"
            )
        else:
            suite = _suite(cand_dir, ref_dir, cfg, say)
        results.update(zip(("P1", "P2"), suite))
        results["P6"] = _resources(measurement, error, cfg)
    finally:
        if measurement is not None:
            measurement.close()
    candidate = {**_describe(cand_dir, cm), "child_of_reference": cm.parent_version == rm.digest}
    evidence["wall_s"] = round(time.perf_counter() - t0, 2)
    return GateReport(
        run_id=uuid.uuid4().hex,
        candidate=candidate,
        reference=_describe(ref_dir, rm),
        started_at=started,
        finished_at=_now(),
        evidence=evidence,
        config=cfg.to_dict(),
        results=[results[g.id] for g in GATES],
        actor=actor,
    )
