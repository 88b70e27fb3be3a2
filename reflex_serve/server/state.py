"""The serving state of one app: which policy answers, warm-up, workers, hooks, metrics.

Routers reach it as ``request.app.state.reflex`` (:func:`get_state`). Two seams are here
for later work:

- :class:`PolicyPicker`: ``pick(connection, episode_id) -> Policy``. The default serves
  one policy; the versioning router (:mod:`reflex_serve.router`) plugs in its own.
- ``hooks``: callables given an :class:`ActRecord` after each served chunk, off the
  response path (a data collector enqueues it for its writer thread). They run on the
  event loop, after the response has been sent: a hook must be O(1) and never block
  (no I/O, no encoding). A hook that raises is logged and ignored.
- ``error_hooks``: callables given ``(status, version)`` for each failed call (the version
  is None when no policy was picked), under the same rules.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
from starlette.requests import HTTPConnection

from reflex_serve.runtime.types import ActResult, InvalidObservation, Observation
from reflex_serve.server.errors import ApiError, ErrorCode
from reflex_serve.server.metrics import ServerMetrics
from reflex_serve.server.observations import ActParams
from reflex_serve.server.settings import ServerSettings

if TYPE_CHECKING:
    from reflex_serve.runtime.policy import Policy

log = logging.getLogger(__name__)
T = TypeVar("T")


class PolicyPicker(Protocol):
    """Chooses the policy that answers a request."""

    def pick(self, connection: HTTPConnection, episode_id: str | None = None) -> Policy:
        """The policy for this request (``episode_id``: the controller's, if it sent one;
        a canary is chosen per episode)."""

    def policies(self) -> Sequence[Policy]:
        """Every policy currently served (for warm-up, /health and /metrics)."""

    @property
    def active(self) -> Policy:
        """The version that answers requests no canary takes (``/metrics``:
        ``reflex_active_version_info``)."""


class SinglePolicy:
    """A :class:`PolicyPicker` that always answers with one policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def pick(self, connection: HTTPConnection, episode_id: str | None = None) -> Policy:
        return self.policy

    def policies(self) -> Sequence[Policy]:
        return (self.policy,)

    @property
    def active(self) -> Policy:
        return self.policy


@dataclass(frozen=True)
class ActRecord:
    """One served policy call, as handed to hooks.

    Attributes:
        request_id: the id returned to the client.
        transport: ``"http_json"``, ``"http_msgpack"`` or ``"websocket"``.
        received_at: Unix time the request arrived, in seconds.
        observation: the decoded observation (uint8 images, float32 state).
        params: episode id, step, num_steps and seed of the request.
        result: what the policy returned (actions, timings, version).
        server_ms: request received to response encoded, in ms.
        client: the peer's ``host:port``, if known.
    """

    request_id: str
    transport: str
    received_at: float
    observation: Observation
    params: ActParams
    result: ActResult
    server_ms: float
    client: str | None = None


ActHook = Callable[[ActRecord], None]
ErrorHook = Callable[[int, "str | None"], None]


class ServingState:
    """Everything the routers share. Built by ``create_app``; one per app."""

    def __init__(
        self,
        picker: PolicyPicker,
        settings: ServerSettings,
        hooks: Sequence[ActHook] = (),
        error_hooks: Sequence[ErrorHook] = (),
    ) -> None:
        self.picker = picker
        self.settings = settings
        self.hooks: list[ActHook] = list(hooks)
        self.error_hooks: list[ErrorHook] = list(error_hooks)
        self._ready = threading.Event()
        # a picker without ``active`` exports no reflex_active_version_info
        self.metrics = ServerMetrics(
            picker.policies, self._ready.is_set, lambda: getattr(picker, "active", None)
        )
        self._executor: ThreadPoolExecutor | None = None

    # -- policy selection and calls -------------------------------------------------------

    def pick(self, connection: HTTPConnection, episode_id: object = None) -> Policy:
        """The policy that answers ``connection`` (see :class:`PolicyPicker`); a
        non-string ``episode_id`` (the body is not validated yet) counts as none."""
        if not isinstance(episode_id, str):
            plain_int = isinstance(episode_id, int) and not isinstance(episode_id, bool)
            episode_id = str(episode_id) if plain_int else None
        return self.picker.pick(connection, episode_id)

    def observe_error(self, status: int, transport: str, version: str | None = None) -> None:
        """Count a failed call in the metrics and tell the error hooks."""
        self.metrics.observe_error(status, transport, version)
        for hook in self.error_hooks:
            try:
                hook(status, version)
            except Exception:
                log.exception("error hook %r failed", hook)

    def act(self, policy: Policy, obs: Observation, params: ActParams) -> ActResult:
        """Call ``policy.act`` with the request's options (blocking; run in a worker).

        A chunk with NaN or Inf is never sent to a robot: it is a fault of the version
        (counted against it, so the router's error signal sees it), not of the request.

        Raises:
            ApiError: 422 if the policy rejects the observation; 500
                ``non_finite_actions`` if the chunk it computed is not finite.
        """
        try:
            result = policy.act(
                obs, num_steps=params.num_steps or self.settings.num_steps, seed=params.seed
            )
        except InvalidObservation as exc:
            raise ApiError.from_invalid_observation(exc) from None
        if not np.isfinite(result.actions).all():
            log.error("version %s produced non-finite actions; the chunk was not sent", policy.version)
            raise ApiError(
                500,
                f"model version {policy.version} produced non-finite actions (NaN or Inf) for "
                "this observation; no chunk was sent",
                code=ErrorCode.NON_FINITE_ACTIONS,
            )
        return result

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run blocking ``fn(*args)`` on the act workers, off the event loop.

        The workers are started on first use (and again after :meth:`close`, so an app
        can be served more than once).
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.settings.act_workers, thread_name_prefix="reflex-act"
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run_hooks_after_response(self, record: ActRecord) -> None:
        """:meth:`run_hooks` as an async background task: it runs on the event loop,
        with no thread hop (the hooks are O(1))."""
        self.run_hooks(record)

    def run_hooks(self, record: ActRecord) -> None:
        """Give ``record`` to every hook; failures are logged, never raised."""
        for hook in self.hooks:
            try:
                hook(record)
            except Exception:
                log.exception("act hook %r failed", hook)

    # -- warm-up ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether warm-up is done (``/health`` answers 200)."""
        return self._ready.is_set()

    def mark_ready(self) -> None:
        """Report ready on ``/health`` (done by :meth:`warm_up`)."""
        self._ready.set()

    def warm_up(self) -> None:
        """Warm every served policy (blocking), then mark the app ready.

        A failed warm-up is logged and leaves the app not ready (``/health`` stays 503).
        """
        start = time.perf_counter()
        try:
            if self.settings.warmup_iters:
                for policy in self.picker.policies():
                    policy.warmup(self.settings.warmup_iters)
        except Exception:
            log.exception("warm-up failed; /health stays 503")
            return
        log.info("warm-up done in %.0f ms", (time.perf_counter() - start) * 1e3)
        self.mark_ready()

    def close(self) -> None:
        """Stop the act workers (waits for calls in flight)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def peer(connection: HTTPConnection) -> str | None:
    """``host:port`` of the client of ``connection``, if known."""
    client = connection.client
    return f"{client.host}:{client.port}" if client else None


def get_state(connection: HTTPConnection) -> ServingState:
    """The :class:`ServingState` of the app serving ``connection``."""
    return connection.app.state.reflex
