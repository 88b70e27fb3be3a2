"""``serve()``: load an export, start uvicorn, warm up, serve until SIGTERM / Ctrl-C.

``reflex serve`` (reflex_serve/cli.py) calls :func:`serve`.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from reflex_serve.server.app import create_app
from reflex_serve.server.runner import bind_socket, uvicorn_config
from reflex_serve.server.settings import MIB, ServerSettings
from reflex_serve.server.state import ActHook

if TYPE_CHECKING:
    from reflex_serve.loop.config import LoopConfig
    from reflex_serve.router.config import RouterConfig
    from reflex_serve.storage.collector import CollectOptions

log = logging.getLogger(__name__)


def serve(
    export_dir: Path | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    num_steps: int | None = None,
    threads: int = 1,
    workers: int = 2,
    cache_mb: int = 256,
    max_body_mb: float = 8,
    warmup_iters: int = 3,
    log_level: str = "info",
    hooks: Sequence[ActHook] = (),
    collect: CollectOptions | None = None,
    admin_key: str | None = None,
    router_config: RouterConfig | None = None,
    store: str | None = None,
    data_dir: Path | None = None,
    distill: LoopConfig | None = None,
) -> None:
    """Serve ``export_dir`` over HTTP (``/act``, ``/health``, ``/metrics``) and websocket.

    Blocks until SIGINT or SIGTERM; on either, uvicorn stops accepting connections,
    finishes requests in flight (up to 10 s), runs the app's shutdown and returns.

    Args:
        export_dir: an export directory (ARCHITECTURE.md).
        host, port: where to listen (``port=0`` picks a free port; the URL is printed).
        api_key: require ``Authorization: Bearer <key>`` on /act and the websocket.
        num_steps: default Euler steps (the manifest's if None).
        threads: ONNX Runtime intra-op threads per session.
        workers: requests computed at once (act worker threads).
        cache_mb: prefix KV cache capacity in MiB (0 disables it).
        max_body_mb: largest request body / websocket frame, in MiB.
        warmup_iters: warm-up calls before /health reports ready.
        log_level: uvicorn / logging level name.
        hooks: called with each served ActRecord.
        collect: log every served call into the store (``--collect-data``); the store
            is opened (schema created or upgraded) before the port is bound, and every
            queued record is committed before this function returns.
        admin_key: run the versioning router with its admin API under this key
            (docs/router.md); its registry is the store of ``collect``, else ``store`` /
            ``data_dir``. The store's active version, when it has one, is served instead
            of ``export_dir``.
        router_config: the router's rules (defaults if None).
        store, data_dir: the router's store when there is no ``collect``.
        distill: run the self-distilling loop (docs/loop.md) with these settings; needs
            ``collect`` (it distills the traffic collected here) and ``admin_key`` (its
            worker promotes through the admin API; see :func:`generated_admin_key`).

    Raises:
        ExportError: if ``export_dir`` is not a valid export, misses a file, or its files
            do not match its manifest's digest.
        ServeError: ``host`` / ``port`` cannot be bound (the message names the flag).
        StoreError: if ``collect`` names a store that cannot be used.
        RouterError: the store's active version cannot be loaded here.
    """
    from reflex_serve.runtime.cache import PrefixCache
    from reflex_serve.runtime.policy import Policy

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cache = PrefixCache(int(cache_mb * MIB)) if cache_mb > 0 else None
    policy = Policy(export_dir, num_steps=num_steps, intra_op_threads=threads, cache=cache,
                    verify=True)
    settings = ServerSettings(
        api_key=api_key,
        num_steps=num_steps,
        max_body_bytes=int(max_body_mb * MIB),
        warmup_iters=warmup_iters,
        act_workers=workers,
        admin_key=admin_key,
    )
    collector = controller = opened = loop = None
    if distill is not None:
        if collect is None:
            raise ValueError("the distill loop needs data collection (--collect-data)")
        if admin_key is None:
            raise ValueError("the distill loop needs an admin key (see generated_admin_key)")
    if collect is not None:
        from reflex_serve.storage.collector import DataCollector

        collector = DataCollector.open(collect)
    if admin_key is not None:
        from reflex_serve.router import open_router
        from reflex_serve.storage.store import Store

        router_store = collector.store if collector is not None else None
        if router_store is None:
            router_store = opened = Store.open(store, data_dir)
        try:
            controller = open_router(policy, router_store, router_config, cache=cache,
                                     threads=threads, num_steps=num_steps)
        except Exception:
            for st in (opened, collector.store if collector is not None else None):
                if st is not None:
                    st.close()
            raise
        policy = controller.router.active
    if distill is not None:
        from reflex_serve.loop.scheduler import DistillLoop

        active = controller.router
        loop = DistillLoop(collector.store, distill, admin_key=admin_key,
                           teacher=lambda: (active.active.version, active.active.export_dir))
    app = create_app(policy, settings, hooks=hooks, collector=collector, router=controller,
                     distill=loop)
    try:
        sock = listen(host, port)
    except ServeError:
        for st in (opened, collector.store if collector is not None else None):
            if st is not None:
                st.close()
        raise
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    if loop is not None:
        loop.server_url = f"http://{loopback_host(host)}:{bound_port}"
    m = policy.manifest
    admin = "; admin API at /admin" if controller is not None else ""
    print(
        f"reflex-serve: model {policy.version} ({m.policy_kind}, {policy.num_steps} steps, "
        f"chunk {m.chunk_size}x{m.action_dim}) at http://{url_host}:{bound_port}  "
        f"(openpi websocket ws://{url_host}:{bound_port}/{admin})",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn_config(app, max_body_bytes=settings.max_body_bytes, log_level=log_level)
    )
    try:
        _run_until_signal(server, sock)
    finally:
        if collector is not None:
            collector.close()
            collector.store.close()
        if opened is not None:
            opened.close()
    print("reflex-serve: stopped", flush=True)


class ServeError(ValueError):
    """The server cannot start as asked; the message starts with the flag at fault."""


def listen(host: str, port: int) -> socket.socket:
    """:func:`~reflex_serve.server.runner.bind_socket`, its failures as :class:`ServeError`
    naming ``--port`` (in use, not allowed) or ``--host`` (not an address of this machine,
    unknown name)."""
    try:
        return bind_socket(host, port)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host}: {exc.strerror or exc}") from None
    except OverflowError as exc:
        raise ServeError(f"--port {port}: {exc}") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise ServeError(f"--port {port}: {reason}") from None
        raise ServeError(f"--host {host}: {reason}") from None


def generated_admin_key() -> str:
    """A random admin key for a loop started without ``--admin-key``: the admin API is
    then open to the loop's worker only (it gets the key in its environment)."""
    import secrets
    import sys

    print("reflex-serve: --distill-schedule without --admin-key: the admin API is enabled "
          "with a generated key that only the distill worker knows", file=sys.stderr,
          flush=True)
    return secrets.token_urlsafe(32)


def loopback_host(host: str) -> str:
    """How a process on this machine reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _run_until_signal(server: uvicorn.Server, sock) -> None:
    """Run uvicorn; after its graceful shutdown on SIGTERM / SIGINT, return normally.

    uvicorn re-raises the signal it caught once it has shut down; a no-op SIGTERM
    handler (restored afterwards) and catching KeyboardInterrupt make that a clean
    return, so the process exits 0 rather than by signal.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if main:
            signal.signal(signal.SIGTERM, previous)
