"""Request bodies -> (:class:`Observation`, :class:`ActParams`), for HTTP and websocket.

Parsing is hand-written rather than a pydantic model on purpose: images arrive as
nested lists or large arrays, and field-by-field checks here cost microseconds where a
validated model of a 64x64x3 nested list costs milliseconds. The pydantic models in
:mod:`reflex_serve.server.schemas` document the same body for OpenAPI.

Every failure raises :class:`ApiError` (422) naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from reflex_serve.export.manifest import Manifest
from reflex_serve.runtime.types import Observation
from reflex_serve.server.errors import ApiError, ErrorCode
from reflex_serve.server.images import http_image, openpi_image
from reflex_serve.server.settings import MAX_NUM_STEPS, WebsocketKeys
from reflex_serve.storage.models import MAX_EPISODE_ID
from reflex_serve.storage.records import InvalidRecord, check_id

_MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ActParams:
    """Per-request options besides the observation.

    Attributes:
        num_steps: Euler steps (1..100); ``None`` for the server / manifest default.
        seed: noise seed for a reproducible chunk; ``None`` draws fresh noise.
        episode_id, step: the controller's episode and step, for logging only.
    """

    num_steps: int | None = None
    seed: int | None = None
    episode_id: str | None = None
    step: int | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _optional_int(body: Mapping, key: str, lo: int, hi: int, field: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value):
        raise ApiError.invalid(field, f"must be an integer, got {type(value).__name__}")
    if not lo <= int(value) <= hi:
        raise ApiError.invalid(field, f"must be in {lo}..{hi}, got {int(value)}")
    return int(value)


def parse_params(body: Mapping, prefix: str = "") -> ActParams:
    """Read ``num_steps``, ``seed``, ``episode_id`` and ``step`` (all optional)."""
    episode_id = body.get("episode_id")
    if episode_id is not None:
        if _is_int(episode_id):
            episode_id = str(int(episode_id))
        elif not isinstance(episode_id, str):
            raise ApiError.invalid(prefix + "episode_id", "must be a string")
        try:  # the store's limits, so that a served request can always be logged
            check_id(episode_id, "episode_id", MAX_EPISODE_ID)
        except InvalidRecord as exc:
            raise ApiError.invalid(prefix + "episode_id", exc.reason) from None
    return ActParams(
        num_steps=_optional_int(body, "num_steps", 1, MAX_NUM_STEPS, prefix + "num_steps"),
        seed=_optional_int(body, "seed", 0, _MAX_SEED, prefix + "seed"),
        episode_id=episode_id,
        step=_optional_int(body, "step", 0, _MAX_SEED, prefix + "step"),
    )


def parse_state(value: Any, state_dim: int, field: str = "state") -> np.ndarray:
    """A finite float32 vector of length ``state_dim`` from a list or a numeric array."""
    if value is None:
        raise ApiError.invalid(field, "is required", ErrorCode.MISSING_FIELD)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise ApiError.invalid(field, f"wrong dtype: expected float32, got {value.dtype}")
        arr = value
    elif isinstance(value, list):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ApiError.invalid(field, "must be a list of numbers")
        arr = np.array(value, dtype=np.float64)
    else:
        raise ApiError.invalid(field, "must be a list of numbers or a float array")
    if arr.ndim != 1 or arr.shape[0] != state_dim:
        raise ApiError.invalid(field, f"expected {state_dim} values, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ApiError.invalid(field, "contains NaN or Inf")
    return arr.astype(np.float32, copy=arr.dtype != np.float32)


def parse_instruction(value: Any, field: str = "instruction") -> str:
    """A string instruction; absent means ``""``."""
    if value is None:
        return ""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
        value = str(value)
    if not isinstance(value, str):
        raise ApiError.invalid(field, f"must be a string, got {type(value).__name__}")
    return value


def parse_act_body(body: Any, manifest: Manifest) -> tuple[Observation, ActParams]:
    """Parse a decoded ``POST /act`` body (JSON or msgpack) against ``manifest``.

    Raises:
        ApiError: 400 if the body is not an object; 422 naming the field otherwise.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON / msgpack object (a map)")
    images = body.get("images")
    if images is None:
        raise ApiError.invalid("images", "is required", ErrorCode.MISSING_FIELD)
    if not isinstance(images, dict):
        raise ApiError.invalid("images", "must be an object: camera name -> image")
    cameras = {cam.name: cam for cam in manifest.cameras}
    for name in images:
        if name not in cameras:
            raise ApiError.invalid(
                f"images.{name}",
                f"unknown camera; this model takes {sorted(cameras)}",
                ErrorCode.UNKNOWN_FIELD,
            )
    decoded = {}
    for name, cam in cameras.items():
        if name not in images:
            raise ApiError.invalid(
                f"images.{name}",
                f"camera is missing; this model takes {sorted(cameras)}",
                ErrorCode.MISSING_FIELD,
            )
        decoded[name] = http_image(images[name], cam, f"images.{name}")
    obs = Observation(
        images=decoded,
        state=parse_state(body.get("state"), manifest.state_dim),
        instruction=parse_instruction(body.get("instruction")),
    )
    return obs, parse_params(body)


def flatten_keys(msg: Mapping, prefix: str = "", out: dict | None = None) -> dict[str, Any]:
    """Flatten nested dicts with ``/``: ``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    out = {} if out is None else out
    for key, value in msg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flatten_keys(value, name + "/", out)
        else:
            out[name] = value
    return out


def openpi_camera_keys(manifest: Manifest, keys: WebsocketKeys) -> dict[str, str]:
    """The explicit key -> camera map, with openpi's defaults when none is configured."""
    if keys.images:
        return dict(keys.images)
    names = [cam.name for cam in manifest.cameras]
    defaults = dict(zip(("observation/image", "observation/wrist_image"), names))
    return defaults


def parse_openpi_message(
    msg: Any, manifest: Manifest, keys: WebsocketKeys
) -> tuple[Observation, ActParams]:
    """Parse an openpi websocket observation (see :class:`WebsocketKeys` for the mapping).

    Errors name the client's own key (``observation/state``), not ours.
    """
    if not isinstance(msg, Mapping):
        raise ApiError(400, "observation must be a msgpack map")
    flat = flatten_keys(msg)
    cameras = {cam.name: cam for cam in manifest.cameras}
    found: dict[str, tuple[str, Any]] = {}
    for key, camera in openpi_camera_keys(manifest, keys).items():
        if key in flat:
            found[camera] = (key, flat[key])
    for key, value in flat.items():
        for prefix in keys.image_prefixes:
            if key.startswith(prefix):
                camera = key[len(prefix) :]
                if camera not in cameras:
                    raise ApiError.invalid(
                        key,
                        f"unknown camera; this model takes {sorted(cameras)}",
                        ErrorCode.UNKNOWN_FIELD,
                    )
                found[camera] = (key, value)
    images = {}
    for name, cam in cameras.items():
        if name not in found:
            raise ApiError.invalid(
                f"images.{name}", "camera is missing from the observation", ErrorCode.MISSING_FIELD
            )
        key, value = found[name]
        images[name] = openpi_image(value, cam, key)
    state_key = next((k for k in keys.state if k in flat), keys.state[0])
    text_key = next((k for k in keys.instruction if k in flat), keys.instruction[0])
    obs = Observation(
        images=images,
        state=parse_state(flat.get(state_key), manifest.state_dim, state_key),
        instruction=parse_instruction(flat.get(text_key), text_key),
    )
    return obs, parse_params(flat)
