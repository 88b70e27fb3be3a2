"""SnapFlow objectives on a tiny model: step-0 equality, targets, weights, short runs."""

import copy

import pytest
import torch
from distill_helpers import one_thread  # noqa: F401

from reflex_serve.distill.snapflow import (
    SnapFlowConfig,
    consistency_target,
    one_step,
    snapflow_loss,
    teacher_actions,
)
from reflex_serve.policy.configuration import PolicyConfig
from reflex_serve.policy.modeling import FlowMatchingVLA


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    cfg = PolicyConfig(width=32, num_heads=2, prefix_layers=1, expert_layers=2, state_dim=5,
                       cameras=[["cam", 32, 32]], chunk_size=4, n_action_steps=2)
    model = FlowMatchingVLA(cfg)
    images = torch.randint(0, 256, (6, 1, 32, 32, 3), dtype=torch.uint8)
    tokens = torch.randint(1, 1024, (6, 16))
    with torch.no_grad():
        kv, mask = model.encode_prefix(images, tokens)
    return model, torch.randn(6, 5), kv, mask, torch.randn(6, 4, 4).clamp(-1, 1)


def test_student_at_step_zero_equals_the_teacher_for_every_target_time(setup):
    model, state, kv, mask, _ = setup
    x1 = torch.randn(6, 4, 4)
    one = torch.ones(6)
    v_inst = model.velocity(x1, one, one, state, kv, mask)
    v_short = model.velocity(x1, one, torch.zeros(6), state, kv, mask)
    assert torch.equal(v_inst, v_short)
    # so the 1-NFE student is exactly one Euler step of the teacher before training
    assert torch.allclose(one_step(model, x1, state, kv, mask), teacher_actions(model, x1, state, kv, mask, 1))


def test_one_nfe_formula_is_noise_minus_velocity_at_s0_t1(setup):
    model, state, kv, mask, _ = setup
    x1 = torch.randn(6, 4, 4)
    v = model.velocity(x1, torch.ones(6), torch.zeros(6), state, kv, mask)
    assert torch.equal(one_step(model, x1, state, kv, mask), x1 - v)


def test_consistency_target_carries_no_gradient(setup):
    model, state, kv, mask, _ = setup
    target = consistency_target(model, torch.randn(6, 4, 4), state, kv, mask)
    assert not target.requires_grad and target.grad_fn is None


def test_consistency_target_is_the_two_step_euler_shortcut(setup):
    model, state, kv, mask, _ = setup
    x1 = torch.randn(6, 4, 4)
    two_step = teacher_actions(model, x1, state, kv, mask, 2)
    assert torch.allclose(x1 - consistency_target(model, x1, state, kv, mask), two_step, atol=1e-6)


def test_loss_weights_and_batch_split(setup):
    model, state, kv, mask, actions = setup
    g = torch.Generator().manual_seed(0)
    terms = snapflow_loss(model, SnapFlowConfig(mix_ratio=0.5, alpha=0.5, lam=0.1), state, kv, mask, actions, g)
    expected = 0.5 * terms["fm"] + 0.5 * 0.1 * terms["cons"]
    assert torch.allclose(terms["loss"], expected) and terms["fm"] > 0 and terms["cons"] > 0
    only_fm = snapflow_loss(model, SnapFlowConfig(mix_ratio=0.0), state, kv, mask, actions, g)
    assert float(only_fm["cons"]) == 0.0
    with pytest.raises(ValueError, match="mix_ratio"):
        SnapFlowConfig(mix_ratio=1.5)
    with pytest.raises(ValueError, match="teacher"):
        snapflow_loss(model, SnapFlowConfig(objective="trajectory"), state, kv, mask, actions, g)


