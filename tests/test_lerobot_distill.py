"""An imported LeRobot teacher through the product, as a user runs it: `reflex import
lerobot`, `reflex serve --collect-data` driven over HTTP, `reflex train distill` from the
store alone, `reflex validate export` against the teacher, `reflex serve` of the student,
`reflex gates run`, and `reflex eval` refusing, with the reason, a checkpoint whose suite
is not here.

The tiny checkpoints are built offline in the LeRobot venv (skipped without it). About
a minute per policy kind on two cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lerobot_helpers import requires_venv

from reflex_serve.client import ReflexClient
from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.parity import random_observations
from reflex_serve.lerobot_import import venv
from reflex_serve.runtime.policy import Policy
from reflex_serve.server.runner import spawn_server

pytestmark = requires_venv

KINDS = ["smolvla", "pi0"]
SERVED = 96  # requests logged by the teacher; the store holds 10% of episodes out


def reflex(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reflex_serve.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture(scope="module", params=KINDS)
def teacher(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"distill-{request.param}")
    venv.build_tiny(request.param, root / "ckpt", seed=0, hf_home=root / "hf-home")
    done = reflex("import", "lerobot", str(root / "ckpt"), "--output", str(root / "teacher"),
                  *tokenizer_option(root))
    assert done.returncode == 0, done.stderr
    return root / "teacher"


def tokenizer_option(root: Path) -> list[str]:
    """pi0 / pi0.5 read PaliGemma's tokenizer.json (the tiny build's fake hub-cache entry)."""
    found = sorted((root / "hf-home" / "hub").glob("models--google--paligemma*/snapshots/*/tokenizer.json"))
    return ["--tokenizer", str(found[0])] if found else []


@pytest.fixture(scope="module")
def served(teacher) -> Path:
    """The teacher's data directory after SERVED /act calls with --collect-data."""
    data_dir = teacher.parent / "data"
    obs = random_observations(Policy(teacher), SERVED, seed=3)
    proc, url = spawn_server(teacher, "--collect-data", "--data-dir", str(data_dir))
    try:
        client = ReflexClient(url)
        for i, o in enumerate(obs):
            res = client.act(o, episode_id=f"e{i // 8}", step=i % 8)
            assert res.actions.shape == (read_manifest(teacher).chunk_size, read_manifest(teacher).action_dim)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return data_dir


@pytest.fixture(scope="module")
def student(teacher, served) -> Path:
    out = teacher.parent / "student"
    done = reflex(
        "train", "distill", str(teacher), "--output", str(out), "--data-dir", str(served),
        "--steps", "40", "--batch-size", "8", "--run-dir", str(teacher.parent / "run"),
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "labelled observations {'served':" in done.stdout
    return out


def test_student_manifest_keeps_the_imported_layout(teacher, student):
    t, s = read_manifest(teacher), read_manifest(student, verify=True)
    assert (s.policy_kind, s.num_steps, s.target_time) == (t.policy_kind, 1, "shortcut")
    assert s.parent_version == t.digest
    assert (s.max_action_dim, s.max_state_dim, s.state_input) == (t.max_action_dim, t.max_state_dim, t.state_input)
    assert s.extra_artifacts == t.extra_artifacts
    for name in ("prefix.onnx", *t.extra_artifacts):  # frozen prefix: the cache is shared
        assert (student / name).read_bytes() == (teacher / name).read_bytes()
    assert s.provenance["kind"] == "snapflow-distill"
    assert s.provenance["checkpoint_sha256"] == t.provenance["checkpoint_sha256"]
    assert s.provenance["data"]["rows"]["served"] > 0


def test_student_round_trips_through_validate(teacher, student, served):
    done = reflex(
        "validate", "export", str(student), "--reference", str(teacher), "--threshold", "1e-3",
        "--data-dir", str(served), "--json",
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["passed"] is True and report["parity_max_abs"] < 1e-4
    assert report["is_parent"] is True
    assert 0.0 <= report["summary"]["relative_energy_pooled"] <= 0.4


def test_student_serves_one_step_chunks(teacher, student):
    proc, url = spawn_server(student)
    try:
        client = ReflexClient(url)
        obs = random_observations(Policy(student), 1, seed=9)[0]
        res = client.act(obs, seed=5)
        again = client.act(obs, seed=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    m = read_manifest(student)
    assert res.actions.shape == (m.chunk_size, m.action_dim)
    assert res.num_steps == 1 and res.version == m.version
    np.testing.assert_array_equal(res.actions, again.actions)


def test_gates_run_on_imported_exports_without_a_suite(teacher, student, served, tmp_path):
    done = reflex(
        "gates", "run", str(student), "--reference", str(teacher), "--data-dir", str(served),
        "--json", str(tmp_path / "gates.json"), timeout=900,
    )
    assert done.returncode == 1, done.stderr  # P1 / P2 not evaluated: may not ship
    gates = {g["gate"]: g for g in json.loads((tmp_path / "gates.json").read_text())["gates"]}
    for gate in ("P1", "P2"):
        assert gates[gate]["verdict"] == "not_evaluated"
        assert "names no simulation environment" in gates[gate]["detail"]
    assert gates["P3"]["verdict"] == "pass" and gates["P3"]["value"] < 0.4
    assert all(gates[s]["verdict"] == "pass" for s in ("S1", "S2", "S3"))


def test_eval_refuses_a_libero_checkpoint_naming_the_suite(teacher, tmp_path):
    ckpt = teacher.parent / "ckpt"
    libero = tmp_path / "ckpt"
    shutil.copytree(ckpt, libero)
    (libero / "train_config.json").write_text(json.dumps({"env": {"type": "libero", "task": "libero_10"}}))
    done = reflex("import", "lerobot", str(libero), "--output", str(tmp_path / "export"),
                  *tokenizer_option(teacher.parent))
    assert done.returncode == 0, done.stderr
    assert read_manifest(tmp_path / "export").provenance["env"]["type"] == "libero"
    done = reflex("eval", str(tmp_path / "export"), "--num-episodes", "1", "--no-progress")
    assert done.returncode == 2
    assert "trained for LIBERO" in done.stderr and "not installed" in done.stderr


def test_fewer_step_teacher_candidate_keeps_the_imported_files(teacher, served, tmp_path):
    """The loop's teacher@N candidate of an imported teacher: same artifacts (tokenizer.json
    included), its modules rebuilt from the teacher's provenance, validated and served."""
    out = tmp_path / "teacher@2"
    done = reflex("models", "derive", str(teacher), "--num-steps", "2", "--output", str(out))
    assert done.returncode == 0, done.stderr
    m = read_manifest(out, verify=True)
    assert m.num_steps == 2 and m.extra_artifacts == read_manifest(teacher).extra_artifacts
    done = reflex("validate", "export", str(out), "--reference", str(teacher), "--data-dir", str(served), "--json")
    report = json.loads(done.stdout)
    assert report["parity_max_abs"] < 1e-4 and report["student_num_steps"] == 2
