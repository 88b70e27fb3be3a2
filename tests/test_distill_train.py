"""The distillation run: the teacher check, the student at step 0, determinism, resume,
the frozen-prefix cache, both objectives."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from distill_helpers import make_demo_dir, make_teacher, one_thread  # noqa: F401

from reflex_serve.distill.data import DataSpec, load_data
from reflex_serve.distill.prefix import PrefixFeatures
from reflex_serve.distill.snapflow import one_step, teacher_actions
from reflex_serve.distill.teacher import TeacherError, load_teacher, make_student
from reflex_serve.distill.trainer import DistillConfig, DistillError, distill
from reflex_serve.export.manifest import read_manifest, write_manifest
from reflex_serve.export.onnx_export import export_policy


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = load_teacher(make_teacher(root / "teacher"))
    data = load_data(
        DataSpec(data=str(make_demo_dir(root / "demos"))), teacher.manifest, teacher.stats
    )
    return root, teacher, data


def cfg(**kw) -> DistillConfig:
    args = {
        "steps": 6,
        "batch_size": 8,
        "threads": 1,
        "progress": False,
        "log_every": 1,
        "lr": 1e-3,
    }
    args.update(kw)
    return DistillConfig(**args)


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_student_at_step_zero_is_the_teacher(setup):
    _, teacher, data = setup
    student = make_student(teacher)
    assert teacher.phi_zero
    kv, mask = teacher.model.encode_prefix(data.images[:5], data.tokens[:5])
    x1, state = torch.randn(5, 4, 4), data.state[:5]
    with torch.no_grad():
        ours = one_step(student, x1, state, kv, mask)
        assert torch.equal(ours, teacher_actions(teacher.model, x1, state, kv, mask, 1))
        # and its shortcut schedule equals the teacher's instantaneous one at any N
        img, tok = data.images[:5], data.tokens[:5]
        a10 = student.sample(img, tok, state, x1, 10, "shortcut")
        assert torch.equal(a10, teacher.model.sample(img, tok, state, x1, 10, "instantaneous"))
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("expert.") for n in trainable)
    assert "expert.target_time_mlp.2.weight" in trainable


def test_only_flow_matching_teachers_are_accepted(setup, tmp_path):
    _root, teacher, _ = setup
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher(tmp_path / "nothing")
    student_dir = tmp_path / "student"
    export_policy(
        teacher.model,
        teacher.stats,
        student_dir,
        num_steps=1,
        target_time="shortcut",
        parent_version=teacher.manifest.digest,
        prefix_onnx_from=teacher.path / "prefix.onnx",
    )
    with pytest.raises(TeacherError, match="target_time is 'shortcut'.*'instantaneous'"):
        load_teacher(student_dir)
    other = tmp_path / "other"
    shutil.copytree(teacher.path, other)
    manifest = read_manifest(other)
    manifest.policy_kind = "openpi-pi0"
    write_manifest(other, manifest)
    with pytest.raises(TeacherError, match="policy_kind is 'openpi-pi0'.*lerobot-pi0"):
        load_teacher(other)
    (other / "manifest.json").write_text(
        (other / "manifest.json").read_text().replace("pi0", "pi1")
    )
    with pytest.raises(TeacherError, match="does not match its manifest digest"):
        load_teacher(other)


def test_same_seed_and_data_give_identical_weights(setup, tmp_path):
    _, teacher, data = setup
    a = distill(teacher, data, cfg(seed=1), tmp_path / "a", echo=lambda s: None)
    b = distill(teacher, data, cfg(seed=1), tmp_path / "b", echo=lambda s: None)
    c = distill(teacher, data, cfg(seed=2), tmp_path / "c", echo=lambda s: None)
    wa, wb, wc = weights(a.student), weights(b.student), weights(c.student)
    assert same(wa, wb) and not same(wa, wc)
    assert not same(wa, weights(teacher.model))
    # the frozen prefix is bit for bit the teacher's
    tw = weights(teacher.model)
    assert all(torch.equal(wa[k], tw[k]) for k in wa if k.startswith("prefix."))
    log = [
        json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    ]
    assert len(log) == 6 and {"step", "lr", "loss", "fm", "cons"} <= set(log[0])
    assert a.losses["last"]["step"] == 5 and a.steps == 6


def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(setup, tmp_path):
    _, teacher, data = setup
    full = distill(teacher, data, cfg(steps=8), tmp_path / "full", echo=lambda s: None)
    # max_minutes=0 stops after the first step, leaving a checkpoint
    part = distill(
        teacher, data, cfg(steps=8, max_minutes=0), tmp_path / "part", echo=lambda s: None
    )
    assert part.steps == 1
    with pytest.raises(DistillError, match="--resume"):
        distill(teacher, data, cfg(steps=8), tmp_path / "part", echo=lambda s: None)
    with pytest.raises(DistillError, match="lr was"):
        distill(
            teacher,
            data,
            cfg(steps=8, lr=5e-4),
            tmp_path / "part",
            resume=True,
            echo=lambda s: None,
        )
    rest = distill(teacher, data, cfg(steps=8), tmp_path / "part", resume=True, echo=lambda s: None)
    assert rest.steps == 8 and rest.session_steps == 7
    assert same(weights(full.student), weights(rest.student))
    with pytest.raises(DistillError, match="no distillation run"):
        distill(teacher, data, cfg(), tmp_path / "empty", resume=True, echo=lambda s: None)


def test_resume_refuses_other_data(setup, tmp_path):
    _root, teacher, data = setup
    distill(teacher, data, cfg(steps=2), tmp_path / "run", echo=lambda s: None)
    other = load_data(
        DataSpec(data=str(make_demo_dir(tmp_path / "d2", seed=5))), teacher.manifest, teacher.stats
    )
    with pytest.raises(DistillError, match="data differ"):
        distill(teacher, other, cfg(steps=4), tmp_path / "run", resume=True, echo=lambda s: None)


def test_partial_prefix_cache_matches_direct_computation(setup):
    _, teacher, data = setup
    model = teacher.model
    direct = PrefixFeatures(model, data.prefix_inputs(), 0)
    one = direct.frame_bytes
    partial = PrefixFeatures(model, data.prefix_inputs(), 10 * one)
    full = PrefixFeatures(model, data.prefix_inputs(), 1e12)
    assert (direct.cached, partial.cached, full.cached) == (0, 10, data.size)
    idx = torch.tensor([0, 3, 20, 9, 47, 10])
    with torch.no_grad():
        ref_kv, ref_mask = model.encode_prefix(data.images[idx], data.tokens[idx])
    for feats in (direct, partial, full):
        kv, mask = feats.get(idx)
        assert not kv.requires_grad
        torch.testing.assert_close(kv, ref_kv, atol=1e-5, rtol=1e-5)
        assert torch.equal(mask, ref_mask)


def test_trajectory_objective_and_a_non_zero_phi_teacher(setup, tmp_path):
    _, teacher, data = setup
    lines = []
    res = distill(teacher, data, cfg(objective="trajectory"), tmp_path / "traj", echo=lines.append)
    assert {"fm", "traj"} <= set(res.losses["last"]) and res.losses["last"]["traj"] > 0
    assert not any("warning" in line for line in lines)
    trained_phi = load_teacher(teacher.path)
    with torch.no_grad():
        trained_phi.model.expert.target_time_mlp[2].bias.fill_(0.01)
    trained_phi.phi_zero = False
    distill(trained_phi, data, cfg(steps=1), tmp_path / "phi", echo=lines.append)
    assert any("phi(s) is not zero" in line for line in lines)
