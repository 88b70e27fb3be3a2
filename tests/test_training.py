import numpy as np
import pytest
import torch

from reflex_serve.policy.configuration import PolicyConfig
from reflex_serve.policy.data import FrameData
from reflex_serve.policy.train import TrainConfig, load_run, train_policy
from reflex_serve.policy.training import LoopConfig, cosine_lr

CFG = {"width": 32, "num_heads": 2, "prefix_layers": 1, "expert_layers": 2, "state_dim": 6,
       "action_dim": 3, "cameras": [["cam", 32, 32]], "chunk_size": 4, "n_action_steps": 2}


def frames(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return FrameData(
        images=rng.integers(0, 256, (n, 1, 32, 32, 3), dtype=np.uint8),
        state=rng.standard_normal((n, 6)).astype(np.float32),
        action=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        episode_index=np.repeat(np.arange(n // 20), 20),
        instruction=np.array(["reach the goal", "push it"] * (n // 2)),
    )


def test_same_seed_gives_identical_weights(tmp_path):
    loop = LoopConfig(steps=8, progress=False, warmup=2)
    train = TrainConfig(batch_size=8, threads=1, seed=3)
    a, _ = train_policy(frames(), PolicyConfig(**CFG), tmp_path / "a", loop, train)
    b, _ = train_policy(frames(), PolicyConfig(**CFG), tmp_path / "b", loop, train)
    c, _ = train_policy(frames(), PolicyConfig(**CFG), tmp_path / "c", loop, TrainConfig(batch_size=8, threads=1, seed=4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_loss_decreases_on_a_learnable_dataset(tmp_path):
    data = frames(200)
    data.action[:] = np.tanh(data.state[:, :3])  # the action is a function of the state
    loop = LoopConfig(steps=150, progress=False, warmup=10, lr=1e-3, log_every=10)
    train_policy(data, PolicyConfig(**CFG), tmp_path, loop, TrainConfig(batch_size=32, threads=1))
    losses = [float(line.split('"loss": ')[1].rstrip("}\n")) for line in (tmp_path / "train_log.jsonl").open()]
    # predicting v = 0 scores E|eps - a|^2 = 2; a network that learns nothing stays there
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:2])


def test_load_run_restores_the_ema_weights_and_config(tmp_path):
    model, stats = train_policy(frames(), PolicyConfig(**CFG), tmp_path, LoopConfig(steps=3, progress=False),
                                TrainConfig(batch_size=4, threads=1))
    loaded, loaded_stats, info = load_run(tmp_path)
    assert info["trained_steps"] == 3 and info["policy"]["width"] == 32
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    np.testing.assert_array_equal(stats.state.mean, loaded_stats.state.mean)
    with pytest.raises(FileNotFoundError, match="not a training run"):
        load_run(tmp_path / "nothing")


def test_data_that_does_not_fit_the_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="state_dim 6 / action_dim 3, config expects 39 / 3"):
        train_policy(frames(), PolicyConfig(**{**CFG, "state_dim": 39}), tmp_path, LoopConfig(steps=1, progress=False))


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    assert cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_teacher_training_leaves_the_target_time_embedding_at_zero(tmp_path):
    model, _ = train_policy(frames(), PolicyConfig(**CFG), tmp_path, LoopConfig(steps=5, progress=False, warmup=1),
                            TrainConfig(batch_size=8, threads=1))
    phi = model.expert.target_time_mlp[2]
    assert not phi.weight.any() and not phi.bias.any()
    assert model.expert.time_mlp[2].weight.abs().sum() > 0  # the flow-time embedding did train
