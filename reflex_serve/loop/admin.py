"""The worker's client of the serving process's admin API (loopback, admin key).

Promotion must happen in the server that holds the router, so the worker asks it over
HTTP; the URL and key come from the environment (never the command line)::

    REFLEX_LOOP_SERVER      http://127.0.0.1:PORT of the serving process
    REFLEX_LOOP_ADMIN_KEY   its admin key
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

SERVER_ENV = "REFLEX_LOOP_SERVER"
KEY_ENV = "REFLEX_LOOP_ADMIN_KEY"


class AdminError(RuntimeError):
    """The admin API answered with an unexpected status (the message has its body)."""


class AdminClient:
    """``/admin/...`` calls of one server.

    Args:
        url: the server's base URL. key: its admin key.
        timeout_s: per call; a promote loads and warms a version, so it is generous.
    """

    def __init__(self, url: str, key: str, timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {key}"})

    @classmethod
    def from_env(cls) -> AdminClient:
        """The client the scheduler set up for this worker (module docstring).

        Raises:
            AdminError: a variable is missing.
        """
        url, key = os.environ.get(SERVER_ENV), os.environ.get(KEY_ENV)
        if not url or not key:
            raise AdminError(f"{SERVER_ENV} and {KEY_ENV} must be set by the scheduler")
        return cls(url, key)

    def _call(self, method: str, path: str, ok: tuple[int, ...], **kw) -> dict[str, Any]:
        r = self._http.request(method, path, **kw)
        if r.status_code not in ok:
            raise AdminError(f"{method} {path} answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def register(self, export_dir: Path, *, actor: str, reason: str) -> dict[str, Any]:
        """Register an export directory (201 new, 200 known); the version's record."""
        return self._call("POST", "/admin/versions", (200, 201),
                          json={"path": str(Path(export_dir).resolve()), "actor": actor,
                                "reason": reason})

    def traffic(self, version: str, slot: str, fraction: float, *, actor: str,
                reason: str) -> dict[str, Any]:
        """Shadow or canary ``fraction`` for ``version`` (0 ends it)."""
        return self._call("POST", f"/admin/versions/{version}/{slot}", (200,),
                          json={"fraction": fraction, "actor": actor, "reason": reason})

    def version(self, version: str) -> dict[str, Any]:
        """One version with its transitions, swaps and shadow comparisons."""
        return self._call("GET", f"/admin/versions/{version}", (200,))

    def promote(self, version: str, *, actor: str, reason: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of a promote: 200 the swap, 409 refused (gates, conflict),
        422 load or warm-up failed."""
        r = self._http.post(f"/admin/versions/{version}/promote",
                            json={"actor": actor, "reason": reason})
        try:
            body = r.json()
        except ValueError:
            body = {"text": r.text[:500]}
        return r.status_code, body

    def close(self) -> None:
        self._http.close()
