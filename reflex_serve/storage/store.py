"""The store: one SQLAlchemy engine, the schema check, and the write side of the data model.

Every SQL statement of reflex-serve is issued from ``reflex_serve/storage``; this module
holds the writes (frames, episodes, outcomes, model versions), :mod:`.reader` the reads
for training and gates, :mod:`.maintenance` stats and pruning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from reflex_serve.storage import schema
from reflex_serve.storage.engine import StoreError, display_url, make_engine, resolve_url
from reflex_serve.storage.models import (
    OUTCOMES,
    Episode,
    Image,
    Request,
    RequestImage,
    UTCDateTime,
    utcnow,
)
from reflex_serve.storage.records import (
    EpisodeInfo,
    FrameRecord,
    as_f32_bytes,
    encode_png,
    image_key,
    validate_episode,
    validate_frame,
)


@dataclass(frozen=True)
class WriteResult:
    """What one :meth:`Store.write` added: rows of ``requests``, new ``images``, new
    ``episodes`` (existing ones are only extended)."""

    requests: int
    images: int
    episodes: int


@dataclass(frozen=True)
class OutcomeReport:
    """An episode's outcome as stored (``reported_at`` is UTC)."""

    episode_id: str
    source: str
    outcome: str
    reward: float | None
    note: str | None
    reported_at: datetime


class Store:
    """A reflex data store at ``url`` (SQLite file or PostgreSQL database).

    Build it with :meth:`open`, which creates or upgrades the schema. Thread-safe: each
    unit of work opens its own session.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=False)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(
        cls, store: str | None = None, data_dir: Path | str | None = None, *, migrate: bool = True
    ) -> Store:
        """Open (and by default create or upgrade) the store named by ``--store`` /
        ``--data-dir`` (see :func:`~reflex_serve.storage.engine.resolve_url`).

        Raises:
            StoreError: bad URL, unreachable server, or a schema this build does not know.
        """
        url = resolve_url(store, data_dir)
        engine = make_engine(url)
        try:
            if migrate:
                schema.upgrade(engine)
            else:
                with engine.connect() as conn:
                    schema.check_revision(conn, url)
        except OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot open store {display_url(url)}: {exc.orig}") from None
        except StoreError:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"Store({display_url(self.url)!r})"

    @contextmanager
    def session(self, *, commit: bool = True) -> Iterator[Session]:
        """A session for one unit of work: committed on success (unless ``commit`` is
        False: then always rolled back, for dry runs), rolled back on error."""
        with self._sessions() as session, session.begin() as tx:
            yield session
            if not commit:
                tx.rollback()

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    # -- writes -----------------------------------------------------------------------------

    def insert_ignore(self, session: Session, entity: type, rows: list[dict[str, Any]]) -> int:
        """INSERT ... ON CONFLICT DO NOTHING; returns the rowcount (exact for one row)."""
        if not rows:
            return 0
        dialect = postgresql if self.backend == "postgresql" else sqlite
        stmt = dialect.insert(entity.__table__).on_conflict_do_nothing()
        return session.execute(stmt, rows if len(rows) > 1 else rows[0]).rowcount

    def known_images(self, keys: Iterable[str]) -> set[str]:
        """Which of these image keys are stored already."""
        keys = list(keys)
        if not keys:
            return set()
        with self.session() as s:
            return set(s.scalars(select(Image.sha256).where(Image.sha256.in_(keys))))

    def write(
        self,
        frames: Sequence[FrameRecord],
        episodes: Sequence[EpisodeInfo] = (),
        *,
        trust_known_images: bool = True,
    ) -> WriteResult:
        """Write frames (with their images) and episodes in ONE transaction: all or nothing.

        Episodes named by frames but not in ``episodes`` are created (source of the
        frame, instruction of its first frame); every touched episode's time range is
        widened to cover its frames. Images already stored are not encoded again (set
        ``trust_known_images=False`` to encode every image, e.g. to retry after a
        concurrent prune removed one).

        Raises:
            InvalidRecord: a frame or episode is malformed (nothing is written).
            sqlalchemy.exc.SQLAlchemyError: the database refused the batch (rolled back).
        """
        for frame in frames:
            validate_frame(frame)
        for episode in episodes:
            validate_episode(episode)
        keys = [[(cam, image_key(img), img) for cam, img in f.images.items()] for f in frames]
        images = {key: img for cams in keys for _, key, img in cams}
        known = self.known_images(images) if trust_known_images else set()
        now = utcnow()
        image_rows = [_image_row(key, img, now) for key, img in images.items() if key not in known]
        spans = _episode_spans(frames, episodes)
        with self.session() as s:
            touched = {e.id for e in episodes} | set(spans)
            existing = (
                set(s.scalars(select(Episode.id).where(Episode.id.in_(touched))))
                if touched
                else set()
            )
            self.insert_ignore(s, Episode, [_episode_row(e) for e in episodes])
            new_spans = [_span_row(r) for r in spans.values() if r["new"]]
            self.insert_ignore(s, Episode, new_spans)
            if spans:
                s.execute(_EXTEND_EPISODE, [_extend_params(r) for r in spans.values()])
            self.insert_ignore(s, Image, image_rows)
            if frames:
                s.execute(Request.__table__.insert(), [_request_row(f) for f in frames])
            links = [
                {"request_id": f.id, "camera": cam, "position": i, "image_sha256": key}
                for f, cams in zip(frames, keys)
                for i, (cam, key, _) in enumerate(cams)
            ]
            if links:
                s.execute(RequestImage.__table__.insert(), links)
        return WriteResult(len(frames), len(image_rows), len(touched - existing))

    def report_outcome(
        self,
        episode_id: str,
        outcome: str,
        reward: float | None = None,
        note: str | None = None,
        *,
        create_as: str | None = None,
    ) -> OutcomeReport | None:
        """Store an episode's outcome (a later report replaces an earlier one).

        Args:
            episode_id: the episode.
            outcome: ``"success"`` or ``"failure"``.
            reward, note: optional.
            create_as: when the episode has no row yet, create it with this source
                (the server does so for episodes it has seen but not written yet);
                ``None`` leaves unknown episodes alone.

        Returns:
            The stored outcome, or ``None`` if the episode is unknown (and not created).

        Raises:
            ValueError: ``outcome`` is not success / failure.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        now = utcnow()
        with self.session() as s:
            if create_as is not None:
                row = {"id": episode_id, "source": create_as, "started_at": now}
                self.insert_ignore(s, Episode, [row])
            ep = s.get(Episode, episode_id, with_for_update=True)
            if ep is None:
                return None
            ep.outcome, ep.reward, ep.note, ep.reported_at = outcome, reward, note, now
            return OutcomeReport(ep.id, ep.source, outcome, reward, note, now)

    def episode(self, episode_id: str) -> Episode | None:
        """The episode row (detached), or ``None``."""
        with self.session() as s:
            return s.get(Episode, episode_id)

    def count(self, entity: type, **where: Any) -> int:
        """Rows of a model, optionally filtered by equality (``count(Request, source="demo")``)."""
        stmt = select(func.count()).select_from(entity)
        for column, value in where.items():
            stmt = stmt.where(getattr(entity, column) == value)
        with self.session() as s:
            return int(s.scalar(stmt))


