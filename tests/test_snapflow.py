import pytest
import torch

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
