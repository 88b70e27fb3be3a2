"""Shared builders for the distillation and validation tests (tiny and fast).

A tiny teacher (width 32, 1 prefix + 2 expert layers, one 32x32 camera, 6-d state, 4-d
actions, H = 4), a tiny ``reflex-demos`` directory and a tiny SQLite store that fit it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from reflex_serve.export.tiny import make_tiny_export
from reflex_serve.sim.dataset import EpisodeRecord, make_meta, write_meta, write_task_file

STATE_DIM, ACTION_DIM, CHUNK, CAM, SIZE = 6, 4, 4, "cam", 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one thread for the module: two threads on two busy cores thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_teacher(out: Path, seed: int = 0, **kw) -> Path:
    """An untrained tiny teacher export (phi(s) is zero: it was never trained)."""
    args = {
        "state_dim": STATE_DIM,
        "action_dim": ACTION_DIM,
        "cameras": ((CAM, SIZE, SIZE),),
        "chunk_size": CHUNK,
        "n_action_steps": 2,
        "width": 32,
        "seed": seed,
    }
    args.update(kw)
    return make_tiny_export(out, **args)


def episodes(
    n: int = 4, length: int = 12, seed: int = 0, state_dim: int = STATE_DIM, size: int = SIZE
) -> list[EpisodeRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n):
        state = rng.standard_normal((length, state_dim)).astype(np.float32)
        out.append(
            EpisodeRecord(
                seed=e,
                instruction="push the puck" if e % 2 else "reach the goal",
                success=True,
                images=rng.integers(0, 256, (length, 1, size, size, 3), dtype=np.uint8),
                state=state,
                action=np.tanh(state[:, :ACTION_DIM]).astype(np.float32),
            )
        )
    return out


def make_demo_dir(out: Path, state_dim: int = STATE_DIM, size: int = SIZE, **kw) -> Path:
    """A ``reflex-demos`` directory with one task of tiny episodes."""
    eps = episodes(state_dim=state_dim, size=size, **kw)
    write_task_file(out, "reach-v3", eps, 0, [CAM])
    write_meta(
        out,
        make_meta(
            cameras=[CAM],
            image_size=(size, size),
            state_mode="full",
            state_dim=state_dim,
            tasks=["reach-v3"],
            seed=0,
            episodes_per_task=len(eps),
        ),
    )
    return out


def make_store(
    url: str,
    served_version: str = "abcdef123456",
    demo_episodes: int = 8,
    served: int = 24,
    chunk: int = CHUNK,
    seed: int = 0,
):
    """A store with demo episodes and served requests (chunks of ``chunk`` actions)."""
    from reflex_serve.storage.demos import write_demo_episode
    from reflex_serve.storage.records import FrameRecord
    from reflex_serve.storage.store import Store

    store = Store.open(url)
    for i, ep in enumerate(episodes(demo_episodes, seed=seed)):
        write_demo_episode(
            store,
            task="reach-v3",
            seed=i,
            instruction=ep.instruction,
            success=True,
            cameras=[CAM],
            images=ep.images,
            state=ep.state,
            action=ep.action,
            run_id="test",
        )
    rng = np.random.default_rng(seed + 1)
    frames = [
        FrameRecord(
            request_id=f"req-{i}",
            source="served",
            received_at=T0 + timedelta(seconds=i),
            episode_id=f"served-ep-{i // 4}",
            step=i % 4,
            instruction="push the puck",
            state=rng.standard_normal(STATE_DIM).astype(np.float32),
            actions=rng.uniform(-1, 1, (chunk, ACTION_DIM)).astype(np.float32),
            images={CAM: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)},
            model_version=served_version,
            num_steps=10,
        )
        for i in range(served)
    ]
    store.write(frames)
    store.close()
    return url