_EXTEND_EPISODE = (
    update(Episode.__table__)
    .where(Episode.__table__.c.id == bindparam("eid"))
    .values(
        started_at=case(
            (
                Episode.__table__.c.started_at > bindparam("first", type_=UTCDateTime()),
                bindparam("first", type_=UTCDateTime()),
            ),
            else_=Episode.__table__.c.started_at,
        ),
        ended_at=case(
            (
                Episode.__table__.c.ended_at.is_(None)
                | (Episode.__table__.c.ended_at < bindparam("last", type_=UTCDateTime())),
                bindparam("last", type_=UTCDateTime()),
            ),
            else_=Episode.__table__.c.ended_at,
        ),
        instruction=func.coalesce(Episode.__table__.c.instruction, bindparam("instr")),
    )
)


def _episode_spans(
    frames: Sequence[FrameRecord], episodes: Sequence[EpisodeInfo]
) -> dict[str, dict[str, Any]]:
    """Per episode id named by frames: first / last time, first instruction, source."""
    explicit = {e.id for e in episodes}
    spans: dict[str, dict[str, Any]] = {}
    for f in frames:
        if f.episode_id is None:
            continue
        span = spans.get(f.episode_id)
        if span is None:
            spans[f.episode_id] = {
                "id": f.episode_id,
                "source": f.source,
                "instruction": f.instruction,
                "started_at": f.received_at,
                "ended_at": f.received_at,
                "new": f.episode_id not in explicit,
            }
        else:
            span["started_at"] = min(span["started_at"], f.received_at)
            span["ended_at"] = max(span["ended_at"], f.received_at)
    return spans


def _span_row(span: dict[str, Any]) -> dict[str, Any]:
    return {k: span[k] for k in ("id", "source", "instruction", "started_at", "ended_at")}


def _extend_params(span: dict[str, Any]) -> dict[str, Any]:
    return {
        "eid": span["id"],
        "first": span["started_at"],
        "last": span["ended_at"],
        "instr": span["instruction"],
    }


def _episode_row(e: EpisodeInfo) -> dict[str, Any]:
    return {
        "id": e.id,
        "source": e.source,
        "task": e.task,
        "instruction": e.instruction,
        "started_at": e.started_at,
        "ended_at": e.ended_at,
        "outcome": e.outcome,
        "reward": e.reward,
        "note": e.note,
        "reported_at": utcnow() if e.outcome is not None else None,
    }


def _image_row(key: str, img, now: datetime) -> dict[str, Any]:
    data = encode_png(img)
    h, w, c = img.shape
    return {
        "sha256": key,
        "height": h,
        "width": w,
        "channels": c,
        "format": "png",
        "data": data,
        "nbytes": len(data),
        "created_at": now,
    }


def _request_row(f: FrameRecord) -> dict[str, Any]:
    chunk, action_dim = f.actions.shape
    return {
        "id": f.id,
        "request_id": f.request_id,
        "source": f.source,
        "received_at": f.received_at,
        "episode_id": f.episode_id,
        "step": f.step,
        "instruction": f.instruction,
        "state": as_f32_bytes(f.state),
        "state_dim": int(f.state.shape[0]),
        "actions": as_f32_bytes(f.actions),
        "chunk_size": int(chunk),
        "action_dim": int(action_dim),
        "model_version": f.model_version,
        "num_steps": f.num_steps,
        "seed": f.seed,
        "prefix_ms": f.prefix_ms,
        "expert_ms": f.expert_ms,
        "total_ms": f.total_ms,
        "server_ms": f.server_ms,
        "cache_hit": f.cache_hit,
        "transport": f.transport,
        "client": f.client,
    }
