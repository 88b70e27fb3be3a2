"""Router settings: one frozen dataclass per concern, checked when built, and a TOML loader.

    [monitor]        window_s, check_interval_s, alpha, baseline_requests
    [errors]         5xx share of /act calls
    [latency]        p99 of server time
    [action_limits]  chunks with a value outside the action limits
    [divergence]     the new version against the previous one on mirrored requests
    [outcomes]       episode success from reported outcomes
    [shadow]         the mirroring queue
    [promote]        warm-up before a swap
    [sync]           replicas polling the store

docs/router.md explains every rule; ``reflex serve --router-config FILE`` reads a TOML
file of the same sections on top of the defaults.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is out of range or unknown; the message names it (``latency.p99_ratio``)."""


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


@dataclass(frozen=True)
class MonitorConfig:
    """The post-swap window and how decisions are spread over it.

    ``alpha`` bounds the chance that one signal rolls back a version as good as the
    baseline over the whole window: look k of a signal is tested at ``alpha / 2**k``.
    ``baseline_requests``: the last N calls of the active version kept as its baseline.
    """

    window_s: float = 24 * 3600.0
    check_interval_s: float = 1.0
    alpha: float = 0.01
    baseline_requests: int = 4096

    def __post_init__(self) -> None:
        _require(self.window_s > 0, "monitor.window_s", "must be > 0")
        _require(self.check_interval_s > 0, "monitor.check_interval_s", "must be > 0")
        _require(0 < self.alpha < 0.5, "monitor.alpha", "must be in (0, 0.5)")
        _require(self.baseline_requests >= 10, "monitor.baseline_requests", "must be >= 10")


@dataclass(frozen=True)
class ErrorsRule:
    """Breach: more 5xx answers than a share of min(max_rate, U + max_increase) allows
    (exact one-sided binomial test), U the baseline's exact upper confidence bound: the
    action-limits rule (:class:`ActionLimitsRule`) applied to errors."""

    min_requests: int = 200
    max_increase: float = 0.01
    max_rate: float = 0.05

    def __post_init__(self) -> None:
        _require(self.min_requests >= 1, "errors.min_requests", "must be >= 1")
        _require(0 <= self.max_increase < 1, "errors.max_increase", "must be in [0, 1)")
        _require(0 < self.max_rate <= 1, "errors.max_rate", "must be in (0, 1]")


@dataclass(frozen=True)
class LatencyRule:
    """Breach: more new calls above T = max(p99_ratio x baseline p99, baseline p99 +
    min_increase_ms) than a p99 at T allows (exact binomial test, 1% above T)."""

    min_requests: int = 200
    min_baseline: int = 200
    p99_ratio: float = 2.0
    min_increase_ms: float = 5.0

    def __post_init__(self) -> None:
        _require(self.min_requests >= 1, "latency.min_requests", "must be >= 1")
        _require(self.min_baseline >= 100, "latency.min_baseline", "must be >= 100")
        _require(self.p99_ratio >= 1, "latency.p99_ratio", "must be >= 1")
        _require(self.min_increase_ms >= 0, "latency.min_increase_ms", "must be >= 0")


@dataclass(frozen=True)
class ActionLimitsRule:
    """Breach: more chunks with a value outside the limits than a share of
    min(max_rate, U + max_increase) allows (exact binomial test at the look's alpha),
    U the baseline's exact upper confidence bound at alpha/2 (the looks spend the other
    half). ``max_rate`` is the hard limit, whatever the baseline: a version whose chunks
    all leave the limits is rolled back on its 2nd chunk at most (defaults).
    Limits: the manifest's ``action_limits`` (the previous version's, else the new one's),
    else the previous version's data range widened by ``margin`` x width on each side."""

    min_chunks: int = 1
    max_increase: float = 0.0
    max_rate: float = 0.03
    margin: float = 0.1

    def __post_init__(self) -> None:
        _require(self.min_chunks >= 1, "action_limits.min_chunks", "must be >= 1")
        _require(0 <= self.max_increase < 1, "action_limits.max_increase", "must be in [0, 1)")
        _require(0 < self.max_rate <= 1, "action_limits.max_rate", "must be in (0, 1]")
        _require(self.margin >= 0, "action_limits.margin", "must be >= 0")


