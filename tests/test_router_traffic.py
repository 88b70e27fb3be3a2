"""Shadow mirroring and sticky canary episodes on a real server (loopback, ORT, SQLite)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from router_helpers import (
    MSGPACK,
    WIDE_LIMITS,
    act_body,
    admin,
    metric,
    observation,
    record_gates,
    router_server,
    variant,
    wait_for,
)

from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.tiny import make_tiny_export
from reflex_serve.policy.normalize import DatasetStats
from reflex_serve.router.router import canary_bucket
from reflex_serve.server import codec
from reflex_serve.storage.models import ShadowComparison

SHIFT = 0.5


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("router-traffic")
    base = make_tiny_export(root / "base")
    teacher = variant(base, root / "teacher", tag="teacher", action_limits=WIDE_LIMITS)
    shifted = variant(base, root / "shifted", tag="shifted", action_shift=SHIFT,
                      action_limits=WIDE_LIMITS)
    return teacher, shifted


def test_shadow_mirrors_calls_off_the_response_path_and_records_the_comparison(exports,
                                                                                tmp_path):
    teacher, shifted = exports
    old, cand = read_manifest(teacher).version, read_manifest(shifted).version
    std = DatasetStats.load(teacher / "stats.json").action.std.astype(np.float64)
    expected = float(np.sqrt(np.mean((SHIFT / std) ** 2)))  # same noise: every value moves
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}") as (server, _, store):
        admin(server.url, "POST", "/admin/versions", json={"path": str(shifted), "actor": "ci"})
        r = admin(server.url, "POST", f"/admin/versions/{cand}/shadow",
                  json={"fraction": 1.0, "actor": "ci", "reason": "try it"})
        assert r.status_code == 200 and r.json()["fraction"] == 1.0
        versions = []
        with httpx.Client(base_url=server.url) as http:
            for i in range(12):
                body = {**observation(i), "episode_id": f"ep-{i}"}
                if i % 2:
                    body["seed"] = i
                a = http.post("/act", content=codec.packb(body), headers=MSGPACK)
                versions.append(a.headers["x-reflex-model-version"])
        assert set(versions) == {old}  # clients never see the shadow
        wait_for(lambda: store.count(ShadowComparison) == 12)
        with store.session() as s:
            rows = list(s.query(ShadowComparison))
        assert {(r.mode, r.candidate_version, r.reference_version) for r in rows} == {
            ("shadow", cand, old)}
        assert all(r.shared_prefix for r in rows)
        assert [r.divergence for r in rows] == pytest.approx([expected] * 12, rel=1e-3)
        assert [r.max_abs_diff for r in rows] == pytest.approx([SHIFT] * 12, rel=1e-3)
        assert sorted(r.episode_id for r in rows) == sorted(f"ep-{i}" for i in range(12))
        text = httpx.get(server.url + "/metrics").text
        assert metric(text, "reflex_shadow_comparisons_total", mode="shadow") == 12
        assert metric(text, "reflex_prefix_cache_hits_total") >= 12  # shared prefix KV
        detail = admin(server.url, "GET", f"/admin/versions/{cand}").json()
        assert detail["state"] == "shadow" and detail["role"] == "shadow"
        assert detail["comparisons"]["count"] == 12
        assert detail["comparisons"]["mean_divergence"] == pytest.approx(expected, rel=1e-3)
        r = admin(server.url, "POST", f"/admin/versions/{cand}/shadow",
                  json={"fraction": 0, "actor": "ci"})
        assert r.status_code == 200
        assert admin(server.url, "GET", f"/admin/versions/{cand}").json()["state"] == "candidate"


def test_a_canary_serves_a_sticky_share_of_episodes(exports, tmp_path):
    teacher, shifted = exports
    old, cand = read_manifest(teacher).version, read_manifest(shifted).version
    digest = read_manifest(shifted).digest
    with router_server(teacher, f"sqlite:///{tmp_path / 's.sqlite'}") as (server, _, store):
        admin(server.url, "POST", "/admin/versions", json={"path": str(shifted), "actor": "ci"})
        r = admin(server.url, "POST", f"/admin/versions/{cand}/canary",
                  json={"fraction": 0.5, "actor": "ci"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "gates_not_passed"
        record_gates(store, shifted, teacher)
        r = admin(server.url, "POST", f"/admin/versions/{cand}/canary",
                  json={"fraction": 0.5, "actor": "ci"})
        assert r.status_code == 200
        served: dict[str, set[str]] = {}
        with httpx.Client(base_url=server.url) as http:
            for step in range(3):
                for e in range(30):
                    a = http.post("/act", content=act_body(e, f"ep-{e}", step), headers=MSGPACK)
                    assert a.status_code == 200
                    served.setdefault(f"ep-{e}", set()).add(a.headers["x-reflex-model-version"])
            anonymous = {http.post("/act", content=act_body(i), headers=MSGPACK)
                         .headers["x-reflex-model-version"] for i in range(5)}
        expected = {e: {cand if canary_bucket(e, digest) < 0.5 else old} for e in served}
        assert served == expected  # sticky, and exactly the episodes below the fraction
        assert 5 <= sum(v == {cand} for v in served.values()) <= 25
        assert anonymous == {old}  # no episode id: the active version
        listed = {v["version"]: v for v in admin(server.url, "GET", "/admin/versions")
                  .json()["versions"]}
        assert (listed[cand]["role"], listed[cand]["fraction"]) == ("canary", 0.5)
