"""The loop's rows: schedule state, distill runs, their stages and candidates.

The loop's logic lives in :mod:`reflex_serve.loop`; this module only reads and writes::

    ensure_schedule(store, name, spec, next_run_at)    the schedule row (kept across restarts)
    claim_due(store, name, now, next_at, ...)          the exactly-once claim of a due run
    queue_manual(store, ...)                           a run-now request (or the active run)
    claim_queued(store, host, now)                     a queued run -> running, here
    set_worker / heartbeat / fail_run / fail_stale / finish_run
    start_stage / finish_stage / add_candidates
    get_run, list_runs, run_metrics, count_served

Exactly once: a due scheduled run is claimed by ``UPDATE schedule_state SET next_run_at =
:next WHERE name = :name AND next_run_at = :due`` (one row updated wins), in the same
transaction as the guard that no run is queued or running with a fresh heartbeat and
the insert of the run row; on PostgreSQL the transaction first takes
``pg_try_advisory_xact_lock`` so that replicas do not even contend.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, text, update

from reflex_serve.storage.loop_models import (
    ACTIVE_STATUSES,
    RESULT_STATUSES,
    DistillRun,
    RunCandidate,
    RunStage,
    ScheduleState,
)
from reflex_serve.storage.models import Request, utcnow
from reflex_serve.storage.store import Store

#: key of the PostgreSQL advisory lock held while claiming (arbitrary, fixed)
_PG_CLAIM_KEY = 0x7265666C6C70


@dataclass(frozen=True)
class Claim:
    """What :func:`claim_due` did: ``run_id`` of the run it started (status running,
    this host), or of the run it recorded as ``skipped`` (``skipped`` True, ``reason``)."""

    run_id: str
    skipped: bool = False
    reason: str = ""


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def run_dict(row: DistillRun) -> dict[str, Any]:
    """A run row as JSON-ready dict (``duration_s`` when it has started and finished)."""
    duration = None
    if row.started_at is not None and row.finished_at is not None:
        duration = round((row.finished_at - row.started_at).total_seconds(), 3)
    return {
        "id": row.id, "trigger": row.trigger, "status": row.status, "schedule": row.schedule,
        "teacher_version": row.teacher_version, "promoted_version": row.promoted_version,
        "created_at": _iso(row.created_at), "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at), "duration_s": duration,
        "data_until": _iso(row.data_until), "worker_pid": row.worker_pid, "host": row.host,
        "heartbeat_at": _iso(row.heartbeat_at), "error": row.error, "summary": row.summary,
    }


def ensure_schedule(store: Store, name: str, spec: str, next_run_at: datetime) -> dict[str, Any]:
    """The schedule row ``name``: created with ``next_run_at`` if missing; if its spec
    changed, the new spec with ``next_run_at``; else unchanged (a restart keeps the stored
    next fire time). Returns the row as a dict."""
    now = utcnow()
    with store.session() as s:
        row = s.get(ScheduleState, name)
        if row is None:
            row = ScheduleState(name=name, spec=spec, last_run_at=None,
                                next_run_at=next_run_at, updated_at=now)
            s.add(row)
        elif row.spec != spec:
            row.spec, row.next_run_at, row.updated_at = spec, next_run_at, now
        s.flush()
        return {"name": row.name, "spec": row.spec, "last_run_at": row.last_run_at,
                "next_run_at": row.next_run_at, "updated_at": row.updated_at}


def get_schedule(store: Store, name: str) -> dict[str, Any] | None:
    """The schedule row ``name`` as a dict, or None."""
    with store.session(commit=False) as s:
        row = s.get(ScheduleState, name)
        return None if row is None else {
            "name": row.name, "spec": row.spec, "last_run_at": row.last_run_at,
            "next_run_at": row.next_run_at, "updated_at": row.updated_at}


def _active(s, stale_before: datetime):
    """The queued run, or the running run whose heartbeat is fresh, if any."""
    return s.scalars(
        select(DistillRun).where(or_(
            DistillRun.status == "queued",
            (DistillRun.status == "running") & (DistillRun.heartbeat_at >= stale_before),
        )).order_by(DistillRun.created_at).limit(1)
    ).first()


def _watermark(s) -> datetime | None:
    return s.scalar(select(func.max(DistillRun.data_until)).where(
        DistillRun.status == "succeeded"))


def _count_served(s, since: datetime | None, until: datetime | None,
                  version: str | None = None) -> int:
    q = select(func.count()).select_from(Request).where(Request.source == "served")
    if version is not None:
        q = q.where(Request.model_version == version)
    if since is not None:
        q = q.where(Request.received_at > since)
    if until is not None:
        q = q.where(Request.received_at <= until)
    return int(s.scalar(q) or 0)


def _new_run(trigger: str, status: str, now: datetime, schedule: str | None = None,
             **kw: Any) -> DistillRun:
    return DistillRun(id=uuid.uuid4().hex, trigger=trigger, status=status, schedule=schedule,
                      created_at=now, summary=kw.pop("summary", {}), **kw)


def claim_due(store: Store, name: str, now: datetime, next_at: datetime, *, host: str,
              stale_before: datetime, min_new_samples: int = 0,
              teacher_version: str | None = None) -> Claim | None:
    """Claim the schedule's due run, exactly once across replicas (module docstring).

    Returns None when nothing is due, another replica won, or a run is active (the due
    run then waits: it is not lost). Otherwise the schedule advances to ``next_at`` and
    either a run is inserted as ``running`` on ``host`` (the caller starts its worker),
    or, with fewer than ``min_new_samples`` served rows (of ``teacher_version`` when
    given: the rows a run learns from) since the last succeeded run's data, a
    ``skipped`` run is recorded with the reason.
    """
    with store.session() as s:
        if store.backend == "postgresql":
            got = s.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _PG_CLAIM_KEY})
            if not got:
                return None
        row = s.get(ScheduleState, name)
        if row is None or row.next_run_at > now or _active(s, stale_before) is not None:
            return None
        due = row.next_run_at
        won = s.execute(
            update(ScheduleState)
            .where(ScheduleState.name == name, ScheduleState.next_run_at == due)
            .values(next_run_at=next_at, last_run_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if won != 1:
            return None
        summary = {"due_at": due.isoformat()}
        if min_new_samples > 0:
            since = _watermark(s)
            new = _count_served(s, since, now, teacher_version)
            if new < min_new_samples:
                of = f" of teacher {teacher_version}" if teacher_version else ""
                reason = (f"{new} new served rows{of} since "
                          f"{since.isoformat() if since else 'the start'}, fewer than "
                          f"--min-new-samples {min_new_samples}")
                run = _new_run("schedule", "skipped", now, name, started_at=now,
                               finished_at=now, error=reason, host=host,
                               teacher_version=teacher_version,
                               summary={**summary, "new_samples": new})
                s.add(run)
                return Claim(run.id, skipped=True, reason=reason)
        run = _new_run("schedule", "running", now, name, started_at=now, heartbeat_at=now,
                       host=host, teacher_version=teacher_version, summary=summary)
        s.add(run)
        return Claim(run.id)


def queue_manual(store: Store, now: datetime, *, stale_before: datetime,
                 actor: str = "admin") -> tuple[str, bool]:
    """Queue a manual run unless one is active: (run id, True) for the new run, or
    (the active run's id, False)."""
    with store.session() as s:
        if store.backend == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_CLAIM_KEY})
        active = _active(s, stale_before)
        if active is not None:
            return active.id, False
        run = _new_run("manual", "queued", now, summary={"actor": actor})
        s.add(run)
        return run.id, True


