"""``ReflexClient``: call a reflex-serve ``/act`` endpoint like an in-process ``Policy``.

It satisfies the simulator's ActClient protocol (``act(obs, *, episode_id, step,
num_steps) -> ActResult`` and ``n_action_steps``), so closed-loop evaluation can run
against a live server or an in-process policy alike::

    with ReflexClient("http://127.0.0.1:8000", api_key="...") as client:
        client.wait_ready()
        result = client.act(obs, episode_id="ep-1", step=0)
        result.actions          # float32 (chunk_size, action_dim)

One persistent HTTP/1.1 connection (keep-alive) is reused across calls. msgpack (the
default) sends images as raw uint8 arrays; JSON sends them as base64 PNG.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any, Self

import httpx
import numpy as np
from PIL import Image

from reflex_serve.runtime.types import ActResult, InvalidObservation, Observation
from reflex_serve.server import codec

JSON = "application/json"


class ReflexClientError(RuntimeError):
    """The server could not be reached or answered something unreadable."""


class ReflexServerError(ReflexClientError):
    """The server answered with an error (other than a 422, which raises
    :class:`InvalidObservation` like an in-process ``Policy.act``).

    Attributes:
        status: HTTP status code.
        code: the error model's ``code`` (``"unauthorized"``, ``"payload_too_large"``...).
        field: the offending field, if any.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def encode_png_base64(image: np.ndarray) -> str:
    """Base64 PNG of a uint8 (H, W, 3) image (lossless, fast compression)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class ReflexClient:
    """HTTP client of one reflex-serve server.

    Args:
        base_url: e.g. ``"http://127.0.0.1:8000"``.
        api_key: sent as ``Authorization: Bearer <key>``.
        timeout_s: per-request timeout in seconds.
        use_msgpack: msgpack bodies (fast, default) or JSON with base64 PNG images.
        report_outcomes: report each finished episode's success to the server
            (:meth:`end_episode`, called by closed-loop evaluation): the versioning
            router's episode-success signal reads them.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 10.0,
        use_msgpack: bool = True,
        report_outcomes: bool = False,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.use_msgpack = use_msgpack
        self.report_outcomes = report_outcomes
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)
        self._health: dict[str, Any] | None = None

    # -- the ActClient protocol ---------------------------------------------------------

    def act(
        self,
        obs: Observation,
        *,
        episode_id: str | None = None,
        step: int | None = None,
        num_steps: int | None = None,
        seed: int | None = None,
    ) -> ActResult:
        """Ask the server for an action chunk.

        Returns:
            :class:`ActResult` with writable float32 actions (chunk_size, action_dim);
            ``extra`` holds ``server_ms``, ``rtt_ms``, ``request_id``, ``n_action_steps``.

        Raises:
            InvalidObservation: the server rejected a field (HTTP 422).
            ReflexServerError: any other error response.
            ReflexClientError: the server was unreachable or timed out.
        """
        body: dict[str, Any] = {"state": obs.state, "instruction": obs.instruction}
        for key, value in (
            ("episode_id", episode_id),
            ("step", step),
            ("num_steps", num_steps),
            ("seed", seed),
        ):
            if value is not None:
                body[key] = value
        if self.use_msgpack:
            body["images"] = {name: np.asarray(img) for name, img in obs.images.items()}
            content, media = codec.packb(body), codec.CONTENT_TYPE
        else:
            body["images"] = {name: encode_png_base64(img) for name, img in obs.images.items()}
            body["state"] = np.asarray(obs.state, dtype=np.float64).tolist()
            content, media = json.dumps(body, separators=(",", ":")).encode(), JSON
        start = time.perf_counter()
        response = self._request(
            "POST", "/act", content=content, headers={"Content-Type": media, "Accept": media}
        )
        rtt_ms = (time.perf_counter() - start) * 1e3
        data = self._decode(response)
        if response.status_code != 200:
            raise self._error(response.status_code, data)
        timings = data["timings"]
        return ActResult(
            actions=np.array(data["actions"], dtype=np.float32),
            num_steps=int(data["num_steps"]),
            prefix_ms=float(timings["prefix_ms"]),
            expert_ms=float(timings["expert_ms"]),
            total_ms=float(timings["total_ms"]),
            cache_hit=bool(data["cache_hit"]),
            version=str(data["model_version"]),
            extra={
                "server_ms": float(timings["server_ms"]),
                "rtt_ms": rtt_ms,
                "request_id": data["request_id"],
                "n_action_steps": int(data["n_action_steps"]),
            },
        )

    @property
    def n_action_steps(self) -> int:
        """Actions to execute per chunk, from ``/health`` (fetched once)."""
        if self._health is None:
            self.health()
        return int(self._health["n_action_steps"])

    def report_outcome(self, episode_id: str, success: bool, *, reward: float | None = None,
                       note: str | None = None) -> dict[str, Any]:
        """``POST /v1/episodes/{episode_id}/outcome`` (the server must collect data).

        Raises:
            ReflexServerError: an error response (404: unknown episode, or no collection).
        """
        body: dict[str, Any] = {"outcome": "success" if success else "failure"}
        if reward is not None:
            body["reward"] = reward
        if note is not None:
            body["note"] = note
        response = self._request("POST", f"/v1/episodes/{episode_id}/outcome", json=body)
        data = self._decode(response)
        if response.status_code != 200:
            raise self._error(response.status_code, data)
        return data

    def end_episode(self, episode_id: str, *, success: bool, steps: int) -> None:
        """Report the outcome when ``report_outcomes`` is set (closed-loop evaluation
        calls this after each episode)."""
        if self.report_outcomes:
            self.report_outcome(episode_id, success, note=f"{steps} steps")

    # -- health --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The ``/health`` body (``status`` is ``"ok"`` or ``"warming_up"``).

        Raises:
            ReflexServerError: on a status other than 200 / 503.
        """
        response = self._request("GET", "/health")
        data = self._decode(response)
        if response.status_code not in (200, 503):
            raise self._error(response.status_code, data)
        self._health = data
        return data

    def wait_ready(self, timeout_s: float = 60.0, interval_s: float = 0.1) -> dict[str, Any]:
        """Poll ``/health`` until it reports ready (connection errors are retried).

        Raises:
            ReflexClientError: if not ready within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                data = self.health()
                if data.get("status") == "ok":
                    return data
            except ReflexClientError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise ReflexClientError(f"server not ready after {timeout_s} s")
            time.sleep(interval_s)

    # -- plumbing ------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ReflexClientError(f"{method} {self._http.base_url}{path} failed: {exc}") from exc

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            if codec.is_msgpack(response.headers.get("content-type")):
                return codec.unpackb(response.content)
            return response.json()
        except ValueError as exc:
            raise ReflexClientError(
                f"unreadable response (HTTP {response.status_code}): {exc}"
            ) from exc

    @staticmethod
    def _error(status: int, data: Any) -> Exception:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        code = error.get("code", "unknown")
        message = error.get("message", str(data))
        field = error.get("field")
        if status == 422 and field:
            prefix = f"{field}: "
            return InvalidObservation(field, message.removeprefix(prefix))
        return ReflexServerError(status, code, message, field)

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalClient:
    """The ActClient protocol over an in-process :class:`~reflex_serve.runtime.policy.Policy`.

    Closed-loop evaluation of an export without a server: same observations, same
    ``ActResult``, no transport.
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.n_action_steps = policy.manifest.n_action_steps

    def act(self, obs: Observation, *, episode_id: str | None = None, step: int | None = None,
            num_steps: int | None = None, seed: int | None = None) -> ActResult:
        """``policy.act(obs, num_steps=..., seed=...)``; episode_id and step are ignored."""
        return self.policy.act(obs, num_steps=num_steps, seed=seed)
