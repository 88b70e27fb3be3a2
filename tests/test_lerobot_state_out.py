"""pi0.5's ``--state-out`` student through the product: a tiny pi0.5 imported offline,
served with --collect-data over HTTP, distilled from the store with ``reflex train
distill --state-out``, validated against the teacher, served with the prefix cache on.

The teacher writes the state into its prompt, so its prefix cache misses whenever the
state changes; the student's prompt holds no state (its expert takes it), so the same
images and instruction hit the cache whatever the state. Skipped without the LeRobot
venv (the tiny checkpoint is built there); about a minute on two loaded cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from distill_helpers import make_teacher, one_thread  # noqa: F401
from lerobot_helpers import requires_venv
from lerobot_pi_helpers import tokenizer_file
from typer.testing import CliRunner

from reflex_serve.cli import app
from reflex_serve.client import ReflexClient
from reflex_serve.export.manifest import read_manifest
from reflex_serve.export.parity import random_observations
from reflex_serve.lerobot_import import venv
from reflex_serve.lerobot_import.paligemma import PiArch
from reflex_serve.lerobot_import.pi05_state_out import (
    STATE_FREE_TEMPLATE,
    Pi05StateOutExpert,
    from_teacher,
)
from reflex_serve.lerobot_import.registry import load_modules
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import Observation
from reflex_serve.server.runner import spawn_server

pytestmark = requires_venv

runner = CliRunner()
ENV = {"COLUMNS": "200"}
SERVED = 64
FAST = ["--steps", "40", "--batch-size", "8", "--threads", "1", "--no-progress"]


def invoke(*args: str):
    return runner.invoke(app, list(args), env=ENV)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("state-out")
    hf_home = root / "hf"
    venv.build_tiny("pi05", root / "ckpt", seed=0, hf_home=hf_home)
    tok = str(tokenizer_file(hf_home))
    res = invoke("import", "lerobot", str(root / "ckpt"), "--output", str(root / "teacher"), "--tokenizer", tok)
    assert res.exit_code == 0, res.output
    return root / "teacher"


@pytest.fixture(scope="module")
def served(teacher) -> Path:
    """The teacher's data directory after SERVED /act calls with --collect-data."""
    data_dir = teacher.parent / "data"
    proc, url = spawn_server(teacher, "--collect-data", "--data-dir", str(data_dir))
    try:
        client = ReflexClient(url)
        for i, o in enumerate(random_observations(Policy(teacher), SERVED, seed=3)):
            client.act(o, episode_id=f"e{i // 8}", step=i % 8)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return data_dir


