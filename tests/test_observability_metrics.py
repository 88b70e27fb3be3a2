"""The metrics an operator watches that the alert rules lean on: the active version as an
info metric, and rollback / mirror series that exist at 0 before the first event (so
``increase()`` sees the first one). Real servers on loopback, real ONNX Runtime sessions,
a real SQLite store."""

from __future__ import annotations

import httpx
import pytest
from observability_helpers import samples
from router_helpers import WIDE_LIMITS, admin, record_gates, router_server, variant

from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.tiny import make_tiny_export
from reflex_serve.router.metrics import MIRROR_MODES, ROLLBACK_SIGNALS
from reflex_serve.runtime.policy import Policy
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.server.settings import ServerSettings


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("observability-metrics")
    base = make_tiny_export(root / "base")
    return {name: variant(base, root / name, tag=name, action_limits=WIDE_LIMITS)
            for name in ("teacher", "student")}


def active_info(url: str) -> list[tuple[dict[str, str], float]]:
    return samples(httpx.get(url + "/metrics").text, "reflex_active_version_info")


def test_a_single_policy_server_names_its_active_version_with_served_steps(exports):
    teacher = exports["teacher"]
    manifest = read_manifest(teacher)
    app = create_app(Policy(teacher, num_steps=3), ServerSettings(warmup_iters=0))
    with BackgroundServer(app) as server:
        assert active_info(server.url) == [({
            "version": manifest.version, "policy_kind": manifest.policy_kind,
            "num_steps": "3", "parent_version": manifest.parent_version or ""}, 1.0)]


def test_the_active_version_follows_promote_and_rollback_which_count_by_signal(
        exports, tmp_path):
    teacher, student = exports["teacher"], exports["student"]
    old, new = read_manifest(teacher).version, read_manifest(student).version
    with router_server(teacher, f"sqlite:///{tmp_path / 'store.sqlite'}") as (server, _, store):
        text = httpx.get(server.url + "/metrics").text
        rollbacks = {labels["signal"]: v
                     for labels, v in samples(text, "reflex_router_rollbacks_total")}
        assert rollbacks == dict.fromkeys(ROLLBACK_SIGNALS, 0.0)
        for name in ("reflex_shadow_comparisons_total", "reflex_shadow_divergence_count"):
            assert {labels["mode"]: v for labels, v in samples(text, name)} == dict.fromkeys(
                MIRROR_MODES, 0.0)
        assert [labels["version"] for labels, _ in active_info(server.url)] == [old]

        assert admin(server.url, "POST", "/admin/versions",
                     json={"path": str(student), "actor": "ci"}).status_code == 201
        record_gates(store, student, teacher)
        r = admin(server.url, "POST", f"/admin/versions/{new}/promote", json={"actor": "ci"})
        assert r.status_code == 200, r.text
        assert [labels["version"] for labels, _ in active_info(server.url)] == [new]

        r = admin(server.url, "POST", "/admin/rollback", json={"actor": "ops", "reason": "cups"})
        assert r.status_code == 200, r.text
        text = httpx.get(server.url + "/metrics").text
        assert [labels["version"] for labels, _ in active_info(server.url)] == [old]
        rollbacks = {labels["signal"]: v
                     for labels, v in samples(text, "reflex_router_rollbacks_total")}
        assert rollbacks == {**dict.fromkeys(ROLLBACK_SIGNALS, 0.0), "operator": 1.0}
        swaps = {(labels["kind"], labels["outcome"]): v
                 for labels, v in samples(text, "reflex_router_swaps_total")}
        assert swaps[("promote", "ok")] == 1 and swaps[("rollback", "ok")] == 1
