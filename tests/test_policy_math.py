import numpy as np
import pytest
import torch

from reflex_serve.policy import tokenizer
from reflex_serve.policy.configuration import PolicyConfig
from reflex_serve.policy.data import chunk_indices, random_shift
from reflex_serve.policy.flow import euler_sample, euler_schedule, interpolate, sample_time
from reflex_serve.policy.modeling import FlowMatchingVLA
from reflex_serve.policy.normalize import Stats


def test_euler_schedule_teacher_uses_s_equal_t_and_student_uses_step_end():
    assert euler_schedule(2) == [(1.0, 1.0), (0.5, 0.5)]
    assert euler_schedule(1, "shortcut") == [(1.0, 0.0)]
    assert euler_schedule(4, "shortcut")[-1] == (0.25, 0.0)
    with pytest.raises(ValueError, match="num_steps"):
        euler_schedule(0)


def test_euler_on_constant_velocity_field_lands_on_the_data_point():
    a = np.array([[0.3, -0.2]], dtype=np.float32)
    noise = np.array([[1.0, 2.0]], dtype=np.float32)
    # the exact flow of x_t = t*eps + (1-t)*a has constant velocity eps - a
    out = euler_sample(lambda x, t, s: noise - a, noise, num_steps=7)
    np.testing.assert_allclose(out, a, atol=1e-6)


def test_interpolation_endpoints_and_time_distribution():
    a, eps = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    assert torch.allclose(interpolate(a, eps, torch.ones(3)), eps)
    assert torch.allclose(interpolate(a, eps, torch.zeros(3)), a)
    t = sample_time(200_000, torch.Generator().manual_seed(0))
    assert 0.001 <= float(t.min()) and float(t.max()) <= 1.0
    # Beta(1.5, 1) has mean 0.6; scaled by 0.999 and shifted by 0.001
    assert abs(float(t.mean()) - (0.6 * 0.999 + 0.001)) < 3e-3


def test_tokenizer_is_deterministic_padded_and_truncated():
    ids = tokenizer.tokenize("Reach the RED goal!", 6, 1024)
    assert ids.dtype == np.int64 and ids.shape == (6,)
    assert list(ids[4:]) == [0, 0] and all(0 < i < 1024 for i in ids[:4])
    assert np.array_equal(ids, tokenizer.tokenize("reach the red goal", 6, 1024))
    assert tokenizer.tokenize("a b c d e f g h", 3, 1024).tolist() == tokenizer.tokenize("a b c", 3, 1024).tolist()
    assert not tokenizer.tokenize("", 4, 1024).any()


def test_stats_floor_constant_dimensions_and_round_trip():
    x = np.stack([np.linspace(-1, 1, 50), np.full(50, 3.0)], axis=1)
    st = Stats.fit(x, std_floor=0.01)
    assert st.std[1] == pytest.approx(0.01)
    np.testing.assert_allclose(st.unnormalize(st.normalize(x)), x, atol=1e-5)


def test_chunk_indices_stay_inside_their_episode():
    idx = chunk_indices(np.array([0, 0, 0, 1, 1]), 3)
    assert idx.tolist() == [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]]


def test_random_shift_keeps_shape_dtype_and_moves_pixels():
    img = torch.zeros(4, 1, 16, 16, 3, dtype=torch.uint8)
    img[:, :, 8, 8] = 255
    out = random_shift(img, 3, torch.Generator().manual_seed(1))
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert int((out == 255).sum()) == 4 * 3  # one white pixel per image survives
    assert not torch.equal(out, img)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_action_steps"):
        PolicyConfig(chunk_size=4, n_action_steps=5)
    with pytest.raises(ValueError, match="multiples of 16"):
        PolicyConfig(cameras=[["c", 60, 64]])
    with pytest.raises(ValueError, match="num_heads"):
        PolicyConfig(width=30, num_heads=4)


def test_target_time_embedding_is_zero_initialised_so_s_is_ignored():
    torch.manual_seed(0)
    cfg = PolicyConfig(width=32, num_heads=2, prefix_layers=1, expert_layers=2, state_dim=5)
    model = FlowMatchingVLA(cfg).eval()
    images = torch.randint(0, 256, (2, 1, 64, 64, 3), dtype=torch.uint8)
    tokens = torch.randint(1, 1024, (2, 16))
    kv, mask = model.encode_prefix(images, tokens)
    assert kv.shape == (2, 2, 2, cfg.prefix_len, 32) and mask.shape == (2, cfg.prefix_len)
    x, t, state = torch.randn(2, 8, 4), torch.rand(2), torch.randn(2, 5)
    v1 = model.velocity(x, t, torch.zeros(2), state, kv, mask)
    v2 = model.velocity(x, t, torch.ones(2), state, kv, mask)
    assert v1.shape == (2, 8, 4)
    assert torch.equal(v1, v2)
    # padded text positions are masked out of attention, image tokens never are
    tokens[:, 10:] = 0
    _, mask = model.encode_prefix(images, tokens)
    n_img = cfg.image_tokens
    assert mask[:, :n_img].eq(1).all() and mask[:, n_img + 10:].eq(0).all() and mask[:, n_img:n_img + 10].eq(1).all()
