"""Promote, failed promotes, gates, the admin key and bad input, on a real server over
loopback with real ONNX Runtime sessions and a SQLite store."""

from __future__ import annotations

import time

import httpx
import pytest
from router_helpers import (
    ADMIN_KEY,
    MSGPACK,
    WIDE_LIMITS,
    Load,
    act_body,
    admin,
    metric,
    record_gates,
    router_server,
    variant,
    wait_for,
)

from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.tiny import make_tiny_export
from reflex_serve.storage.versions import transitions


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("router-swap")
    base = make_tiny_export(root / "base")
    made = {
        "teacher": variant(base, root / "teacher", tag="teacher", action_limits=WIDE_LIMITS),
        "student": variant(base, root / "student", tag="student", action_limits=WIDE_LIMITS),
        "broken": variant(base, root / "broken", tag="broken", break_expert=True),
        "nan": variant(base, root / "nan", tag="nan", action_shift=float("nan")),
        "wide": make_tiny_export(root / "wide", state_dim=12),
    }
    return {k: (p, read_manifest(p).version) for k, p in made.items()}


@pytest.fixture
def store_url(tmp_path):
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


def active_version(url: str) -> str:
    return httpx.get(url + "/health").json()["model_version"]


def test_promote_under_load_fails_no_request_and_every_answer_is_old_or_new(exports, store_url):
    (teacher, old), (student, new) = exports["teacher"], exports["student"]
    with router_server(teacher, store_url) as (server, controller, store):
        assert admin(server.url, "POST", "/admin/versions",
                     json={"path": str(student), "actor": "ci"}).status_code == 201
        record_gates(store, student, teacher)
        with Load(server.url, clients=2) as load:
            wait_for(lambda: len(load.results) >= 60)
            r = admin(server.url, "POST", f"/admin/versions/{new}/promote",
                      json={"actor": "ci", "reason": "nightly student"})
            at_swap = len(load.results)
            wait_for(lambda: len(load.results) >= at_swap + 60)
        assert r.status_code == 200, r.text
        swap = r.json()
        assert (swap["from_version"], swap["to_version"], swap["status"]) == (old, new,
                                                                                "monitoring")
        assert swap["figures"]["warm_synthetic"] == 3 and swap["figures"]["warm_logged"] == 0
        assert swap["figures"]["shared_prefix"] is True
        statuses = {status for status, *_ in load.results}
        assert statuses == {200}, [x for x in load.results if x[0] != 200][:3]
        assert all(header == body for _, header, body, _ in load.results)
        versions = [header for _, header, _, _ in load.results]
        assert set(versions) == {old, new}
        first_new = versions.index(new)
        assert set(versions[first_new + 4:]) == {new}  # after the swap: the new one only
        assert versions[:first_new].count(old) == first_new >= 60 - 2
        assert active_version(server.url) == new
        assert controller.router.routes.previous.version == old  # kept for the window
        states = {v.version: v.state for v in controller.registry.versions()}
        assert states == {old: "retired", new: "active"}
        to_active = [t for t in transitions(store, swap["to_digest"]) if t.to_state == "active"]
        assert to_active[0].actor == "ci" and to_active[0].reason == "nightly student"


def test_a_version_that_fails_to_load_leaves_the_old_one_serving_and_is_recorded(exports,
                                                                                 store_url):
    (teacher, old), (broken, bad) = exports["teacher"], exports["broken"]
    with router_server(teacher, store_url) as (server, controller, store):
        admin(server.url, "POST", "/admin/versions", json={"path": str(broken), "actor": "ci"})
        record_gates(store, broken, teacher)
        r = admin(server.url, "POST", f"/admin/versions/{bad}/promote", json={"actor": "ci"})
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["code"] == "load_failed" and err["field"] == "version"
        assert "cannot load" in err["message"] and f"{old} keeps serving" in err["message"]
        ok = httpx.post(server.url + "/act", content=act_body(0), headers=MSGPACK)
        assert ok.status_code == 200 and ok.headers["x-reflex-model-version"] == old
        swaps = admin(server.url, "GET", "/admin/swaps").json()
        assert [(s["status"], s["stage"], s["to_version"]) for s in swaps] == [
            ("failed", "load", bad)]
        text = httpx.get(server.url + "/metrics").text
        assert metric(text, "reflex_router_swap_failures_total", stage="load") == 1
        assert controller.router.routes.loaded().keys() == {old}


def test_a_warm_up_that_gives_non_finite_chunks_fails_the_promote(exports, store_url):
    (teacher, old), (nan, bad) = exports["teacher"], exports["nan"]
    with router_server(teacher, store_url) as (server, _, store):
        admin(server.url, "POST", "/admin/versions", json={"path": str(nan), "actor": "ci"})
        record_gates(store, nan, teacher)
        r = admin(server.url, "POST", f"/admin/versions/{bad}/promote", json={"actor": "ci"})
        assert r.status_code == 422 and "NaN or Inf" in r.json()["error"]["message"]
        assert active_version(server.url) == old
        assert admin(server.url, "GET", "/admin/swaps").json()[0]["stage"] == "warm"


