"""Builders for the gate tests (tiny and fast).

A tiny MetaWorld-shaped policy (one 64x64 ``corner2`` camera, 39-d state, 4-d actions,
chunks of 8) trained for a few hundred steps on synthetic BIMODAL data: a few
observations, each demonstrated with action ``0.6 * s + 0.3 * tanh(state[:4])`` for
``s`` = +1 in half of its episodes and -1 in the other half, constant over the
episode. Its 20-step samples are bimodal; one Euler step returns about the conditional
mean (ARCHITECTURE.md), which is what a naive 1-step teacher does.

Candidates broken on purpose reuse the trained weights inside a subclass of the model,
exported the normal way (the exporter works on the interface), so each breaks exactly
one thing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from reflex_serve.export.manifest import EXPERT_ONNX, read_manifest, write_manifest
from reflex_serve.export.onnx_export import export_policy
from reflex_serve.gates.config import load_config
from reflex_serve.policy.configuration import PolicyConfig
from reflex_serve.policy.data import FrameData
from reflex_serve.policy.modeling import FlowMatchingVLA

CAM, SIZE, STATE_DIM, ACTION_DIM, CHUNK = "corner2", 64, 39, 4, 8
INSTRUCTION = "reach the goal"


def bimodal_episodes(n: int, length: int, seed: int, pool: int = 4) -> list[dict[str, np.ndarray]]:
    """``n`` episodes over ``pool`` distinct observations (image and state): episode ``e``
    shows observation ``e % pool`` and takes the +1 mode when ``(e // pool)`` is odd, else
    the -1 mode, so every observation is demonstrated with both modes equally often."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (pool, SIZE, SIZE, 3), dtype=np.uint8)
    states = rng.standard_normal((pool, STATE_DIM)).astype(np.float32)
    out = []
    for e in range(n):
        o, s = e % pool, (1.0 if (e // pool) % 2 else -1.0)
        action = (0.6 * s + 0.3 * np.tanh(states[o, :ACTION_DIM])).astype(np.float32)
        out.append(
            {
                "images": np.repeat(images[o][None, None], length, 0),
                "state": np.repeat(states[o][None], length, 0),
                "action": np.repeat(action[None], length, 0),
            }
        )
    return out


def train_bimodal(run_dir: Path, steps: int = 400, seed: int = 0):
    """(model, stats) of the tiny policy trained on 64 bimodal episodes."""
    from reflex_serve.policy.train import TrainConfig, train_policy
    from reflex_serve.policy.training import LoopConfig

    eps = bimodal_episodes(64, 8, seed)
    frames = FrameData(
        images=np.concatenate([e["images"] for e in eps]),
        state=np.concatenate([e["state"] for e in eps]),
        action=np.concatenate([e["action"] for e in eps]),
        episode_index=np.repeat(np.arange(len(eps)), 8),
        instruction=np.array([INSTRUCTION] * 8 * len(eps)),
        cameras=[CAM],
    )
    cfg = PolicyConfig(
        cameras=[[CAM, SIZE, SIZE]],
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        chunk_size=CHUNK,
        n_action_steps=4,
        width=32,
        num_heads=2,
        mlp_ratio=2,
        prefix_layers=1,
        expert_layers=2,
    )
    loop = LoopConfig(
        steps=steps, lr=2e-3, warmup=30, ema_decay=0.99, checkpoint_every=10**9, progress=False
    )
    return train_policy(
        frames,
        cfg,
        run_dir,
        loop,
        TrainConfig(batch_size=32, noise_draws=4, image_shift=0, seed=seed, threads=1),
    )


class NanOnBlackImage(FlowMatchingVLA):
    """Divides the prefix by the image brightness over itself: NaN on an all-black frame."""

    def encode_prefix(self, images, tokens):
        kv, mask = super().encode_prefix(images, tokens)
        m = images.float().mean(dim=(1, 2, 3, 4))
        return kv * (m / m)[:, None, None, None, None], mask


class BlowsUpAtStateMax(FlowMatchingVLA):
    """Adds a large offset in the last Euler step when the normalized state averages
    above 1: only the probe at the dataset maximum does (replay states average about 0).
    The offset is the same for every action of the chunk, so the chunk stays smooth."""

    def velocity(self, x_t, t, s, state, prefix_kv, prefix_mask):
        v = super().velocity(x_t, t, s, state, prefix_kv, prefix_mask)
        trigger = torch.relu(state.mean(-1) - 1.0) * (t < 0.25).float()
        return v - 200.0 * trigger[:, None, None]


class Jittery(FlowMatchingVLA):
    """Adds +c / -c on alternate chunk steps (normalized units), with the sign of the
    sample's mode: an oscillation that keeps each mode's mean chunk in place."""

    jitter = 0.5

    def velocity(self, x_t, t, s, state, prefix_kv, prefix_mask):
        v = super().velocity(x_t, t, s, state, prefix_kv, prefix_mask)
        alternate = torch.tensor([(-1.0) ** h for h in range(x_t.shape[1])])[None, :, None]
        mode = torch.sign(x_t.mean(dim=(1, 2)))[:, None, None]
        return v - self.jitter * alternate * mode


def variant(cls, model: FlowMatchingVLA) -> FlowMatchingVLA:
    """``model``'s weights inside ``cls``."""
    out = cls(model.config)
    out.load_state_dict(model.state_dict())
    return out.eval()


def export(model, stats, out: Path, num_steps: int) -> Path:
    export_policy(model, stats, out, num_steps=num_steps)
    return out


def with_num_steps(src: Path, out: Path, num_steps: int) -> Path:
    """A copy of an export whose manifest asks for another number of Euler steps."""
    shutil.copytree(src, out)
    m = read_manifest(out)
    m.num_steps = num_steps
    write_manifest(out, m)
    return out


def padded(src: Path, out: Path, extra_mib: int) -> Path:
    """A copy of an export whose expert.onnx carries an unused initializer of
    ``extra_mib`` MiB: same outputs, a bigger model."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, out)
    graph = onnx.load(str(out / EXPERT_ONNX))
    pad = np.random.default_rng(0).standard_normal(extra_mib * 2**18).astype(np.float32)
    graph.graph.initializer.append(numpy_helper.from_array(pad, name="unused_padding"))
    onnx.save(graph, str(out / EXPERT_ONNX))
    write_manifest(out, read_manifest(out))
    return out


def write_replay_store(url: str, episodes: int = 80, seed: int = 1):
    """A store of bimodal demo episodes (4 frames each); about 10% fall in the held-out
    split. Returns the open Store."""
    from reflex_serve.storage.demos import write_demo_episode
    from reflex_serve.storage.store import Store

    store = Store.open(url)
    for i, ep in enumerate(bimodal_episodes(episodes, 4, seed)):
        write_demo_episode(
            store,
            task="reach-v3",
            seed=i,
            instruction=INSTRUCTION,
            success=True,
            cameras=[CAM],
            images=ep["images"],
            state=ep["state"],
            action=ep["action"],
            run_id="gates-test",
        )
    return store


def metaworld_store(url: str, episodes: int = 20):
    """A store of real reach-v3 observations for the shipped teacher: the first frame of
    ``episodes`` seeded episodes (demo rows; about 10% fall in the held-out split, more
    with a larger ``holdout_pct``). Returns the open Store."""
    from reflex_serve.sim.env import SimEnv
    from reflex_serve.storage.demos import write_demo_episode
    from reflex_serve.storage.store import Store

    store = Store.open(url)
    with SimEnv("reach-v3") as env:
        for i in range(episodes):
            obs = env.reset(500_000 + i)
            write_demo_episode(
                store,
                task="reach-v3",
                seed=500_000 + i,
                instruction=obs.instruction,
                success=True,
                cameras=["corner2"],
                images=obs.images["corner2"][None, None],
                state=obs.state[None],
                action=env.expert_action()[None],
                run_id="gates-sim",
            )
    return store


def fast_config(**sections):
    """The default thresholds with small evidence sizes, and a closed-loop suite of one
    8-step episode of reach-v3 (the tiny policies never succeed: 0 vs 0)."""
    cfg = load_config()
    cfg = cfg.replace("evidence", observations=8, samples=8)
    cfg = cfg.replace("latency", calls=40, warmup=5, min_calls=20)
    cfg = cfg.replace("sim", tasks=["reach-v3"], episodes=1, max_steps=8)
    cfg = cfg.replace("resources", acts=5)
    for section, values in sections.items():
        cfg = cfg.replace(section, **values)
    return cfg


def write_config(cfg, path: Path) -> Path:
    """A TOML file of a whole :class:`GateConfig` (what ``--config`` reads)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def failing(report) -> set[str]:
    """Ids of the gates whose verdict is not ``pass``."""
    return {r.gate for r in report.results if r.verdict != "pass"}
