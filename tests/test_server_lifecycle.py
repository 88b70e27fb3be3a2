"""Warm-up gating of /health, act hooks, and `serve()` as a process stopped by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from reflex_serve.export.manifest import ExportError
from reflex_serve.runtime.policy import Policy
from reflex_serve.server import codec
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.server.settings import ServerSettings
from reflex_serve.server.state import ActRecord

MSGPACK = {"Content-Type": "application/msgpack"}


def act_body(**extra) -> bytes:
    return codec.packb(
        {
            "images": {"corner2": np.zeros((64, 64, 3), np.uint8)},
            "state": np.zeros(39, np.float32),
            "instruction": "go",
            **extra,
        }
    )


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_health_is_503_until_warm_up_is_done_then_200(tiny_export):
    policy = Policy(tiny_export)
    release, calls = threading.Event(), []
    real_warmup = policy.warmup

    def gated_warmup(n: int = 3) -> None:
        calls.append(n)
        assert release.wait(20)
        real_warmup(n)

    policy.warmup = gated_warmup
    app = create_app(policy, ServerSettings(warmup_iters=2))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        r = http.get("/health")
        assert r.status_code == 503
        assert r.json()["status"] == "warming_up"
        assert r.json()["n_action_steps"] == 4  # the summary is there while warming up
        assert http.get("/healthz").status_code == 503
        assert "reflex_ready 0.0" in http.get("/metrics").text
        assert http.post("/act", content=act_body(), headers=MSGPACK).status_code == 200
        release.set()
        wait_for(lambda: http.get("/health").status_code == 200)
        assert http.get("/health").json()["status"] == "ok"
        assert "reflex_ready 1.0" in http.get("/metrics").text
    assert calls == [2]


def test_failed_warm_up_keeps_health_at_503(tiny_export):
    policy = Policy(tiny_export)

    def broken_warmup(n: int = 3) -> None:
        raise RuntimeError("boom")

    policy.warmup = broken_warmup
    app = create_app(policy, ServerSettings(warmup_iters=1))
    with BackgroundServer(app) as srv:
        time.sleep(0.2)
        assert httpx.get(srv.url + "/health").status_code == 503


def test_hooks_get_every_served_chunk_after_the_response_and_failures_are_contained(tiny_export):
    records: list[ActRecord] = []

    def broken_hook(record: ActRecord) -> None:
        raise RuntimeError("collector down")

    app = create_app(
        Policy(tiny_export), ServerSettings(warmup_iters=0), hooks=[broken_hook, records.append]
    )
    with BackgroundServer(app) as srv:
        with httpx.Client(base_url=srv.url) as http:
            r = http.post(
                "/act", content=act_body(episode_id="ep-9", step=4, seed=1), headers=MSGPACK
            )
            assert r.status_code == 200
            assert (
                http.post(
                    "/act", content=b"{", headers={"Content-Type": "application/json"}
                ).status_code
                == 400
            )
        with connect(srv.ws_url) as ws:
            ws.recv()
            ws.send(
                codec.packb(
                    {
                        "observation/image": np.zeros((64, 64, 3), np.uint8),
                        "observation/state": np.zeros(39, np.float32),
                        "step": 5,
                    }
                )
            )
            ws.recv()
        wait_for(lambda: len(records) == 2)
    http_record, ws_record = sorted(records, key=lambda r: r.transport)
    assert http_record.transport == "http_msgpack" and ws_record.transport == "websocket"
    assert http_record.request_id == r.headers["X-Request-ID"]
    assert (http_record.params.episode_id, http_record.params.step, http_record.params.seed) == (
        "ep-9",
        4,
        1,
    )
    assert ws_record.params.step == 5
    assert http_record.observation.images["corner2"].shape == (64, 64, 3)
    np.testing.assert_allclose(http_record.result.actions, codec.unpackb(r.content)["actions"])
    assert http_record.server_ms >= http_record.result.total_ms
    assert http_record.client.startswith("127.0.0.1:")


@pytest.mark.timeout(60)
def test_serve_prints_its_url_and_exits_cleanly_on_sigterm(tiny_export):
    code = (
        "import sys; from reflex_serve.server.cli import serve; "
        "serve(sys.argv[1], port=0, warmup_iters=1, log_level='warning', cache_mb=8)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tiny_export)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = proc.stdout.readline()
        assert "reflex-serve: model" in banner, proc.stderr.read()
        url = banner.split(" at ")[1].split()[0]
        with httpx.Client(base_url=url, timeout=10) as http:
            wait_for(lambda: http.get("/health").status_code == 200, 30)
            version = http.get("/health").json()["model_version"]
            assert version in banner
            assert http.post("/act", content=act_body(), headers=MSGPACK).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "reflex-serve: stopped" in out


def test_a_server_fault_is_a_500_on_http_and_a_1011_close_on_the_websocket(tiny_export):
    policy = Policy(tiny_export)

    def broken_act(obs, **kwargs):
        raise RuntimeError("expert.onnx exploded")

    policy.act = broken_act
    app = create_app(policy, ServerSettings(warmup_iters=0))
    with BackgroundServer(app) as srv:
        r = httpx.post(srv.url + "/act", content=act_body(), headers=MSGPACK)
        assert r.status_code == 500
        assert r.json()["error"] == {
            "code": "internal_error",
            "message": "internal server error",
            "field": None,
        }
        with connect(srv.ws_url) as ws:
            ws.recv()
            ws.send(
                codec.packb(
                    {
                        "observation/image": np.zeros((64, 64, 3), np.uint8),
                        "observation/state": np.zeros(39, np.float32),
                    }
                )
            )
            assert ws.recv() == "500 internal_error: RuntimeError: expert.onnx exploded"
            with pytest.raises(ConnectionClosed) as info:
                ws.recv()
            assert info.value.rcvd.code == 1011
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'status="500",transport="http_msgpack"' in metrics
        assert 'status="500",transport="websocket"' in metrics


def test_an_app_can_be_served_again_after_shutdown(tiny_export):
    app = create_app(Policy(tiny_export), ServerSettings(warmup_iters=0))
    for _ in range(2):
        with BackgroundServer(app) as srv:
            r = httpx.post(srv.url + "/act", content=act_body(), headers=MSGPACK)
            assert r.status_code == 200


def serve_cli(*args: str):
    """``reflex serve ARGS`` in process (it fails before serving in these tests)."""
    from typer.testing import CliRunner

    from reflex_serve.cli import app

    return CliRunner().invoke(app, ["serve", *args], env={"COLUMNS": "200", "REFLEX_STORE": ""})


@pytest.mark.timeout(60)  # without the check, the mixed export is served: a hang
def test_serve_refuses_a_mixed_an_incomplete_or_a_missing_export(tiny_export, tmp_path):
    import shutil

    from reflex_serve.assets import default_teacher
    from reflex_serve.export.manifest import compute_digest, read_manifest

    mixed = shutil.copytree(tiny_export, tmp_path / "mixed")  # the teacher's manifest,
    shutil.copy(default_teacher() / "manifest.json", mixed)  # another model's files
    teacher = read_manifest(default_teacher())
    found = compute_digest(mixed, teacher)
    out = serve_cli(str(mixed), "--port", "0")
    assert out.exit_code == 2, out.output
    assert f"error: EXPORT_DIR: {mixed} does not match its manifest digest" in out.output
    assert f"(recorded {teacher.digest}, found {found})" in out.output
    incomplete = shutil.copytree(tiny_export, tmp_path / "incomplete")
    (incomplete / "expert.onnx").unlink()
    out = serve_cli(str(incomplete), "--port", "0")
    assert out.exit_code == 2
    assert f"error: EXPORT_DIR: {incomplete / 'expert.onnx'} is missing" in out.output
    out = serve_cli(str(tmp_path / "nowhere"), "--port", "0")
    assert out.exit_code == 2 and f"{tmp_path / 'nowhere'}" in out.output
    assert "does not exist" in out.output and "manifest.json not found" not in out.output
    with pytest.raises(ExportError, match="expert.onnx is missing"):
        Policy(incomplete)  # not only when verifying


def test_serve_names_a_port_in_use_a_foreign_host_and_an_unusable_data_dir(tiny_export, tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        out = serve_cli(str(tiny_export), "--port", str(port))
    finally:
        taken.close()
    assert out.exit_code == 2, out.output
    assert f"error: --port {port}: address already in use" in out.output
    out = serve_cli(str(tiny_export), "--host", "1.2.3.4", "--port", "0")
    assert out.exit_code == 2
    assert "error: --host 1.2.3.4: cannot assign requested address" in out.output
    (tmp_path / "file").write_text("not a directory")
    data_dir = tmp_path / "file" / "data"
    out = serve_cli(str(tiny_export), "--port", "0", "--collect-data", "--data-dir", str(data_dir))
    assert out.exit_code == 2 and f"error: --data-dir {data_dir}: cannot create it" in out.output
    assert "Traceback" not in out.output


def test_without_an_admin_key_every_admin_path_is_403_saying_how_to_enable_it(tiny_export):
    from typer.testing import CliRunner

    from reflex_serve.cli import app as cli

    app = create_app(Policy(tiny_export), ServerSettings(warmup_iters=0))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        for method, path in (("GET", "/admin/versions"), ("POST", "/admin/versions/x/promote"),
                             ("POST", "/admin/distill/run-now"), ("GET", "/admin")):
            r = http.request(method, path, headers={"Authorization": "Bearer k"})
            assert r.status_code == 403, (method, path)
            assert r.json()["error"]["code"] == "forbidden"
            assert "start `reflex serve` with --admin-key" in r.json()["error"]["message"]
        out = CliRunner().invoke(cli, ["models", "list", "--server", srv.url, "--admin-key", "k"])
    assert out.exit_code == 2
    assert "403 forbidden: the admin API is disabled on this server: start `reflex serve` with " \
           "--admin-key" in out.output
