"""``GET /health``: readiness and what the served model expects."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from reflex_serve.server.schemas import HealthResponse, ModelSummary
from reflex_serve.server.state import get_state

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    summary="Readiness and model summary",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "still warming up"}},
)
async def health(request: Request) -> JSONResponse:
    """200 with ``status="ok"`` once warm-up is done, 503 with ``"warming_up"`` before.

    Both carry the summary of the model a default request is served by (version,
    cameras, state/action dims, chunk size, n_action_steps, num_steps), so a client can
    configure itself while the server warms up.
    """
    state = get_state(request)
    policy = state.pick(request)
    summary = ModelSummary.from_manifest(policy.manifest, state.settings.num_steps)
    body = HealthResponse(status="ok" if state.ready else "warming_up", **summary.model_dump())
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


@router.get(
    "/healthz",
    summary="Plain-text probe (openpi's websocket server answers it too)",
    response_class=PlainTextResponse,
    responses={503: {"description": "still warming up"}},
)
async def healthz(request: Request) -> PlainTextResponse:
    """``OK`` with 200 once warm, ``warming up`` with 503 before."""
    ready = get_state(request).ready
    return PlainTextResponse("OK\n" if ready else "warming up\n", status_code=200 if ready else 503)
