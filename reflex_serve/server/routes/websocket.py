"""The openpi websocket protocol at ``/`` and ``/ws`` (``openpi_client.WebsocketClientPolicy``).

Protocol (as openpi's ``WebsocketPolicyServer``):

1. The client connects (``Authorization: Api-Key <key>`` or ``Bearer <key>`` when the
   server has an API key; otherwise the handshake is refused with HTTP 403).
2. The server sends one binary msgpack-numpy frame of metadata: the model summary
   (``model_version``, ``cameras``, ``state_dim``, ``action_dim``, ``chunk_size``,
   ``n_action_steps``, ``num_steps``) plus ``server`` and ``keys`` (the key mapping).
3. Then, per request, the client sends a binary frame holding an observation dict
   (mapped by :class:`~reflex_serve.server.settings.WebsocketKeys`) and the server
   answers with a binary frame::

       {"actions": float32 ndarray (chunk_size, action_dim),
        "server_timing": {"infer_ms": ..., "prev_total_ms": ...},
        "policy_timing": {"prefix_ms": ..., "expert_ms": ..., "total_ms": ...},
        "model_version": str, "num_steps": int, "n_action_steps": int, "cache_hit": bool}

4. A bad observation is answered with a TEXT frame ``"<status> <code>: <message>"``
   (the openpi client raises ``RuntimeError`` with it) and the connection stays open;
   a server fault sends ``"500 internal_error: ..."`` as text and closes with code 1011,
   as openpi does (openpi sends the whole traceback; here it goes to the server log).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from reflex_serve.server import codec
from reflex_serve.server.auth import authorized
from reflex_serve.server.errors import ApiError
from reflex_serve.server.observations import ActParams, parse_openpi_message
from reflex_serve.server.schemas import ModelSummary
from reflex_serve.server.state import ActRecord, ServingState, get_state, peer

if TYPE_CHECKING:
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.runtime.types import ActResult, Observation

log = logging.getLogger(__name__)
router = APIRouter(tags=["websocket"])
TRANSPORT = "websocket"
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011


def metadata(state: ServingState, policy: Policy) -> dict:
    """The metadata frame sent on connect."""
    summary = ModelSummary.from_manifest(policy.manifest, state.settings.num_steps)
    return {
        **summary.model_dump(),
        "server": "reflex-serve",
        "keys": state.settings.websocket_keys.model_dump(mode="json"),
    }


def _serve(
    state: ServingState,
    websocket: WebSocket,
    picked: list[Policy],
    frame: bytes,
    received: float,
    prev_total_ms: float | None,
) -> tuple[Observation, ActParams, ActResult, bytes, float]:
    """Worker side of one websocket request: decode, pick the version (a canary goes by
    the message's ``episode_id``), act, encode (blocking)."""
    try:
        msg = codec.unpackb(frame)
    except codec.CodecError as exc:
        raise ApiError(400, f"malformed msgpack frame: {exc}") from None
    policy = state.pick(websocket, msg.get("episode_id") if isinstance(msg, dict) else None)
    picked.append(policy)
    obs, params = parse_openpi_message(msg, policy.manifest, state.settings.websocket_keys)
    result = state.act(policy, obs, params)
    infer_ms = (time.perf_counter() - received) * 1e3
    timing = {"infer_ms": infer_ms}
    if prev_total_ms is not None:
        timing["prev_total_ms"] = prev_total_ms
    payload = codec.packb(
        {
            "actions": result.actions,
            "server_timing": timing,
            "policy_timing": {
                "prefix_ms": result.prefix_ms,
                "expert_ms": result.expert_ms,
                "total_ms": result.total_ms,
            },
            "model_version": result.version,
            "num_steps": result.num_steps,
            "n_action_steps": policy.manifest.n_action_steps,
            "cache_hit": result.cache_hit,
        }
    )
    return obs, params, result, payload, infer_ms


async def _reject(websocket: WebSocket, state: ServingState) -> None:
    state.metrics.observe_error(401, TRANSPORT)
    await websocket.close(code=POLICY_VIOLATION, reason="missing or invalid API key")


async def _report_fault(websocket: WebSocket, exc: Exception) -> None:
    """Tell the client about a server fault (text frame), then close with 1011.

    Like openpi's server, but the frame carries the exception, not the traceback (that
    goes to the server log).
    """
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    try:
        await websocket.send_text(f"500 internal_error: {type(exc).__name__}: {exc}")
        await websocket.close(code=INTERNAL_ERROR, reason="Internal server error.")
    except Exception:  # the client is already gone
        log.debug("could not report the fault to the client", exc_info=True)


@router.websocket("/")
@router.websocket("/ws")
async def openpi_websocket(websocket: WebSocket) -> None:
    """Serve openpi-protocol requests on one connection until the client leaves."""
    state = get_state(websocket)
    if not authorized(state.settings.api_key, websocket.headers.get("authorization")):
        await _reject(websocket, state)
        return
    await websocket.accept()
    state.metrics.websockets.inc()
    prev_total_ms = None
    try:
        await websocket.send_bytes(codec.packb(metadata(state, state.pick(websocket))))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            received, received_at = time.perf_counter(), time.time()
            frame = message.get("bytes")
            picked: list[Policy] = []
            try:
                if frame is None:
                    raise ApiError(400, "expected a binary msgpack frame, got text")
                if len(frame) > state.settings.max_body_bytes:
                    raise ApiError(
                        413, f"frame exceeds the {state.settings.max_body_bytes}-byte limit"
                    )
                obs, params, result, payload, infer_ms = await state.run(
                    _serve, state, websocket, picked, frame, received, prev_total_ms
                )
            except ApiError as exc:
                state.observe_error(exc.status, TRANSPORT, picked[0].version if picked else None)
                await websocket.send_text(f"{exc.status} {exc.code.value}: {exc.message}")
                continue
            await websocket.send_bytes(payload)
            prev_total_ms = (time.perf_counter() - received) * 1e3
            state.metrics.observe_success(result, TRANSPORT, infer_ms / 1e3)
            if state.hooks:
                record = ActRecord(
                    uuid.uuid4().hex,
                    TRANSPORT,
                    received_at,
                    obs,
                    params,
                    result,
                    infer_ms,
                    peer(websocket),
                )
                state.run_hooks(record)
    except WebSocketDisconnect:
        pass
    except Exception as exc:
        log.exception("websocket request failed")
        state.observe_error(500, TRANSPORT)
        await _report_fault(websocket, exc)
    finally:
        state.metrics.websockets.dec()
