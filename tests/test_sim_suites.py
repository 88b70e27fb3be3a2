"""Which simulation suite evaluates a policy: MetaWorld for the project's own policies,
the checkpoint's own environment for imported LeRobot policies, reported as unavailable
with the reason when it cannot run here."""

from __future__ import annotations

import importlib.util

import pytest

from reflex_serve.export.manifest import read_manifest
from reflex_serve.sim.evaluate import sim_settings_from_manifest
from reflex_serve.sim.suites import (
    LIBERO,
    METAWORLD,
    SuiteUnavailable,
    require_metaworld,
    suite_for,
)

TEACHER = "models/metaworld8-teacher"


def imported(provenance: dict | None = None) -> dict:
    """A /health-style summary of an imported policy (what suite_for reads)."""
    return {
        "policy_kind": "lerobot-smolvla",
        "cameras": [{"name": "cam_high", "height": 48, "width": 64}],
        "state_dim": 6,
        "provenance": provenance or {},
    }


def test_project_policy_is_evaluated_in_metaworld():
    manifest = read_manifest(TEACHER)
    choice = suite_for(manifest)
    assert (choice.name, choice.available) == (METAWORLD, True)
    require_metaworld(manifest)
    assert sim_settings_from_manifest(manifest)["cameras"] == ("corner2",)


def test_imported_checkpoint_without_environment_is_unavailable_with_reason():
    choice = suite_for(imported({"checkpoint": "/ckpt"}))
    assert choice.name is None and not choice.available
    assert "names no simulation environment" in choice.reason
    assert "P1 and P2 are then not evaluated" in choice.reason and "overrides" in choice.reason


@pytest.mark.skipif(importlib.util.find_spec("libero") is not None, reason="LIBERO is installed here")
def test_libero_checkpoint_reports_libero_missing():
    choice = suite_for(imported({"env": {"type": "libero", "task": "libero_10"}}))
    assert (choice.name, choice.available) == (LIBERO, False)
    assert "trained for LIBERO" in choice.reason and "not installed" in choice.reason


def test_unknown_environment_names_it_and_the_supported_runners():
    choice = suite_for(imported({"env": {"type": "aloha"}}))
    assert (choice.name, choice.available) == ("aloha", False)
    assert "'aloha'" in choice.reason and "metaworld" in choice.reason


def test_imported_policy_is_never_run_in_metaworld():
    """Its 6-d state and 48x64 cameras would not fit MetaWorld anyway, but the refusal
    must be about the suite, not a confusing shape error."""
    with pytest.raises(SuiteUnavailable, match="no simulation suite can evaluate this policy: .*LIBERO"):
        sim_settings_from_manifest(imported({"env": {"type": "libero"}}))
