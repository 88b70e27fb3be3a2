"""`reflex models ...` against a real server, and `reflex serve` router options."""

from __future__ import annotations

import pytest
from router_helpers import ADMIN_KEY, WIDE_LIMITS, record_gates, router_server, variant
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.tiny import make_tiny_export

runner = CliRunner()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("router-cli")
    base = make_tiny_export(root / "base")
    return (variant(base, root / "teacher", tag="teacher", action_limits=WIDE_LIMITS),
            variant(base, root / "student", tag="student", action_limits=WIDE_LIMITS))


def models(url: str, *args: str, key: str | None = ADMIN_KEY):
    opts = ["--server", url] + (["--admin-key", key] if key else [])
    return runner.invoke(app, ["models", args[0], *opts, *args[1:]],
                         env={"REFLEX_ADMIN_KEY": ""})


def test_models_commands_drive_the_admin_api(exports, tmp_path):
    teacher, student = exports
    old, new = read_manifest(teacher).version, read_manifest(student).version
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}") as (server, _, store):
        out = models(server.url, "register", str(student), "--actor", "ci")
        assert out.exit_code == 0, out.output
        assert f"registered: {new} (candidate); may not ship" in out.output
        out = models(server.url, "promote", new, "--actor", "ci")
        assert out.exit_code == 2 and "409 gates_not_passed" in out.output
        record_gates(store, student, teacher)
        out = models(server.url, "shadow", new, "--fraction", "0.25", "--actor", "ci")
        assert out.exit_code == 0 and f"{new}: 25% of requests mirrored" in out.output
        listing = models(server.url, "list").output
        row = next(line for line in listing.splitlines() if line.startswith(new))
        assert row.split()[:5] == [new, "shadow", "shadow", "0.25", "yes"]
        out = models(server.url, "promote", new, "--actor", "ci", "--reason", "nightly")
        assert out.exit_code == 0 and f"promote {old} -> {new}: monitoring" in out.output
        out = models(server.url, "rollback", "--actor", "ci")
        assert out.exit_code == 0
        assert f"rollback {new} -> {old}: done (signal operator)" in out.output
        out = models(server.url, "status")
        assert out.exit_code == 0 and f'"active": "{old}"' in out.output


def test_models_commands_name_what_is_wrong(exports, tmp_path):
    teacher, _ = exports
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}") as (server, _, _):
        out = models(server.url, "list", key=None)
        assert out.exit_code == 2 and "--admin-key (or $REFLEX_ADMIN_KEY) is required" in out.output
        out = models(server.url, "list", key="wrong")
        assert out.exit_code == 2 and "401 unauthorized" in out.output and "check --admin-key" in out.output
        out = models(server.url, "shadow", "abc", "--fraction", "2")
        assert out.exit_code == 2 and "--fraction" in out.output
        out = models(server.url, "register", str(tmp_path / "missing"), "--actor", "ci")
        assert out.exit_code == 2 and "[path]" in out.output
        out = models(server.url, "promote", "0123456789ab", "--actor", "ci")
        assert out.exit_code == 2 and "404 not_found [version]" in out.output
    out = models("http://127.0.0.1:9", "list")
    assert out.exit_code == 2 and "--server http://127.0.0.1:9" in out.output


def test_serve_refuses_router_options_that_do_not_fit(exports):
    teacher, _ = exports
    out = runner.invoke(app, ["serve", str(teacher), "--admin-key", "k", "--api-key", "k"])
    assert out.exit_code == 2 and "must differ from --api-key" in out.output
    out = runner.invoke(app, ["serve", str(teacher), "--monitor-window", "20s"])
    assert out.exit_code == 2 and "needs --admin-key" in out.output
    out = runner.invoke(app, ["serve", str(teacher), "--admin-key", "k", "--monitor-window",
                              "soon"])
    assert out.exit_code == 2 and "cannot parse duration" in out.output
