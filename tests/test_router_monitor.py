"""The post-swap monitor on a real server: bad versions are rolled back on their own with
the signal and figures recorded; a healthy one is kept when its window ends."""

from __future__ import annotations

import httpx
import pytest
from router_helpers import (
    MSGPACK,
    WIDE_LIMITS,
    Load,
    act_body,
    admin,
    fast_config,
    metric,
    observation,
    record_gates,
    router_server,
    variant,
    wait_for,
)

from reflex_serve.client import ReflexClient
from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.tiny import make_tiny_export
from reflex_serve.runtime.types import Observation
from reflex_serve.storage.models import Request
from reflex_serve.storage.routing import attributed_outcomes


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("router-monitor")
    base = make_tiny_export(root / "base")
    made = {
        "teacher": variant(base, root / "teacher", tag="teacher", action_limits=WIDE_LIMITS),
        "twin": variant(base, root / "twin", tag="twin", action_limits=WIDE_LIMITS),
        "wild": variant(base, root / "wild", tag="wild", action_shift=100.0,
                        action_limits=WIDE_LIMITS),
        "drift": variant(base, root / "drift", tag="drift", action_shift=2.0,
                         action_limits=WIDE_LIMITS),
    }
    return {k: (p, read_manifest(p).version) for k, p in made.items()}


def promote(server, store, path, teacher, version, **gates):
    admin(server.url, "POST", "/admin/versions", json={"path": str(path), "actor": "ci"})
    record_gates(store, path, teacher, **gates)
    r = admin(server.url, "POST", f"/admin/versions/{version}/promote",
              json={"actor": "ops", "reason": "override P1: eval farm down"})
    assert r.status_code == 200, r.text
    return r.json()


def rollback_row(url):
    rows = admin(url, "GET", "/admin/swaps").json()
    return next((r for r in rows if r["kind"] == "rollback"), None)


def test_a_version_whose_chunks_break_the_action_limits_is_rolled_back(exports, tmp_path):
    (teacher, old), (wild, bad) = exports["teacher"], exports["wild"]
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with router_server(teacher, url) as (server, controller, store):
        with Load(server.url, clients=2) as load:
            wait_for(lambda: len(load.results) >= 40)
            promote(server, store, wild, teacher, bad, fail="P1", override=True)
            row = wait_for(lambda: rollback_row(server.url), timeout_s=10)
            done = len(load.results)
            wait_for(lambda: len(load.results) >= done + 20)
        assert {s for s, *_ in load.results} == {200}
        versions = [v for _, v, _, _ in load.results]
        assert set(versions[done + 4:]) == {old}  # the old version serves again
        assert versions.count(bad) <= 10  # rolled back within a few calls
        assert (row["signal"], row["actor"], row["from_version"], row["to_version"]) == (
            "action_limits", "monitor", bad, old)
        assert "outside the action limits" in row["reason"]
        figures = row["figures"]
        assert figures["hits"] == figures["n"] <= 2 and figures["baseline_hits"] == 0
        assert figures["limit"] == min(0.03, figures["baseline_upper"])  # its ceiling
        assert figures["previous_loaded"] is True
        promoted = admin(server.url, "GET", "/admin/swaps").json()[1]
        assert (promoted["status"], promoted["figures"]["signal"]) == ("rolled_back",
                                                                        "action_limits")
        states = {v.version: v.state for v in controller.registry.versions()}
        assert states == {old: "active", bad: "rolled_back"}
        text = httpx.get(server.url + "/metrics").text
        assert metric(text, "reflex_router_rollbacks_total", signal="action_limits") == 1
        assert metric(text, "reflex_router_breach_to_rollback_seconds_count") == 1
        assert metric(text, "reflex_router_breach_to_rollback_seconds_sum") < 1.0


def test_a_version_that_drifts_from_the_previous_one_is_rolled_back_on_divergence(exports,
                                                                                   tmp_path):
    (teacher, old), (drift, bad) = exports["teacher"], exports["drift"]
    config = fast_config(divergence={"mirror_fraction": 1.0, "min_comparisons": 10})
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}", config=config) as (
            server, _, store):
        promote(server, store, drift, teacher, bad)
        with httpx.Client(base_url=server.url) as http:
            for i in range(60):
                http.post("/act", content=act_body(i), headers=MSGPACK)
                if rollback_row(server.url):
                    break
        row = wait_for(lambda: rollback_row(server.url), timeout_s=10)
        assert row["signal"] == "divergence" and row["to_version"] == old
        assert row["figures"]["n"] == 10 and row["figures"]["lower_bound"] > 0.5
        assert row["figures"]["mean"] > 2.0  # a shift of 2 in units of a std below 1