def distil(teacher: Path, served: Path, name: str, *extra: str) -> Path:
    out = teacher.parent / name
    res = invoke(
        "train", "distill", str(teacher), "--output", str(out), "--data-dir", str(served),
        "--run-dir", str(teacher.parent / f"{name}-run"), "--state-out", *FAST, *extra,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "state-out" in res.output and "labelled observations {'served':" in res.output
    return out


@pytest.fixture(scope="module")
def student(teacher, served) -> Path:
    return distil(teacher, served, "student")


def same_scene(policy: Policy, states: list[np.ndarray]) -> list[Observation]:
    """Observations with one set of images and one instruction, one per state."""
    base = random_observations(policy, 1, seed=21)[0]
    return [Observation(images=base.images, state=s, instruction=base.instruction) for s in states]


def two_states(policy: Policy) -> list[np.ndarray]:
    """Two raw states one statistics-width apart (different bins in the teacher's prompt)."""
    mean, std = policy.stats.state.mean, policy.stats.state.std
    return [(mean - 0.5 * std).astype(np.float32), (mean + 0.5 * std).astype(np.float32)]


def test_manifest_moves_the_state_from_the_prompt_to_the_expert(teacher, student):
    t, s = read_manifest(teacher), read_manifest(student, verify=True)
    assert (t.state_input, s.state_input) == ("prompt", "expert")
    assert "{state}" in t.tokenizer["template"] and "{state}" not in s.tokenizer["template"]
    assert s.tokenizer["template"] == STATE_FREE_TEMPLATE and "state_bins" not in s.tokenizer
    assert (s.num_steps, s.target_time, s.parent_version) == (1, "shortcut", t.digest)
    assert (student / "prefix.onnx").read_bytes() == (teacher / "prefix.onnx").read_bytes()
    expert_inputs = [i.name for i in ort.InferenceSession(str(student / "expert.onnx")).get_inputs()]
    assert expert_inputs == ["x_t", "t", "s", "state", "prefix_kv", "prefix_mask"]
    p = s.provenance
    assert p["objective"] == "trajectory"  # the --state-out default
    assert p["state_out"]["design"] == "adarms-state-mlp" and p["state_out"]["state_dim"] == t.max_state_dim


def test_expert_rebuilds_from_the_export_and_reads_the_state(student):
    _, expert = load_modules(student)
    assert isinstance(expert, Pi05StateOutExpert)
    out_layer = expert.state_embed.mlp[2]
    assert float(out_layer.weight.detach().abs().max()) > 0  # trained away from its zero start
    policy = Policy(student)
    noise = policy.make_noise(5)
    a, b = (policy.act(o, noise=noise).actions for o in same_scene(policy, two_states(policy)))
    assert float(np.abs(a - b).max()) > 1e-4  # the state reaches the actions through the expert
    feeds = [policy.prefix_inputs(o) for o in same_scene(policy, two_states(policy))]
    np.testing.assert_array_equal(feeds[0]["tokens"], feeds[1]["tokens"])


def test_student_round_trips_through_validate(teacher, student, served):
    res = invoke(
        "validate", "export", str(student), "--reference", str(teacher), "--data-dir", str(served), "--json",
    )  # fmt: skip
    assert res.exit_code in (0, 1), res.output  # a 40-step student need not reach the agreement bar
    report = json.loads(res.output)
    assert report["parity_max_abs"] < 1e-4 and report["is_parent"] is True
    energy = report["summary"]["relative_energy_pooled"]
    assert math.isfinite(energy) and energy >= 0.0
    print(f"state-out student vs teacher: pooled relative energy {energy:.4f}, passed {report['passed']}")


def cache_hits(export: Path) -> tuple[list[bool], list[np.ndarray]]:
    """cache_hit and actions of two /act calls: the same images and instruction, two states."""
    policy = Policy(export)
    proc, url = spawn_server(export)  # the prefix cache is on by default
    try:
        client = ReflexClient(url)
        results = [client.act(o, seed=7) for o in same_scene(policy, two_states(policy))]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    m = policy.manifest
    assert all(r.actions.shape == (m.chunk_size, m.action_dim) for r in results)
    return [r.cache_hit for r in results], [r.actions for r in results]


def test_student_prefix_cache_hits_across_states_the_teachers_does_not(teacher, student):
    hits, actions = cache_hits(student)
    assert hits == [False, True]
    assert float(np.abs(actions[0] - actions[1]).max()) > 1e-4  # the hit served the new state
    assert cache_hits(teacher)[0] == [False, False]


def test_snapflow_objective_with_state_out(teacher, served):
    out = distil(teacher, served, "snapflow", "--objective", "snapflow", "--steps", "8")
    m = read_manifest(out)
    assert (m.state_input, m.provenance["objective"]) == ("expert", "snapflow")
    losses = m.provenance["losses"]["last"]
    assert math.isfinite(losses["fm"]) and math.isfinite(losses["cons"])


def test_state_out_is_refused_for_other_teachers_naming_the_flag(tmp_path):
    native = make_teacher(tmp_path / "native")
    res = invoke("train", "distill", str(native), "--output", str(tmp_path / "s"), "--state-out", *FAST)
    assert res.exit_code == 2
    assert "--state-out" in res.output and "reflex-flow-vla" in res.output
    assert not (tmp_path / "s").exists()


def test_state_embedding_starts_at_zero(teacher):
    """At step 0 the state-out expert is the teacher's expert on the same prefix."""
    _, expert = load_modules(teacher)
    m = read_manifest(teacher)
    fresh = from_teacher(expert, PiArch.from_dict(m.provenance["architecture"]))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, m.chunk_size, m.max_action_dim, generator=gen)
    kv = torch.randn(2, m.num_kv_layers, 2, m.prefix_len, m.kv_dim, generator=gen)
    mask, t = torch.ones(2, m.prefix_len), torch.tensor([0.3, 0.9])
    state = torch.randn(2, m.max_state_dim, generator=gen)
    with torch.no_grad():
        assert torch.equal(fresh(x, t, t, state, kv, mask), expert(x, t, t, kv, mask))