def claim_queued(store: Store, host: str, now: datetime) -> str | None:
    """Move the oldest queued run to ``running`` on ``host`` (compare-and-set on its
    status: one replica wins); its id, or None."""
    with store.session() as s:
        run_id = s.scalar(select(DistillRun.id).where(DistillRun.status == "queued")
                          .order_by(DistillRun.created_at).limit(1))
        if run_id is None:
            return None
        won = s.execute(
            update(DistillRun).where(DistillRun.id == run_id, DistillRun.status == "queued")
            .values(status="running", started_at=now, heartbeat_at=now, host=host)
            .execution_options(synchronize_session=False)
        ).rowcount
        return run_id if won == 1 else None


def update_run(store: Store, run_id: str, *, summary: dict[str, Any] | None = None,
               **values: Any) -> bool:
    """Set columns of a run that is still active (``summary`` is merged into the stored
    one); False when the run is over (e.g. marked failed meanwhile)."""
    with store.session() as s:
        row = s.get(DistillRun, run_id)
        if row is None or row.status not in ACTIVE_STATUSES:
            return False
        for key, value in values.items():
            setattr(row, key, value)
        if summary:
            row.summary = {**(row.summary or {}), **summary}
        return True


def heartbeat(store: Store, run_id: str) -> bool:
    """Record that the worker is alive; False when the run is no longer running."""
    return update_run(store, run_id, heartbeat_at=utcnow())


def finish_run(store: Store, run_id: str, status: str, *, error: str | None = None,
               promoted_version: str | None = None,
               summary: dict[str, Any] | None = None) -> bool:
    """End an active run with ``status`` (succeeded, refused or failed); a stage still
    running is closed with the same status. False when the run had already ended."""
    now = utcnow()
    with store.session() as s:
        row = s.get(DistillRun, run_id)
        if row is None or row.status not in ACTIVE_STATUSES:
            return False
        row.status, row.finished_at, row.error = status, now, error
        row.started_at = row.started_at or now
        if promoted_version is not None:
            row.promoted_version = promoted_version
        if summary:
            row.summary = {**(row.summary or {}), **summary}
        for stage in s.scalars(select(RunStage).where(RunStage.run_id == run_id,
                                                      RunStage.status == "running")):
            stage.status, stage.finished_at = status if status != "succeeded" else "passed", now
            if error:
                stage.detail = {**(stage.detail or {}), "error": error}
        return True


