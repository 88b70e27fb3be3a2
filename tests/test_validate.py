"""`reflex validate export`: ONNX parity and student-vs-reference agreement (energy distance)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from distill_helpers import make_demo_dir, make_store, make_teacher, one_thread  # noqa: F401
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.validate import (
    ValidationError,
    energy_distance,
    relative_energy,
    store_observations,
    validate_export,
)

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def bimodal(k: int, d: int, seed: int) -> np.ndarray:
    """Two well separated modes at +-3 (alternate draws), a little noise around them."""
    rng = np.random.default_rng(seed)
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)[:, None]
    return 3.0 * signs + 0.01 * rng.standard_normal((k, d))


def test_energy_distance_is_zero_for_identical_sample_sets():
    y = bimodal(16, 32, 0)
    ed, sx, sy = energy_distance(y, y.copy())
    assert ed == pytest.approx(0.0, abs=1e-12) and sx == sy > 0
    assert relative_energy(y, y) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("k", "expected"), [(400, 1.0), (16, 0.875)])
def test_energy_distance_is_large_for_a_mode_collapsed_student(k, expected):
    teacher = bimodal(k, 32, 0)
    rng = np.random.default_rng(1)
    mean_collapsed = 0.01 * rng.standard_normal(teacher.shape)
    one_mode = 3.0 + 0.01 * rng.standard_normal(teacher.shape)
    faithful = bimodal(k, 32, 3)  # another sample of the same distribution
    # population value 1.0; with K draws, K/2 per mode, the teacher's spread (i != j) has
    # K/(2(K-1)) cross-mode pairs, so a collapsed student scores (K - 2) / K: 0.875 at K = 16
    assert relative_energy(mean_collapsed, teacher) == pytest.approx(expected, abs=0.05)
    assert relative_energy(one_mode, teacher) == pytest.approx(expected, abs=0.05)
    assert abs(relative_energy(faithful, teacher)) < 0.05
    # a student collapsed onto the mean of a Gaussian teacher scores about sqrt(2) - 1
    gauss = np.random.default_rng(4).standard_normal((400, 32))
    assert relative_energy(np.zeros_like(gauss), gauss) == pytest.approx(np.sqrt(2) - 1, abs=0.05)


def test_energy_distance_refuses_mismatched_sets():
    with pytest.raises(ValueError, match="sample sets"):
        energy_distance(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="K >= 2"):
        energy_distance(np.zeros((1, 3)), np.zeros((1, 3)))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("validate") / "teacher")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return make_demo_dir(tmp_path_factory.mktemp("validate") / "demos")


@pytest.fixture(autouse=True)
def no_default_store(monkeypatch, tmp_path):
    """No $REFLEX_STORE and an empty working directory: no default store to find."""
    monkeypatch.delenv("REFLEX_STORE", raising=False)
    monkeypatch.chdir(tmp_path)


def test_a_model_against_itself_passes_with_zero_energy_and_json_parses(teacher, demos):
    res = runner.invoke(
        app,
        [
            "validate",
            "export",
            str(teacher),
            "--reference",
            str(teacher),
            "--data",
            str(demos),
            "--observations",
            "3",
            "--samples",
            "4",
            "--json",
        ],
        env=ENV,
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["passed"] and report["parity_ok"] and report["parity_max_abs"] <= 1e-3
    assert report["summary"]["relative_energy_mean"] == pytest.approx(0.0, abs=1e-9)
    assert report["summary"]["mean_cosine_min"] == pytest.approx(1.0)
    assert len(report["per_observation"]) == 3 and report["reference_num_steps"] == 10
    assert report["observations_source"].startswith(f"demo frames of {demos}")


def test_without_real_observations_it_refuses_unless_synthetic_is_asked_for(teacher):
    args = ["validate", "export", str(teacher), "--reference", str(teacher), "--samples", "3",
            "--observations", "2"]
    res = runner.invoke(app, args, env=ENV)
    assert res.exit_code == 2 and "no real observations" in res.output, res.output
    assert "--synthetic" in res.output
    res = runner.invoke(app, [*args, "--synthetic", "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["observations_source"].startswith("SYNTHETIC")


def test_the_default_store_supplies_held_out_observations(teacher, tmp_path):
    (tmp_path / "data").mkdir()
    make_store(f"sqlite:///{tmp_path / 'data' / 'store.sqlite'}")  # ./data/store.sqlite
    res = runner.invoke(app, ["validate", "export", str(teacher), "--reference", str(teacher),
                              "--samples", "3", "--observations", "2", "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["observations_source"] == "store held-out split (2 observations)"


def test_table_output_and_exit_1_on_failure(teacher, demos):
    res = runner.invoke(
        app,
        [
            "validate",
            "export",
            str(teacher),
            "--reference",
            str(teacher),
            "--data",
            str(demos),
            "--observations",
            "2",
            "--samples",
            "3",
        ],
        env=ENV,
    )
    assert res.exit_code == 0 and "relative energy distance" in res.output and "PASS" in res.output
    res = runner.invoke(app, ["validate", "export", str(teacher), "--threshold", "0"], env=ENV)
    assert res.exit_code == 1 and "FAIL" in res.output, res.output


def test_errors_exit_2(teacher, tmp_path):
    res = runner.invoke(app, ["validate", "export", str(tmp_path / "nothing")], env=ENV)
    assert res.exit_code == 2 and "error" in res.output
    other = make_teacher(tmp_path / "other", state_dim=5)
    res = runner.invoke(
        app, ["validate", "export", str(other), "--reference", str(teacher)], env=ENV
    )
    assert res.exit_code == 2 and "state_dim" in res.output, res.output
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    res = runner.invoke(
        app,
        ["validate", "export", str(teacher), "--reference", str(teacher), "--store", empty],
        env=ENV,
    )
    assert res.exit_code == 2 and "held-out" in res.output, res.output


def test_observations_come_from_the_store_held_out_split(teacher, tmp_path):
    url = make_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    manifest = read_manifest(teacher)
    obs = store_observations(url, manifest, 5)
    assert len(obs) == 5 and obs[0].images["cam"].shape == (32, 32, 3)
    report = validate_export(teacher, teacher, store=url, observations=2, samples=3)
    assert report.observations_source.startswith("store held-out") and report.passed
    with pytest.raises(ValidationError, match="held-out"):
        store_observations(f"sqlite:///{tmp_path / 'empty.sqlite'}", manifest, 5)
