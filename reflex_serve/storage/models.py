"""SQLAlchemy 2 models of the store (the schema itself is owned by Alembic migrations).

Tables (see docs/data-format.md for every column)::

    episodes             one robot episode: source (demo | served), task, instruction,
                         time range, outcome reported by the controller
    requests             one policy call or one demo frame: observation (state, instruction,
                         images by link), the action chunk (served chunk or demo action),
                         model version, denoising steps, latencies, cache hit, client
    images               content-addressed camera frames: sha256 of the raw pixels -> PNG
    request_images       request x camera -> image (a repeated frame is stored once)
    model_versions       a served or candidate export by digest, with its lifecycle state
    version_transitions  audit log of lifecycle changes (from, to, time, actor, reason)
    gate_runs            one evaluation of a candidate version against a reference (0002)
    gate_results         the nine gate outcomes of a run (0002)
    gate_overrides       operator overrides of performance gates, accepted or refused (0002)
    router_slots         what every replica serves: the active version, the shadow and the
                         canary with their traffic fractions, a revision counter (0003)
    swaps                promotes and rollbacks: who, why, load / warm-up figures, the
                         post-swap monitor's verdict, a rollback's signal and figures (0003)
    shadow_comparisons   mirrored requests: a candidate's chunk against the serving
                         version's on the same observation and noise (0003)
    schedule_state, distill_runs, run_stages, run_candidates
                         the self-distilling loop (0004, :mod:`.loop_models`)

Arrays are stored as raw little-endian float32 bytes (``state``: (state_dim,),
``actions``: (chunk_size, action_dim)) next to their dimensions; times are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SOURCES = ("demo", "served")
OUTCOMES = ("success", "failure")
LIFECYCLE_STATES = ("candidate", "shadow", "canary", "active", "retired", "rolled_back")
ROUTER_SLOTS = ("active", "shadow", "canary")
SWAP_KINDS = ("promote", "rollback")
SWAP_STATUSES = ("failed", "monitoring", "kept", "rolled_back", "superseded", "done")
COMPARISON_MODES = ("shadow", "monitor")
GATE_KINDS = ("safety", "performance")
GATE_VERDICTS = ("pass", "fail", "not_evaluated")
OVERRIDE_STATUSES = ("accepted", "refused")
MAX_EPISODE_ID = 128
MAX_REQUEST_ID = 128

#: Constraint names are fixed so that later migrations (batch mode on SQLite) can find them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as
    naive UTC and come back with ``tzinfo=UTC``. Naive inputs are taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Episode(Base):
    """One episode, from demonstrations or from served traffic (the controller's id)."""

    __tablename__ = "episodes"
    __table_args__ = (
        CheckConstraint(_in("source", SOURCES), name="source"),
        CheckConstraint(f"outcome IS NULL OR {_in('outcome', OUTCOMES)}", name="outcome"),
    )

    id: Mapped[str] = mapped_column(String(MAX_EPISODE_ID), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), index=True)
    task: Mapped[str | None] = mapped_column(String(128))
    instruction: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))
    reward: Mapped[float | None] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(Text)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Request(Base):
    """One /act call (source ``served``) or one demonstration frame (source ``demo``).

    ``actions`` is the served chunk, float32 (chunk_size, action_dim), for served rows, and
    the demonstrated action, float32 (1, action_dim), for demo rows.
    """

    __tablename__ = "requests"
    __table_args__ = (
        CheckConstraint(_in("source", SOURCES), name="source"),
        Index("ix_requests_source_received_at", "source", "received_at"),
        Index("ix_requests_episode_id_step", "episode_id", "step"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(MAX_REQUEST_ID), index=True)
    source: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    episode_id: Mapped[str | None] = mapped_column(
        String(MAX_EPISODE_ID), ForeignKey("episodes.id", ondelete="SET NULL")
    )
    step: Mapped[int | None] = mapped_column(BigInteger)
    instruction: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[bytes] = mapped_column(LargeBinary)
    state_dim: Mapped[int] = mapped_column(Integer)
    actions: Mapped[bytes] = mapped_column(LargeBinary)
    chunk_size: Mapped[int] = mapped_column(Integer)
    action_dim: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(80), index=True)
    num_steps: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    prefix_ms: Mapped[float | None] = mapped_column(Float)
    expert_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    server_ms: Mapped[float | None] = mapped_column(Float)
    cache_hit: Mapped[bool | None] = mapped_column(Boolean)
    transport: Mapped[str | None] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(128))


