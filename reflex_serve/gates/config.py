"""Gate configuration: thresholds and evidence sizes, read from TOML.

The defaults live in ONE file, ``reflex_serve/gates/defaults.toml``; the dataclasses
below have no defaults of their own. ``load_config(path)`` reads the defaults, then the
user's file on top (same layout; unknown sections or keys, wrong types and values out of
range are a :class:`ConfigError` naming ``[section] key``).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULTS = Path(__file__).with_name("defaults.toml")
SIM_SUITES = ("default", "bimodal", "none")


class ConfigError(ValueError):
    """A gate configuration file is unreadable or holds a bad key or value."""


def _require(ok: bool, section: str, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"[{section}] {key} {message}")


@dataclass(frozen=True)
class EvidenceConfig:
    observations: int
    min_observations: int
    samples: int
    holdout_pct: float
    probes: bool
    seed: int

    def __post_init__(self) -> None:
        _require(self.observations >= 1, "evidence", "observations", "must be >= 1")
        _require(self.min_observations >= 1, "evidence", "min_observations", "must be >= 1")
        _require(self.samples >= 2, "evidence", "samples", "must be >= 2")
        _require(0 < self.holdout_pct <= 100, "evidence", "holdout_pct", "must be in (0, 100]")


@dataclass(frozen=True)
class SimConfig:
    suite: str
    tasks: list[str]
    episodes: int
    seed: int
    max_steps: int
    only_if_passing: bool = False

    def __post_init__(self) -> None:
        _require(self.suite in SIM_SUITES, "sim", "suite", f"must be one of {SIM_SUITES}")
        _require(self.episodes >= 1, "sim", "episodes", "must be >= 1")
        _require(self.seed >= 0, "sim", "seed", "must be >= 0")
        _require(self.max_steps >= 0, "sim", "max_steps", "must be >= 0 (0: the task's own)")

    def task_list(self) -> list[str]:
        """The tasks to run (``[]`` when the suite is ``none`` and no tasks are given).

        Raises:
            ConfigError: an unknown task.
        """
        from ..sim.tasks import SUITES, TASKS

        if self.tasks:
            unknown = [t for t in self.tasks if t not in TASKS]
            _require(
                not unknown, "sim", "tasks", f"has unknown tasks {unknown}; known: {list(TASKS)}"
            )
            return list(self.tasks)
        return [] if self.suite == "none" else list(SUITES[self.suite])


@dataclass(frozen=True)
class ActionLimitsConfig:
    margin: float

    def __post_init__(self) -> None:
        _require(self.margin >= 0, "action_limits", "margin", "must be >= 0")


@dataclass(frozen=True)
class MotionSmoothnessConfig:
    max_p99_ratio: float
    floor_fraction: float
    max_step_fraction: float

    def __post_init__(self) -> None:
        s = "motion_smoothness"
        _require(self.max_p99_ratio > 0, s, "max_p99_ratio", "must be > 0")
        _require(self.floor_fraction >= 0, s, "floor_fraction", "must be >= 0")
        _require(self.max_step_fraction > 0, s, "max_step_fraction", "must be > 0")


@dataclass(frozen=True)
class TaskSuccessConfig:
    margin: float
    z: float

    def __post_init__(self) -> None:
        _require(0 <= self.margin <= 1, "task_success", "margin", "must be in [0, 1]")
        _require(self.z > 0, "task_success", "z", "must be > 0")


@dataclass(frozen=True)
class PerTaskRegressionConfig:
    max_drop: float

    def __post_init__(self) -> None:
        _require(0 <= self.max_drop <= 1, "per_task_regression", "max_drop", "must be in [0, 1]")


@dataclass(frozen=True)
class ActionAgreementConfig:
    max_energy: float
    min_spread: float
    max_mean_mse: float
    min_mean_cosine: float

    def __post_init__(self) -> None:
        s = "action_agreement"
        _require(self.max_energy >= 0, s, "max_energy", "must be >= 0")
        _require(self.min_spread > 0, s, "min_spread", "must be > 0")
        _require(self.max_mean_mse >= 0, s, "max_mean_mse", "must be >= 0")
        _require(-1 <= self.min_mean_cosine <= 1, s, "min_mean_cosine", "must be in [-1, 1]")


@dataclass(frozen=True)
class LatencyConfig:
    calls: int
    warmup: int
    threads: int
    min_calls: int

    def __post_init__(self) -> None:
        _require(self.calls >= 1, "latency", "calls", "must be >= 1")
        _require(self.warmup >= 0, "latency", "warmup", "must be >= 0")
        _require(self.threads >= 1, "latency", "threads", "must be >= 1")
        _require(self.min_calls >= 1, "latency", "min_calls", "must be >= 1")


@dataclass(frozen=True)
class LatencySpeedupConfig:
    max_ratio: float

    def __post_init__(self) -> None:
        _require(self.max_ratio > 0, "latency_speedup", "max_ratio", "must be > 0")


@dataclass(frozen=True)
class LatencyBudgetConfig:
    budget_ms: float

    def __post_init__(self) -> None:
        _require(self.budget_ms > 0, "latency_p99_budget", "budget_ms", "must be > 0")


@dataclass(frozen=True)
class ResourcesConfig:
    max_ratio: float
    memory_floor_mb: float
    acts: int
    timeout_s: float

    def __post_init__(self) -> None:
        _require(self.max_ratio > 0, "resources", "max_ratio", "must be > 0")
        _require(self.memory_floor_mb > 0, "resources", "memory_floor_mb", "must be > 0")
        _require(self.acts >= 1, "resources", "acts", "must be >= 1")
        _require(self.timeout_s > 0, "resources", "timeout_s", "must be > 0")


@dataclass(frozen=True)
class GateConfig:
    """Everything the gates read; sections as in ``defaults.toml``."""

    evidence: EvidenceConfig
    sim: SimConfig
    action_limits: ActionLimitsConfig
    motion_smoothness: MotionSmoothnessConfig
    task_success: TaskSuccessConfig
    per_task_regression: PerTaskRegressionConfig
    action_agreement: ActionAgreementConfig
    latency: LatencyConfig
    latency_speedup: LatencySpeedupConfig
    latency_p99_budget: LatencyBudgetConfig
    resources: ResourcesConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, section: str, **values: Any) -> GateConfig:
        """A copy with some keys of one section changed (checked like a file's)."""
        return from_dict(_merge(self.to_dict(), {section: values}, "options"))


def _convert(value: Any, hint: Any, section: str, key: str) -> Any:
    if hint is bool:
        _require(isinstance(value, bool), section, key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok, section, key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, section, key, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        _require(isinstance(value, str), section, key, f"must be a string, got {value!r}")
        return value
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    _require(ok, section, key, f"must be a list of strings, got {value!r}")
    return list(value)


def _merge(base: dict, extra: dict, where: str) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        if section not in out:
            raise ConfigError(f"{where}: unknown section [{section}]; known: {', '.join(out)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key, value in values.items():
            if key not in out[section]:
                known = ", ".join(out[section])
                raise ConfigError(f"{where}: unknown key [{section}] {key}; known: {known}")
            out[section][key] = value
    return out


def from_dict(data: dict[str, dict[str, Any]]) -> GateConfig:
    """Build a :class:`GateConfig` from a complete nested dict (raises :class:`ConfigError`)."""
    sections = {}
    for f in dataclasses.fields(GateConfig):
        cls = typing.get_type_hints(GateConfig)[f.name]
        hints = typing.get_type_hints(cls)
        values = data.get(f.name, {})
        missing = [k for k in hints if k not in values]
        if missing:
            raise ConfigError(f"[{f.name}] is missing {', '.join(missing)}")
        sections[f.name] = cls(**{k: _convert(values[k], hints[k], f.name, k) for k in hints})
    return GateConfig(**sections)


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def with_sim(
    cfg: GateConfig,
    *,
    suite: str | None = None,
    tasks: list[str] | None = None,
    episodes: int | None = None,
) -> GateConfig:
    """``cfg`` with a command line's ``--suite``, ``--tasks`` and ``--episodes`` over ``[sim]``.

    A suite clears the task list; tasks replace the suite. The task names are checked.

    Raises:
        ConfigError: both a suite and tasks, a bad value, or an unknown task.
    """
    if suite is not None and tasks is not None:
        raise ConfigError("give --suite or --tasks, not both")
    sim: dict[str, Any] = {}
    if suite is not None:
        sim.update(suite=suite, tasks=[])
    if tasks is not None:
        sim["tasks"] = [t.strip() for t in tasks if t.strip()]
    if episodes is not None:
        sim["episodes"] = episodes
    out = cfg.replace("sim", **sim) if sim else cfg
    out.sim.task_list()
    return out


def load_config(path: Path | str | None = None) -> GateConfig:
    """The defaults, with ``path``'s keys (if given) on top.

    Raises:
        ConfigError: unreadable file, unknown section or key, bad type or value; the
            message names the file and ``[section] key``.
    """
    data = _read(DEFAULTS)
    if path is not None:
        data = _merge(data, _read(Path(path)), str(path))
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path or DEFAULTS}: {exc}") from None
