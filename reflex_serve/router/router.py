"""The in-process routing state: which loaded version answers which request.

:class:`VersionRouter` is the server's :class:`~reflex_serve.server.state.PolicyPicker`.
Its routes are one immutable :class:`Routes` value replaced atomically, so a request
reads a consistent set once (in :meth:`pick`) and finishes on the version that took it,
whatever happens to the routes meanwhile; a swap never waits for requests in flight.

- canary: an episode goes to the canary when ``bucket(episode_id) < fraction``, with a
  hash salted by the canary's digest: sticky across requests, replicas and restarts,
  and raising the fraction only adds episodes. Requests without an episode id are
  served by the active version.
- shadow: after a response, a ``fraction`` of the active version's calls is mirrored to
  the shadow candidate (:mod:`.shadow`).
- previous: after a promote, the replaced version stays loaded (instant rollback) and
  a share of the new version's calls is mirrored to it for the monitor.

Hooks (:meth:`on_served`, :meth:`on_error`) run on the event loop after each call and
are O(1): they count the active version's calls (its baseline for the next swap) and
feed the monitor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reflex_serve.router.config import RouterConfig
from reflex_serve.router.metrics import RouterMetrics
from reflex_serve.router.shadow import Comparison, Mirror, MirrorJob
from reflex_serve.router.stats import Baseline, VersionStats, action_limits

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from reflex_serve.router.monitor import Monitor
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.server.state import ActRecord

TRAFFIC_SLOTS = ("shadow", "canary")


@dataclass(frozen=True)
class Routes:
    """Loaded versions by role (a value: replaced whole, never mutated)."""

    active: Policy
    previous: Policy | None = None
    shadow: Policy | None = None
    shadow_fraction: float = 0.0
    canary: Policy | None = None
    canary_fraction: float = 0.0

    def loaded(self) -> dict[str, Policy]:
        """Short version -> policy, for every loaded version."""
        out = {}
        for policy in (self.active, self.previous, self.shadow, self.canary):
            if policy is not None:
                out.setdefault(policy.version, policy)
        return out

    def role_of(self, version: str) -> str | None:
        for role in ("active", "canary", "shadow", "previous"):
            policy = getattr(self, role)
            if policy is not None and policy.version == version:
                return role
        return None


def canary_bucket(episode_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, episode id)."""
    h = hashlib.blake2b(f"{salt}\x00{episode_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


class VersionRouter:
    """Routes requests to loaded versions; swaps them atomically.

    Args:
        active: the version serving at start.
        config: the router settings.
        num_steps: the server's default Euler steps (None: each version's own), used by
            mirrored calls as by served ones.
        write_comparisons: where mirrored comparisons go (the store), or None.
    """

    def __init__(self, active: Policy, config: RouterConfig | None = None, *,
                 num_steps: int | None = None,
                 write_comparisons: Callable[[list[dict]], None] | None = None) -> None:
        self.config = config or RouterConfig()
        self.num_steps = num_steps
        self._routes = Routes(active)
        self._lock = threading.RLock()
        self._stats = self._new_stats(active)
        self.monitor: Monitor | None = None
        self.revision = 0
        self.wake = threading.Event()
        self.metrics = RouterMetrics()
        self.mirror = Mirror(self.config.shadow, self._on_comparison, write_comparisons)
        self.metrics.bind(self)

    def _new_stats(self, policy: Policy) -> VersionStats:
        limits = action_limits(policy, None, self.config.action_limits.margin)
        return VersionStats(policy.version, limits, self.config.monitor.baseline_requests)

    # -- PolicyPicker ---------------------------------------------------------------------

    @property
    def routes(self) -> Routes:
        return self._routes

    @property
    def active(self) -> Policy:
        return self._routes.active

    def pick(self, connection: HTTPConnection | None = None,
             episode_id: str | None = None) -> Policy:
        """The canary for a canaried episode, else the active version."""
        routes = self._routes
        if (routes.canary is not None and isinstance(episode_id, str) and episode_id
                and canary_bucket(episode_id, routes.canary.manifest.digest)
                < routes.canary_fraction):
            return routes.canary
        return routes.active

    def policies(self) -> Sequence[Policy]:
        return tuple(self._routes.loaded().values())

    def find(self, version: str) -> Policy | None:
        """A loaded version by short id."""
        return self._routes.loaded().get(version)

    # -- hooks (event loop, O(1)) ---------------------------------------------------------

    def on_served(self, record: ActRecord) -> None:
        """Count a served chunk; mirror it to the shadow / the previous version."""
        routes, result = self._routes, record.result
        if result.version != routes.active.version:
            return
        self._stats.add_success(record.server_ms, result.actions)
        monitor = self.monitor
        if monitor is not None and monitor.new_version == result.version:
            monitor.observe_success(record.server_ms, result.actions)
            if (routes.previous is not None
                    and random.random() < self.config.divergence.mirror_fraction):
                self._submit("monitor", result_policy=routes.active, other=routes.previous,
                             record=record)
        if routes.shadow is not None and random.random() < routes.shadow_fraction:
            self._submit("shadow", result_policy=routes.active, other=routes.shadow,
                         record=record)

    def on_error(self, status: int, version: str | None) -> None:
        """Count a server fault (5xx) of the active version."""
        if status < 500 or version != self._routes.active.version:
            return
        self._stats.add_error()
        monitor = self.monitor
        if monitor is not None and monitor.new_version == version:
            monitor.observe_error()

    def _submit(self, mode: str, *, result_policy: Policy, other: Policy,
                record: ActRecord) -> None:
        candidate, reference = ((other, result_policy) if mode == "shadow"
                                else (result_policy, other))
        num_steps = record.params.num_steps or self.num_steps
        self.mirror.submit(MirrorJob(mode, candidate, reference, record.observation,
                                     record.params, record.result, record.request_id, num_steps))

    def _on_comparison(self, job: MirrorJob, result: Comparison) -> None:
        self.metrics.comparisons.labels(job.mode).inc()
        self.metrics.divergence.labels(job.mode).observe(min(result.divergence, 1e6))
        monitor = self.monitor
        if (job.mode == "monitor" and monitor is not None
                and monitor.new_version == result.candidate_version):
            monitor.observe_divergence(result.divergence)

    # -- changes (atomic) -----------------------------------------------------------------

    def baseline(self) -> Baseline:
        """The active version's last calls."""
        return self._stats.snapshot()

    def switch(self, new: Policy, *, keep_previous: bool) -> Baseline:
        """Make ``new`` the active version at once; returns the old one's baseline.

        The old version becomes ``previous`` (kept loaded) when ``keep_previous``; a
        shadow or canary that is ``new`` leaves its slot.
        """
        with self._lock:
            routes = self._routes
            baseline = self._stats.snapshot()
            changes = {"active": new, "previous": routes.active if keep_previous else None}
            for slot in TRAFFIC_SLOTS:
                policy = getattr(routes, slot)
                if policy is not None and policy.version == new.version:
                    changes.update({slot: None, f"{slot}_fraction": 0.0})
            self._stats = self._new_stats(new)
            self._routes = dataclasses.replace(routes, **changes)
            return baseline

    def set_traffic(self, slot: str, policy: Policy | None, fraction: float) -> None:
        """Put ``policy`` (None: nobody) in the shadow or canary slot with ``fraction``."""
        if slot not in TRAFFIC_SLOTS:
            raise ValueError(f"slot must be one of {TRAFFIC_SLOTS}, got {slot!r}")
        with self._lock:
            routes = self._routes
            changes = {slot: policy, f"{slot}_fraction": fraction if policy is not None else 0.0}
            other = TRAFFIC_SLOTS[1 - TRAFFIC_SLOTS.index(slot)]
            held = getattr(routes, other)
            if policy is not None and held is not None and held.version == policy.version:
                changes.update({other: None, f"{other}_fraction": 0.0})
            self._routes = dataclasses.replace(routes, **changes)

    def keep_previous(self, policy: Policy) -> None:
        """Hold ``policy`` loaded as the previous version (a replica adopting a window)."""
        with self._lock:
            self._routes = dataclasses.replace(self._routes, previous=policy)

    def drop_previous(self) -> None:
        """Unload the previous version (its sessions go once the last call on it ends)."""
        with self._lock:
            self._routes = dataclasses.replace(self._routes, previous=None)

    def start_monitor(self, monitor: Monitor | None) -> None:
        """Judge the active version with ``monitor`` (None: stop monitoring)."""
        self.monitor = monitor
        self.wake.set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.mirror.start()

    def close(self) -> None:
        self.mirror.close()
