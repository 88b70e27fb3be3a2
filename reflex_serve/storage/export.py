"""``reflex data export``: the store as a LeRobotDataset v3.0 directory (Parquet, no video).

Layout (docs/data-format.md has every column)::

    OUT/meta/info.json                              codebase_version "v3.0", features
    OUT/meta/stats.json                             mean / std / min / max / count
    OUT/meta/tasks.parquet                          task (the instruction) -> task_index
    OUT/meta/episodes/chunk-000/file-000.parquet    one row per episode
    OUT/data/chunk-CCC/file-FFF.parquet             one row per frame, images embedded

Images stay the stored PNG bytes (LeRobot's ``image`` dtype: a struct of ``bytes`` and
``path``), so exporting never re-encodes a frame. Every frame of an episode is in one
data file; a new file starts once a file holds ``file_mb`` of data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from reflex_serve.storage.models import Episode
from reflex_serve.storage.reader import Batch, ReadQuery, iter_batches
from reflex_serve.storage.records import decode_png
from reflex_serve.storage.store import Store

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@dataclass
class ExportReport:
    """What :func:`export_lerobot` wrote."""

    output: Path
    episodes: int
    frames: int
    tasks: int
    files: list[Path] = field(default_factory=list)


@dataclass
class _Episode:
    key: str
    episode_id: str | None
    rows: list[dict] = field(default_factory=list)


def _rows(batches: Iterator[Batch]) -> Iterator[dict]:
    for b in batches:
        for i in range(len(b)):
            yield {
                "episode_id": b.episode_ids[i],
                "request_id": str(b.request_ids[i]),
                "step": int(b.steps[i]),
                "source": str(b.sources[i]),
                "instruction": str(b.instructions[i]),
                "model_version": b.model_versions[i],
                "received_at": float(b.received_at[i]),
                "state": b.state[i],
                "chunk": b.chunks[i],
                "images": list(b.images[i]),
                "split": str(b.splits[i]),
                "cameras": b.cameras,
            }


def _episodes(rows: Iterator[dict]) -> Iterator[_Episode]:
    """Group consecutive rows by episode; a row without an episode is its own episode."""
    current: _Episode | None = None
    for row in rows:
        key = row["episode_id"] or f"request:{row['request_id']}"
        if current is None or current.key != key:
            if current is not None:
                yield current
            current = _Episode(key, row["episode_id"])
        current.rows.append(row)
    if current is not None:
        yield current


def _features(
    cameras: list[str],
    image_shape: tuple,
    state_dim: int,
    action_dim: int,
    chunk: tuple[int, int],
    fps: float,
) -> dict:
    def num(dtype: str, shape: list[int], names=None) -> dict:
        return {"dtype": dtype, "shape": shape, "names": names}

    feats = {
        f"observation.images.{c}": {
            "dtype": "image",
            "shape": list(image_shape),
            "names": ["height", "width", "channel"],
        }
        for c in cameras
    }
    feats.update(
        {
            "observation.state": num("float32", [state_dim]),
            "action": num("float32", [action_dim]),
            "reflex.chunk": num(
                "float32",
                [chunk[0] * chunk[1]],
                [f"row-major ({chunk[0]}, {chunk[1]}) action chunk label"],
            ),
            "reflex.source": num("string", [1]),
            "reflex.request_id": num("string", [1]),
            "reflex.model_version": num("string", [1]),
            "reflex.received_at": num("float64", [1]),
            "timestamp": num("float32", [1]),
            "frame_index": num("int64", [1]),
            "episode_index": num("int64", [1]),
            "index": num("int64", [1]),
            "task_index": num("int64", [1]),
        }
    )
    for f in feats.values():
        f["fps"] = fps
    return feats


def _data_table(frames: list[dict], cameras: list[str], dims: tuple[int, int, int]) -> pa.Table:
    state_dim, action_dim, chunk_len = dims
    cols: dict[str, pa.Array] = {}
    for ci, cam in enumerate(cameras):
        cols[f"observation.images.{cam}"] = pa.array(
            [{"bytes": f["images"][ci], "path": None} for f in frames], IMAGE_TYPE
        )

    def vectors(key: str, n: int, pick=lambda v: v) -> pa.Array:
        flat = np.concatenate([np.asarray(pick(f[key]), np.float32).ravel() for f in frames])
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), n)

    cols["observation.state"] = vectors("state", state_dim)
    cols["action"] = vectors("chunk", action_dim, lambda c: c[0])
    cols["reflex.chunk"] = vectors("chunk", chunk_len)
    cols["reflex.source"] = pa.array([f["source"] for f in frames], pa.string())
    cols["reflex.request_id"] = pa.array([f["request_id"] for f in frames], pa.string())
    cols["reflex.model_version"] = pa.array([f["model_version"] for f in frames], pa.string())
    cols["reflex.received_at"] = pa.array([f["received_at"] for f in frames], pa.float64())
    for key, dtype in (
        ("timestamp", pa.float32()),
        ("frame_index", pa.int64()),
        ("episode_index", pa.int64()),
        ("index", pa.int64()),
        ("task_index", pa.int64()),
    ):
        cols[key] = pa.array([f[key] for f in frames], dtype)
    hf = {"info": {"features": {f"observation.images.{c}": {"_type": "Image"} for c in cameras}}}
    return pa.table(cols).replace_schema_metadata({"huggingface": json.dumps(hf)})


def _outcomes(store: Store, ids: list[str]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    with store.session() as s:
        for start in range(0, len(ids), 5000):
            stmt = select(Episode.id, Episode.outcome, Episode.reward, Episode.task).where(
                Episode.id.in_(ids[start : start + 5000])
            )
            out.update({r.id: (r.outcome, r.reward, r.task) for r in s.execute(stmt)})
    return out


class _Writer:
    """Accumulates frames into data files of about ``file_mb`` each."""

    def __init__(self, root: Path, file_mb: float, cameras: list[str], dims: tuple[int, int, int]):
        self.root, self.limit = root, file_mb * (1 << 20)
        self.cameras, self.dims = cameras, dims
        self.file_index, self.frames, self.nbytes = 0, [], 0
        self.files: list[Path] = []

    @property
    def location(self) -> tuple[int, int]:
        return divmod(self.file_index, CHUNKS_SIZE)

    def add(self, frames: list[dict]) -> None:
        self.frames += frames
        self.nbytes += sum(len(b) for f in frames for b in f["images"]) + 64 * len(frames)

    def roll_if_full(self) -> None:
        if self.nbytes >= self.limit:
            self.flush()
            self.file_index += 1

    def flush(self) -> None:
        if not self.frames:
            return
        chunk, file = self.location
        path = self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(self.frames, self.cameras, self.dims), path)
        self.files.append(path)
        self.frames, self.nbytes = [], 0


def export_lerobot(
    store: Store,
    output: Path | str,
    query: ReadQuery,
    *,
    fps: float = 10.0,
    file_mb: float = 100.0,
    robot_type: str | None = None,
) -> ExportReport:
    """Write the rows matching ``query`` as a LeRobotDataset v3.0 directory.

    ``query.chunk_size`` sets the length of the ``reflex.chunk`` labels; images are
    required (rows without images are skipped). ``timestamp`` is ``frame_index / fps``.

    Raises:
        FileExistsError: ``output`` exists and is not empty.
        ValueError: nothing matches, or rows of different sizes / cameras.
    """
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} is not empty")
    if not query.with_images:
        raise ValueError("a LeRobot export needs images (with_images=True)")
    episodes = _episodes(_rows(iter_batches(store, query, decode=False)))
    first = next(episodes, None)
    if first is None:
        raise ValueError(f"no rows with images match {query}")
    row0 = first.rows[0]
    image_shape = decode_png(row0["images"][0]).shape
    dims = (len(row0["state"]), row0["chunk"].shape[1], row0["chunk"].size)
    writer = _Writer(output, file_mb, row0["cameras"], dims)
    tasks: dict[str, int] = {}
    meta: list[dict] = []
    index = 0
    for ep_index, ep in enumerate(_chain(first, episodes)):
        for frame_index, f in enumerate(ep.rows):
            task = tasks.setdefault(f["instruction"], len(tasks))
            f.update(
                timestamp=frame_index / fps,
                frame_index=frame_index,
                episode_index=ep_index,
                index=index + frame_index,
                task_index=task,
            )
        chunk, file = writer.location
        writer.add(ep.rows)
        meta.append(
            {
                "episode_index": ep_index,
                "length": len(ep.rows),
                "tasks": sorted({f["instruction"] for f in ep.rows}),
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": index,
                "dataset_to_index": index + len(ep.rows),
                "reflex.episode_id": ep.episode_id,
                "reflex.source": ep.rows[0]["source"],
                "reflex.split": ep.rows[0]["split"],
            }
        )
        index += len(ep.rows)
        writer.roll_if_full()
    writer.flush()
    _write_meta(store, output, meta, tasks, writer, image_shape, fps, robot_type, index)
    return ExportReport(output, len(meta), index, len(tasks), writer.files)


def _chain(first: _Episode, rest: Iterator[_Episode]) -> Iterator[_Episode]:
    yield first
    yield from rest


def _write_meta(
    store: Store,
    output: Path,
    meta: list[dict],
    tasks: dict[str, int],
    writer: _Writer,
    image_shape: tuple,
    fps: float,
    robot_type: str | None,
    frames: int,
) -> None:
    outcomes = _outcomes(store, [m["reflex.episode_id"] for m in meta if m["reflex.episode_id"]])
    for m in meta:
        outcome, reward, task = outcomes.get(m["reflex.episode_id"], (None, None, None))
        m.update(
            {
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                "reflex.outcome": outcome,
                "reflex.reward": reward,
                "reflex.task": task,
            }
        )
    path = output / EPISODES_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(meta, schema=_EPISODES_SCHEMA), path)
    _write_tasks(output / "meta" / "tasks.parquet", tasks)
    state_dim, action_dim, chunk_len = writer.dims
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(meta),
        "total_frames": frames,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": writer.limit / (1 << 20),
        "video_files_size_in_mb": 0,
        "fps": fps,
        "splits": {"train": f"0:{len(meta)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": _features(
            writer.cameras,
            image_shape,
            state_dim,
            action_dim,
            (chunk_len // action_dim, action_dim),
            fps,
        ),
        "reflex": {
            "exported_from": store.engine.url.render_as_string(hide_password=True),
            "format": "docs/data-format.md",
        },
    }
    (output / "meta" / "info.json").write_text(json.dumps(info, indent=4) + "\n")
    (output / "meta" / "stats.json").write_text(json.dumps(_stats(writer.files), indent=4) + "\n")


_EPISODES_SCHEMA = pa.schema(
    [
        ("episode_index", pa.int64()),
        ("tasks", pa.list_(pa.string())),
        ("length", pa.int64()),
        ("data/chunk_index", pa.int64()),
        ("data/file_index", pa.int64()),
        ("dataset_from_index", pa.int64()),
        ("dataset_to_index", pa.int64()),
        ("meta/episodes/chunk_index", pa.int64()),
        ("meta/episodes/file_index", pa.int64()),
        ("reflex.episode_id", pa.string()),
        ("reflex.source", pa.string()),
        ("reflex.split", pa.string()),
        ("reflex.outcome", pa.string()),
        ("reflex.reward", pa.float64()),
        ("reflex.task", pa.string()),
    ]
)


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """tasks.parquet as pandas writes it: the task string is the (named) index."""
    table = pa.table(
        {
            "task_index": pa.array(list(tasks.values()), pa.int64()),
            "task": pa.array(list(tasks), pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "pandas_version": "2.2.0",
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
    }
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


def _stats(files: list[Path]) -> dict:
    """mean / std / min / max / count of state and action over the exported frames."""
    out = {}
    for key in ("observation.state", "action"):
        arr = np.concatenate(
            [
                np.stack(pq.read_table(p, columns=[key]).column(key).to_numpy(zero_copy_only=False))
                for p in files
            ]
        ).astype(np.float64)
        out[key] = {
            "mean": arr.mean(0).tolist(),
            "std": arr.std(0).tolist(),
            "min": arr.min(0).tolist(),
            "max": arr.max(0).tolist(),
            "count": [len(arr)],
        }
    return out
