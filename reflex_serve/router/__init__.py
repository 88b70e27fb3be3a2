"""The versioning router: registry, shadow, canary, warm-swap, post-swap monitor, rollback.

    config.py     RouterConfig: the monitor's rules, mirroring, warm-up, sync (TOML)
    registry.py   versions by digest in the store, their lifecycle and gate verdicts
    router.py     VersionRouter: the PolicyPicker; atomic routes, canary, hooks
    shadow.py     mirrored calls off the response path, compared on the same noise
    stats.py      Wilson bounds, binomial tail, two-proportion test, action limits
    monitor.py    the post-swap monitor: five signals judged at evidence milestones
    promote.py    Controller: prepare (check, load, warm), promote; its other decisions in
    rollback.py   roll back (monitor or operator), keep at the end of a window
    traffic.py    shadow and canary slots
    sync.py       replicas following the store; the sync and monitor threads
    metrics.py    Prometheus metrics
    cli.py        reflex models list | register | shadow | canary | promote | rollback

:func:`open_router` builds the whole thing for ``reflex serve --admin-key``;
docs/router.md describes the lifecycle, the admin API and the rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reflex_serve.router.config import RouterConfig
    from reflex_serve.router.promote import Controller
    from reflex_serve.runtime.cache import PrefixCache
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.storage.store import Store


def open_router(policy: Policy, store: Store, config: RouterConfig | None = None, *,
                cache: PrefixCache | None = None, threads: int = 1,
                num_steps: int | None = None) -> Controller:
    """A router over ``store`` that starts from ``policy`` (or from the store's active
    version, which wins: see :func:`reflex_serve.router.sync.bootstrap`).

    Raises:
        RouterError: the store's active version cannot be loaded here.
    """
    from reflex_serve.router.promote import Controller
    from reflex_serve.router.router import VersionRouter
    from reflex_serve.router.sync import bootstrap
    from reflex_serve.storage.routing import add_comparisons

    router = VersionRouter(policy, config, num_steps=num_steps,
                           write_comparisons=lambda rows: add_comparisons(store, rows))
    controller = Controller(router, store, cache=cache if cache is not None else policy.cache,
                            threads=threads)
    bootstrap(controller)
    return controller
