"""The loop's admin API (mounted with ``--distill-schedule``; the admin key).

    POST /admin/distill/run-now       queue a manual run: 202 {run_id}; 409 while a run
                                      is queued or running (its id in the message and in
                                      the X-Reflex-Run-Id header)
    GET  /admin/distill/runs          the newest runs first (?limit, ?status)
    GET  /admin/distill/runs/{id}     one run with its stages and candidates (an id prefix
                                      that is unique works too)
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from reflex_serve.server.errors import ApiError, error_responses
from reflex_serve.storage.loop_models import RUN_STATUSES

router = APIRouter(prefix="/admin/distill", tags=["distill"])
_ERRORS = error_responses(400, 401, 403, 404, 409, 415, 422)


class RunNowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str = Field(default="admin", min_length=1, max_length=128,
                       description="Who asks (recorded in the run's summary).")


class RunNowResponse(BaseModel):
    run_id: str
    status: str = Field(description="queued")


def _loop(request: Request):
    return request.app.state.distill


@router.post("/run-now", summary="Queue a distill run now", status_code=202,
             response_model=RunNowResponse, responses=_ERRORS)
def run_now(request: Request, body: RunNowRequest | None = None):
    """Queue a manual run; the scheduler thread starts its worker at once."""
    run_id, created = _loop(request).run_now(actor=(body or RunNowRequest()).actor)
    if not created:
        raise ApiError(409, f"distill run {run_id} is already queued or running",
                       headers={"X-Reflex-Run-Id": run_id})
    return RunNowResponse(run_id=run_id, status="queued")


@router.get("/runs", summary="Distill runs, newest first", responses=_ERRORS)
def list_runs(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              status: Annotated[str | None, Query(description=", ".join(RUN_STATUSES))] = None
              ) -> list[dict[str, Any]]:
    from reflex_serve.storage.distill_runs import list_runs as rows

    if status is not None and status not in RUN_STATUSES:
        raise ApiError(422, f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}",
                       field="status")
    return rows(_loop(request).store, limit, status)


@router.get("/runs/{run_id}", summary="One distill run with its stages and candidates",
            responses=_ERRORS)
def get_run(request: Request,
            run_id: Annotated[str, Path(min_length=4, max_length=32)]) -> dict[str, Any]:
    from reflex_serve.storage.distill_runs import get_run as row

    run = row(_loop(request).store, run_id)
    if run is None:
        raise ApiError(404, f"no distill run {run_id!r} (or the prefix is not unique)",
                       field="run_id")
    return run