def fail_run(store: Store, run_id: str, error: str) -> bool:
    """Mark an active run failed with ``error`` (a crashed or killed worker...)."""
    return finish_run(store, run_id, "failed", error=error)


def fail_stale(store: Store, stale_before: datetime) -> list[str]:
    """Fail every running run whose heartbeat is older than ``stale_before`` (its
    worker and the replica that started it are gone); their ids."""
    with store.session(commit=False) as s:
        ids = list(s.scalars(select(DistillRun.id).where(
            DistillRun.status == "running", DistillRun.heartbeat_at < stale_before)))
    return [i for i in ids if fail_run(
        store, i, f"worker lost: no heartbeat since before {stale_before.isoformat()}")]


def start_stage(store: Store, run_id: str, stage: str, position: int) -> None:
    """Record that ``stage`` started (status running)."""
    with store.session() as s:
        s.merge(RunStage(run_id=run_id, stage=stage, position=position, status="running",
                         started_at=utcnow(), finished_at=None, detail={}))


def finish_stage(store: Store, run_id: str, stage: str, status: str,
                 detail: dict[str, Any]) -> None:
    """Record how ``stage`` ended (passed, refused, failed, skipped) and its detail."""
    with store.session() as s:
        row = s.get(RunStage, (run_id, stage))
        row.status, row.finished_at, row.detail = status, utcnow(), detail


def add_candidates(store: Store, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Record the candidates a run gated (keys: the columns of ``run_candidates``)."""
    with store.session() as s:
        for r in rows:
            s.merge(RunCandidate(run_id=run_id, **r))


def get_run(store: Store, run_id: str) -> dict[str, Any] | None:
    """A run with its ``stages`` (in order) and ``candidates``; a unique prefix of the id
    also finds it. None if unknown."""
    with store.session(commit=False) as s:
        prefix = DistillRun.id.startswith(run_id, autoescape=True)  # '%' and '_' literal
        rows = list(s.scalars(select(DistillRun).where(prefix).limit(2)))
        if len(rows) != 1:
            return None
        out = run_dict(rows[0])
        stages = s.scalars(select(RunStage).where(RunStage.run_id == rows[0].id)
                           .order_by(RunStage.position))
        out["stages"] = [{
            "stage": st.stage, "status": st.status, "started_at": _iso(st.started_at),
            "finished_at": _iso(st.finished_at), "detail": st.detail,
            "duration_s": round((st.finished_at - st.started_at).total_seconds(), 3)
            if st.finished_at else None} for st in stages]
        cands = s.scalars(select(RunCandidate).where(RunCandidate.run_id == rows[0].id)
                          .order_by(RunCandidate.num_steps, RunCandidate.name))
        out["candidates"] = [{
            "name": c.name, "kind": c.kind, "num_steps": c.num_steps, "version": c.version,
            "gate_run_id": c.gate_run_id, "passed": c.passed, "p50_ratio": c.p50_ratio,
            "verdict": c.verdict, "reason": c.reason} for c in cands]
        return out


def list_runs(store: Store, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
    """The newest runs first (without stages and candidates)."""
    with store.session(commit=False) as s:
        q = select(DistillRun).order_by(DistillRun.created_at.desc()).limit(limit)
        if status is not None:
            q = q.where(DistillRun.status == status)
        return [run_dict(r) for r in s.scalars(q)]


def count_served(store: Store, since: datetime | None = None, until: datetime | None = None,
                 version: str | None = None) -> int:
    """Served rows (of ``version``, if given) received in (since, until]."""
    with store.session(commit=False) as s:
        return _count_served(s, since, until, version)


def run_metrics(store: Store, schedule: str | None) -> dict[str, Any]:
    """What the loop's Prometheus metrics show: per result (succeeded, refused, failed)
    the count, the summed duration in s and the newest finish time; the number of
    running runs; the schedule's next fire time (None without a schedule row)."""
    with store.session(commit=False) as s:
        rows = s.execute(
            select(DistillRun.status, func.count(), func.max(DistillRun.finished_at))
            .where(DistillRun.status.in_(RESULT_STATUSES)).group_by(DistillRun.status)
        ).all()
        durations = s.execute(
            select(DistillRun.status, DistillRun.started_at, DistillRun.finished_at)
            .where(DistillRun.status.in_(RESULT_STATUSES))
        ).all()
        running = s.scalar(select(func.count()).select_from(DistillRun)
                           .where(DistillRun.status == "running")) or 0
        nxt = None
        if schedule is not None:
            row = s.get(ScheduleState, schedule)
            nxt = row.next_run_at if row is not None else None
    out = {r: {"count": 0, "sum_s": 0.0, "last": None} for r in RESULT_STATUSES}
    for status, n, last in rows:
        out[status].update(count=int(n), last=last)
    for status, started, finished in durations:
        if started is not None and finished is not None:
            out[status]["sum_s"] += (finished - started).total_seconds()
    return {"results": out, "running": int(running), "next_run_at": nxt}
