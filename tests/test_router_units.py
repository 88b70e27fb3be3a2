"""The router's statistics, evidence milestones, canary buckets and settings (no server)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from reflex_serve.router.config import ConfigError, RouterConfig, load_router_config
from reflex_serve.router.monitor import DivergenceSignal, OutcomeSignal, RateSignal
from reflex_serve.router.router import canary_bucket
from reflex_serve.router.shadow import lower_priority
from reflex_serve.router.stats import (
    binom_sf,
    look_alpha,
    one_sided_p_drop,
    wilson_lower,
    z_for,
)


def test_statistics_match_values_computed_by_hand():
    assert binom_sf(3, 10, 0.5) == pytest.approx(0.9453125)  # 1 - (1 + 10 + 45) / 1024
    assert binom_sf(10, 10, 0.5) == pytest.approx(1 / 1024)
    assert binom_sf(5, 200, 0.01) == pytest.approx(0.05174, abs=2e-4)
    assert binom_sf(0, 10, 0.3) == 1.0 and binom_sf(11, 10, 0.3) == 0.0
    assert wilson_lower(8, 10, 1.96) == pytest.approx(0.4902, abs=1e-4)
    assert wilson_lower(0, 50, 1.96) == 0.0
    assert z_for(0.025) == pytest.approx(1.95996, abs=1e-4)
    # 18/20 before vs 8/20 after: z = 0.5 / sqrt(0.65 * 0.35 * 0.1) = 3.315
    assert one_sided_p_drop(18, 20, 8, 20) == pytest.approx(4.6e-4, rel=0.05)
    assert one_sided_p_drop(20, 20, 20, 20) == 1.0


def test_the_looks_of_a_signal_never_spend_more_than_alpha():
    assert look_alpha(0.01, 0) == 0.005 and look_alpha(0.01, 3) == 0.01 / 16
    assert sum(look_alpha(0.01, k) for k in range(60)) < 0.01


def test_a_rate_signal_is_judged_at_evidence_milestones_however_often_it_is_asked():
    signal = RateSignal("errors", "5xx errors", 10, 0.01, base_rate=0.0, max_increase=0.0)
    for _ in range(9):
        signal.add(True)
        assert signal.judge() is None  # nine bad samples, asked nine times: no look yet
    signal.add(True)
    breach = signal.judge()
    assert breach is not None and breach.figures["n"] == 10 and breach.figures["hits"] == 10
    assert breach.figures["look"] == 0 and breach.figures["alpha"] == 0.005
    again = RateSignal("errors", "5xx errors", 10, 0.01, base_rate=0.0, max_increase=0.0)
    for _ in range(10):
        again.add(True)
    assert again.judge().figures == breach.figures  # one judgement at the end: the same


def test_a_version_as_good_as_its_baseline_is_rarely_rolled_back():
    rng = np.random.default_rng(0)
    base, breaches, monitors = 0.05, 0, 200
    for _ in range(monitors):
        signal = RateSignal("action_limits", "x", 20, 0.05, base_rate=base, max_increase=0.0)
        for hit in rng.random(1280) < base:  # looks at 20, 40, ..., 1280
            signal.add(bool(hit))
        breaches += signal.judge() is not None
    assert breaches <= 0.05 * monitors  # alpha bounds the false rollbacks over all looks


def test_a_clearly_worse_rate_is_caught_at_the_first_look_with_enough_evidence():
    rng = np.random.default_rng(1)
    signal = RateSignal("errors", "x", 200, 0.01, base_rate=0.001, max_increase=0.01)
    looks = []
    for hit in rng.random(800) < 0.08:
        if signal.add(bool(hit)):
            looks.append(signal.judge())
    assert looks[0] is not None and looks[0].figures["n"] == 200
    assert looks[0].figures["p_value"] < 0.005 and looks[0].figures["limit"] == 0.011


def test_divergence_breaches_only_when_its_lower_bound_clears_the_limit():
    near = DivergenceSignal(10, 0.01, limit=0.5, disabled=None)
    far = DivergenceSignal(10, 0.01, limit=0.5, disabled=None)
    for d in np.linspace(0.3, 0.7, 10):  # mean 0.5: not above the limit
        near.add(float(d))
        far.add(float(d) + 1.0)
    assert near.judge() is None and near.last["mean"] == pytest.approx(0.5)
    breach = far.judge()
    assert breach.signal == "divergence" and breach.figures["lower_bound"] > 0.5


def test_episode_success_needs_a_significant_drop_of_at_least_min_drop():
    baseline = [True] * 18 + [False] * 2
    worse = OutcomeSignal(20, 0.01, 0.05, baseline, None)
    worse.poll(lambda n: ([True] * 8 + [False] * 12)[:n])
    breach = worse.judge()
    assert breach is not None and breach.figures["rate"] == 0.4
    assert breach.figures["baseline_rate"] == 0.9
    same = OutcomeSignal(20, 0.01, 0.05, baseline, None)
    same.poll(lambda n: ([True] * 17 + [False] * 3)[:n])
    assert same.judge() is None and same.last["n"] == 20
    few = OutcomeSignal(20, 0.01, 0.05, baseline, None)
    few.poll(lambda n: [False] * min(n, 19))
    assert few.judge() is None and few.n == 19  # 19 failures: below the first look


def test_canary_episodes_are_sticky_and_a_larger_share_only_adds_episodes():
    ids = [f"ep-{i}" for i in range(2000)]
    buckets = {e: canary_bucket(e, "sha256:abc") for e in ids}
    assert all(canary_bucket(e, "sha256:abc") == b for e, b in buckets.items())
    at10 = {e for e, b in buckets.items() if b < 0.1}
    at30 = {e for e, b in buckets.items() if b < 0.3}
    assert at10 < at30 and 140 < len(at10) < 260 and 500 < len(at30) < 700
    other = {e for e in ids if canary_bucket(e, "sha256:def") < 0.1}
    assert len(other & at10) < 60  # another canary samples other episodes


def test_router_settings_name_the_setting_at_fault(tmp_path):
    with pytest.raises(ConfigError, match=r"latency\.p99_ratio"):
        load_router_config(latency={"p99_ratio": 0.5})
    with pytest.raises(ConfigError, match=r"monitor\.windw_s: unknown setting"):
        RouterConfig().replace("monitor", windw_s=3)
    path = tmp_path / "router.toml"
    path.write_text("[monitor]\nwindow_s = 30\n[divergence]\nmax_divergence = 0.2\n")
    cfg = load_router_config(path)
    assert cfg.monitor.window_s == 30 and cfg.divergence.max_divergence == 0.2
    assert cfg.errors == RouterConfig().errors


def test_mirrored_calls_never_run_above_the_priority_of_a_niced_server():
    seen = {}

    def niced_server_thread() -> None:  # as under `nice -n 15 reflex serve`
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(15, os.getpriority(os.PRIO_PROCESS, tid)))
        seen["server"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["mirror"] = lower_priority(10)  # shadow.nice = 10 must not raise it
        seen["lower"] = lower_priority(19)

    thread = threading.Thread(target=niced_server_thread)
    thread.start()
    thread.join()
    assert seen["mirror"] == seen["server"] >= 15
    assert seen["lower"] == 19
