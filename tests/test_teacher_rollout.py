"""The shipped teacher drives MetaWorld through a real HTTP server on loopback."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

from reflex_serve.assets import default_teacher
from reflex_serve.client import ReflexClient
from reflex_serve.export.manifest import read_manifest
from reflex_serve.runtime.cache import PrefixCache
from reflex_serve.runtime.policy import Policy
from reflex_serve.server.app import create_app
from reflex_serve.server.runner import BackgroundServer
from reflex_serve.sim.env import SimEnv
from reflex_serve.sim.evaluate import evaluate, sim_settings_from_manifest


def test_shipped_teacher_is_a_verified_export_under_25_mb():
    path = default_teacher()
    m = read_manifest(path, verify=True)
    assert m.num_steps == 10 and m.target_time == "instantaneous"
    assert (m.state_dim, m.action_dim, m.chunk_size, m.n_action_steps) == (39, 4, 8, 4)
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 25 * 2**20


def test_shipped_teacher_solves_metaworld_episodes_through_http():
    policy = Policy(default_teacher(), cache=PrefixCache(8 << 20))
    with BackgroundServer(create_app(policy)) as server, ReflexClient(server.url) as client:
        client.wait_ready()
        report = evaluate(client, ["reach-v3", "button-press-v3"], num_episodes=2, progress=False,
                          **sim_settings_from_manifest(policy.manifest))
    # about 99% per episode on held-out seeds (docs/teacher.md); 3 of 4 leaves room for one miss
    assert report.successes >= 3, report.to_markdown()
    assert report.latency.act_calls >= 8 and list(report.config["model_versions"]) == [policy.version]


def test_teacher_actions_point_the_hand_toward_the_reach_goal():
    policy = Policy(default_teacher())
    with SimEnv("reach-v3") as env:
        obs = env.reset(1_000_123)
        hand, goal = obs.state[:3], env.raw_obs[36:39]
        chunk = policy.act(obs, seed=0).actions
    assert chunk.shape == (8, 4) and np.all(np.isfinite(chunk))
    move = chunk[:4, :3].mean(0)
    cos = float(move @ (goal - hand) / (np.linalg.norm(move) * np.linalg.norm(goal - hand)))
    assert cos > 0.7, (move, goal - hand)
