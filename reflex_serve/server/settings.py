"""Server configuration: one pydantic model, checked when it is built."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIB = 1 << 20
MAX_NUM_STEPS = 100


class WebsocketKeys(BaseModel):
    """How openpi-style observation keys map onto an :class:`Observation`.

    An openpi client sends a flat or nested dict; nested dicts are flattened with ``/``
    first, so ``{"observation": {"state": x}}`` and ``{"observation/state": x}`` are the
    same. Then:

    - ``state``: the first of these keys present is the state vector.
    - ``instruction``: the first of these keys present is the instruction (default "").
    - ``images``: explicit key -> camera name. When empty, ``observation/image`` maps to
      the manifest's first camera and ``observation/wrist_image`` to its second.
    - ``image_prefixes``: ``<prefix><camera>`` is an image for ``<camera>``; a camera
      name under these prefixes that the model lacks is an error.

    Keys matching nothing are ignored, as openpi's own input transforms do.
    """

    model_config = ConfigDict(frozen=True)

    state: tuple[str, ...] = ("observation/state", "state")
    instruction: tuple[str, ...] = ("prompt", "instruction")
    images: dict[str, str] = Field(default_factory=dict)
    image_prefixes: tuple[str, ...] = ("observation/images/", "images/")


class ServerSettings(BaseModel):
    """Settings of one app built by :func:`reflex_serve.server.app.create_app`.

    Attributes:
        api_key: when set, ``POST /act`` and the websocket need
            ``Authorization: Bearer <key>`` (or openpi's ``Api-Key <key>``);
            ``/health``, ``/metrics`` and ``/openapi.json`` stay open.
        max_body_bytes: largest accepted request body / websocket message, in bytes.
        num_steps: Euler steps used when a request does not name any; ``None`` uses
            the manifest's ``num_steps``.
        warmup_iters: policy calls made in the background at startup before
            ``/health`` answers 200 (0: ready at once).
        act_workers: threads that run decoding + ``policy.act``; more than the number
            of cores only adds contention.
        websocket_keys: the openpi key mapping.
        admin_key: the key of the admin API (``/admin/...``, the versioning router);
            without it the admin API answers 403. It must differ from ``api_key``: a
            robot controller can act, not promote.
    """

    model_config = ConfigDict(frozen=True)

    api_key: str | None = None
    max_body_bytes: int = Field(default=8 * MIB, gt=0)
    num_steps: int | None = Field(default=None, ge=1, le=MAX_NUM_STEPS)
    warmup_iters: int = Field(default=3, ge=0)
    act_workers: int = Field(default=2, ge=1)
    websocket_keys: WebsocketKeys = Field(default_factory=WebsocketKeys)
    admin_key: str | None = None

    @field_validator("api_key", "admin_key")
    @classmethod
    def _non_empty_key(cls, value: str | None, info) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"{info.field_name} must be non-empty when set")
        return value

    @model_validator(mode="after")
    def _separate_keys(self) -> ServerSettings:
        if self.admin_key is not None and self.admin_key == self.api_key:
            raise ValueError("admin_key must differ from api_key (the /act key)")
        return self
