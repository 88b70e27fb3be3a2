"""Closed-loop evaluation with a real policy (MetaWorld's scripted experts) and the report."""

from __future__ import annotations

import json
import math
import os
import time
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from reflex_serve.runtime.types import ActResult, Observation
from reflex_serve.sim.collect import EVAL_SEED_START
from reflex_serve.sim.evaluate import ActClient, EvalReport, evaluate, run_eval, wilson_interval
from reflex_serve.sim.tasks import TASKS


class ScriptedExpertClient:
    """A real policy client: MetaWorld's scripted experts behind the ActClient protocol.

    The task is recognised from the instruction (every paraphrase belongs to one task),
    and the expert acts on the full 39-d state (state_mode "full"). It answers a chunk
    of ``chunk_size`` actions, all equal to the expert's action for this observation;
    with ``n_action_steps = 1`` the expert is re-run at every step (closed loop).
    """

    def __init__(
        self, n_action_steps: int | None = 1, chunk_size: int = 4, reply_nas: int | None = None
    ):
        if n_action_steps is not None:
            self.n_action_steps = n_action_steps
        self.chunk_size = chunk_size
        self.reply_nas = reply_nas
        self.by_instruction = {i: spec for spec in TASKS.values() for i in spec.instructions}
        self.experts: dict[str, object] = {}
        self.calls: list[tuple[str, int, int | None]] = []
        self.ended: list[tuple[str, bool, int]] = []

    def act(
        self, obs: Observation, *, episode_id: str, step: int, num_steps: int | None
    ) -> ActResult:
        t0 = time.perf_counter()
        spec = self.by_instruction[obs.instruction]
        expert = self.experts.setdefault(spec.name, spec.make_expert())
        assert obs.state.shape == (39,), "the scripted expert needs state_mode='full'"
        with warnings.catch_warnings():  # experts warn about actions beyond [-1, 1]
            warnings.simplefilter("ignore", UserWarning)
            a = expert.get_action(obs.state.astype(np.float64))
        a = np.clip(a, -1, 1).astype(np.float32)
        self.calls.append((episode_id, step, num_steps))
        ms = (time.perf_counter() - t0) * 1e3
        extra = {"n_action_steps": self.reply_nas} if self.reply_nas else {}
        return ActResult(
            actions=np.repeat(a[None], self.chunk_size, axis=0),
            num_steps=num_steps or 0,
            prefix_ms=0.0,
            expert_ms=ms,
            total_ms=ms,
            cache_hit=False,
            version="scripted-expert",
            extra=extra,
        )

    def end_episode(self, episode_id: str, *, success: bool, steps: int) -> None:
        self.ended.append((episode_id, success, steps))


