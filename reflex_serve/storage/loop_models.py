"""SQLAlchemy models of the self-distilling loop (schema revision 0004).

Registered on the same metadata as :mod:`reflex_serve.storage.models` (which imports
this module), so Alembic and the schema tests see one schema::

    schedule_state   one row per named schedule: its spec, when it last fired and when it
                     fires next (the exactly-once claim is a compare-and-set on next_run_at)
    distill_runs     one loop run: trigger, status, teacher, promoted version, the worker's
                     pid / host / heartbeat, the error of a failed run, a JSON summary
    run_stages       the stages of a run (data, distill, candidates, shadow, promote,
                     monitor) with status, times and a JSON detail
    run_candidates   every candidate a run gated (student, teacher at fewer steps), its
                     gate run and why it was chosen, kept or refused

Times are UTC (:class:`~reflex_serve.storage.models.UTCDateTime`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from reflex_serve.storage.models import Base, UTCDateTime, _in

RUN_TRIGGERS = ("schedule", "manual")
RUN_STATUSES = ("queued", "running", "succeeded", "refused", "failed", "skipped")
#: statuses of a run that is not over yet
ACTIVE_STATUSES = ("queued", "running")
#: statuses of a run that ran the pipeline to an end (the metrics count these)
RESULT_STATUSES = ("succeeded", "refused", "failed")
STAGE_STATUSES = ("running", "passed", "refused", "failed", "skipped")
CANDIDATE_KINDS = ("student", "teacher-steps")
CANDIDATE_VERDICTS = ("chosen", "kept", "refused")


class ScheduleState(Base):
    """A named schedule (``spec`` as given to ``--distill-schedule``) and its clock."""

    __tablename__ = "schedule_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[str] = mapped_column(String(128))
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DistillRun(Base):
    """One run of the loop. ``status``: queued -> running -> succeeded (a candidate was
    promoted) | refused (a stage said no, ``error`` says why) | failed (an error, a
    crashed or killed worker, a lost heartbeat); ``skipped``: a due run with too few new
    served rows (``error`` says how many), never started."""

    __tablename__ = "distill_runs"
    __table_args__ = (
        CheckConstraint(_in("trigger", RUN_TRIGGERS), name="trigger"),
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        Index("ix_distill_runs_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    schedule: Mapped[str | None] = mapped_column(String(64))
    teacher_version: Mapped[str | None] = mapped_column(String(16))
    promoted_version: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    data_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)


class RunStage(Base):
    """One stage of a run (``position``: its order in the pipeline)."""

    __tablename__ = "run_stages"
    __table_args__ = (CheckConstraint(_in("status", STAGE_STATUSES), name="status"),)

    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("distill_runs.id", ondelete="CASCADE"), primary_key=True
    )
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class RunCandidate(Base):
    """A candidate a run put through the gates (``p50_ratio``: its p50 latency over the
    teacher's, from P4)."""

    __tablename__ = "run_candidates"
    __table_args__ = (
        CheckConstraint(_in("kind", CANDIDATE_KINDS), name="kind"),
        CheckConstraint(_in("verdict", CANDIDATE_VERDICTS), name="verdict"),
    )

    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("distill_runs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    num_steps: Mapped[int] = mapped_column(Integer)
    version: Mapped[str | None] = mapped_column(String(16))
    gate_run_id: Mapped[str | None] = mapped_column(String(32))
    passed: Mapped[bool | None] = mapped_column(Boolean)
    p50_ratio: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