@dataclass(frozen=True)
class DivergenceRule:
    """Breach: lower confidence bound of the mean divergence (RMS chunk difference in the
    previous version's action standard deviations, same observation and noise) >
    ``max_divergence``. ``mirror_fraction`` of the new version's calls are mirrored."""

    min_comparisons: int = 30
    max_divergence: float = 0.5
    mirror_fraction: float = 0.1

    def __post_init__(self) -> None:
        _require(self.min_comparisons >= 2, "divergence.min_comparisons", "must be >= 2")
        _require(self.max_divergence > 0, "divergence.max_divergence", "must be > 0")
        _require(0 <= self.mirror_fraction <= 1, "divergence.mirror_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class OutcomesRule:
    """Breach: one-sided two-proportion z-test says the new success rate is below the
    baseline's, and the observed drop is at least ``min_drop``. The baseline: the
    previous version's episodes reported in the ``baseline_window_s`` before the swap
    (the newest ``baseline_max``)."""

    min_episodes: int = 20
    min_drop: float = 0.05
    baseline_window_s: float = 7 * 24 * 3600.0
    baseline_max: int = 1000

    def __post_init__(self) -> None:
        _require(self.min_episodes >= 2, "outcomes.min_episodes", "must be >= 2")
        _require(0 <= self.min_drop < 1, "outcomes.min_drop", "must be in [0, 1)")
        _require(self.baseline_window_s > 0, "outcomes.baseline_window_s", "must be > 0")
        _require(self.baseline_max >= self.min_episodes, "outcomes.baseline_max",
                 "must be >= outcomes.min_episodes")


@dataclass(frozen=True)
class ShadowConfig:
    """Mirrored calls wait in a queue of ``queue_size`` (then they are dropped and
    counted); the mirroring thread runs at ``nice`` (Linux: per thread), or at the
    server's own niceness when that is higher (never above the requests)."""

    queue_size: int = 64
    nice: int = 10
    flush_interval_s: float = 1.0

    def __post_init__(self) -> None:
        _require(self.queue_size >= 1, "shadow.queue_size", "must be >= 1")
        _require(0 <= self.nice <= 19, "shadow.nice", "must be in 0..19")
        _require(self.flush_interval_s > 0, "shadow.flush_interval_s", "must be > 0")


@dataclass(frozen=True)
class PromoteConfig:
    """Warm-up of a version before it takes traffic: ``warmup_iters`` synthetic calls,
    then up to ``logged_observations`` logged ones (newest first). Loading and warm-up
    run at niceness ``nice`` (Linux: per thread), below the requests."""

    warmup_iters: int = 3
    logged_observations: int = 32
    nice: int = 10

    def __post_init__(self) -> None:
        _require(0 <= self.nice <= 19, "promote.nice", "must be in 0..19")
        _require(self.warmup_iters >= 1, "promote.warmup_iters", "must be >= 1")
        _require(self.logged_observations >= 0, "promote.logged_observations", "must be >= 0")


@dataclass(frozen=True)
class SyncConfig:
    """Each replica reads the routing slots every ``interval_s``."""

    interval_s: float = 1.0

    def __post_init__(self) -> None:
        _require(0 < self.interval_s <= 60, "sync.interval_s", "must be in (0, 60]")


@dataclass(frozen=True)
class RouterConfig:
    """Every router setting (the defaults are the documented ones)."""

    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    errors: ErrorsRule = field(default_factory=ErrorsRule)
    latency: LatencyRule = field(default_factory=LatencyRule)
    action_limits: ActionLimitsRule = field(default_factory=ActionLimitsRule)
    divergence: DivergenceRule = field(default_factory=DivergenceRule)
    outcomes: OutcomesRule = field(default_factory=OutcomesRule)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)

    def replace(self, section: str, **values: Any) -> RouterConfig:
        """A copy with ``values`` set in ``section``.

        Raises:
            ConfigError: unknown section or key, or a value out of range.
        """
        names = {f.name for f in dataclasses.fields(self)}
        _require(section in names, section, f"unknown section; known: {sorted(names)}")
        current = getattr(self, section)
        keys = {f.name for f in dataclasses.fields(current)}
        for key in values:
            _require(key in keys, f"{section}.{key}", f"unknown setting; known: {sorted(keys)}")
        try:
            updated = dataclasses.replace(current, **values)
        except TypeError as exc:
            raise ConfigError(f"{section}: {exc}") from None
        return dataclasses.replace(self, **{section: updated})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_router_config(path: Path | str | None = None, **overrides: dict[str, Any]) -> RouterConfig:
    """The defaults, then the TOML file at ``path``, then ``overrides`` (section -> values).

    Raises:
        ConfigError: unreadable file, unknown section or key, value out of range.
    """
    cfg = RouterConfig()
    sections: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            sections = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--router-config {path}: {exc}") from None
    for section, values in [*sections.items(), *overrides.items()]:
        _require(isinstance(values, dict), section, "must be a table of settings")
        cfg = cfg.replace(section, **values)
    return cfg
