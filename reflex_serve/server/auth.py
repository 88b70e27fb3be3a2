"""API-key authentication: the /act key and, apart from it, the admin key.

Accepted header forms: ``Authorization: Bearer <key>`` and openpi's
``Authorization: Api-Key <key>`` (what ``openpi_client.WebsocketClientPolicy(api_key=...)``
sends). Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from reflex_serve.server.errors import ApiError
from reflex_serve.server.metrics import http_transport
from reflex_serve.server.state import get_state

_SCHEMES = ("bearer", "api-key")
ADMIN_DISABLED = ("the admin API is disabled on this server: start `reflex serve` with "
                  "--admin-key KEY (or $REFLEX_ADMIN_KEY)")
_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <api key>` (openpi's `Api-Key <key>` also works).",
)


def authorized(expected: str | None, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header value carries the ``expected`` key.

    Always true when no key is configured (``expected`` is None).
    """
    if expected is None:
        return True
    if not authorization:
        return False
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() not in _SCHEMES:
        return False
    return hmac.compare_digest(key.strip().encode(), expected.encode())


async def require_api_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """FastAPI dependency: 401 unless the request carries the configured API key.

    ``_credentials`` is there to document the Bearer scheme in OpenAPI; the header is
    parsed by :func:`authorized` so that openpi's ``Api-Key`` scheme works too.
    """
    state = get_state(request)
    if authorized(state.settings.api_key, request.headers.get("authorization")):
        return
    state.metrics.observe_error(401, http_transport(request.headers.get("content-type")))
    raise ApiError(
        401, "missing or invalid API key", headers={"WWW-Authenticate": 'Bearer realm="reflex"'}
    )


LOOP_DISABLED = ("the self-distilling loop is off on this server: start `reflex serve` with "
                 "--collect-data --distill-schedule SPEC (docs/loop.md)")


async def loop_disabled(request: Request) -> None:
    """The handler of ``/admin/distill/...`` on a router without a loop: 404 saying how
    to turn the loop on (after the admin key check)."""
    raise ApiError(404, LOOP_DISABLED)


async def admin_disabled(request: Request) -> None:
    """The handler of every ``/admin/...`` path of a server without an admin key: 403."""
    raise ApiError(403, ADMIN_DISABLED)


async def require_admin_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """FastAPI dependency of ``/admin/...``: 403 when the server has no admin key, 401
    unless the request carries it (the /act key does not open the admin API)."""
    expected = get_state(request).settings.admin_key
    if expected is None:
        raise ApiError(403, ADMIN_DISABLED)
    if not authorized(expected, request.headers.get("authorization")):
        raise ApiError(
            401, "missing or invalid admin key",
            headers={"WWW-Authenticate": 'Bearer realm="reflex-admin"'},
        )
