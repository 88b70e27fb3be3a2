"""The read side for training, distillation and gates: observations with action labels.

Labels (chunks of H actions, float32 (H, A)):

- demo frames: the next H demonstrated actions of the episode, the last one repeated
  past the episode's end (the construction of
  :func:`reflex_serve.policy.data.chunk_indices`);
- served requests: the chunk the server returned (truncated, or padded with its last
  row, to H when ``chunk_size`` asks for another length).

Held-out split: a row belongs to ``holdout`` when ``sha256(key) mod 100 < holdout_pct``,
with ``key`` its episode id (or, without one, its request id). It depends on nothing
else, so it never changes as data grows, and an episode is never split.

Reading is two-phase: the light columns of every matching row (state, actions, ids),
then the images of one batch at a time, so memory holds one batch of images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import numpy as np
from sqlalchemy import select

from reflex_serve.storage.models import SOURCES, Image, Request, RequestImage
from reflex_serve.storage.records import decode_png, from_f32_bytes
from reflex_serve.storage.store import Store

if TYPE_CHECKING:
    from reflex_serve.policy.data import FrameData

Split = Literal["train", "holdout", "all"]
_IN_CHUNK = 5000  # values per SQL IN list (SQLite allows 32766 parameters)


def split_of(key: str, holdout_pct: float) -> Literal["train", "holdout"]:
    """The split of an episode id (or request id): stable, ``holdout_pct`` in 0..100."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return "holdout" if bucket < holdout_pct else "train"


@dataclass(frozen=True)
class ReadQuery:
    """Which rows to read.

    Attributes:
        sources: ``("demo",)``, ``("served",)`` or both.
        model_versions: served versions to keep (``None``: any; demo rows have none and
            are dropped by a version filter).
        since, until: time window on ``received_at`` (UTC, ``since`` inclusive).
        split: ``"train"``, ``"holdout"`` or ``"all"``; holdout_pct: 0..100.
        chunk_size: label length H (``None``: each served row's own chunk; required when
            demo rows are read).
        with_images: read camera frames; rows without every camera are then skipped.
    """

    sources: tuple[str, ...] = SOURCES
    model_versions: tuple[str, ...] | None = None
    since: datetime | None = None
    until: datetime | None = None
    split: Split = "all"
    holdout_pct: float = 10.0
    chunk_size: int | None = None
    with_images: bool = True

    def __post_init__(self) -> None:
        bad = set(self.sources) - set(SOURCES)
        if bad or not self.sources:
            raise ValueError(f"sources must be a non-empty subset of {SOURCES}, got {self.sources}")
        if self.split not in ("train", "holdout", "all"):
            raise ValueError(f"split must be train, holdout or all, got {self.split!r}")
        if not 0 <= self.holdout_pct <= 100:
            raise ValueError(f"holdout_pct must be in 0..100, got {self.holdout_pct}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if "demo" in self.sources and self.chunk_size is None:
            raise ValueError("reading demo frames needs chunk_size (the label length H)")


@dataclass
class Batch:
    """N observations with their labels.

    Attributes:
        ids, request_ids: (N,) str. episode_ids: (N,) object, str or None.
        steps: int64 (N,), -1 when unknown. sources, instructions: (N,) str.
        model_versions: (N,) object, str or None. received_at: float64 (N,) Unix s.
        state: float32 (N, S). chunks: float32 (N, H, A) labels.
        images: uint8 (N, C, H, W, 3) in ``cameras`` order, or None without images.
        cameras: camera names. splits: (N,) ``"train"`` / ``"holdout"``.
    """

    ids: np.ndarray
    request_ids: np.ndarray
    episode_ids: np.ndarray
    steps: np.ndarray
    sources: np.ndarray
    instructions: np.ndarray
    model_versions: np.ndarray
    received_at: np.ndarray
    state: np.ndarray
    chunks: np.ndarray
    images: np.ndarray | None
    cameras: list[str]
    splits: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


_LIGHT = (
    Request.id,
    Request.request_id,
    Request.episode_id,
    Request.step,
    Request.source,
    Request.instruction,
    Request.model_version,
    Request.received_at,
    Request.state,
    Request.state_dim,
    Request.actions,
    Request.chunk_size,
    Request.action_dim,
)


def _select(query: ReadQuery):
    stmt = select(*_LIGHT).where(Request.source.in_(query.sources))
    if query.model_versions is not None:
        stmt = stmt.where(Request.model_version.in_(query.model_versions))
    if query.since is not None:
        stmt = stmt.where(Request.received_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(Request.received_at < query.until)
    return stmt


def _sort_key(row) -> tuple:
    return (
        row.episode_id is None,
        row.episode_id or row.request_id,
        -1 if row.step is None else row.step,
        row.received_at,
        row.id,
    )


def _demo_labels(store: Store, episode_ids: set[str], chunk_size: int) -> dict[str, np.ndarray]:
    """Row id -> (H, A) chunk of the following demo actions (whole episodes are read)."""
    from reflex_serve.policy.data import chunk_indices

    stmt = select(
        Request.id,
        Request.episode_id,
        Request.step,
        Request.received_at,
        Request.actions,
        Request.action_dim,
    ).where(Request.source == "demo")
    ids, rows = sorted(episode_ids), []
    with store.session() as s:
        for start in range(0, len(ids), _IN_CHUNK):
            rows += s.execute(stmt.where(Request.episode_id.in_(ids[start : start + _IN_CHUNK])))
    rows.sort(key=lambda r: (r.episode_id, r.step, r.received_at, r.id))
    if not rows:
        return {}
    actions = np.stack([from_f32_bytes(r.actions, (-1, r.action_dim))[0] for r in rows])
    _, episode_index = np.unique([r.episode_id for r in rows], return_inverse=True)
    idx = chunk_indices(episode_index, chunk_size)
    return {r.id: actions[idx[i]] for i, r in enumerate(rows)}


def _fit(chunk: np.ndarray, size: int | None) -> np.ndarray:
    """A served chunk truncated, or padded with its last row, to ``size`` rows."""
    if size is None or len(chunk) == size:
        return chunk
    if len(chunk) > size:
        return chunk[:size]
    return np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])


