"""Plain data types shared by the runtime, the server, the simulator client and the gates.

Everything that calls a policy (HTTP /act, the openpi websocket, closed-loop evaluation,
shadow runs, gate replays) speaks in these types, so that one ``act`` serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class InvalidObservation(ValueError):
    """An observation does not match the policy's manifest.

    Attributes:
        field: dotted name of the offending field (``"state"``, ``"images.corner2"``,
            ``"instruction"``); the server reports it in its 422 body.
        reason: a human-readable explanation naming what was expected.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Observation:
    """One robot observation.

    Attributes:
        images: camera name -> uint8 RGB array of shape (height, width, 3), as declared
            by the manifest's ``cameras``.
        state: float32 array of shape (state_dim,), unnormalized (robot units).
        instruction: natural-language task instruction; may be empty.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str = ""


@dataclass(frozen=True)
class ActResult:
    """The result of one policy call.

    Attributes:
        actions: float32 array of shape (chunk_size, action_dim), unnormalized; the
            controller executes the first ``n_action_steps`` rows.
        num_steps: number of Euler steps (NFE of the action expert) used.
        prefix_ms: wall time spent computing or fetching the prefix KV, in ms.
        expert_ms: wall time of the denoising loop, in ms.
        total_ms: wall time of the whole call (pre/post-processing included), in ms.
        cache_hit: whether the prefix KV came from the prefix cache.
        version: the content digest of the export that produced the chunk.
        extra: anything else the producer adds (the runtime: ``noise``, the initial
            noise in normalized units; the HTTP client: server and round-trip times).
    """

    actions: np.ndarray
    num_steps: int
    prefix_ms: float
    expert_ms: float
    total_ms: float
    cache_hit: bool
    version: str
    extra: dict = field(default_factory=dict)
