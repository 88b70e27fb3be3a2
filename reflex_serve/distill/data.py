"""Distillation data: observations with action-chunk labels, checked against the teacher.

Where the rows come from (``reflex train distill --data``):

* a store (``sqlite:///F``, ``postgresql+psycopg://...``, a SQLite file, a data directory
  holding ``store.sqlite``, or nothing: ``--data-dir``'s store, as ``reflex serve
  --collect-data`` writes it). Only the store's **train split** is read (the held-out
  split, :func:`reflex_serve.storage.reader.split_of`, stays for validation and gates),
  filtered by ``--source demo|served|all``, ``--model-version`` (served rows only) and a
  time window (``--since``; ``until`` pins the rows a run started with, for resume).
* a demonstration directory (``reflex sim collect --out``, it has ``meta.json``): every
  frame (a demo directory has no held-out split).

Labels (SnapFlow's flow-matching term): demo frames get the chunk of the next H
demonstrated actions of their episode (the last one repeated past the end); served rows
get the chunk the teacher served ("distilling on teacher rollouts"). State and labels are
normalized with the TEACHER's statistics (``stats.json``), which the student inherits.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..export.manifest import Manifest
from ..policy import tokenizer
from ..policy.normalize import DatasetStats

SOURCES = ("demo", "served", "all")


class DataError(ValueError):
    """The distillation data cannot be used: nothing matches, a bad filter, or rows whose
    dimensions do not match the teacher (the message names the field and both values)."""


@dataclass(frozen=True)
class DataSpec:
    """What to read.

    Attributes:
        data: a store URL, a SQLite file, a data directory (with ``store.sqlite``), a demo
            directory (with ``meta.json``), or None for ``data_dir``'s store.
        data_dir: directory of the embedded SQLite store when ``data`` is None.
        source: ``"demo"``, ``"served"`` or ``"all"``.
        model_version: keep served rows of this version only (demo rows are unaffected).
        since, until: UTC window on ``received_at`` (``since`` inclusive, ``until`` not).
        holdout_pct: the store's held-out percentage (those episodes are never read).
    """

    data: str | None = None
    data_dir: Path | None = None
    source: str = "all"
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    holdout_pct: float = 10.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise DataError(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}")

    @property
    def sources(self) -> tuple[str, ...]:
        return ("demo", "served") if self.source == "all" else (self.source,)

    def demo_dir(self) -> Path | None:
        """The demonstration directory ``data`` names, if it names one."""
        if self.data and "://" not in self.data and (Path(self.data) / "meta.json").is_file():
            return Path(self.data)
        return None


@dataclass
class DistillData:
    """N labelled observations as tensors, in the teacher's layout and units.

    Attributes:
        images: uint8 (N, C, H, W, 3), cameras in the teacher manifest's order.
        tokens: int64 (N, T) instruction tokens (the teacher's tokenizer).
        state: float32 (N, S), normalized with the teacher's statistics and zero-padded
            to the model's state width (``max_state_dim`` of an imported policy).
        chunks: float32 (N, H, A) action-chunk labels, normalized likewise and
            zero-padded to the model's action width (``max_action_dim``), as LeRobot pads
            them in training.
        token_mask: int64 (N, T), 1 for real tokens, for policies whose prefix graph
            takes the tokenizer's mask (imported LeRobot policies); None otherwise.
        rows: rows per source, e.g. ``{"demo": 900, "served": 120}``.
        description: the filter, for provenance (JSON-serialisable).
        fingerprint: sha256 of the row identities, states and labels; a resumed run
            checks it.
        instructions: str (N,) the instructions, for a student that tokenizes its own
            prompt (``--state-out``); None when not kept.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    state: torch.Tensor
    chunks: torch.Tensor
    rows: dict[str, int]
    description: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    token_mask: torch.Tensor | None = None
    instructions: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.state.shape[0])

    def prefix_inputs(self, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """What ``encode_prefix`` takes, for frames ``idx`` (all frames if None): images
        and tokens, plus the token mask and the state when the data has a token mask."""
        inputs = (self.images, self.tokens)
        if self.token_mask is not None:
            inputs = (*inputs, self.token_mask, self.state)
        return inputs if idx is None else tuple(x[idx] for x in inputs)


def check_dims(
    manifest: Manifest,
    *,
    state_dim: int,
    action_dim: int,
    chunk_size: int | None,
    cameras: list[tuple[str, int, int]],
    where: str,
) -> None:
    """Compare data dimensions with the teacher's manifest.

    Args:
        cameras: (name, height, width) per camera of the data (order free).
        chunk_size: H of the labels, or None when labels are built to the teacher's H.
        where: names the data in the message (e.g. ``"served rows"``).

    Raises:
        DataError: naming the first field that differs and both values.
    """
    pairs = [
        ("state_dim", state_dim, manifest.state_dim),
        ("action_dim", action_dim, manifest.action_dim),
    ]
    if chunk_size is not None:
        pairs.append(("chunk_size", chunk_size, manifest.chunk_size))
    for name, ours, theirs in pairs:
        if ours != theirs:
            raise DataError(
                f"{where} have {name} {ours}, the teacher's manifest has {name} {theirs}"
            )
    expected = sorted((c.name, c.height, c.width) for c in manifest.cameras)
    if sorted(cameras) != expected:
        raise DataError(
            f"{where} have cameras {sorted(cameras)} (name, height, width), "
            f"the teacher's manifest has cameras {expected}"
        )


def text_tokens(
    instructions: np.ndarray, state: np.ndarray, spec: dict, max_tokens: int, export_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and token mask, int64 (N, T) each, for instructions str (N,) and normalised
    states float32 (N, state_dim) with the tokenizer ``spec`` (a manifest entry; the same
    encoder the runtime uses; once per distinct instruction unless the state is written
    into the prompt, as pi0.5 does)."""
    encoder = tokenizer.make_text_encoder(spec, max_tokens, export_dir)
    if encoder.uses_state:
        pairs = [encoder.encode(str(text), row) for text, row in zip(instructions, state)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    uniq, inverse = np.unique(instructions.astype(str), return_inverse=True)
    pairs = [encoder.encode(text) for text in uniq]
    inverse = inverse.reshape(-1)
    return np.stack([p[0] for p in pairs])[inverse], np.stack([p[1] for p in pairs])[inverse]


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad the last axis to ``width`` (the model's padded state / action width)."""
    if x.shape[-1] == width:
        return x
    out = np.zeros((*x.shape[:-1], width), dtype=x.dtype)
    out[..., : x.shape[-1]] = x
    return out


def _finish(
    parts: list[dict],
    manifest: Manifest,
    stats: DatasetStats,
    description: dict,
    ids: list[str],
    export_dir: Path | None,
) -> DistillData:
    images = np.concatenate([p["images"] for p in parts])
    state = np.concatenate([p["state"] for p in parts]).astype(np.float32)
    chunks = np.concatenate([p["chunks"] for p in parts]).astype(np.float32)
    if not (np.isfinite(state).all() and np.isfinite(chunks).all()):
        raise DataError("the data holds NaN or Inf states or actions")
    rows = {p["source"]: len(p["state"]) for p in parts}
    h = hashlib.sha256("\n".join(ids).encode())
    h.update(state.tobytes())
    h.update(chunks.tobytes())
    with np.errstate(over="ignore", invalid="ignore"):
        state, chunks = stats.state.normalize(state), stats.action.normalize(chunks)
    # a value far outside the statistics overflows float32 when normalised: such rows
    # would turn the loss into NaN, so they are left out (and counted)
    keep = np.isfinite(state).all(1) & np.isfinite(chunks).all((1, 2))
    skipped = int((~keep).sum())
    instructions = np.concatenate([p["instructions"] for p in parts]).astype(str)
    if skipped:
        if not keep.any():
            raise DataError(f"all {skipped} rows have states or actions too far outside the teacher's statistics")
        source = np.concatenate([[p["source"]] * len(p["state"]) for p in parts])[keep]
        rows = {name: int((source == name).sum()) for name in rows}
        images, state, chunks, instructions = images[keep], state[keep], chunks[keep], instructions[keep]
        description = {**description, "skipped_non_finite": skipped}
    tokens, mask = text_tokens(instructions, state, manifest.tokenizer, manifest.max_text_tokens, export_dir)
    imported = manifest.policy_kind.startswith("lerobot-")  # its prefix graph takes the mask
    return DistillData(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        tokens=torch.from_numpy(tokens),
        state=torch.from_numpy(_pad(state, manifest.model_state_dim)),
        chunks=torch.from_numpy(_pad(chunks, manifest.model_action_dim)),
        rows=rows,
        description={**description, "rows": rows},
        fingerprint=h.hexdigest(),
        token_mask=torch.from_numpy(mask) if imported else None,
        instructions=instructions,
    )


def _load_demo_dir(
    spec: DataSpec, manifest: Manifest, stats: DatasetStats, export_dir: Path | None
) -> DistillData:
    from ..policy.data import chunk_indices
    from ..sim.dataset import load_demos

    directory = spec.demo_dir()
    if spec.source == "served":
        raise DataError(f"--data {directory} is a demonstration directory: it has no served rows")
    if spec.model_version or spec.since:
        raise DataError("--model-version and --since filter a store, not a demo directory")
    demos = load_demos(directory)
    cams = [(c["name"], int(c["height"]), int(c["width"])) for c in demos.cameras]
    check_dims(
        manifest,
        state_dim=demos.state.shape[1],
        action_dim=demos.action.shape[1],
        chunk_size=None,
        cameras=cams,
        where=f"demos in {directory}",
    )
    order = [[c[0] for c in cams].index(c.name) for c in manifest.cameras]
    idx = chunk_indices(demos.episode_index, manifest.chunk_size)
    part = {
        "source": "demo",
        "images": demos.images[:, order],
        "state": demos.state,
        "chunks": demos.action[idx],
        "instructions": demos.frame_instructions(),
    }
    ids = [f"{e}/{f}" for e, f in zip(demos.episode_index.tolist(), demos.frame_index.tolist())]
    description = {"kind": "demo-dir", "path": str(directory), "tasks": demos.tasks, "split": "all"}
    return _finish([part], manifest, stats, description, ids, export_dir)


def store_location(spec: DataSpec) -> tuple[str | None, Path | None]:
    """(store URL or None, data dir or None) for ``Store.open``.

    Raises:
        DataError: ``data`` names nothing usable.
    """
    if spec.data is None:
        return None, spec.data_dir
    if "://" in spec.data:
        return spec.data, None
    path = Path(spec.data)
    if path.is_file():
        return f"sqlite:///{path.resolve()}", None
    if path.is_dir():
        if not (path / "store.sqlite").is_file():
            raise DataError(
                f"--data {path} is neither a demonstration directory (meta.json) "
                "nor a data directory (store.sqlite)"
            )
        return None, path
    raise DataError(f"--data {spec.data}: no such file, directory or store URL")


def _read_source(store, spec: DataSpec, source: str, manifest: Manifest) -> tuple[dict, list]:
    from ..storage.reader import ReadQuery, read_all

    versions = (spec.model_version,) if spec.model_version and source == "served" else None
    query = ReadQuery(
        sources=(source,),
        model_versions=versions,
        since=spec.since,
        until=spec.until,
        split="train",
        holdout_pct=spec.holdout_pct,
        chunk_size=manifest.chunk_size if source == "demo" else None,
    )
    try:
        batch = read_all(store, query)
    except ValueError as exc:  # mixed dims or cameras, or served chunks of several sizes
        if "same shape" in str(exc):
            raise DataError(
                f"{source} rows hold action chunks of several sizes; filter with --model-version"
            ) from None
        raise DataError(f"{source} rows: {exc}") from None
    if batch is None or len(batch) == 0:
        return {}, []
    h, w = batch.images.shape[2:4]
    check_dims(
        manifest,
        state_dim=batch.state.shape[1],
        action_dim=batch.chunks.shape[2],
        chunk_size=batch.chunks.shape[1],
        cameras=[(c, h, w) for c in batch.cameras],
        where=f"{source} rows",
    )
    order = [batch.cameras.index(c.name) for c in manifest.cameras]
    part = {
        "source": source,
        "images": batch.images[:, order],
        "state": batch.state,
        "chunks": batch.chunks,
        "instructions": batch.instructions,
    }
    if source == "served":
        part["versions"] = dict(Counter(str(v) for v in batch.model_versions))
    return part, [str(i) for i in batch.ids]


def load_data(
    spec: DataSpec, manifest: Manifest, stats: DatasetStats, export_dir: Path | None = None
) -> DistillData:
    """Read and check the distillation data for a teacher.

    Args:
        spec: where and what (see :class:`DataSpec`).
        manifest, stats: the teacher's manifest and normalization statistics.
        export_dir: the teacher's export directory, for a tokenizer that reads a file
            there (``hf-tokenizers``: tokenizer.json); not needed for ``hash-words``.

    Returns:
        :class:`DistillData` (all images in memory: 12 KiB per 64x64 camera frame).

    Raises:
        DataError: nothing matches, a filter that does not apply, or dimensions (state_dim,
            action_dim, chunk_size, cameras) that differ from the teacher's manifest.
        StoreError: the store cannot be opened.
        FileNotFoundError, KeyError, ValueError: a malformed demo directory.
    """
    if spec.demo_dir() is not None:
        return _load_demo_dir(spec, manifest, stats, export_dir)
    from ..storage.engine import display_url
    from ..storage.store import Store

    url, data_dir = store_location(spec)
    store = Store.open(url, data_dir)
    try:
        parts, ids = [], []
        for source in spec.sources:
            part, part_ids = _read_source(store, spec, source, manifest)
            if part:
                parts.append(part)
                ids += [f"{source}:{i}" for i in part_ids]
    finally:
        store.close()
    description = {
        "kind": "store",
        "store": display_url(store.url),
        "source": spec.source,
        "model_version": spec.model_version,
        "served_versions": next((p["versions"] for p in parts if "versions" in p), {}),
        "split": "train",
        "holdout_pct": spec.holdout_pct,
        "since": spec.since.isoformat() if spec.since else None,
        "until": spec.until.isoformat() if spec.until else None,
    }
    if not parts:
        raise DataError(
            f"no {' or '.join(spec.sources)} rows with images in the train split of "
            f"{display_url(store.url)} match {_filter_text(spec)}"
        )
    return _finish(parts, manifest, stats, description, ids, export_dir)


def _filter_text(spec: DataSpec) -> str:
    bits = [f"source={spec.source}"]
    if spec.model_version:
        bits.append(f"model_version={spec.model_version}")
    if spec.since:
        bits.append(f"since={spec.since.isoformat()}")
    if spec.until:
        bits.append(f"until={spec.until.isoformat()}")
    return ", ".join(bits)
