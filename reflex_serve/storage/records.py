"""What the store writes, before it is SQL: frame and episode records, images, privacy.

A :class:`FrameRecord` is one served request or one demonstration frame as plain NumPy
data. The writer thread turns the server's :class:`~reflex_serve.server.state.ActRecord`
into one (:func:`frame_from_act`) so that the request path only enqueues a reference.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from reflex_serve.storage.models import MAX_EPISODE_ID, MAX_REQUEST_ID, OUTCOMES, SOURCES

if TYPE_CHECKING:
    from reflex_serve.server.state import ActRecord

MAX_CAMERA_NAME = 64
MAX_CLIENT = 128


class InvalidRecord(ValueError):
    """A record cannot be stored; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Privacy:
    """What a collecting server keeps.

    Attributes:
        hash_instructions: store ``sha256:<hex>`` of each instruction instead of its text
            (equal instructions stay equal; short instructions can be guessed back by
            hashing candidates, so this is pseudonymisation, not anonymisation).
        store_images: store camera frames; ``False`` keeps state, instruction and chunk only.
    """

    hash_instructions: bool = False
    store_images: bool = True


@dataclass
class FrameRecord:
    """One row of ``requests`` (and its camera frames).

    Attributes:
        request_id: the id returned to the client (``X-Request-ID``), or a demo frame id.
        source: ``"served"`` or ``"demo"``.
        received_at: timezone-aware UTC time.
        episode_id, step: the controller's episode and step, if sent.
        instruction: instruction text (or its hash, see :class:`Privacy`).
        state: float32 (state_dim,), unnormalized.
        actions: float32 (chunk_size, action_dim): the served chunk, or (1, action_dim)
            for a demo frame (the demonstrated action).
        images: camera name -> uint8 (H, W, 3), in the manifest's camera order.
        model_version .. client: serving metadata (``None`` for demo frames).
        id: the row's primary key (a fresh uuid4 hex by default).
    """

    request_id: str
    source: str
    received_at: datetime
    episode_id: str | None
    step: int | None
    instruction: str
    state: np.ndarray
    actions: np.ndarray
    images: dict[str, np.ndarray]
    model_version: str | None = None
    num_steps: int | None = None
    seed: int | None = None
    prefix_ms: float | None = None
    expert_ms: float | None = None
    total_ms: float | None = None
    server_ms: float | None = None
    cache_hit: bool | None = None
    transport: str | None = None
    client: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class EpisodeInfo:
    """An episode row written explicitly (demos); served episodes are created from frames.

    ``outcome`` is ``"success"``, ``"failure"`` or ``None``; times are UTC.
    """

    id: str
    source: str
    started_at: datetime
    task: str | None = None
    instruction: str | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    reward: float | None = None
    note: str | None = None


def frame_from_act(record: ActRecord) -> FrameRecord:
    """The :class:`FrameRecord` of a served call (no copies of the arrays)."""
    result, params = record.result, record.params
    return FrameRecord(
        request_id=record.request_id,
        source="served",
        received_at=datetime.fromtimestamp(record.received_at, UTC),
        episode_id=params.episode_id,
        step=params.step,
        instruction=record.observation.instruction,
        state=record.observation.state,
        actions=result.actions,
        images=record.observation.images,
        model_version=result.version,
        num_steps=result.num_steps,
        seed=params.seed,
        prefix_ms=result.prefix_ms,
        expert_ms=result.expert_ms,
        total_ms=result.total_ms,
        server_ms=record.server_ms,
        cache_hit=result.cache_hit,
        transport=record.transport,
        client=record.client[:MAX_CLIENT] if record.client else None,
    )


def hash_instruction(text: str) -> str:
    """``"sha256:<64 hex>"`` of an instruction (UTF-8); ``""`` stays ``""``."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest() if text else ""


def apply_privacy(frame: FrameRecord, privacy: Privacy) -> FrameRecord:
    """``frame`` with the instruction hashed and / or the images dropped, per ``privacy``."""
    if not privacy.hash_instructions and privacy.store_images:
        return frame
    return replace(
        frame,
        instruction=hash_instruction(frame.instruction)
        if privacy.hash_instructions
        else frame.instruction,
        images=frame.images if privacy.store_images else {},
    )


def check_id(value: object, field: str, limit: int) -> str:
    """A printable, non-empty id of at most ``limit`` characters.

    Raises:
        InvalidRecord: naming ``field``.
    """
    if not isinstance(value, str) or not value:
        raise InvalidRecord(field, "must be a non-empty string")
    if len(value) > limit:
        raise InvalidRecord(field, f"must be at most {limit} characters, got {len(value)}")
    if not value.isprintable():
        raise InvalidRecord(field, "must be printable text")
    return value


def _finite(arr: object, field: str, ndim: int) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf" or arr.ndim != ndim:
        raise InvalidRecord(field, f"must be a numeric {ndim}-d array")
    if not np.isfinite(arr).all():
        raise InvalidRecord(field, "contains NaN or Inf")
    return arr


def validate_frame(frame: FrameRecord) -> None:
    """Check a frame before it is written, so that no batch fails half-way on it.

    Raises:
        InvalidRecord: naming the field (ids too long or not printable, bad source,
            non-finite or wrongly shaped arrays, images not uint8 (H, W, 3)).
    """
    check_id(frame.request_id, "request_id", MAX_REQUEST_ID)
    if frame.episode_id is not None:
        check_id(frame.episode_id, "episode_id", MAX_EPISODE_ID)
    if frame.source not in SOURCES:
        raise InvalidRecord("source", f"must be one of {SOURCES}, got {frame.source!r}")
    if frame.step is not None and not 0 <= frame.step < 2**63:
        raise InvalidRecord("step", f"must be in 0..2**63-1, got {frame.step}")
    if not isinstance(frame.instruction, str):
        raise InvalidRecord("instruction", "must be a string")
    _finite(frame.state, "state", 1)
    _finite(frame.actions, "actions", 2)
    for name, img in frame.images.items():
        check_id(name, "images", MAX_CAMERA_NAME)
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            raise InvalidRecord(f"images.{name}", "must be a uint8 (H, W, C) array")


def validate_episode(episode: EpisodeInfo) -> None:
    """Check an explicit episode record.

    Raises:
        InvalidRecord: bad id, source or outcome.
    """
    check_id(episode.id, "episode_id", MAX_EPISODE_ID)
    if episode.source not in SOURCES:
        raise InvalidRecord("source", f"must be one of {SOURCES}, got {episode.source!r}")
    if episode.outcome is not None and episode.outcome not in OUTCOMES:
        raise InvalidRecord("outcome", f"must be one of {OUTCOMES}, got {episode.outcome!r}")


def image_key(image: np.ndarray) -> str:
    """Content address of a frame: sha256 hex of ``b"HxWxC:"`` + its C-order uint8 bytes."""
    h, w, c = image.shape
    digest = hashlib.sha256(f"{h}x{w}x{c}:".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 (H, W, 3) (or (H, W, 1)) array."""
    arr = image[..., 0] if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 (H, W, C) array of PNG bytes written by :func:`encode_png`."""
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[..., None] if arr.ndim == 2 else arr


def as_f32_bytes(arr: np.ndarray) -> bytes:
    """Little-endian float32 bytes of ``arr`` (C order)."""
    return np.ascontiguousarray(arr, dtype="<f4").tobytes()


def from_f32_bytes(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A writable float32 array of ``shape`` from :func:`as_f32_bytes` output."""
    return np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)
