"""The admin API of the versioning router (mounted with a router; the admin key, never
the /act key). ``reflex models ...`` calls it.

    GET  /admin/versions                         every registered version, its state,
                                                 role here and gate verdict
    POST /admin/versions                         register an export directory {path}
    GET  /admin/versions/{version}               one version: transitions, swaps,
                                                 recorded shadow comparisons
    POST /admin/versions/{version}/shadow        {fraction}: mirror that share of calls
    POST /admin/versions/{version}/canary        {fraction}: serve that share of episodes
    POST /admin/versions/{version}/promote       gates -> load -> warm -> check -> swap
    POST /admin/rollback                         {to?}: back to the previous version
    GET  /admin/router                           routes, monitor signals, revision
    GET  /admin/swaps                            promotes and rollbacks, newest first

Every change names an ``actor`` (recorded with a ``reason`` on each transition).
Plain ``def`` handlers: loading and warming run in the threadpool, off the event loop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from reflex_serve.router.errors import RouterError
from reflex_serve.server.errors import ApiError, ErrorCode, error_responses

router = APIRouter(prefix="/admin", tags=["admin"])
_ERRORS = error_responses(400, 401, 403, 404, 409, 415, 422, 503)
VersionPath = Annotated[str, Path(description="Model version: 12 hex digits or the digest.")]


class _Change(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str = Field(min_length=1, max_length=128, description="Who (recorded).")
    reason: str = Field(default="", max_length=4096, description="Why (recorded).")

    @field_validator("actor")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name who makes the change")
        return value.strip()


class RegisterRequest(_Change):
    path: str = Field(min_length=1, description="Export directory, as seen by the server.")


class TrafficRequest(_Change):
    fraction: float = Field(ge=0.0, le=1.0, description="Share of requests (shadow) or "
                            "episodes (canary); 0 ends it.")


class PromoteRequest(_Change):
    pass


class RollbackRequest(_Change):
    to: str | None = Field(default=None, description="A version that was active before "
                           "(default: the one the active version replaced).")


class VersionOut(BaseModel):
    """A registered version as this replica sees it."""

    version: str
    digest: str
    state: str = Field(description="candidate, shadow, canary, active, retired, rolled_back")
    parent_digest: str | None
    location: str | None
    created_at: datetime
    role: str | None = Field(description="active, previous, shadow or canary here, if loaded")
    fraction: float | None
    may_ship: bool
    gates: str = Field(description="Why it may or may not ship (its latest gate run).")


class VersionList(BaseModel):
    versions: list[VersionOut]
    revision: int


class RegisterResponse(VersionOut):
    created: bool


class VersionDetail(VersionOut):
    transitions: list[dict[str, Any]]
    swaps: list[dict[str, Any]]
    comparisons: dict[str, Any]


class TrafficResponse(BaseModel):
    slot: str
    version: str
    fraction: float
    revision: int


class SwapOut(BaseModel):
    """A promote or a rollback (``figures``: load / warm-up times, baseline, or the
    monitor's evidence for a rollback)."""

    id: str | None
    kind: str
    status: str
    from_version: str | None
    to_version: str
    from_digest: str | None = None
    to_digest: str
    actor: str
    reason: str
    stage: str | None = None
    error: str | None = None
    signal: str | None = None
    figures: dict[str, Any] = Field(default_factory=dict)
    replica: str
    started_at: str | None = None
    finished_at: str | None = None
    monitor_until: str | None = None


def _controller(request: Request):
    return request.app.state.router


def _api_error(exc: RouterError) -> ApiError:
    code = ErrorCode(exc.code) if exc.code in ErrorCode._value2member_map_ else None
    return ApiError(exc.status, exc.message, field=exc.field, code=code)


def _version_out(controller, info) -> dict[str, Any]:
    routes = controller.router.routes
    role = routes.role_of(info.version)
    fraction = {"active": 1.0, "shadow": routes.shadow_fraction,
                "canary": routes.canary_fraction}.get(role)
    decision = controller.registry.ship_decision(info)
    return {"version": info.version, "digest": info.digest, "state": info.state,
            "parent_digest": info.parent_digest, "location": info.location,
            "created_at": info.created_at, "role": role, "fraction": fraction,
            "may_ship": decision.may_ship, "gates": decision.reason}


def _swap_out(row: dict[str, Any]) -> SwapOut:
    return SwapOut(**{k: v for k, v in row.items() if k in SwapOut.model_fields})


@router.get("/versions", summary="Registered versions", response_model=VersionList,
            responses=_ERRORS)
def list_versions(request: Request):
    c = _controller(request)
    return VersionList(versions=[_version_out(c, v) for v in c.registry.versions()],
                       revision=c.router.revision)


@router.post("/versions", summary="Register an export directory", status_code=201,
             response_model=RegisterResponse, responses=_ERRORS)
def register(body: RegisterRequest, request: Request):
    c = _controller(request)
    try:
        info, created = c.registry.register(body.path, actor=body.actor, reason=body.reason)
    except RouterError as exc:
        raise _api_error(exc) from None
    return RegisterResponse(**_version_out(c, info), created=created)


@router.get("/versions/{version}", summary="One version with its history",
            response_model=VersionDetail, responses=_ERRORS)
def get_version(version: VersionPath, request: Request):
    c = _controller(request)
    try:
        info = c.registry.resolve(version)
    except RouterError as exc:
        raise _api_error(exc) from None
    return VersionDetail(**_version_out(c, info), transitions=c.registry.transitions(info),
                         swaps=c.registry.swaps(20, info), comparisons=c.registry.comparisons(info))


def _traffic(slot: str, version: str, body: TrafficRequest, request: Request):
    try:
        out = _controller(request).set_traffic(slot, version, body.fraction, actor=body.actor,
                                               reason=body.reason)
    except RouterError as exc:
        raise _api_error(exc) from None
    return TrafficResponse(**out)


@router.post("/versions/{version}/shadow", summary="Mirror a share of calls to a version",
             response_model=TrafficResponse, responses=_ERRORS)
def shadow(version: VersionPath, body: TrafficRequest, request: Request):
    """Mirror ``fraction`` of the active version's calls to ``version`` off the response
    path and record the comparisons; 0 ends it. No gates needed: clients never see it."""
    return _traffic("shadow", version, body, request)


@router.post("/versions/{version}/canary", summary="Serve a share of episodes by a version",
             response_model=TrafficResponse, responses=_ERRORS)
def canary(version: VersionPath, body: TrafficRequest, request: Request):
    """Serve ``fraction`` of episodes (sticky per ``episode_id``) by ``version``; 0 ends
    it. The version must be allowed to ship (gates)."""
    return _traffic("canary", version, body, request)


@router.post("/versions/{version}/promote", summary="Make a version the active one",
             response_model=SwapOut, responses=_ERRORS)
def promote(version: VersionPath, body: PromoteRequest, request: Request):
    """Refused (409) unless every safety gate passed and every performance gate passed or
    was overridden. Loads and warms the version beside the active one, checks it, then
    switches atomically; a failure leaves the old version serving (422, recorded). The
    previous version stays loaded while the monitor watches the new one."""
    try:
        row = _controller(request).promote(version, actor=body.actor, reason=body.reason)
    except RouterError as exc:
        raise _api_error(exc) from None
    return _swap_out(row)


@router.post("/rollback", summary="Return to the previous version", response_model=SwapOut,
             responses=_ERRORS)
def rollback(body: RollbackRequest, request: Request):
    try:
        row = _controller(request).rollback(actor=body.actor, reason=body.reason, to=body.to)
    except RouterError as exc:
        raise _api_error(exc) from None
    return _swap_out(row)


@router.get("/router", summary="Routes, monitor and revision of this replica",
            responses=_ERRORS)
def status(request: Request) -> dict[str, Any]:
    c = _controller(request)
    routes, monitor = c.router.routes, c.router.monitor

    def slot(policy, fraction):
        return None if policy is None else {"version": policy.version, "fraction": fraction}

    return {
        "replica": c.replica,
        "revision": c.router.revision,
        "active": routes.active.version,
        "previous": routes.previous.version if routes.previous is not None else None,
        "shadow": slot(routes.shadow, routes.shadow_fraction),
        "canary": slot(routes.canary, routes.canary_fraction),
        "monitor": monitor.status() if monitor is not None else None,
        "mirror": {"dropped": c.router.mirror.dropped, "failed": c.router.mirror.failed},
        "pending_store_write": c.pending is not None,
    }


@router.get("/swaps", summary="Promotes and rollbacks, newest first",
            response_model=list[SwapOut], responses=_ERRORS)
def list_swaps(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 50):
    return [_swap_out(r) for r in _controller(request).history(limit)]
