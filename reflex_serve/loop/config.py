"""The loop's settings in one place: a pydantic model, its defaults, TOML on top.

``reflex serve --distill-schedule SPEC`` builds it from its flags and, with
``--loop-config FILE``, a TOML file of the same keys (flags win). The scheduler hands
it to each worker as ``config.json`` in the run directory.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reflex_serve.loop.schedule import parse_schedule


class LoopConfigError(ValueError):
    """A loop setting is unreadable or out of range (the message names the key)."""


class LoopConfig(BaseModel):
    """Settings of the self-distilling loop (docs/loop.md).

    Attributes:
        schedule: the ``--distill-schedule`` spec (normalised: ``nightly@02:00``,
            ``every 6h``, a cron expression); None: run-now only.
        schedule_name: the schedule row's name (replicas sharing a store share it).
        min_new_samples: a due run with fewer new served rows since the last succeeded
            run's data is recorded as ``skipped``.
        threads: torch / ONNX Runtime / BLAS threads of the worker process.
        nice: niceness added to the worker process.
        distill_steps, batch_size, lr, seed: the SnapFlow student's training.
        min_rows: the data stage refuses a run with fewer served rows of the teacher.
        teacher_steps: the teacher at these fewer denoising steps is also a candidate
            (no training); values not below the teacher's own steps are dropped.
        gates_config: TOML of gate thresholds on top of the gate defaults.
        candidate_stage: ``module:function`` of the candidates stage (called with the
            run context); default: the gates of :mod:`reflex_serve.loop.candidates`.
        shadow_s: how long the chosen candidate is shadowed before promotion (0: no
            shadow stage); shadow_fraction: the share of calls mirrored meanwhile.
        max_shadow_divergence: refuse when the mean shadow divergence (in the teacher's
            action standard deviations) exceeds it; None: recorded only.
        heartbeat_s: how often the worker records that it is alive.
        stale_after_s: a running run without a heartbeat for this long is failed.
        poll_s: how often the scheduler thread wakes.
        work_dir: where run directories (exports, training logs) go.
        stop_timeout_s: on server stop, how long a worker gets after SIGTERM.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: str | None = None
    schedule_name: str = Field(default="distill", min_length=1, max_length=64)
    min_new_samples: int = Field(default=0, ge=0)
    threads: int = Field(default=1, ge=1)
    nice: int = Field(default=10, ge=0, le=19)
    distill_steps: int = Field(default=10000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    seed: int = 0
    min_rows: int = Field(default=64, ge=1)
    teacher_steps: tuple[int, ...] = (1, 2, 4)
    gates_config: Path | None = None
    candidate_stage: str | None = None
    shadow_s: float = Field(default=300.0, ge=0)
    shadow_fraction: float = Field(default=0.1, gt=0, le=1)
    max_shadow_divergence: float | None = Field(default=None, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(default=60.0, gt=0)
    poll_s: float = Field(default=1.0, gt=0)
    work_dir: Path = Path("data/loop")
    stop_timeout_s: float = Field(default=10.0, ge=0)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return None if value is None else parse_schedule(value).spec

    @field_validator("teacher_steps")
    @classmethod
    def _steps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 1 for n in value):
            raise ValueError("every value must be >= 1")
        return tuple(sorted(set(value)))

    @field_validator("candidate_stage")
    @classmethod
    def _stage(cls, value: str | None) -> str | None:
        if value is not None and value.count(":") != 1:
            raise ValueError("must be 'module:function'")
        return value

    def save(self, path: Path) -> Path:
        """Write the settings as JSON (what the worker reads)."""
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> LoopConfig:
        """Settings written by :meth:`save`."""
        return cls.model_validate(json.loads(Path(path).read_text()))


def load_loop_config(path: Path | None = None, **overrides: Any) -> LoopConfig:
    """The defaults, then ``path``'s TOML keys, then ``overrides`` (None values ignored).

    Raises:
        LoopConfigError: unreadable file, an unknown key, a bad value (named). A bad
            schedule keeps :class:`~reflex_serve.loop.schedule.ScheduleError`'s text,
            which names ``--distill-schedule``.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise LoopConfigError(f"{path}: no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LoopConfigError(f"{path}: not valid TOML: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return LoopConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        where = f"{path}: " if path is not None else ""
        message = err["msg"].removeprefix("Value error, ")
        if key == "schedule":
            raise LoopConfigError(message) from None
        raise LoopConfigError(f"{where}{key}: {message}") from None
