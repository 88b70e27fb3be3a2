"""Store statistics and retention: ``reflex data stats`` and ``reflex data prune``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, func, select

from reflex_serve.storage.models import SOURCES, Episode, Image, Request, RequestImage, utcnow
from reflex_serve.storage.schema import current_revision
from reflex_serve.storage.store import Store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``1d12h``, ``90m``, ``2w``, ``45s`` into a timedelta.

    Raises:
        ValueError: anything else (the message shows the accepted forms).
    """
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(
            f"cannot parse duration {text!r}; use a number and a unit s, m, h, d or w, "
            "e.g. 30d, 12h, 1d12h"
        )
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def parse_time_or_age(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC if it has no zone) or an age like ``7d`` (that long before
    ``now``), as an aware UTC-comparable datetime.

    Raises:
        ValueError: neither form.
    """
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO time nor an age like 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StoreStats:
    """What a store holds.

    Attributes:
        url: the store (password masked). revision: schema revision.
        requests_by_source: source -> rows. requests_by_version: served model version ->
        rows. episodes_by_source: source -> episodes. episodes_with_outcome,
        successes: episodes with a reported outcome / with ``success``. images: stored
        frames; image_bytes: their compressed size. first, last: time range of requests
        (UTC, ``None`` when empty).
    """

    url: str
    revision: str | None
    requests_by_source: dict[str, int]
    requests_by_version: dict[str, int]
    episodes_by_source: dict[str, int]
    episodes_with_outcome: int
    successes: int
    images: int
    image_bytes: int
    first: datetime | None
    last: datetime | None

    @property
    def success_rate(self) -> float | None:
        """Successes / episodes with an outcome (``None`` if no outcome was reported)."""
        return self.successes / self.episodes_with_outcome if self.episodes_with_outcome else None

    def to_dict(self) -> dict:
        """JSON-ready dictionary (times as ISO 8601)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["first"] = self.first.isoformat() if self.first else None
        out["last"] = self.last.isoformat() if self.last else None
        out["success_rate"] = self.success_rate
        return out


def store_stats(store: Store) -> StoreStats:
    """Counts by source and version, outcomes, image bytes and time range."""

    def grouped(s, column, *where) -> dict:
        stmt = select(column, func.count()).where(*where).group_by(column)
        return {k: int(v) for k, v in s.execute(stmt)}

    with store.session() as s:
        by_source = grouped(s, Request.source)
        by_version = grouped(s, Request.model_version, Request.model_version.is_not(None))
        episodes = grouped(s, Episode.source)
        outcomes = grouped(s, Episode.outcome, Episode.outcome.is_not(None))
        images, image_bytes = s.execute(
            select(func.count(), func.coalesce(func.sum(Image.nbytes), 0))
        ).one()
        first, last = s.execute(
            select(func.min(Request.received_at), func.max(Request.received_at))
        ).one()
        revision = current_revision(s.connection())
    return StoreStats(
        url=store.engine.url.render_as_string(hide_password=True),
        revision=revision,
        requests_by_source={src: by_source.get(src, 0) for src in SOURCES},
        requests_by_version=dict(sorted(by_version.items())),
        episodes_by_source={src: episodes.get(src, 0) for src in SOURCES},
        episodes_with_outcome=sum(outcomes.values()),
        successes=outcomes.get("success", 0),
        images=int(images),
        image_bytes=int(image_bytes),
        first=_utc(first),
        last=_utc(last),
    )


def _utc(value) -> datetime | None:
    """MIN/MAX over a SQLite column bypasses the column type: parse its text."""
    if value is None or isinstance(value, datetime):
        return value
    from datetime import UTC

    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` removed (or would remove, with ``dry_run``)."""

    cutoff: datetime
    sources: tuple[str, ...]
    requests: int
    episodes: int
    images: int
    image_bytes: int
    dry_run: bool


def prune(
    store: Store,
    older_than: timedelta,
    sources: tuple[str, ...] = ("served",),
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    """Delete requests received before ``now - older_than``, then orphan images and
    episodes left without requests (that did not start after the cutoff).

    Runs in ONE transaction; ``dry_run`` runs the same statements and rolls back, so
    the report is exactly what a real run removes.

    Args:
        store: the store.
        older_than: age of the oldest request kept.
        sources: which sources to prune (default served traffic only: demonstrations
            are training data, prune them explicitly with ``("demo",)``).
        dry_run: report without deleting.
        now: the reference time (UTC; default now).

    Raises:
        ValueError: an unknown source or a negative age.
    """
    if older_than < timedelta(0):
        raise ValueError(f"older_than must be >= 0, got {older_than}")
    for src in sources:
        if src not in SOURCES:
            raise ValueError(f"unknown source {src!r}; use one of {SOURCES}")
    cutoff = (now or utcnow()) - older_than
    old = select(Request.id).where(Request.received_at < cutoff, Request.source.in_(sources))
    orphan_image = ~exists().where(RequestImage.image_sha256 == Image.sha256)
    empty_episode = (
        ~exists().where(Request.episode_id == Episode.id)
        & (func.coalesce(Episode.ended_at, Episode.started_at) < cutoff)
        & Episode.source.in_(sources)
    )
    quiet = {"synchronize_session": False}
    with store.session(commit=not dry_run) as s:
        s.execute(
            delete(RequestImage).where(RequestImage.request_id.in_(old)), execution_options=quiet
        )
        n_requests = s.execute(
            delete(Request).where(Request.id.in_(old)), execution_options=quiet
        ).rowcount
        n_episodes = s.execute(
            delete(Episode).where(empty_episode), execution_options=quiet
        ).rowcount
        n_images, n_bytes = s.execute(
            select(func.count(), func.coalesce(func.sum(Image.nbytes), 0)).where(orphan_image)
        ).one()
        s.execute(delete(Image).where(orphan_image), execution_options=quiet)
    return PruneReport(
        cutoff,
        tuple(sources),
        int(n_requests),
        int(n_episodes),
        int(n_images),
        int(n_bytes),
        dry_run,
    )