def _check_dims(rows: Sequence) -> None:
    dims = {(r.state_dim, r.action_dim) for r in rows}
    if len(dims) > 1:
        raise ValueError(
            f"rows mix (state_dim, action_dim) {sorted(dims)}; filter by model_versions"
        )


def _load_images(
    store: Store, ids: Sequence[str], decode: bool = True
) -> dict[str, dict[str, tuple[int, np.ndarray | bytes]]]:
    """Row id -> camera -> (position, uint8 (H, W, C) or the PNG bytes)."""
    stmt = (
        select(RequestImage.request_id, RequestImage.camera, RequestImage.position, Image.data)
        .join(Image, Image.sha256 == RequestImage.image_sha256)
        .where(RequestImage.request_id.in_(list(ids)))
    )
    out: dict[str, dict[str, tuple[int, np.ndarray | bytes]]] = {}
    decoded: dict[bytes, np.ndarray] = {}
    with store.session() as s:
        for rid, cam, pos, data in s.execute(stmt):
            img = decoded.get(data) if decode else data
            if img is None:
                img = decoded[data] = decode_png(data)
            out.setdefault(rid, {})[cam] = (pos, img)
    return out


def _batch(
    store: Store, rows: list, labels: dict[str, np.ndarray], query: ReadQuery, decode: bool
) -> Batch | None:
    cameras: list[str] = []
    images = None
    if query.with_images:
        found = _load_images(store, [r.id for r in rows], decode)
        rows = [r for r in rows if r.id in found]
        if not rows:
            return None
        first = found[rows[0].id]
        cameras = sorted(first, key=lambda c: first[c][0])
        for r in rows:
            if sorted(found[r.id], key=lambda c: found[r.id][c][0]) != cameras:
                raise ValueError(
                    f"request {r.id} has cameras {sorted(found[r.id])}, others have {cameras}"
                )
        if decode:
            images = np.stack([np.stack([found[r.id][c][1] for c in cameras]) for r in rows])
        else:
            images = np.empty((len(rows), len(cameras)), dtype=object)
            for i, r in enumerate(rows):
                images[i] = [found[r.id][c][1] for c in cameras]
    chunks = [
        labels[r.id]
        if r.source == "demo"
        else _fit(from_f32_bytes(r.actions, (r.chunk_size, r.action_dim)), query.chunk_size)
        for r in rows
    ]
    return Batch(
        ids=np.array([r.id for r in rows]),
        request_ids=np.array([r.request_id for r in rows]),
        episode_ids=np.array([r.episode_id for r in rows], dtype=object),
        steps=np.array([-1 if r.step is None else r.step for r in rows], dtype=np.int64),
        sources=np.array([r.source for r in rows]),
        instructions=np.array([r.instruction for r in rows], dtype=object).astype(str),
        model_versions=np.array([r.model_version for r in rows], dtype=object),
        received_at=np.array([r.received_at.timestamp() for r in rows], dtype=np.float64),
        state=np.stack([from_f32_bytes(r.state, (r.state_dim,)) for r in rows]),
        chunks=np.stack(chunks).astype(np.float32),
        images=images,
        cameras=cameras,
        splits=np.array([split_of(r.episode_id or r.request_id, query.holdout_pct) for r in rows]),
    )


