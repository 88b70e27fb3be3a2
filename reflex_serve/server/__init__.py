"""The HTTP / websocket serving layer: ``create_app(policy, settings)`` and ``serve()``.

See :mod:`reflex_serve.server.app` for the routes, :mod:`reflex_serve.server.errors` for
the error model and :mod:`reflex_serve.server.codec` for the msgpack wire format.

Names are imported lazily, so that ``reflex_serve.client`` (which needs only the codec)
does not pull in FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerSettings", "WebsocketKeys", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from reflex_serve.server.app import create_app

        return create_app
    if name in ("ServerSettings", "WebsocketKeys"):
        from reflex_serve.server import settings

        return getattr(settings, name)
    if name == "serve":
        from reflex_serve.server.cli import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
