"""``POST /act``: one observation in, one action chunk out (JSON or msgpack).

The handler reads the body on the event loop (bounded by ``max_body_bytes``), then makes
ONE hop to an act worker that decodes, calls ``policy.act`` and encodes the response, so
the event loop never runs model code and a request pays a single thread hand-off.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask

from reflex_serve.server import codec
from reflex_serve.server.errors import ApiError, ErrorCode, error_responses
from reflex_serve.server.metrics import http_transport
from reflex_serve.server.observations import ActParams, parse_act_body
from reflex_serve.server.schemas import ActResponse
from reflex_serve.server.state import ActRecord, ServingState, get_state, peer

if TYPE_CHECKING:
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.runtime.types import ActResult, Observation

log = logging.getLogger(__name__)
router = APIRouter(tags=["act"])

JSON = "application/json"
VERSION_HEADER = "X-Reflex-Model-Version"
REQUEST_ID_HEADER = "X-Request-ID"


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def wants_msgpack(request: Request, msgpack_in: bool) -> bool:
    """Answer in msgpack if asked in ``Accept``, else in the request's own format."""
    accept = request.headers.get("accept", "").lower()
    if any(t in accept for t in codec.CONTENT_TYPES):
        return True
    if JSON in accept:
        return False
    return msgpack_in


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes.

    ``Content-Length`` is checked before reading; the streamed size is checked as it
    arrives (chunked bodies, lying headers), so an oversized body is never buffered.

    Raises:
        ApiError: 413 if the body is larger than ``limit``; 400 for a bad Content-Length.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_body(body: bytes, msgpack_in: bool) -> Any:
    """Parse JSON or msgpack bytes; 400 on malformed input."""
    if msgpack_in:
        try:
            return codec.unpackb(body)
        except codec.CodecError as exc:
            raise ApiError(400, f"malformed msgpack body: {exc}") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ApiError(400, f"malformed JSON body: {exc}") from None


def encode_response(
    result: ActResult,
    params: ActParams,
    request_id: str,
    n_action_steps: int,
    server_ms: float,
    msgpack_out: bool,
) -> bytes:
    """The response body (:class:`ActResponse`); msgpack keeps ``actions`` an ndarray."""
    payload = {
        "actions": result.actions if msgpack_out else result.actions.tolist(),
        "model_version": result.version,
        "num_steps": result.num_steps,
        "n_action_steps": n_action_steps,
        "timings": {
            "prefix_ms": result.prefix_ms,
            "expert_ms": result.expert_ms,
            "total_ms": result.total_ms,
            "server_ms": server_ms,
        },
        "cache_hit": result.cache_hit,
        "request_id": request_id,
        "episode_id": params.episode_id,
        "step": params.step,
    }
    if msgpack_out:
        return codec.packb(payload)
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _serve(
    state: ServingState,
    request: Request,
    picked: list[Policy],
    body: bytes,
    msgpack_in: bool,
    msgpack_out: bool,
    request_id: str,
    received: float,
) -> tuple[Observation, ActParams, ActResult, bytes, float]:
    """Worker side of /act: decode, pick the version (a canary goes by the body's
    ``episode_id``), act, encode (blocking). The picked policy is appended to ``picked``
    so that a failure is counted against the version that took the request."""
    message = decode_body(body, msgpack_in)
    policy = state.pick(request, message.get("episode_id") if isinstance(message, dict) else None)
    picked.append(policy)
    obs, params = parse_act_body(message, policy.manifest)
    result = state.act(policy, obs, params)
    server_ms = (time.perf_counter() - received) * 1e3
    payload = encode_response(
        result, params, request_id, policy.manifest.n_action_steps, server_ms, msgpack_out
    )
    return obs, params, result, payload, server_ms


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given and len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


_REQUEST_BODY = {
    "required": True,
    "content": {
        JSON: {"schema": {"$ref": "#/components/schemas/ActRequest"}},
        codec.CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ActRequest"}},
    },
}


@router.post(
    "/act",
    summary="Compute an action chunk for one observation",
    description=(
        "Body: `ActRequest` as JSON, or as msgpack with `Content-Type: application/msgpack` "
        "(arrays in the openpi msgpack-numpy convention: images uint8 (H, W, 3), state "
        "float). The answer is `ActResponse`, as msgpack (actions a float32 ndarray) when "
        "the request was msgpack or `Accept: application/msgpack`. Errors are "
        "`ErrorResponse`; client mistakes are never a 500."
    ),
    response_model=None,
    responses={
        200: {
            "model": ActResponse,
            "description": "The action chunk (JSON, or msgpack when asked).",
            "content": {codec.CONTENT_TYPE: {}},
            "headers": {VERSION_HEADER: {"schema": {"type": "string"}}},
        },
        **error_responses(400, 401, 413, 415, 422, 500),
    },
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def act(request: Request) -> Response:
    """Decode the observation, run the policy, return the chunk.

    Body: :class:`~reflex_serve.server.schemas.ActRequest` as JSON, or as msgpack with
    ``Content-Type: application/msgpack`` (arrays in the openpi msgpack-numpy convention).
    Errors use :class:`~reflex_serve.server.errors.ErrorResponse`; client mistakes are
    never a 500.
    """
    received, received_at = time.perf_counter(), time.time()
    state = get_state(request)
    content_type = _media_type(request.headers.get("content-type"))
    msgpack_in = codec.is_msgpack(content_type)
    transport = http_transport(content_type)
    picked: list[Policy] = []
    try:
        if not msgpack_in and content_type not in ("", JSON):
            raise ApiError(
                415,
                f"unsupported Content-Type {content_type!r}; send {JSON} or {codec.CONTENT_TYPE}",
            )
        body = await read_body(request, state.settings.max_body_bytes)
        request_id = _request_id(request)
        msgpack_out = wants_msgpack(request, msgpack_in)
        obs, params, result, payload, server_ms = await state.run(
            _serve, state, request, picked, body, msgpack_in, msgpack_out, request_id, received
        )
    except ApiError as exc:
        state.observe_error(exc.status, transport, picked[0].version if picked else None)
        return exc.response()
    except Exception:
        log.exception("/act failed")
        state.observe_error(500, transport, picked[0].version if picked else None)
        return ApiError(500, "internal server error", code=ErrorCode.INTERNAL_ERROR).response()
    state.metrics.observe_success(result, transport, server_ms / 1e3)
    response = Response(
        payload,
        media_type=codec.CONTENT_TYPE if msgpack_out else JSON,
        headers={VERSION_HEADER: result.version, REQUEST_ID_HEADER: request_id},
    )
    if state.hooks:
        record = ActRecord(
            request_id, transport, received_at, obs, params, result, server_ms, peer(request)
        )
        response.background = BackgroundTask(state.run_hooks_after_response, record)
    return response
