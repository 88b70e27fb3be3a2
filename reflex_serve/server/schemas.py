"""Pydantic models of the public HTTP contract (they make /openapi.json).

``ActRequest`` documents the ``POST /act`` body; the handler parses bodies with
:mod:`reflex_serve.server.observations` for speed, applying the same rules.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from reflex_serve.export.manifest import Manifest
from reflex_serve.server.settings import MAX_NUM_STEPS

ImageValue = str | list[list[list[int]]]


class ActRequest(BaseModel):
    """One observation and the options of one policy call.

    With ``Content-Type: application/msgpack`` the same keys are sent as a msgpack map;
    images may then also be uint8 (H, W, 3) arrays and ``state`` a float array, in the
    openpi msgpack-numpy convention.
    """

    images: dict[str, ImageValue] = Field(
        description="Camera name -> image: a base64 PNG/JPEG string (a data: URL prefix "
        "is allowed) or a nested list of uint8 of shape (H, W, 3). Every camera of the "
        "manifest must be present, and no other.",
        examples=[{"corner2": "iVBORw0KGgo..."}],
    )
    state: list[float] = Field(
        description="Proprioceptive state, unnormalized, length state_dim, finite.",
        examples=[[0.0, 0.6, 0.2, 1.0]],
    )
    instruction: str = Field(default="", description="Natural-language task instruction.")
    episode_id: str | None = Field(default=None, description="Controller episode id (logged).")
    step: int | None = Field(default=None, ge=0, description="Step within the episode (logged).")
    num_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_NUM_STEPS,
        description="Euler steps of the action expert; default: the server's / manifest's.",
    )
    seed: int | None = Field(
        default=None, ge=0, description="Noise seed for a reproducible action chunk."
    )


class Timings(BaseModel):
    """Wall times in milliseconds."""

    prefix_ms: float = Field(description="Prefix KV computed or fetched from the cache.")
    expert_ms: float = Field(description="Denoising loop (num_steps action-expert calls).")
    total_ms: float = Field(description="The whole policy call.")
    server_ms: float = Field(description="Request received to response encoded.")


class ActResponse(BaseModel):
    """An action chunk. msgpack responses carry ``actions`` as a float32 ndarray."""

    actions: list[list[float]] = Field(
        description="Action chunk, shape (chunk_size, action_dim), unnormalized; execute "
        "the first n_action_steps rows."
    )
    model_version: str = Field(description="Version (content digest prefix) that served.")
    num_steps: int
    n_action_steps: int
    timings: Timings
    cache_hit: bool = Field(description="Whether the prefix KV came from the prefix cache.")
    request_id: str
    episode_id: str | None = None
    step: int | None = None


class CameraSummary(BaseModel):
    name: str
    height: int
    width: int


class ModelSummary(BaseModel):
    """What a controller needs to know about the served model."""

    model_version: str
    policy_kind: str
    cameras: list[CameraSummary]
    state_dim: int
    action_dim: int
    chunk_size: int
    n_action_steps: int
    num_steps: int = Field(description="Default Euler steps per call on this server.")

    @classmethod
    def from_manifest(cls, manifest: Manifest, num_steps: int | None = None) -> ModelSummary:
        return cls(
            model_version=manifest.version,
            policy_kind=manifest.policy_kind,
            cameras=[
                CameraSummary(name=c.name, height=c.height, width=c.width) for c in manifest.cameras
            ],
            state_dim=manifest.state_dim,
            action_dim=manifest.action_dim,
            chunk_size=manifest.chunk_size,
            n_action_steps=manifest.n_action_steps,
            num_steps=num_steps or manifest.num_steps,
        )


class HealthResponse(ModelSummary):
    """``GET /health``: 200 with ``status="ok"`` once warm, 503 ``"warming_up"`` before."""

    status: Literal["ok", "warming_up"]
