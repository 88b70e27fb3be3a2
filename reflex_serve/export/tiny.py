"""Small randomly initialised exports, for tests and benchmarks of the serving path.

They are real exports (ONNX graphs, weights, statistics, manifest), just untrained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..policy.configuration import PolicyConfig
from ..policy.modeling import FlowMatchingVLA
from ..policy.normalize import DatasetStats, Stats
from .onnx_export import export_policy


def make_tiny_export(
    out_dir: Path,
    *,
    state_dim: int = 39,
    action_dim: int = 4,
    cameras: tuple = (("corner2", 64, 64),),
    chunk_size: int = 8,
    n_action_steps: int = 4,
    width: int = 32,
    seed: int = 0,
) -> Path:
    """Write an untrained export of a width-``width`` policy to ``out_dir``; returns it."""
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        cameras=[list(c) for c in cameras], state_dim=state_dim, action_dim=action_dim,
        chunk_size=chunk_size, n_action_steps=n_action_steps, width=width, num_heads=2,
        mlp_ratio=2, prefix_layers=1, expert_layers=2,
    )
    model = FlowMatchingVLA(cfg)
    rng = np.random.default_rng(seed)
    stats = DatasetStats(
        state=Stats.fit(rng.standard_normal((64, state_dim))),
        action=Stats.fit(rng.uniform(-1, 1, (64, action_dim))),
    )
    export_policy(model, stats, Path(out_dir), provenance={"kind": "untrained", "seed": seed})
    return Path(out_dir)