class Image(Base):
    """A camera frame, content-addressed: sha256 of ``"HxWxC:"`` + the raw uint8 pixels."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(8), default="png")
    data: Mapped[bytes] = mapped_column(LargeBinary)
    nbytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RequestImage(Base):
    """Which image a request saw on which camera (``position``: index in the manifest)."""

    __tablename__ = "request_images"

    request_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    camera: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    image_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("images.sha256"), index=True)


class ModelVersion(Base):
    """An export known to the store, identified by its content digest."""

    __tablename__ = "model_versions"
    __table_args__ = (CheckConstraint(_in("state", LIFECYCLE_STATES), name="state"),)

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    version: Mapped[str] = mapped_column(String(16), unique=True)
    parent_digest: Mapped[str | None] = mapped_column(String(80))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    location: Mapped[str | None] = mapped_column(Text)


class VersionTransition(Base):
    """One lifecycle change of a model version (an audit log: rows are never updated)."""

    __tablename__ = "version_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(
        String(80), ForeignKey("model_versions.digest", ondelete="CASCADE"), index=True
    )
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")


class GateRun(Base):
    """One run of the nine gates: a candidate version judged against a reference.

    ``passed`` is the verdict of the run itself (every gate passed); overrides recorded
    later do not change it. ``config`` holds the thresholds used, ``report`` the whole
    JSON report (docs/gates.md).
    """

    __tablename__ = "gate_runs"
    __table_args__ = (
        Index("ix_gate_runs_candidate_digest_started_at", "candidate_digest", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    candidate_digest: Mapped[str] = mapped_column(
        String(80), ForeignKey("model_versions.digest", ondelete="CASCADE")
    )
    candidate_version: Mapped[str] = mapped_column(String(16))
    reference_digest: Mapped[str] = mapped_column(String(80))
    reference_version: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    passed: Mapped[bool] = mapped_column(Boolean)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


class GateResult(Base):
    """The outcome of one gate in one run (``gate``: S1..S3, P1..P6)."""

    __tablename__ = "gate_results"
    __table_args__ = (
        CheckConstraint(_in("kind", GATE_KINDS), name="kind"),
        CheckConstraint(_in("verdict", GATE_VERDICTS), name="verdict"),
    )

    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("gate_runs.id", ondelete="CASCADE"), primary_key=True
    )
    gate: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str] = mapped_column(Text)
    comparison: Mapped[str] = mapped_column(String(4))
    threshold: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float)
    evidence: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class GateOverride(Base):
    """An operator's request to override a gate of a run: accepted, or refused with why.

    An audit log: rows are never updated. Only ``accepted`` rows count.
    """

    __tablename__ = "gate_overrides"
    __table_args__ = (CheckConstraint(_in("status", OVERRIDE_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("gate_runs.id", ondelete="CASCADE"), index=True
    )
    digest: Mapped[str] = mapped_column(
        String(80), ForeignKey("model_versions.digest", ondelete="CASCADE"), index=True
    )
    gate: Mapped[str] = mapped_column(String(8))
    operator: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    refusal: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class RouterSlot(Base):
    """One routing slot shared by every replica: ``active``, ``shadow`` or ``canary``.

    ``revision`` is bumped on every change (the replicas poll the largest one);
    ``fraction`` is the share of requests (shadow) or episodes (canary) sent to the
    slot's version, 1.0 for ``active``.
    """

    __tablename__ = "router_slots"
    __table_args__ = (CheckConstraint(_in("slot", ROUTER_SLOTS), name="slot"),)

    slot: Mapped[str] = mapped_column(String(16), primary_key=True)
    digest: Mapped[str | None] = mapped_column(
        String(80), ForeignKey("model_versions.digest", ondelete="SET NULL")
    )
    fraction: Mapped[float] = mapped_column(Float)
    revision: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")


class Swap(Base):
    """A promote (``to`` replaces ``from`` as the active version) or a rollback.

    ``status``: ``failed`` (load, warm-up or check failed: ``stage`` and ``error`` say
    where; the old version kept serving), ``monitoring`` (inside the post-swap window),
    ``kept`` (the window ended without a breach), ``rolled_back`` (see the rollback row),
    ``superseded`` (another promote came first), ``done`` (a rollback row).
    """

    __tablename__ = "swaps"
    __table_args__ = (
        CheckConstraint(_in("kind", SWAP_KINDS), name="kind"),
        CheckConstraint(_in("status", SWAP_STATUSES), name="status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    from_digest: Mapped[str | None] = mapped_column(String(80))
    to_digest: Mapped[str] = mapped_column(String(80), index=True)
    from_version: Mapped[str | None] = mapped_column(String(16))
    to_version: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    signal: Mapped[str | None] = mapped_column(String(32))
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    replica: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    monitor_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ShadowComparison(Base):
    """One mirrored request: ``candidate`` and ``reference`` on the same observation and
    noise. ``divergence``: RMS of the chunk difference in units of the reference's
    action standard deviation; ``mode``: ``shadow`` (a shadow candidate against the
    active version) or ``monitor`` (the new active version against the previous one)."""

    __tablename__ = "shadow_comparisons"
    __table_args__ = (
        CheckConstraint(_in("mode", COMPARISON_MODES), name="mode"),
        Index("ix_shadow_comparisons_candidate_version_at", "candidate_version", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    mode: Mapped[str] = mapped_column(String(16))
    candidate_version: Mapped[str] = mapped_column(String(16))
    reference_version: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str] = mapped_column(String(MAX_REQUEST_ID))
    episode_id: Mapped[str | None] = mapped_column(String(MAX_EPISODE_ID))
    divergence: Mapped[float] = mapped_column(Float)
    max_abs_diff: Mapped[float] = mapped_column(Float)
    candidate_ms: Mapped[float] = mapped_column(Float)
    reference_ms: Mapped[float] = mapped_column(Float)
    shared_prefix: Mapped[bool] = mapped_column(Boolean)


# the loop's tables live in their own module, on this metadata
from reflex_serve.storage import loop_models as _loop_models  # noqa: E402,F401
