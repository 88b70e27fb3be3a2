"""Run an app under uvicorn: in the foreground (``reflex serve``) or in a background thread
(tests, benchmarks, closed-loop evaluation over real HTTP).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Self

import uvicorn
from fastapi import FastAPI


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0`` picks a free one).

    Raises:
        OSError: the address is in use or not this machine's (the socket is closed).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def uvicorn_config(
    app: FastAPI, *, max_body_bytes: int, log_level: str = "info", access_log: bool = False
) -> uvicorn.Config:
    """The uvicorn settings this server runs with.

    ``ws_max_size`` is tied to ``max_body_bytes`` so a websocket frame has the same limit
    as an HTTP body; access logging is off by default (it costs ~0.1 ms a request).
    """
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        ws_max_size=max_body_bytes,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )


class BackgroundServer:
    """A real uvicorn server for ``app`` in a daemon thread, on an ephemeral port.

    Usage::

        with BackgroundServer(app) as server:
            httpx.get(server.url + "/health")

    Args:
        app: the ASGI app.
        host: interface to bind.
        port: 0 for a free port.
        max_body_bytes: websocket frame limit; default: the app's ``max_body_bytes``.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int | None = None,
        log_level: str = "warning",
    ) -> None:
        self._sock = bind_socket(host, port)
        self.host = host
        self.port = self._sock.getsockname()[1]
        if max_body_bytes is None:
            max_body_bytes = app.state.reflex.settings.max_body_bytes
        config = uvicorn_config(app, max_body_bytes=max_body_bytes, log_level=log_level)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name=f"uvicorn-{self.port}",
        )

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port``."""
        return f"ws://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> Self:
        """Start serving; returns once uvicorn accepts connections.

        Raises:
            RuntimeError: if the server did not start within ``timeout_s``.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        """Shut down gracefully (lifespan shutdown included) and join the thread."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn_server(export_dir, *args: str, timeout_s: float = 60.0, log_path=None):
    """Start ``reflex serve EXPORT_DIR --port 0 ARGS...`` as a subprocess and wait until
    its ``/health`` answers 200 (benchmarks and process-level tests).

    ``log_path``: write the server's stderr there (a long-running server must not fill
    an unread pipe); by default it is a pipe, read in the error message.

    Returns:
        (the ``subprocess.Popen``, its base URL ``http://127.0.0.1:PORT``). Stop it with
        SIGTERM (a graceful drain) or SIGKILL.

    Raises:
        RuntimeError: the server exited or printed no start banner (its stderr is in the
            message), or was not ready within ``timeout_s`` seconds.
    """
    import os
    import subprocess
    import sys

    import httpx

    cmd = [sys.executable, "-m", "reflex_serve.cli", "serve", str(export_dir), "--port", "0",
           "--log-level", "warning", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w") if log_path is not None else None  # noqa: SIM115 - the child owns it
    stderr = log if log is not None else subprocess.PIPE
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    if log is not None:
        log.close()
    banner = proc.stdout.readline()
    if "reflex-serve: model" not in banner:
        proc.kill()
        err = proc.stderr.read() if log is None else Path(log_path).read_text()
        raise RuntimeError(f"reflex serve did not start: {banner!r} {err}")
    url = banner.split(" at ")[1].split()[0]
    deadline = time.monotonic() + timeout_s
    while httpx.get(url + "/health").status_code != 200:
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"reflex serve at {url} not ready after {timeout_s} s")
        time.sleep(0.05)
    return proc, url
