"""Episode outcomes reported by controllers (mounted when the server collects data).

    POST /v1/episodes/{episode_id}/outcome   {"outcome": "success" | "failure",
                                              "reward": 1.0, "note": "..."}   [API key]
    GET  /v1/episodes/{episode_id}           the stored episode                [API key]

An episode is known once a request with that ``episode_id`` was served by this server
or logged in the store (a demo, or traffic of another replica). Because requests are
written asynchronously, an outcome for an episode this server has just served is
accepted even before the writer has committed its first request (the episode row is
then created by the outcome call). Anything else is a 404. A second report replaces
the first. The outcome is written synchronously: a 200 means it is committed.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import OperationalError

from reflex_serve.server.errors import ApiError, ErrorCode, ErrorResponse, error_responses
from reflex_serve.storage.collector import DataCollector
from reflex_serve.storage.models import MAX_EPISODE_ID
from reflex_serve.storage.records import InvalidRecord, check_id

router = APIRouter(prefix="/v1/episodes", tags=["episodes"])
MAX_NOTE = 4096

EpisodeIdPath = Annotated[
    str,
    Path(
        description=f"The controller's episode id, as sent in /act (<= {MAX_EPISODE_ID} "
        "printable characters)."
    ),
]
_ERRORS = {
    **error_responses(400, 401, 415, 422),
    404: {"model": ErrorResponse, "description": "Unknown episode (`not_found`)."},
    503: {"model": ErrorResponse, "description": "The data store is unavailable (`not_ready`)."},
}


class OutcomeRequest(BaseModel):
    """How an episode ended, as judged by the controller."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["success", "failure"]
    reward: float | None = Field(default=None, description="Optional scalar reward (finite).")
    note: str | None = Field(default=None, max_length=MAX_NOTE, description="Free text.")

    @field_validator("reward")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class EpisodeResponse(BaseModel):
    """An episode as stored."""

    episode_id: str
    source: Literal["demo", "served"]
    outcome: Literal["success", "failure"] | None
    reward: float | None
    note: str | None
    reported_at: datetime | None
    task: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


def get_collector(request: Request) -> DataCollector:
    """The app's data collector (set by ``create_app(..., collector=...)``)."""
    return request.app.state.collector


def _checked_id(episode_id: str) -> str:
    try:
        return check_id(episode_id, "episode_id", MAX_EPISODE_ID)
    except InvalidRecord as exc:
        raise ApiError.invalid("episode_id", exc.reason) from None


def _unavailable(exc: OperationalError) -> ApiError:
    return ApiError(503, f"the data store is unavailable: {exc.orig}", code=ErrorCode.NOT_READY)


@router.post(
    "/{episode_id}/outcome",
    summary="Report how an episode ended",
    response_model=EpisodeResponse,
    responses=_ERRORS,
)
def report_outcome(episode_id: EpisodeIdPath, body: OutcomeRequest, request: Request):
    """Store success or failure (and an optional reward and note) with the episode.

    404 for an episode neither served by this server nor in the store; 422 for a bad
    body. A plain ``def``: the write runs in the threadpool, off the event loop.
    """
    collector = get_collector(request)
    try:
        report = collector.report_outcome(
            _checked_id(episode_id), body.outcome, body.reward, body.note
        )
    except OperationalError as exc:
        raise _unavailable(exc) from None
    if report is None:
        raise ApiError(
            404,
            f"episode {episode_id!r} is unknown: no request with this episode_id was served "
            "or stored",
            field="episode_id",
        )
    return EpisodeResponse(
        episode_id=report.episode_id,
        source=report.source,
        outcome=report.outcome,
        reward=report.reward,
        note=report.note,
        reported_at=report.reported_at,
    )


@router.get(
    "/{episode_id}",
    summary="An episode as stored",
    response_model=EpisodeResponse,
    responses=_ERRORS,
)
def get_episode(episode_id: EpisodeIdPath, request: Request):
    """The stored episode (404 until its first request is committed or its outcome set)."""
    try:
        ep = get_collector(request).store.episode(_checked_id(episode_id))
    except OperationalError as exc:
        raise _unavailable(exc) from None
    if ep is None:
        raise ApiError(404, f"episode {episode_id!r} is not in the store", field="episode_id")
    return EpisodeResponse(
        episode_id=ep.id,
        source=ep.source,
        outcome=ep.outcome,
        reward=ep.reward,
        note=ep.note,
        reported_at=ep.reported_at,
        task=ep.task,
        started_at=ep.started_at,
        ended_at=ep.ended_at,
    )
