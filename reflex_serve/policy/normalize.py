"""Mean/std normalization of states and actions with a std floor.

Several MetaWorld state dimensions are constant over a dataset; a floor on the standard
deviation keeps them from blowing up to huge normalized values. The statistics are
stored as ``stats.json`` in an export and are applied with numpy both in training and
in the runtime, so there is one implementation of the arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_STD_FLOOR = 1e-2


@dataclass(frozen=True)
class Stats:
    """Statistics of one vector quantity; every array is float32 of shape (dim,)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, std_floor: float = DEFAULT_STD_FLOOR) -> Stats:
        """Compute statistics of ``x`` (float array of shape (N, dim))."""
        x = np.asarray(x, dtype=np.float64)
        return cls(
            mean=x.mean(0).astype(np.float32),
            std=np.maximum(x.std(0), std_floor).astype(np.float32),
            min=x.min(0).astype(np.float32),
            max=x.max(0).astype(np.float32),
        )

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std, float32, any leading shape (..., dim)."""
        return ((x - self.mean) / self.std).astype(np.float32)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """x * std + mean, float32, any leading shape (..., dim)."""
        return (x * self.std + self.mean).astype(np.float32)

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("mean", "std", "min", "max")}

    @classmethod
    def from_dict(cls, d: dict) -> Stats:
        return cls(**{k: np.asarray(d[k], dtype=np.float32) for k in ("mean", "std", "min", "max")})


@dataclass(frozen=True)
class DatasetStats:
    """Normalization statistics of a policy: ``state`` (S,) and ``action`` (A,)."""

    state: Stats
    action: Stats

    def save(self, path: Path) -> None:
        """Write ``stats.json``."""
        data = {"state": self.state.to_dict(), "action": self.action.to_dict()}
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> DatasetStats:
        """Read ``stats.json``; raises ValueError if a field is missing."""
        data = json.loads(Path(path).read_text())
        try:
            return cls(state=Stats.from_dict(data["state"]), action=Stats.from_dict(data["action"]))
        except KeyError as exc:
            raise ValueError(f"{path}: missing statistics field {exc}") from exc
