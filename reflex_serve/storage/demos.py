"""Demonstrations in the store (source ``demo``): the same data model as served traffic.

Each demo episode is an ``episodes`` row (task, instruction, outcome from the expert's
success) and each of its frames a ``requests`` row with ``source="demo"``, ``step`` the
frame index, and ``actions`` the demonstrated action, float32 (1, action_dim). Episode
ids are ``demo-<task>-seed<seed>-<run>`` where ``<run>`` names one collection (so two
collections with the same seeds stay distinct); frame request ids are
``<episode id>/<step>``. Each episode is written in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reflex_serve.storage.models import utcnow
from reflex_serve.storage.records import EpisodeInfo, FrameRecord
from reflex_serve.storage.store import Store, WriteResult


def new_run_id() -> str:
    """A short id for one collection run (8 hex digits)."""
    return uuid.uuid4().hex[:8]


def write_demo_episode(
    store: Store,
    *,
    task: str,
    seed: int,
    instruction: str,
    success: bool,
    cameras: Sequence[str],
    images: np.ndarray,
    state: np.ndarray,
    action: np.ndarray,
    run_id: str,
) -> WriteResult:
    """Write one demonstration episode.

    Args:
        task, seed, instruction, success: the episode.
        cameras: camera names, in the order of the images' camera axis.
        images: uint8 (T, C, H, W, 3). state: float32 (T, S). action: float32 (T, A).
        run_id: the collection run (see the module docstring).

    Raises:
        ValueError: inconsistent lengths or camera count.
        InvalidRecord: a malformed field.
    """
    t = len(action)
    if len(images) != t or len(state) != t or images.shape[1] != len(cameras):
        raise ValueError(
            f"{task} seed {seed}: images {images.shape}, state {state.shape}, action "
            f"{action.shape} and cameras {list(cameras)} do not match"
        )
    episode_id = f"demo-{task}-seed{seed}-{run_id}"
    now = utcnow()
    episode = EpisodeInfo(
        id=episode_id,
        source="demo",
        started_at=now,
        ended_at=now,
        task=task,
        instruction=instruction,
        outcome="success" if success else "failure",
    )
    frames = [
        FrameRecord(
            request_id=f"{episode_id}/{i}",
            source="demo",
            received_at=now,
            episode_id=episode_id,
            step=i,
            instruction=instruction,
            state=np.asarray(state[i], np.float32),
            actions=np.asarray(action[i : i + 1], np.float32),
            images={cam: images[i, c] for c, cam in enumerate(cameras)},
        )
        for i in range(t)
    ]
    return store.write(frames, [episode])


def import_demo_dir(
    store: Store,
    directory: Path | str,
    tasks: Sequence[str] | None = None,
    run_id: str | None = None,
) -> tuple[int, int]:
    """Copy a ``reflex-demos`` directory (``reflex sim collect --out``) into the store.

    Returns:
        (episodes, frames) written.

    Raises:
        FileNotFoundError, KeyError, ValueError: as :func:`reflex_serve.sim.dataset.load_demos`.
    """
    from reflex_serve.sim.dataset import load_demos

    demos = load_demos(directory, tasks)
    cameras = [c["name"] for c in demos.cameras]
    run_id = run_id or new_run_id()
    frames = 0
    for row, eid in enumerate(demos.episode_ids.tolist()):
        sl = demos.episode_frames(eid)
        write_demo_episode(
            store,
            task=demos.tasks[int(demos.episode_task[row])],
            seed=int(demos.episode_seed[row]),
            instruction=str(demos.episode_instruction[row]),
            success=bool(demos.episode_success[row]),
            cameras=cameras,
            images=demos.images[sl],
            state=demos.state[sl],
            action=demos.action[sl],
            run_id=run_id,
        )
        frames += sl.stop - sl.start
    return demos.num_episodes, frames


def write_sim_episodes(
    store: Store, task: str, episodes: Sequence, cameras: Sequence[str], run_id: str
) -> int:
    """Write episodes recorded by ``reflex sim collect``
    (:class:`reflex_serve.sim.dataset.EpisodeRecord`); returns the frames written."""
    for ep in episodes:
        write_demo_episode(
            store,
            task=task,
            seed=ep.seed,
            instruction=ep.instruction,
            success=ep.success,
            cameras=cameras,
            images=ep.images,
            state=ep.state,
            action=ep.action,
            run_id=run_id,
        )
    return sum(ep.length for ep in episodes)
