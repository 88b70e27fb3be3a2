"""The FastAPI app: ``create_app(policy, settings)``.

Routes (one router per concern, in :mod:`reflex_serve.server.routes`):

    POST /act            observation -> action chunk (JSON or msgpack)    [API key]
    GET  /health         503 while warming up, then 200; model summary
    GET  /healthz        openpi-style plain "OK" probe
    GET  /metrics        Prometheus text
    WS   /  and  /ws     the openpi websocket protocol                    [API key]
    GET  /openapi.json   the contract: request, response and error models
    POST /v1/episodes/{episode_id}/outcome   with data collection only       [API key]
    /admin/...           the versioning router's admin API, with a router   [admin key]
                         (without one, every /admin path answers 403)
    /admin/distill/...   the self-distilling loop's runs, with a loop       [admin key]

Routers find everything through :func:`reflex_serve.server.state.get_state`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from reflex_serve.server.auth import (
    admin_disabled,
    loop_disabled,
    require_admin_key,
    require_api_key,
)
from reflex_serve.server.errors import install_error_handlers
from reflex_serve.server.routes import act, health, metrics, websocket
from reflex_serve.server.schemas import ActRequest
from reflex_serve.server.settings import ServerSettings
from reflex_serve.server.state import ActHook, PolicyPicker, ServingState, SinglePolicy

if TYPE_CHECKING:
    from reflex_serve.loop.scheduler import DistillLoop
    from reflex_serve.router.promote import Controller
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.storage.collector import DataCollector

log = logging.getLogger(__name__)
ADMIN_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def create_app(
    policy: Policy | None,
    settings: ServerSettings | None = None,
    *,
    picker: PolicyPicker | None = None,
    hooks: Sequence[ActHook] = (),
    collector: DataCollector | None = None,
    router: Controller | None = None,
    distill: DistillLoop | None = None,
) -> FastAPI:
    """Build the serving app for one policy (or for a custom ``picker``).

    Args:
        policy: the policy to serve; ignored when ``picker`` is given (pass ``None``).
        settings: server settings; defaults to :class:`ServerSettings()`.
        picker: chooses the policy per request (a versioning router); default: always
            ``policy``.
        hooks: called with an :class:`~reflex_serve.server.state.ActRecord` after each
            served chunk, off the response path (data collection).
        collector: log every served call into a store (``--collect-data``).
        router: the versioning router (:func:`reflex_serve.router.open_router`): it
            picks the version of each request, and the admin API is mounted.
        distill: the self-distilling loop (:class:`~reflex_serve.loop.scheduler.DistillLoop`,
            needs ``router``): started and stopped with the app; ``/admin/distill`` is
            mounted.

    On startup the app warms the served policies in a background thread
    (``settings.warmup_iters`` calls each) and ``/health`` answers 503 until that is done;
    ``/act`` serves meanwhile. The state is at ``app.state.reflex``.
    """
    settings = settings or ServerSettings()
    error_hooks = []
    if router is not None:
        picker = router.router
        hooks = [*hooks, router.router.on_served]
        error_hooks.append(router.router.on_error)
    if picker is None:
        if policy is None:
            raise ValueError("create_app needs a policy or a picker")
        picker = SinglePolicy(policy)
    if collector is not None:
        hooks = [*hooks, collector.hook]
    state = ServingState(picker, settings, hooks, error_hooks)
    if collector is not None:
        collector.writer.export_metrics(state.metrics.registry)
    if router is not None:
        router.router.metrics.export(state.metrics.registry)
    gate_store = collector.store if collector is not None else getattr(router, "store", None)
    if gate_store is not None:  # the latest gate results, read from the store at scrape time
        from reflex_serve.gates.metrics import GateCollector
        from reflex_serve.loop.metrics import DistillCollector

        state.metrics.registry.register(GateCollector(gate_store))
        state.metrics.registry.register(DistillCollector(
            gate_store, distill.config.schedule_name if distill is not None else "distill"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if collector is not None:
            collector.start(picker.policies())
        if router is not None:
            router.start()
        if distill is not None:
            distill.start()
        warm = asyncio.get_running_loop().run_in_executor(None, state.warm_up)
        try:
            yield
        finally:
            await warm
            if distill is not None:
                await asyncio.get_running_loop().run_in_executor(None, distill.close)
            if router is not None:
                await asyncio.get_running_loop().run_in_executor(None, router.close)
            state.close()
            if collector is not None:
                await asyncio.get_running_loop().run_in_executor(None, collector.close)

    app = FastAPI(
        title="reflex-serve",
        summary="Action chunks from a flow-matching VLA policy.",
        version=_package_version(),
        lifespan=lifespan,
    )
    app.state.reflex = state
    app.state.collector = collector
    app.state.router = router
    app.state.distill = distill
    install_error_handlers(app)
    auth = [Depends(require_api_key)] if settings.api_key else []
    app.include_router(act.router, dependencies=auth)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(websocket.router)
    if collector is not None:
        from reflex_serve.server.routes import episodes

        app.include_router(episodes.router, dependencies=auth)
    if router is not None:
        from reflex_serve.server.routes import admin

        app.include_router(admin.router, dependencies=[Depends(require_admin_key)])
    else:  # /admin and /admin/... (distill too) answer 403 saying how to enable them
        for path in ("/admin", "/admin/{path:path}"):
            app.add_api_route(path, admin_disabled, methods=ADMIN_METHODS,
                              include_in_schema=False)
    if distill is not None:
        if router is None:
            raise ValueError("the distill loop needs the versioning router (an admin key)")
        from reflex_serve.server.routes import distill as distill_routes

        app.include_router(distill_routes.router, dependencies=[Depends(require_admin_key)])
    elif router is not None:  # a router without a loop: say how to turn it on
        for path in ("/admin/distill", "/admin/distill/{path:path}"):
            app.add_api_route(path, loop_disabled, methods=ADMIN_METHODS, include_in_schema=False,
                              dependencies=[Depends(require_admin_key)])
    _document_request_models(app)
    return app


def _document_request_models(app: FastAPI) -> None:
    """Add :class:`ActRequest` (parsed by hand, so FastAPI cannot see it) to the schema."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            request = ActRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(request.pop("$defs", {}))
            components["ActRequest"] = request
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _package_version() -> str:
    try:
        return version("reflex-serve")
    except PackageNotFoundError:
        return "0+unknown"
