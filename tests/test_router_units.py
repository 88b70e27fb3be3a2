"""The router's statistics, evidence milestones, canary buckets and settings (no server)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from reflex_serve.router.config import ConfigError, RouterConfig, load_router_config
from reflex_serve.router.monitor import (
    ComparedRateSignal,
    DivergenceSignal,
    OutcomeSignal,
)
from reflex_serve.router.router import canary_bucket
from reflex_serve.router.shadow import lower_priority
from reflex_serve.router.stats import (
    binom_cdf,
    binom_sf,
    clopper_pearson_upper,
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


def errors(first_look: int, alpha: float, base_hits: int, base_n: int,
           max_increase: float = 0.0, max_rate: float = 1.0) -> ComparedRateSignal:
    """The errors signal: base_hits 5xx answers among the baseline's base_n calls."""
    return ComparedRateSignal("errors", "5xx errors", first_look, alpha, base_hits, base_n,
                              max_increase, max_rate)


def test_a_rate_signal_is_judged_at_evidence_milestones_however_often_it_is_asked():
    signal = errors(10, 0.01, 0, 4096)
    for _ in range(9):
        signal.add(True)
        assert signal.judge() is None  # nine bad samples, asked nine times: no look yet
    signal.add(True)
    breach = signal.judge()
    assert breach is not None and breach.figures["n"] == 10 and breach.figures["hits"] == 10
    assert breach.figures["look"] == 0 and breach.figures["alpha"] == 0.0025
    again = errors(10, 0.01, 0, 4096)
    for _ in range(10):
        again.add(True)
    assert again.judge().figures == breach.figures  # one judgement at the end: the same


def test_a_version_as_good_as_its_baseline_is_rarely_rolled_back():
    rng = np.random.default_rng(0)
    base, breaches, monitors = 0.05, 0, 200
    for _ in range(monitors):
        signal = errors(20, 0.05, int(rng.binomial(400, base)), 400)
        for hit in rng.random(1280) < base:  # looks at 20, 40, ..., 1280
            signal.add(bool(hit))
        breaches += signal.judge() is not None
    assert breaches <= 0.05 * monitors  # alpha bounds the false rollbacks over all looks


def test_a_clearly_worse_rate_is_caught_at_the_first_look_with_enough_evidence():
    rng = np.random.default_rng(1)
    signal = errors(200, 0.01, 4, 4096, max_increase=0.01, max_rate=0.05)
    looks = []
    for hit in rng.random(800) < 0.08:
        if signal.add(bool(hit)):
            looks.append(signal.judge())
    assert looks[0] is not None and looks[0].figures["n"] == 200
    assert looks[0].figures["p_value"] < 0.0025
    # U = the upper 99.5% bound of 4 in 4096 (0.25%), + 1 point
    assert looks[0].figures["limit"] == pytest.approx(clopper_pearson_upper(4, 4096, 0.005) + 0.01)


def test_errors_after_a_small_baseline_are_judged_against_the_ceiling():
    signal = errors(200, 0.01, 0, 20, max_increase=0.01, max_rate=0.05)
    assert signal.limit == 0.05 and signal.bound == "max_rate"  # U of 0 in 20 is 23%
    breached, reason, _ = signal.rule(200, 5, 0.0025)  # 2.5%: within the ceiling
    assert not breached
    breached, reason, figures = signal.rule(200, 25, 0.0025)  # 12.5%
    assert breached and "ceiling max_rate" in reason and figures["baseline_n"] == 20


def test_the_upper_bound_of_a_baseline_rate_matches_values_computed_by_hand():
    assert binom_cdf(3, 10, 0.5) == pytest.approx(176 / 1024)
    assert binom_cdf(10, 10, 0.3) == 1.0 and binom_cdf(-1, 10, 0.3) == 0.0
    assert clopper_pearson_upper(0, 10, 0.005) == pytest.approx(1 - 0.005 ** 0.1)  # 0.4113
    assert clopper_pearson_upper(0, 4096, 0.005) == pytest.approx(0.0012927, rel=1e-4)
    # the 99.5% quantile of Beta(k + 1, n - k): 0.387125 and 0.0052168
    assert clopper_pearson_upper(2, 20, 0.005) == pytest.approx(0.387125, rel=1e-5)
    upper = clopper_pearson_upper(10, 4096, 0.005)
    assert upper == pytest.approx(0.0052168, rel=1e-4)
    assert binom_cdf(10, 4096, upper) == pytest.approx(0.005, rel=1e-6)
    assert clopper_pearson_upper(0, 0, 0.005) == 1.0 == clopper_pearson_upper(5, 5, 0.005)