def test_worse_episode_outcomes_roll_a_version_back(exports, tmp_path):
    (teacher, old), (twin, new) = exports["teacher"], exports["twin"]
    config = fast_config(outcomes={"min_episodes": 10})
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with router_server(teacher, url, config=config, collect=True) as (server, _, store):
        http = httpx.Client(base_url=server.url)

        def episodes(prefix: str, outcome: str, n: int) -> None:
            for e in range(n):
                for step in range(2):
                    a = http.post("/act", content=act_body(e, f"{prefix}-{e}", step),
                                  headers=MSGPACK)
                    assert a.status_code == 200
            wait_for(lambda: store.count(Request) >= seen + 2 * n)
            for e in range(n):
                r = http.post(f"/v1/episodes/{prefix}-{e}/outcome", json={"outcome": outcome})
                assert r.status_code == 200

        seen = 0
        episodes("before", "success", 12)
        seen = store.count(Request)
        swap = promote(server, store, twin, teacher, new)
        assert swap["figures"]["warm_logged"] == 8  # warmed on logged observations too
        episodes("after", "failure", 10)
        row = wait_for(lambda: rollback_row(server.url), timeout_s=10)
        http.close()
        assert (row["signal"], row["to_version"]) == ("episode_success", old)
        f = row["figures"]
        assert (f["successes"], f["n"], f["baseline_episodes"], f["baseline_rate"]) == (
            0, 10, 12, 1.0)
        assert f["p_value"] < 0.005 and "episode success 0/10" in row["reason"]


def test_a_healthy_version_is_kept_when_its_window_ends(exports, tmp_path):
    (teacher, old), (twin, new) = exports["teacher"], exports["twin"]
    config = fast_config(monitor={"window_s": 1.5},
                         divergence={"mirror_fraction": 1.0, "min_comparisons": 5})
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}", config=config) as (
            server, controller, store):
        with Load(server.url, clients=1) as load:
            wait_for(lambda: len(load.results) >= 20)
            swap = promote(server, store, twin, teacher, new)
            kept = wait_for(lambda: admin(server.url, "GET", "/admin/swaps").json()[0]
                            ["status"] == "kept", timeout_s=10)
        assert kept and {s for s, *_ in load.results} == {200}
        row = admin(server.url, "GET", "/admin/swaps").json()[0]
        assert row["id"] == swap["id"] and rollback_row(server.url) is None
        signals = row["figures"]["monitor"]["signals"]
        assert signals["divergence"]["last_look"]["mean"] == 0.0  # the same chunks
        assert signals["action_limits"]["evidence"] >= 5
        assert controller.router.routes.previous is None  # unloaded after the window
        status = admin(server.url, "GET", "/admin/router").json()
        assert (status["active"], status["previous"], status["monitor"]) == (new, None, None)
        states = {v.version: v.state for v in controller.registry.versions()}
        assert states == {old: "retired", new: "active"}


def test_closed_loop_clients_report_outcomes_that_the_monitor_can_read(exports, tmp_path):
    teacher, old = exports["teacher"]
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with router_server(teacher, url, collect=True) as (server, _, store), \
            ReflexClient(server.url, report_outcomes=True) as client:
        for e, success in enumerate((True, False, True)):
            obs = Observation(**observation(e))
            assert client.act(obs, episode_id=f"eval-{e}", step=0).version == old
            client.end_episode(f"eval-{e}", success=success, steps=40)
        assert store.episode("eval-1").outcome == "failure"
        assert store.episode("eval-1").note == "40 steps"
        wait_for(lambda: store.count(Request) == 3)
        assert [ok for _, ok in attributed_outcomes(store, old)] == [True, False, True]
    with ReflexClient(server.url) as silent:  # the server is gone: a call would raise
        silent.end_episode("eval-9", success=True, steps=1)  # not asked to report: no call