def test_promote_is_refused_unless_the_gates_let_the_version_ship(exports, store_url):
    (teacher, old), (student, new) = exports["teacher"], exports["student"]
    with router_server(teacher, store_url) as (server, _, store):
        admin(server.url, "POST", "/admin/versions", json={"path": str(student), "actor": "ci"})
        promote = f"/admin/versions/{new}/promote"
        r = admin(server.url, "POST", promote, json={"actor": "ci"})
        assert r.status_code == 409 and "no gate run" in r.json()["error"]["message"]
        record_gates(store, student, teacher, fail="S2")  # safety: no override can help
        r = admin(server.url, "POST", promote, json={"actor": "ci"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "gates_not_passed"
        assert "blocked by S2" in r.json()["error"]["message"]
        record_gates(store, student, teacher, fail="P4")  # performance: not overridden
        assert admin(server.url, "POST", promote, json={"actor": "ci"}).status_code == 409
        assert active_version(server.url) == old
        stages = [s["stage"] for s in admin(server.url, "GET", "/admin/swaps").json()]
        assert stages == ["gates"] * 3
        record_gates(store, student, teacher, fail="P4", override=True)
        r = admin(server.url, "POST", promote, json={"actor": "ci"})
        assert r.status_code == 200 and r.json()["figures"]["gates"]["overridden"] == ["P4"]
        assert active_version(server.url) == new


def test_the_admin_api_takes_its_own_key_only(exports, store_url):
    teacher, _ = exports["teacher"]
    with router_server(teacher, store_url, api_key="act-key") as (server, _, _):
        assert admin(server.url, "GET", "/admin/versions", key="").status_code == 401
        assert admin(server.url, "GET", "/admin/versions", key="act-key").status_code == 401
        assert admin(server.url, "GET", "/admin/versions").status_code == 200
        act = httpx.post(server.url + "/act", content=act_body(0),
                         headers={**MSGPACK, "Authorization": f"Bearer {ADMIN_KEY}"})
        assert act.status_code == 401  # and the admin key does not open /act
    with router_server(teacher, store_url, admin_key=None) as (server, _, _):
        r = admin(server.url, "GET", "/admin/versions")
        assert r.status_code == 403 and "--admin-key" in r.json()["error"]["message"]


def test_bad_admin_input_is_a_4xx_naming_the_field(exports, store_url, tmp_path):
    (teacher, old), (wide, other) = exports["teacher"], exports["wide"]
    with router_server(teacher, store_url) as (server, _, store):
        def post(route, **body):
            return admin(server.url, "POST", route, json=body)

        r = post("/admin/versions", path=str(tmp_path / "nowhere"), actor="ci")
        assert r.status_code == 422 and r.json()["error"]["field"] == "path"
        r = post("/admin/versions", path=str(teacher))
        assert r.status_code == 422 and r.json()["error"]["field"] == "actor"
        r = post("/admin/versions/0123456789ab/promote", actor="ci")
        assert r.status_code == 404 and r.json()["error"]["field"] == "version"
        r = post(f"/admin/versions/{old}/shadow", fraction=1.5, actor="ci")
        assert r.status_code == 422 and r.json()["error"]["field"] == "fraction"
        r = post(f"/admin/versions/{old}/promote", actor="ci")
        assert r.status_code == 409 and "already active" in r.json()["error"]["message"]
        r = post("/admin/rollback", actor="ci")
        assert r.status_code == 409 and "nothing to roll back to" in r.json()["error"]["message"]
        post("/admin/versions", path=str(wide), actor="ci")
        record_gates(store, wide, teacher)
        r = post(f"/admin/versions/{other}/promote", actor="ci")
        assert r.status_code == 422 and "state_dim is 12" in r.json()["error"]["message"]
        assert active_version(server.url) == old


def test_an_operator_rollback_is_instant_and_recorded(exports, store_url):
    (teacher, old), (student, new) = exports["teacher"], exports["student"]
    with router_server(teacher, store_url) as (server, controller, store):
        admin(server.url, "POST", "/admin/versions", json={"path": str(student), "actor": "ci"})
        record_gates(store, student, teacher)
        admin(server.url, "POST", f"/admin/versions/{new}/promote", json={"actor": "ci"})
        t0 = time.perf_counter()
        r = admin(server.url, "POST", "/admin/rollback",
                  json={"actor": "alice", "reason": "robot 3 drops cups"})
        assert r.status_code == 200 and time.perf_counter() - t0 < 2.0
        body = r.json()
        assert (body["kind"], body["signal"], body["to_version"]) == ("rollback", "operator", old)
        assert body["figures"]["previous_loaded"] is True
        assert active_version(server.url) == old
        promote_row = admin(server.url, "GET", "/admin/swaps").json()[1]
        assert promote_row["status"] == "rolled_back"
        states = {v.version: v.state for v in controller.registry.versions()}
        assert states == {old: "active", new: "rolled_back"}
        text = httpx.get(server.url + "/metrics").text
        assert metric(text, "reflex_router_rollbacks_total", signal="operator") == 1
