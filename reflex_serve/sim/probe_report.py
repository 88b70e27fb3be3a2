"""Results of the decision-point probe (:mod:`.probe`): per point, per task, report.

Also :func:`energy_distance` between two sample sets (teacher vs student chunks at one
observation) and :func:`compare_reports` that applies it to two probes of the same points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reflex_serve.runtime.types import Observation
from reflex_serve.sim.bimodal import MODES

UNCOMMITTED = -1
"""Label of a sample that commits to neither mode (modes are 0 left, 1 right)."""


@dataclass
class ProbePoint:
    """One decision-point observation and the policy's samples there.

    Attributes:
        task, seed: the episode. step: environment step of the decision observation.
        obs: the decision :class:`Observation` (query other policies on it).
        reference: float32 (2, H, A): the left and right strategies' next H actions.
        samples: float32 (K, H, A): the policy's chunks, unnormalized.
        scores: float32 (K,): position on the left (-1) to right (+1) axis (module doc).
        labels: int8 (K,): 0 left, 1 right, -1 uncommitted.
        sample_seeds: the noise seed of each sample (None: the client takes no seed).
    """

    task: str
    seed: int
    step: int
    obs: Observation
    reference: np.ndarray
    samples: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    sample_seeds: list[int] | None

    @property
    def commit_share(self) -> float:
        """Share of samples committed to a mode."""
        return float(np.mean(self.labels != UNCOMMITTED))

    def mode_shares(self) -> dict[str, float]:
        """Share of samples per mode (``{"left": ..., "right": ...}``)."""
        return {m: float(np.mean(self.labels == i)) for i, m in enumerate(MODES)}


@dataclass
class TaskProbe:
    """A task's probe points and their pooled shares (over all points x samples)."""

    task: str
    points: list[ProbePoint]

    @property
    def labels(self) -> np.ndarray:
        """int8 (P * K,): all labels."""
        return np.concatenate([p.labels for p in self.points])

    @property
    def commit_share(self) -> float:
        """Share of all samples committed to a mode."""
        return float(np.mean(self.labels != UNCOMMITTED))

    def mode_shares(self) -> dict[str, float]:
        """Share of all samples per mode."""
        labels = self.labels
        return {m: float(np.mean(labels == i)) for i, m in enumerate(MODES)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no raw samples)."""
        scores = np.concatenate([p.scores for p in self.points])
        return {
            "points": len(self.points),
            "samples_per_point": int(self.points[0].samples.shape[0]) if self.points else 0,
            "commit_share": self.commit_share,
            "mode_shares": self.mode_shares(),
            "uncommitted_share": 1.0 - self.commit_share,
            "mean_abs_score": float(np.mean(np.abs(scores))),
            "per_point": [
                {"seed": p.seed, "step": p.step, "commit_share": p.commit_share}
                | {f"{m}_share": v for m, v in p.mode_shares().items()}
                for p in self.points
            ],
        }


@dataclass
class ProbeReport:
    """Result of :func:`probe`: per-task shares, the raw samples, the configuration."""

    tasks: list[TaskProbe]
    config: dict[str, Any]

    @property
    def commit_share(self) -> float:
        """Share of committed samples over every task."""
        return float(np.mean(np.concatenate([t.labels for t in self.tasks]) != UNCOMMITTED))

    def task(self, name: str) -> TaskProbe:
        """The :class:`TaskProbe` of ``name``. Raises KeyError if it was not probed."""
        for t in self.tasks:
            if t.task == name:
                return t
        raise KeyError(f"task {name!r} not probed")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (no raw samples; see :meth:`save`)."""
        return {
            "commit_share": self.commit_share,
            "tasks": {t.task: t.to_dict() for t in self.tasks},
            "config": self.config,
        }

    def to_markdown(self) -> str:
        """A markdown table: committed / left / right / uncommitted shares per task."""
        steps = self.config.get("num_steps_reported") or self.config.get("num_steps")
        lines = [
            f"Decision-point probe (num_steps {steps}, kappa {self.config['kappa']})",
            "",
            "| task | points | samples | committed | left | right | uncommitted | mean abs score |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in self.tasks:
            d = t.to_dict()
            sh = d["mode_shares"]
            lines.append(
                f"| {t.task} | {d['points']} | {d['samples_per_point']} | "
                f"{d['commit_share']:.1%} | {sh['left']:.1%} | {sh['right']:.1%} | "
                f"{d['uncommitted_share']:.1%} | {d['mean_abs_score']:.2f} |"
            )
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path, stem: str = "probe") -> Path:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>_samples.npz`` to ``out_dir``.

        The npz holds, per task ``T`` (P points): ``T/samples`` float32 (P, K, H, A),
        ``T/reference`` float32 (P, 2, H, A), ``T/scores`` float32 (P, K), ``T/labels``
        int8 (P, K), ``T/seeds`` int64 (P,), ``T/steps`` int32 (P,), ``T/state`` float32
        (P, S). Returns the directory.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / f"{stem}.md").write_text(self.to_markdown())
        arrays: dict[str, np.ndarray] = {}
        for t in self.tasks:
            arrays[f"{t.task}/samples"] = np.stack([p.samples for p in t.points])
            arrays[f"{t.task}/reference"] = np.stack([p.reference for p in t.points])
            arrays[f"{t.task}/scores"] = np.stack([p.scores for p in t.points])
            arrays[f"{t.task}/labels"] = np.stack([p.labels for p in t.points])
            arrays[f"{t.task}/seeds"] = np.array([p.seed for p in t.points], dtype=np.int64)
            arrays[f"{t.task}/steps"] = np.array([p.step for p in t.points], dtype=np.int32)
            arrays[f"{t.task}/state"] = np.stack([p.obs.state for p in t.points])
        np.savez_compressed(out / f"{stem}_samples.npz", **arrays)
        return out


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance between two sample sets (e.g. teacher vs student chunks).

    :func:`reflex_serve.export.validate.energy_distance` on the flattened samples: i = j
    pairs excluded everywhere, so two sets drawn with the same noise seeds by the same
    policy are exactly 0 apart; in action units.

    Args:
        x, y: float (K, ...) with the same shape, K >= 2.

    Raises:
        ValueError: fewer than 2 samples or different shapes.
    """
    from reflex_serve.export.validate import energy_distance as paired_energy

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return paired_energy(x.reshape(len(x), -1), y.reshape(len(y), -1))[0]


def compare_reports(base: ProbeReport, other: ProbeReport) -> dict[str, dict[str, Any]]:
    """Energy distance between two probes of the same points, per task.

    Args:
        base, other: reports of :func:`~reflex_serve.sim.probe.probe` with the same tasks,
            seeds and chunk shape (e.g. the 10-step teacher and a 1-step sampler).

    Returns:
        ``{task: {"energy_distance": mean over points, "per_point": [...],
        "commit_share": [base, other]}}``.

    Raises:
        ValueError: the reports cover different tasks or points.
    """
    out: dict[str, dict[str, Any]] = {}
    for tb in base.tasks:
        to = other.task(tb.task)
        if [p.seed for p in tb.points] != [p.seed for p in to.points]:
            raise ValueError(f"{tb.task}: the reports probe different episodes")
        dists = [energy_distance(pb.samples, po.samples) for pb, po in zip(tb.points, to.points)]
        out[tb.task] = {
            "energy_distance": float(np.mean(dists)),
            "per_point": dists,
            "commit_share": [tb.commit_share, to.commit_share],
        }
    return out
