"""`reflex models ...` against a real server, and `reflex serve` router options."""

from __future__ import annotations

import httpx
import pytest
from router_helpers import ADMIN_KEY, WIDE_LIMITS, admin, record_gates, router_server, variant
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


def test_version_arguments_are_checked_and_a_rollback_conflict_names_both_forms(exports, tmp_path):
    teacher, _ = exports
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}") as (server, _, _):
        out = models(server.url, "promote", "zz/..", "--actor", "ci")
        assert out.exit_code == 2
        assert "VERSION: 'zz/..' is not a model version (12 or more hex digits" in out.output
        out = models(server.url, "canary", "0123", "--fraction", "0.1", "--actor", "ci")
        assert out.exit_code == 2 and "VERSION: '0123' is not a model version" in out.output
        out = models(server.url, "promote", "0123456789AB", "--actor", "ci")  # lower-cased
        assert out.exit_code == 2 and "404 not_found [version]" in out.output
        assert "'0123456789ab'" in out.output
        out = models(server.url, "rollback", "--to", "a/b", "--actor", "ci")
        assert out.exit_code == 2 and "--to: 'a/b' is not a model version" in out.output
        out = models(server.url, "rollback", "--actor", "ci")
        assert out.exit_code == 2 and "409 conflict [to]: nothing to roll back to" in out.output
        assert "name a version (--to, or 'to' in the request body)" in out.output


def test_serve_names_monitor_window_when_it_is_not_positive(exports):
    teacher, _ = exports
    out = runner.invoke(app, ["serve", str(teacher), "--admin-key", "k", "--monitor-window",
                              "0s"], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "--monitor-window" in out.output
    assert "must be > 0" in out.output and "--router-config" not in out.output


def test_admin_bodies_that_are_not_json_objects_are_400_and_other_media_types_415(exports,
                                                                                   tmp_path):
    teacher, _ = exports
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    json_type = {**auth, "Content-Type": "application/json"}
    cases = [
        (b"{", json_type, 400, "malformed_body", "malformed JSON body"),
        (b"", json_type, 400, "malformed_body", "the request body is empty"),
        (b"[1]", json_type, 400, "malformed_body", "must be a JSON object"),
        (b"{", auth, 400, "malformed_body", "malformed JSON body"),
        (b'{"actor": "ci"}', {**auth, "Content-Type": "text/plain"}, 415,
         "unsupported_media_type", "unsupported Content-Type 'text/plain'"),
        (b'{"actor": "ci"}', auth, 415, "unsupported_media_type", "no Content-Type"),
        (b'{"reason": "x"}', json_type, 422, "invalid_field", "Field required"),
    ]
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}") as (server, _, _):
        for body, headers, status, code, message in cases:
            r = httpx.post(server.url + "/admin/rollback", content=body, headers=headers)
            assert r.status_code == status, (body, headers, r.text)
            assert r.json()["error"]["code"] == code and message in r.json()["error"]["message"]
        r = httpx.post(server.url + "/admin/rollback", content=b'{"reason": "x"}',
                       headers=json_type)
        assert r.json()["error"]["field"] == "actor"
        r = httpx.post(server.url + "/act", content=b"{",
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body"


def test_the_router_refuses_to_load_a_version_whose_files_do_not_match_its_digest(exports,
                                                                                  tmp_path):
    import json
    import shutil

    from reflex_serve.router import open_router
    from reflex_serve.router.errors import RouterError
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.storage.store import Store

    teacher, student = exports
    student = shutil.copytree(student, tmp_path / "student")
    old, new = read_manifest(teacher).version, read_manifest(student).version
    url = f"sqlite:///{tmp_path / 's.sqlite'}"

    def tamper() -> None:  # the same manifest, other normalization statistics
        stats = json.loads((student / "stats.json").read_text())
        stats["action"]["mean"] = [m + 1.0 for m in stats["action"]["mean"]]
        (student / "stats.json").write_text(json.dumps(stats))

    pristine = (student / "stats.json").read_bytes()
    with router_server(teacher, url) as (server, controller, store):
        assert models(server.url, "register", str(student), "--actor", "ci").exit_code == 0
        record_gates(store, student, teacher)
        tamper()
        out = models(server.url, "promote", new, "--actor", "ci")
        assert out.exit_code == 2 and "422 load_failed [version]" in out.output
        assert f"{student} does not match its manifest digest (recorded " \
               f"{read_manifest(student).digest}, found sha256:" in out.output
        assert f"({old} keeps serving)" in out.output
        assert controller.router.active.version == old
        (student / "stats.json").write_bytes(pristine)
        out = models(server.url, "promote", new, "--actor", "ci")
        assert out.exit_code == 0, out.output
    tamper()  # the store's active version is now tampered with: a restart refuses it
    store = Store.open(url)
    try:
        with pytest.raises(RouterError, match=f"cannot serve the store's active version {new}: "
                           ".*does not match its manifest digest"):
            open_router(Policy(teacher), store)
    finally:
        store.close()


def test_a_router_without_the_loop_says_how_to_turn_the_loop_on(exports, tmp_path):
    teacher, _ = exports
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}") as (server, _, _):
        for method, path in (("POST", "/admin/distill/run-now"), ("GET", "/admin/distill/runs"),
                             ("GET", "/admin/distill/runs/abcd")):
            r = admin(server.url, method, path)
            assert r.status_code == 404, (method, path)
            assert r.json()["error"]["code"] == "not_found"
            assert "--distill-schedule" in r.json()["error"]["message"]
        assert admin(server.url, "GET", "/admin/distill/runs", key="wrong").status_code == 401
        assert admin(server.url, "GET", "/admin/versions").status_code == 200
