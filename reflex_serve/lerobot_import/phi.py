"""SnapFlow's target-time MLP phi(s), shared by every port (SmolVLA, pi0, pi0.5).

phi is not in a LeRobot checkpoint: the importer creates it. Its output layer is zero
(phi(s) = 0, so the imported teacher equals LeRobot and ignores s until distillation
trains it) and its first layer is drawn from a fixed seed, independent of the global
torch RNG, so importing the same checkpoint twice gives the same weights (and digest).
Only torch is imported.
"""

from __future__ import annotations

import torch
from torch import nn

SEED = 0


def target_time_mlp(width: int) -> nn.Sequential:
    """Linear(width, width) -> SiLU -> Linear(width, width): the first layer uniform in
    +-width**-0.5 (nn.Linear's default range) from a generator seeded with :data:`SEED`,
    the output layer zero."""
    mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
    gen = torch.Generator().manual_seed(SEED)
    bound = width**-0.5
    with torch.no_grad():
        for param in mlp[0].parameters():
            param.uniform_(-bound, bound, generator=gen)
        nn.init.zeros_(mlp[2].weight)
        nn.init.zeros_(mlp[2].bias)
    return mlp