def iter_batches(
    store: Store, query: ReadQuery, batch_size: int = 256, *, decode: bool = True
) -> Iterator[Batch]:
    """Batches of at most ``batch_size`` rows matching ``query``, in a stable order
    (by episode and step; rows without an episode after, by request id and time).

    With ``decode=False`` ``Batch.images`` is an object array (N, C) of PNG bytes.

    Raises:
        ValueError: rows of different state / action sizes or camera sets, or an
            invalid query.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with store.session() as s:
        rows = list(s.execute(_select(query)))
    if query.split != "all":
        rows = [
            r
            for r in rows
            if split_of(r.episode_id or r.request_id, query.holdout_pct) == query.split
        ]
    rows.sort(key=_sort_key)
    _check_dims(rows)
    demo_episodes = {r.episode_id for r in rows if r.source == "demo" and r.episode_id}
    labels = _demo_labels(store, demo_episodes, query.chunk_size) if demo_episodes else {}
    for r in rows:
        if r.source == "demo" and r.id not in labels:  # a demo frame without an episode
            labels[r.id] = np.repeat(
                from_f32_bytes(r.actions, (-1, r.action_dim))[:1], query.chunk_size, axis=0
            )
    for start in range(0, len(rows), batch_size):
        batch = _batch(store, rows[start : start + batch_size], labels, query, decode)
        if batch is not None:
            yield batch


def read_all(store: Store, query: ReadQuery) -> Batch | None:
    """Every matching row in one :class:`Batch` (``None`` if nothing matches)."""
    batches = list(iter_batches(store, query, batch_size=_IN_CHUNK))
    if not batches:
        return None
    if len(batches) == 1:
        return batches[0]
    merged = {
        name: np.concatenate([getattr(b, name) for b in batches])
        for name in Batch.__dataclass_fields__
        if name not in ("images", "cameras")
    }
    images = None if batches[0].images is None else np.concatenate([b.images for b in batches])
    return Batch(**merged, images=images, cameras=batches[0].cameras)


def load_frame_data(store: Store, query: ReadQuery) -> FrameData:
    """Demonstration frames as :class:`~reflex_serve.policy.data.FrameData` (what
    ``reflex train policy`` trains on): images, state, the demonstrated action per frame,
    an integer episode index and the instruction, episodes contiguous and time-ordered.

    Raises:
        ValueError: the query reads served rows (their labels are whole chunks: use
            :func:`iter_batches`), or no demo frame matches.
    """
    from reflex_serve.policy.data import FrameData

    if set(query.sources) != {"demo"}:
        raise ValueError("load_frame_data reads demo frames only: use sources=('demo',)")
    batch = read_all(store, query)
    if batch is None or batch.images is None:
        raise ValueError(f"no demo frames with images match {query}")
    _, episode_index = np.unique(batch.episode_ids.astype(str), return_inverse=True)
    return FrameData(
        images=batch.images,
        state=batch.state,
        action=batch.chunks[:, 0],
        episode_index=episode_index.astype(np.int64),
        instruction=batch.instructions,
        cameras=list(batch.cameras),
    )