def test_wilson_interval_known_values():
    # Wilson (1927) score interval, z = 1.96; reference values from the closed form
    # (k + z^2/2 -+ z sqrt(k (n-k) / n + z^2 / 4)) / (n + z^2).
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27754, abs=1e-5)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.72246, abs=1e-5) and hi == 1.0
    lo, hi = wilson_interval(47, 50)
    assert lo == pytest.approx(0.83783, abs=1e-4) and hi == pytest.approx(0.97939, abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    for k, n in [(1, 7), (30, 40), (2, 2)]:  # the closed form above agrees
        z = 1.96
        c = k + z * z / 2
        h = z * math.sqrt(k * (n - k) / n + z * z / 4)
        assert wilson_interval(k, n) == pytest.approx(
            ((c - h) / (n + z * z), (c + h) / (n + z * z))
        )


def test_scripted_expert_evaluation_report_and_gif(tmp_path):
    client = ScriptedExpertClient(n_action_steps=1)
    assert isinstance(client, ActClient)
    gif = tmp_path / "ep.gif"
    report = evaluate(
        client, ["reach-v3", "push-v3"], 2, num_steps=3, image_size=32, gif_path=gif, progress=False
    )
    assert report.success_rate == 1.0 and report.episodes == 4 and report.successes == 4
    for t in report.tasks:
        assert (t.episodes, t.successes, t.success_rate) == (2, 2, 1.0)
        assert (t.ci_low, t.ci_high) == pytest.approx(wilson_interval(2, 2))
        assert t.ci_low == pytest.approx(0.3424, abs=1e-4)
        assert t.seeds == [EVAL_SEED_START, EVAL_SEED_START + 1]  # disjoint from collection
        assert all(0 < n < 150 for n in t.lengths) and t.mean_length == pytest.approx(
            np.mean(t.lengths)
        )
    assert (report.ci_low, report.ci_high) == pytest.approx(wilson_interval(4, 4))
    # n_action_steps = 1: one act call per environment step, steps 0..len-1 of each episode
    total_steps = sum(sum(t.lengths) for t in report.tasks)
    assert report.latency.act_calls == total_steps == len(client.calls)
    first_ep = [c for c in client.calls if c[0] == client.calls[0][0]]
    assert [c[1] for c in first_ep] == list(range(len(first_ep)))
    assert all(c[2] == 3 for c in client.calls)
    assert len(client.ended) == 4 and all(ok for _, ok, _ in client.ended)
    lat = report.latency
    assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms and lat.server_total_ms_mean > 0
    c = report.config
    assert c["model_versions"] == {"scripted-expert": total_steps}
    assert c["num_steps_requested"] == 3 and c["num_steps_reported"] == [3]
    assert c["n_action_steps"] == [1] and c["n_action_steps_source"] == "client"
    assert c["seed"] == EVAL_SEED_START and c["tasks"] == ["reach-v3", "push-v3"]
    # serialisation
    d = json.loads(report.to_json())
    assert d["tasks"][0]["task"] == "reach-v3" and d["successes"] == 4
    assert EvalReport.from_dict(d).to_dict() == d
    md = report.to_markdown()
    assert "| task | success | 95% CI | mean length |" in md
    assert "| reach-v3 | 2/2 (100.0%) | [34.2, 100.0]% |" in md
    paths = report.save(tmp_path / "rep")
    assert json.loads(paths["json"].read_text())["episodes"] == 4
    assert paths["markdown"].read_text() == md
    # the GIF holds the first episode of each task, upright, upscaled x2
    import imageio.v3 as iio

    frames = iio.imread(gif)
    assert frames.ndim == 4 and frames.shape[1:3] == (64, 64) and frames.shape[0] > 20
    assert c["gif"] == str(gif)


def test_chunked_execution_and_n_action_steps_resolution(tmp_path):
    # no attribute, reply says 3 -> execute 3 actions per chunk of 4
    client = ScriptedExpertClient(n_action_steps=None, chunk_size=4, reply_nas=3)
    rep = evaluate(client, "reach-v3", 1, seed=7, image_size=16, progress=False)
    n = rep.tasks[0].lengths[0]
    assert rep.config["n_action_steps"] == [3] and rep.config["n_action_steps_source"] == "reply"
    assert rep.latency.act_calls == math.ceil(n / 3)
    assert [c[1] for c in client.calls] == list(range(0, n, 3))
    # nothing declared -> the whole chunk; the explicit argument wins over everything
    client = ScriptedExpertClient(n_action_steps=None, chunk_size=2)
    rep = evaluate(client, "reach-v3", 1, seed=7, image_size=16, progress=False)
    assert rep.config["n_action_steps_source"] == "chunk_size" and rep.config["n_action_steps"] == [
        2
    ]
    client = ScriptedExpertClient(n_action_steps=2, chunk_size=4)
    rep = run_eval(
        client,
        "reach-v3",
        1,
        seed=7,
        image_size=16,
        progress=False,
        n_action_steps=1,
        out_dir=tmp_path,
        print_report=False,
    )
    assert (
        rep.config["n_action_steps_source"] == "argument"
        and rep.latency.act_calls == rep.tasks[0].lengths[0]
    )
    assert (tmp_path / "eval.json").exists() and (tmp_path / "eval.md").exists()


def test_bad_client_replies_raise():
    class WrongShape:
        n_action_steps = 1

        def act(self, obs, *, episode_id, step, num_steps):
            return ActResult(np.zeros((4, 3), np.float32), 1, 0.0, 0.0, 0.0, False, "v")

    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        evaluate(WrongShape(), "reach-v3", 1, image_size=16, progress=False)
    with pytest.raises(ValueError, match="num_episodes"):
        evaluate(WrongShape(), "reach-v3", 0, progress=False)


def test_sim_settings_from_manifest():
    from reflex_serve.sim.evaluate import sim_settings_from_manifest

    m = {"cameras": [{"name": "corner2", "height": 64, "width": 48}], "state_dim": 4}
    assert sim_settings_from_manifest(m) == {
        "cameras": ("corner2",),
        "image_size": (64, 48),
        "state_mode": "proprio",
    }
    with pytest.raises(ValueError, match="state_dim"):
        sim_settings_from_manifest(dict(m, state_dim=7))