def test_gradient_reaches_the_target_time_embedding_only_through_the_student_output(setup):
    model, state, kv, mask, actions = setup
    terms = snapflow_loss(model, SnapFlowConfig(mix_ratio=1.0), state, kv, mask, actions)
    terms["loss"].backward()
    phi_out = model.expert.target_time_mlp[2].weight
    assert phi_out.grad is not None and phi_out.grad.abs().sum() > 0


def _trainer(model, state, kv, mask, actions, teacher=None):
    opt = torch.optim.Adam(list(model.expert.parameters()), lr=3e-3)
    g = torch.Generator().manual_seed(1)

    def train(cfg, steps):
        for _ in range(steps):
            terms = snapflow_loss(model, cfg, state, kv, mask, actions, g, teacher=teacher)
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()

    def measure(objective="snapflow"):
        eg = torch.Generator().manual_seed(123)
        cfg = SnapFlowConfig(mix_ratio=0.5, objective=objective)
        big = (state.repeat(8, 1), kv.repeat(8, 1, 1, 1, 1), mask.repeat(8, 1),
               actions.repeat(8, 1, 1))
        with torch.no_grad():
            terms = [snapflow_loss(model, cfg, *big, eg, teacher=teacher) for _ in range(2)]
        return sum(float(t["fm"]) for t in terms), sum(float(t["cons"]) for t in terms)

    return train, measure


def test_a_short_run_lowers_both_losses(setup):
    model, state, kv, mask, actions = setup
    train, measure = _trainer(model, state, kv, mask, actions)
    fm_init, _ = measure()
    train(SnapFlowConfig(mix_ratio=0.0), 80)  # a flow-matching teacher: its field curves
    fm_teacher, cons_teacher = measure()
    train(SnapFlowConfig(mix_ratio=0.5, lam=1.0), 80)
    fm, cons = measure()
    # the FM term trained from scratch and is kept; the consistency gap closes
    assert fm < 0.7 * fm_init and fm < 1.25 * fm_teacher, (fm_init, fm_teacher, fm)
    assert cons < 0.5 * cons_teacher, (cons_teacher, cons)


def test_trajectory_objective_regresses_on_the_teachers_n_step_result(setup):
    model, state, kv, mask, actions = setup
    train, _ = _trainer(model, state, kv, mask, actions)
    train(SnapFlowConfig(mix_ratio=0.0), 40)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cfg = SnapFlowConfig(mix_ratio=1.0, objective="trajectory", teacher_steps=10, lam=0.1)
    g = torch.Generator().manual_seed(5)
    terms = snapflow_loss(model, cfg, state, kv, mask, actions, g, teacher=teacher)
    # weighted like the consistency term: (1 - alpha) * lambda
    assert torch.allclose(terms["loss"], 0.05 * terms["cons"])
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(actions.shape, generator=g)
    with torch.no_grad():
        pred = model.velocity(x1, torch.ones(6), torch.zeros(6), state, kv, mask)
        target = x1 - teacher_actions(teacher, x1, state, kv, mask, 10)
    assert torch.allclose(terms["cons"], ((pred - target) ** 2).mean(), atol=1e-6)
    # the teacher's own prefix is used for its target when given
    g = torch.Generator().manual_seed(5)
    other = snapflow_loss(model, cfg, state, kv, mask, actions, g, teacher=teacher,
                          teacher_prefix=(kv.flip(0), mask))
    assert not torch.allclose(other["cons"], terms["cons"])
    # and a short run of trajectory samples closes the gap to the 10-step teacher
    train2, measure2 = _trainer(model, state, kv, mask, actions, teacher)
    _, before = measure2("trajectory")
    train2(SnapFlowConfig(mix_ratio=1.0, lam=1.0, objective="trajectory"), 40)
    _, after = measure2("trajectory")
    assert after < 0.3 * before, (before, after)


def test_config_checks():
    for bad in ({"alpha": 1.5}, {"lam": -1.0}, {"teacher_steps": 0}, {"objective": "x"}):
        with pytest.raises(ValueError):
            SnapFlowConfig(**bad)
