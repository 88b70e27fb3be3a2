"""``GET /metrics``: Prometheus text exposition of the app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from reflex_serve.server.state import get_state

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    """Counters, histograms and prefix-cache statistics (see :mod:`..metrics`).

    A plain ``def``: rendering reads cache stats under locks, so it runs in the threadpool.
    """
    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