def violations(base_hits: int, base_n: int, max_rate: float = 0.03) -> ComparedRateSignal:
    """The action-limits signal with the default settings and a baseline of base_hits
    violating chunks of base_n."""
    return ComparedRateSignal("action_limits", "chunks outside the action limits", 1, 0.01,
                              base_hits, base_n, max_increase=0.0, max_rate=max_rate)


def first_breach(rate: float, base_rate: float, base_n: int, looks: int, rng):
    """One monitoring window of a version leaving the limits at ``rate`` after a baseline
    of ``base_n`` chunks at ``base_rate``, judged at every look (1, 2, 4, ... chunks)
    with the signal's own rule: the breaching look's figures, or None."""
    signal = violations(int(rng.binomial(base_n, base_rate)), base_n)
    hits = n = 0
    for look in range(looks):
        hits, n = hits + int(rng.binomial(2**look - n, rate)), 2**look
        alpha = look_alpha(signal.alpha, look)
        breached, _, figures = signal.rule(n, hits, alpha)
        if breached:
            return {"n": n, "alpha": alpha, **figures}
    return None


def test_a_rare_violation_against_a_small_clean_baseline_is_not_a_breach():
    signal = violations(0, 32)  # the previous version's 32 chunks since its own promote
    assert signal.limit == 0.03 and signal.bound == "max_rate"  # upper bound 15.2%
    for hit in [True] + [False] * 63:  # 1 of the first chunk, looks at 1, 2, ..., 64
        signal.add(hit)
        assert signal.judge() is None
    assert signal.last["n"] == 64 and signal.last["hits"] == 1
    assert signal.status()["baseline_upper"] == pytest.approx(1 - 0.005 ** (1 / 32))


def test_an_identical_copy_with_a_rare_violation_rate_is_rarely_rolled_back():
    rng = np.random.default_rng(2)
    rate, trials, total = 1 / 400, 600, 0  # the teacher's rate on synthetic input
    for base_n in (0, 8, 32, 128, 1024, 4096):  # from a fresh promote to a full baseline
        breaches = sum(first_breach(rate, rate, base_n, 15, rng) is not None
                       for _ in range(trials))  # 16384 chunks of the copy each
        assert breaches < 0.01 * trials, base_n
        total += breaches
    assert total < 0.01 * 6 * trials


def test_a_clearly_higher_violation_rate_is_rolled_back_on_enough_evidence():
    rng = np.random.default_rng(3)
    trials = 300
    # a full baseline at 0.25%: the comparison with it decides
    caught = [first_breach(0.10, 1 / 400, 4096, 12, rng) for _ in range(trials)]
    assert sum(b is not None for b in caught) >= 0.99 * trials
    for b in filter(None, caught):
        assert b["bound"] == "baseline" and b["limit"] < 0.01 < b["rate"]
        assert b["p_value"] < b["alpha"] and b["n"] <= 512
    # a baseline of 32 chunks says little: 10% is caught by the ceiling of 3%
    caught = [first_breach(0.10, 1 / 400, 32, 13, rng) for _ in range(trials)]
    assert sum(b is not None for b in caught) >= 0.99 * trials
    assert {b["bound"] for b in caught if b} == {"max_rate"}
    assert min(b["hits"] for b in caught if b) >= 2  # 2 of 2 at the least


def test_a_version_whose_every_chunk_leaves_the_limits_is_rolled_back_within_two_chunks():
    for (base_hits, base_n), chunks in {(0, 0): 2, (0, 32): 2, (0, 200): 2, (0, 4096): 1,
                                        (10, 4096): 2, (400, 4096): 2}.items():
        signal = violations(base_hits, base_n)
        for n in range(1, 9):
            signal.add(True)
            breach = signal.judge()
            if breach is not None:
                break
        assert breach is not None and breach.figures["n"] == n == chunks, (base_hits, base_n)
        assert breach.figures["limit"] == min(0.03, signal.base_upper)
        assert f"{n} of {n} (100.00%)" in breach.reason
    with pytest.raises(ConfigError, match=r"action_limits\.max_rate"):
        load_router_config(action_limits={"max_rate": 0})


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
