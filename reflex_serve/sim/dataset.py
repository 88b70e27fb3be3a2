"""The ``reflex-demos`` demonstration dataset: one directory, ``meta.json`` + one npz per task.

Layout::

    <dir>/meta.json
    <dir>/<task>.npz        e.g. push-v3.npz (np.savez_compressed)

``meta.json``::

    {"format": "reflex-demos", "version": 1,
     "cameras": [{"name": "corner2", "height": 64, "width": 64}, ...],
     "state_mode": "full" | "proprio", "state_dim": 39 | 4, "action_dim": 4,
     "tasks": ["reach-v3", ...], "seed": 0, "created_at": "<ISO 8601 UTC>",
     "episodes_per_task": 40, ...}           (extra keys allowed, e.g. "episode_seeds")

Each ``<task>.npz`` (N frames, E episodes, C cameras, S state dims)::

    images               uint8   (N, C, H, W, 3)   upright RGB, cameras in meta order
    state                float32 (N, S)            unnormalized robot units
    action               float32 (N, 4)            in [-1, 1]
    episode_index        int32   (N,)              global episode id, unique in the dir
    frame_index          int32   (N,)              0..length-1 within the episode
    episode_ids          int32   (E,)
    episode_seed         int64   (E,)              SimEnv seed that reproduces the episode
    episode_instruction  <U     (E,)               instruction paraphrase
    episode_success      bool    (E,)
    episode_length       int32   (E,)
    camera_names         <U     (C,)               (extra; checked against meta if present)
    episode_mode         int8    (E,)               optional: 0 left / 1 right detour
                                                    (:mod:`.bimodal`), -1 single-mode expert
    episode_decision_step int32  (E,)               optional: frame of the mode decision, -1

Files written before the optional fields existed still load (both read as -1).

Frame ``i`` is the observation the action ``action[i]`` was computed from. Frames of an
episode are contiguous and in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "reflex-demos"
VERSION = 1
META = "meta.json"

FRAME_FIELDS: dict[str, Any] = {
    "images": np.uint8,
    "state": np.float32,
    "action": np.float32,
    "episode_index": np.int32,
    "frame_index": np.int32,
}
EPISODE_FIELDS: dict[str, Any] = {
    "episode_ids": np.int32,
    "episode_seed": np.int64,
    "episode_instruction": np.str_,
    "episode_success": np.bool_,
    "episode_length": np.int32,
}
OPTIONAL_EPISODE_FIELDS: dict[str, Any] = {
    "episode_mode": np.int8,
    "episode_decision_step": np.int32,
}
"""Per-episode fields that older files lack; missing ones load as -1."""


@dataclass
class EpisodeRecord:
    """One recorded episode (T steps) before it is written.

    Attributes:
        seed: episode seed (``SimEnv.reset(seed)`` reproduces it).
        instruction: the instruction shown to the policy.
        success: whether the episode reached success.
        images: uint8 (T, C, H, W, 3). state: float32 (T, S). action: float32 (T, 4).
        mode: detour mode of a bimodal task (0 left, 1 right), -1 for a single-mode expert.
        decision_step: first step whose action depends on ``mode`` (-1: none).
    """

    seed: int
    instruction: str
    success: bool
    images: np.ndarray
    state: np.ndarray
    action: np.ndarray
    mode: int = -1
    decision_step: int = -1

    @property
    def length(self) -> int:
        """Number of recorded steps T."""
        return int(self.action.shape[0])


def make_meta(
    *,
    cameras: Sequence[str],
    image_size: tuple[int, int],
    state_mode: str,
    state_dim: int,
    tasks: Sequence[str],
    seed: int,
    episodes_per_task: int,
    **extra: Any,
) -> dict[str, Any]:
    """Build the ``meta.json`` dictionary (``created_at`` = now, UTC)."""
    h, w = image_size
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "cameras": [{"name": c, "height": int(h), "width": int(w)} for c in cameras],
        "state_mode": state_mode,
        "state_dim": int(state_dim),
        "action_dim": 4,
        "tasks": list(tasks),
        "seed": int(seed),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "episodes_per_task": int(episodes_per_task),
    }
    meta.update(extra)
    return meta


def write_meta(directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``meta.json`` atomically (temp file + rename). Returns its path."""
    path = Path(directory) / META
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json``.

    Raises:
        FileNotFoundError: no meta.json. ValueError: wrong format / version / fields.
    """
    path = Path(directory) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (not a {FORMAT} directory)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(
            f"{path}: version {meta.get('version')!r} unsupported (expected {VERSION})"
        )
    for key in ("cameras", "state_mode", "state_dim", "action_dim", "tasks"):
        if key not in meta:
            raise ValueError(f"{path}: missing field {key!r}")
    if not meta["cameras"]:
        raise ValueError(f"{path}: field 'cameras' is empty")
    sizes = {(c["height"], c["width"]) for c in meta["cameras"]}
    if len(sizes) != 1:
        raise ValueError(f"{path}: field 'cameras' mixes image sizes {sorted(sizes)}")
    return meta


def write_task_file(
    directory: str | Path,
    task: str,
    episodes: Sequence[EpisodeRecord],
    first_episode_id: int,
    camera_names: Sequence[str] | None = None,
) -> Path:
    """Write ``<directory>/<task>.npz`` (compressed) from recorded episodes.

    Episode ids are ``first_episode_id, first_episode_id + 1, ...`` in the given order.

    Returns:
        The file's path.

    Raises:
        ValueError: no episodes, or episodes with inconsistent shapes.
    """
    if not episodes:
        raise ValueError(f"{task}: no episodes to write")
    for ep in episodes:
        t = ep.length
        if ep.images.shape[0] != t or ep.state.shape[0] != t or t == 0:
            raise ValueError(f"{task}: episode seed {ep.seed} has inconsistent lengths")
    ids = np.arange(first_episode_id, first_episode_id + len(episodes), dtype=np.int32)
    lengths = np.array([ep.length for ep in episodes], dtype=np.int32)
    arrays: dict[str, np.ndarray] = {
        "images": np.concatenate([ep.images for ep in episodes]).astype(np.uint8, copy=False),
        "state": np.concatenate([ep.state for ep in episodes]).astype(np.float32, copy=False),
        "action": np.concatenate([ep.action for ep in episodes]).astype(np.float32, copy=False),
        "episode_index": np.repeat(ids, lengths).astype(np.int32),
        "frame_index": np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        "episode_ids": ids,
        "episode_seed": np.array([ep.seed for ep in episodes], dtype=np.int64),
        "episode_instruction": np.array([ep.instruction for ep in episodes], dtype=np.str_),
        "episode_success": np.array([ep.success for ep in episodes], dtype=np.bool_),
        "episode_length": lengths,
        "episode_mode": np.array([ep.mode for ep in episodes], dtype=np.int8),
        "episode_decision_step": np.array([ep.decision_step for ep in episodes], dtype=np.int32),
    }
    if camera_names is not None:
        arrays["camera_names"] = np.array(list(camera_names), dtype=np.str_)
    path = Path(directory) / f"{task}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


@dataclass
class Demos:
    """A loaded demo directory: every task's frames concatenated (N frames, E episodes).

    Attributes:
        meta: the ``meta.json`` dictionary.
        tasks: tasks loaded, in order; ``task_index`` refers to it.
        images: uint8 (N, C, H, W, 3). state: float32 (N, S). action: float32 (N, 4).
        episode_index, frame_index, task_index: int32 (N,).
        episode_row: int32 (N,): row of the frame's episode in the per-episode arrays.
        episode_ids, episode_length: int32 (E,). episode_seed: int64 (E,).
        episode_instruction: str (E,). episode_success: bool (E,).
        episode_task: int32 (E,): index into ``tasks``.
        episode_mode: int8 (E,): 0 / 1 detour mode, -1 single-mode (or an older file).
        episode_decision_step: int32 (E,): frame index of the mode decision, -1 if none.
    """

    meta: dict[str, Any]
    tasks: list[str]
    images: np.ndarray
    state: np.ndarray
    action: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    task_index: np.ndarray
    episode_row: np.ndarray
    episode_ids: np.ndarray
    episode_seed: np.ndarray
    episode_instruction: np.ndarray
    episode_success: np.ndarray
    episode_length: np.ndarray
    episode_task: np.ndarray
    files: list[Path] = field(default_factory=list)
    episode_mode: np.ndarray | None = None
    episode_decision_step: np.ndarray | None = None

    def __post_init__(self) -> None:
        e = self.episode_ids.shape[0]
        if self.episode_mode is None:
            self.episode_mode = np.full(e, -1, dtype=np.int8)
        if self.episode_decision_step is None:
            self.episode_decision_step = np.full(e, -1, dtype=np.int32)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @property
    def num_episodes(self) -> int:
        """Number of episodes E."""
        return int(self.episode_ids.shape[0])

    @property
    def cameras(self) -> list[dict[str, Any]]:
        """Camera specs from meta: ``[{"name", "height", "width"}, ...]``."""
        return list(self.meta["cameras"])

    @property
    def state_dim(self) -> int:
        """State size S."""
        return int(self.state.shape[1])

    def instruction(self, i: int) -> str:
        """The instruction of frame ``i``."""
        return str(self.episode_instruction[self.episode_row[i]])

    def frame_instructions(self) -> np.ndarray:
        """Instructions of every frame: str array (N,)."""
        return self.episode_instruction[self.episode_row]

    def episode_frames(self, episode_id: int) -> slice:
        """Slice of the frames of episode ``episode_id``.

        Raises:
            KeyError: unknown episode id.
        """
        rows = np.nonzero(self.episode_ids == episode_id)[0]
        if rows.size == 0:
            raise KeyError(f"no episode {episode_id}")
        starts = np.concatenate([[0], np.cumsum(self.episode_length)[:-1]])
        r = int(rows[0])
        return slice(int(starts[r]), int(starts[r] + self.episode_length[r]))


def _check_file(path: Path, data: Any, meta: dict[str, Any]) -> None:
    """Validate one task file against meta; ValueError naming the file and the field."""
    for key in (*FRAME_FIELDS, *EPISODE_FIELDS):
        if key not in data.files:
            raise ValueError(f"{path}: missing field {key!r}")
    for key, dtype in {**FRAME_FIELDS, **EPISODE_FIELDS}.items():
        arr = data[key]
        ok = arr.dtype.kind == "U" if dtype is np.str_ else arr.dtype == np.dtype(dtype)
        if not ok:
            raise ValueError(
                f"{path}: field {key!r} has dtype {arr.dtype}, expected {np.dtype(dtype)}"
            )
    images, state, action = data["images"], data["state"], data["action"]
    n = images.shape[0]
    cams = meta["cameras"]
    want = (len(cams), cams[0]["height"], cams[0]["width"], 3)
    if images.ndim != 5 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"{path}: field 'images' has shape {images.shape}, expected (N, {', '.join(map(str, want))})"
            " from meta 'cameras'"
        )
    if "camera_names" in data.files:
        names = [str(c) for c in data["camera_names"]]
        if names != [c["name"] for c in cams]:
            raise ValueError(f"{path}: field 'camera_names' {names} != meta cameras")
    if state.ndim != 2 or state.shape[1] != int(meta["state_dim"]):
        raise ValueError(
            f"{path}: field 'state' has shape {state.shape}, expected (N, {meta['state_dim']}) "
            "from meta 'state_dim'"
        )
    if action.ndim != 2 or action.shape[1] != int(meta["action_dim"]):
        raise ValueError(
            f"{path}: field 'action' has shape {action.shape}, expected (N, {meta['action_dim']})"
        )
    for key in ("state", "action", "episode_index", "frame_index"):
        if data[key].shape[0] != n:
            raise ValueError(
                f"{path}: field {key!r} has {data[key].shape[0]} rows, 'images' has {n}"
            )
    e = data["episode_ids"].shape[0]
    for key in EPISODE_FIELDS:
        if data[key].shape != (e,):
            raise ValueError(f"{path}: field {key!r} has shape {data[key].shape}, expected ({e},)")
    lengths = data["episode_length"]
    if int(lengths.sum()) != n:
        raise ValueError(
            f"{path}: field 'episode_length' sums to {int(lengths.sum())}, not {n} frames"
        )
    if len(np.unique(data["episode_ids"])) != e:
        raise ValueError(f"{path}: field 'episode_ids' has duplicates")
    expect_idx = np.repeat(data["episode_ids"], lengths)
    expect_frame = np.concatenate([np.arange(k) for k in lengths]) if e else np.zeros(0)
    if not np.array_equal(data["episode_index"], expect_idx):
        raise ValueError(
            f"{path}: field 'episode_index' does not match episode_ids / episode_length"
        )
    if not np.array_equal(data["frame_index"], expect_frame):
        raise ValueError(f"{path}: field 'frame_index' is not 0..length-1 per episode")
    for key, dtype in OPTIONAL_EPISODE_FIELDS.items():
        if key in data.files and (data[key].dtype != dtype or data[key].shape != (e,)):
            raise ValueError(f"{path}: field {key!r} must be {np.dtype(dtype)} of shape ({e},)")
    if not np.all(np.isfinite(state)) or not np.all(np.isfinite(action)):
        raise ValueError(f"{path}: field 'state' or 'action' has non-finite values")


def load_demos(directory: str | Path, tasks: Iterable[str] | None = None) -> Demos:
    """Load and validate a demo directory.

    Args:
        directory: a directory written by :func:`reflex_serve.sim.collect.collect`.
        tasks: subset of tasks to load (default: all in meta, in meta order).

    Returns:
        :class:`Demos` with all frames concatenated in task order.

    Raises:
        FileNotFoundError: missing meta.json or task file. KeyError: a requested task
        is not in meta. ValueError: malformed file (message names file and field),
        or episode ids repeated across files.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    names = list(meta["tasks"]) if tasks is None else list(tasks)
    for t in names:
        if t not in meta["tasks"]:
            raise KeyError(f"task {t!r} not in {directory / META} (has {meta['tasks']})")
    keys = (*FRAME_FIELDS, *EPISODE_FIELDS, *OPTIONAL_EPISODE_FIELDS)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    task_index: list[np.ndarray] = []
    episode_task: list[np.ndarray] = []
    files: list[Path] = []
    seen: dict[int, Path] = {}
    for ti, task in enumerate(names):
        path = directory / f"{task}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: task file missing (listed in meta.json)")
        with np.load(path, allow_pickle=False) as data:
            _check_file(path, data, meta)
            for eid in data["episode_ids"].tolist():
                if eid in seen:
                    raise ValueError(f"{path}: field 'episode_ids' repeats id {eid} of {seen[eid]}")
                seen[eid] = path
            e = data["episode_ids"].shape[0]
            for k, chunks in parts.items():
                dtype = OPTIONAL_EPISODE_FIELDS.get(k)
                missing = dtype is not None and k not in data.files
                chunks.append(np.full(e, -1, dtype=dtype) if missing else data[k])
        task_index.append(np.full(parts["action"][-1].shape[0], ti, dtype=np.int32))
        episode_task.append(np.full(parts["episode_ids"][-1].shape[0], ti, dtype=np.int32))
        files.append(path)
    if not names:
        raise ValueError(f"{directory}: no tasks selected")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    lengths = cat["episode_length"]
    episode_row = np.repeat(np.arange(lengths.shape[0], dtype=np.int32), lengths)
    return Demos(
        meta=meta,
        tasks=names,
        images=cat["images"],
        state=cat["state"],
        action=cat["action"],
        episode_index=cat["episode_index"],
        frame_index=cat["frame_index"],
        task_index=np.concatenate(task_index),
        episode_row=episode_row,
        episode_ids=cat["episode_ids"],
        episode_seed=cat["episode_seed"],
        episode_instruction=cat["episode_instruction"],
        episode_success=cat["episode_success"],
        episode_length=lengths,
        episode_task=np.concatenate(episode_task),
        files=files,
        episode_mode=cat["episode_mode"],
        episode_decision_step=cat["episode_decision_step"],
    )
