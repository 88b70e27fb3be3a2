"""``reflex validate export``: is an export faithful to its PyTorch weights, and to its teacher?

Two checks:

1. **Parity** (the export contract): ONNX Runtime actions vs the PyTorch pipeline on the
   same observation and noise, max abs difference over 4 synthetic observations, at the
   export's own ``num_steps`` and ``target_time`` (:func:`.parity.check_parity`). Passes
   when <= ``threshold`` (default 1e-3; the exporter itself holds 1e-4).
2. **Agreement with a reference** (e.g. the 10-step teacher of a 1-step student): per
   observation, K noise draws through each export's ONNX Runtime ``Policy`` (each at its
   manifest's ``num_steps``). Draw k of observation i uses the same noise for both
   (``default_rng([seed, i, k])``), so identical models give identical sample sets.
   Samples are whole chunks flattened to D = H * A values, in the REFERENCE's normalized
   action units ((a - mean) / std of its ``stats.json``). Between the student's samples
   X (K, D) and the reference's Y (K, D)::

       ED  = 2 mean_{i != j} |X_i - Y_j| - mean_{i != j} |X_i - X_j| - mean_{i != j} |Y_i - Y_j|
       rel = ED / max(mean_{i != j} |Y_i - Y_j|, min_spread)

   |.| is the Euclidean norm. Every mean excludes i = j: the within-set means are the
   unbiased U-statistics, and the cross mean skips the pairs that share noise, so each
   term is unbiased for its expectation and ED is exactly 0 for identical models. The
   energy distance (Szekely & Rizzo) is >= 0 in expectation and 0 only for equal
   distributions. ``rel`` compares it with the reference's own spread E|Y - Y'|: a
   student that collapses onto one mode (or onto the mean) of a two-mode reference
   scores 1.0 in the limit, (K - 2) / K with K draws (0.875 at K = 16); one that
   collapses onto the mean of a Gaussian reference about sqrt(2) - 1 = 0.41; a faithful
   one about 0 (exactly 0 for identical models). ``min_spread`` (default 0.1 normalized
   units over the whole chunk) keeps a near-deterministic reference from turning tiny
   differences into large ratios. Also reported: the MSE and cosine similarity of the
   per-observation mean chunks, and the paired RMS difference (same noise).
   Over N observations the verdict uses the POOLED ratio::

       rel_pooled = sum_i ED_i / sum_i max(spread_i, min_spread)

   which weighs each observation by the reference's spread there: the observations where
   the teacher's samples spread over several modes (a decision point) count most, and a
   few near-deterministic ones (where the floor makes a per-observation ratio large and
   noisy) cannot dominate. It passes when ``rel_pooled <= max_energy`` (default 0.4).
   Measured on 64 demonstration frames of both MetaWorld suites, 16 draws, three noise
   seeds (``bench/gate_agreement.py``, docs/gates.md): the teacher at 4 Euler steps 0.04,
   at 2 steps 0.14-0.16, the SnapFlow student (lambda 1.0) 0.24-0.28, the lambda 0.1
   student (which commits to a mode 0.63x as often as its teacher) 0.45-0.51, the naive
   1-step teacher 0.56-0.63. The mean of the per-observation ratios is reported too
   (the same candidates: 0.09, 0.29-0.31, 0.47-0.52, 0.77-0.84, 0.86-0.95); with N = 16
   it moved by up to 2x between noise seeds, the pooled ratio by less.

Observations are real data (:mod:`reflex_serve.gates.evidence`): the held-out split of
``--store`` (or of the default store: ``$REFLEX_STORE``, else ``data/store.sqlite`` when
that file exists), else the frames of a demonstration directory (``--data``), N spread
evenly over them. Synthetic random observations are far out of distribution (a good
student can disagree with its teacher there), so they are used only when asked for
(``--synthetic``), and the report says so.

The same sample convention and agreement figures are the 9-gate evaluator's P3
(:mod:`reflex_serve.gates`), which imports :func:`draw_samples` and :func:`agreement`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.types import Observation
from .manifest import WEIGHTS, ExportError, Manifest

DEFAULT_THRESHOLD = 1e-3
DEFAULT_MAX_ENERGY = 0.4
DEFAULT_MIN_SPREAD = 0.1


class ValidationError(ValueError):
    """Validation could not run (missing or incompatible exports, no observations)."""


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))


def _off_diagonal_mean(d: np.ndarray) -> float:
    k = d.shape[0]
    return float((d.sum() - np.trace(d)) / (k * (k - 1)))


def energy_distance(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """The energy distance between sample sets, with i = j pairs excluded everywhere.

    Args:
        x, y: float (K, D) samples, row k of each drawn with the same noise (or
            independently: the estimate is unbiased either way). K >= 2.

    Returns:
        (ED, spread_x = mean_{i!=j} |X_i - X_j|, spread_y likewise), Euclidean norms.

    Raises:
        ValueError: different shapes or fewer than 2 samples.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need two (K >= 2, D) sample sets of one shape, got {x.shape}, {y.shape}")
    cross = _off_diagonal_mean(_pairwise(x, y))
    sx, sy = _off_diagonal_mean(_pairwise(x, x)), _off_diagonal_mean(_pairwise(y, y))
    return 2 * cross - sx - sy, sx, sy


def pooled_relative_energy(per: Sequence[ObservationResult], min_spread: float = DEFAULT_MIN_SPREAD) -> float:
    """sum ED_i / sum max(reference spread_i, ``min_spread``) over observations (module doc).

    Raises:
        ValueError: ``per`` is empty.
    """
    if not per:
        raise ValueError("no observations")
    return float(
        sum(r.energy for r in per) / sum(max(r.reference_spread, min_spread) for r in per)
    )


def relative_energy(x: np.ndarray, y: np.ndarray, min_spread: float = DEFAULT_MIN_SPREAD) -> float:
    """ED(x, y) / max(spread of y, ``min_spread``): y is the reference (see the module doc)."""
    ed, _, sy = energy_distance(x, y)
    return ed / max(sy, min_spread)


@dataclass
class ObservationResult:
    """Agreement figures of one observation (normalized action units)."""

    energy: float
    relative_energy: float
    student_spread: float
    reference_spread: float
    mean_mse: float
    mean_cosine: float
    paired_rms: float


@dataclass
class ValidationReport:
    """Everything ``reflex validate export`` prints; ``passed`` is the verdict."""

    student: str
    student_version: str
    student_num_steps: int
    threshold: float
    parity_max_abs: float
    parity_ok: bool
    reference: str | None = None
    reference_version: str | None = None
    reference_num_steps: int | None = None
    is_parent: bool | None = None
    observations_source: str | None = None
    samples: int | None = None
    max_energy: float = DEFAULT_MAX_ENERGY
    min_spread: float = DEFAULT_MIN_SPREAD
    per_observation: list[ObservationResult] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, float]:
        """Means over observations, the pooled relative energy (the verdict's), and the
        worst relative energy and cosine."""
        if not self.per_observation:
            return {}
        col = {
            k: np.array([getattr(r, k) for r in self.per_observation])
            for k in ObservationResult.__dataclass_fields__
        }
        out = {f"{k}_mean": float(v.mean()) for k, v in col.items()}
        out["relative_energy_pooled"] = pooled_relative_energy(self.per_observation, self.min_spread)
        out["relative_energy_max"] = float(col["relative_energy"].max())
        out["mean_cosine_min"] = float(col["mean_cosine"].min())
        return out

    @property
    def agreement_ok(self) -> bool | None:
        if not self.per_observation:
            return None
        return self.summary["relative_energy_pooled"] <= self.max_energy

    @property
    def passed(self) -> bool:
        return self.parity_ok and self.agreement_ok is not False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(summary=self.summary, agreement_ok=self.agreement_ok, passed=self.passed)
        return d


def _compatible(student: Manifest, reference: Manifest) -> None:
    for name in ("state_dim", "action_dim", "chunk_size", "max_text_tokens"):
        a, b = getattr(student, name), getattr(reference, name)
        if a != b:
            raise ValidationError(f"the exports differ in {name}: student {a}, reference {b}")
    if student.cameras != reference.cameras:
        raise ValidationError(
            f"the exports differ in cameras: student {student.cameras}, "
            f"reference {reference.cameras}"
        )


def store_observations(
    store_url: str, manifest: Manifest, n: int, holdout_pct: float = 10.0
) -> list[Observation]:
    """``n`` observations spread evenly over a store's held-out split (both sources).

    Raises:
        ValidationError: no held-out row with every camera of ``manifest``.
        StoreError: the store cannot be opened.
    """
    from ..gates.evidence import EvidenceError
    from ..gates.evidence import store_observations as held_out

    try:
        return held_out(store_url, manifest, n, holdout_pct)
    except EvidenceError as exc:
        raise ValidationError(f"--store: {exc}") from None


def draw_samples(
    policy, observations: list[Observation], samples: int, seed: int, noise_shape: tuple[int, int]
) -> np.ndarray:
    """``samples`` chunks per observation, float32 (N, K, H, A) in action units.

    Draw ``k`` of observation ``i`` starts from ``default_rng([seed, i, k])`` noise of
    ``noise_shape``, whichever the policy: two policies see the same noise. Each runs at
    its own default ``num_steps``.
    """
    # actions are (H, action_dim); the noise may be wider (a model padded to max_action_dim)
    out = np.empty((len(observations), samples, noise_shape[0], policy.manifest.action_dim), np.float32)
    for i, obs in enumerate(observations):
        for k in range(samples):
            noise = np.random.default_rng([seed, i, k]).standard_normal(
                noise_shape, dtype=np.float32
            )
            out[i, k] = policy.act(obs, noise=noise).actions
    return out


def agreement(
    x: np.ndarray, y: np.ndarray, min_spread: float = DEFAULT_MIN_SPREAD
) -> ObservationResult:
    """Agreement of student samples ``x`` with reference samples ``y``, both (K, D) in
    normalized units, row k of each drawn with the same noise (module docstring)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ed, sx, sy = energy_distance(x, y)
    mx, my = x.mean(0), y.mean(0)
    cos = float(mx @ my / max(np.linalg.norm(mx) * np.linalg.norm(my), 1e-12))
    return ObservationResult(
        energy=ed,
        relative_energy=ed / max(sy, min_spread),
        student_spread=sx,
        reference_spread=sy,
        mean_mse=float(((mx - my) ** 2).mean()),
        mean_cosine=cos,
        paired_rms=float(np.sqrt(((x - y) ** 2).mean())),
    )


def compare(
    student,
    reference,
    observations: list[Observation],
    samples: int,
    seed: int,
    min_spread: float = DEFAULT_MIN_SPREAD,
) -> list[ObservationResult]:
    """Agreement of two :class:`~reflex_serve.runtime.policy.Policy` objects, per observation.

    Each policy runs at its own default ``num_steps``; see the module docstring.
    """
    stats = reference.stats.action
    shape = reference.noise_shape
    xs = stats.normalize(draw_samples(student, observations, samples, seed, shape))
    ys = stats.normalize(draw_samples(reference, observations, samples, seed, shape))
    n = len(observations)
    return [
        agreement(xs[i].reshape(samples, -1), ys[i].reshape(samples, -1), min_spread)
        for i in range(n)
    ]


def _parity(export_dir: Path, policy) -> float:
    """Max abs action difference between ONNX Runtime and the export's PyTorch weights
    (the native policy, or an imported LeRobot policy's rebuilt modules)."""
    from .parity import check_parity

    if policy.manifest.policy_kind.startswith("lerobot-"):
        from ..lerobot_import.imported import ImportedFlowModel
        from ..lerobot_import.registry import load_modules

        model = ImportedFlowModel(*load_modules(export_dir), policy.manifest.state_input)
    else:
        from .weights import load_model

        model = load_model(export_dir / WEIGHTS)
    return check_parity(model, export_dir, tolerance=float("inf")).max_abs_diff


def validate_export(
    student_dir: Path,
    reference_dir: Path | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    max_energy: float = DEFAULT_MAX_ENERGY,
    min_spread: float = DEFAULT_MIN_SPREAD,
    observations: int = 16,
    samples: int = 16,
    store: str | None = None,
    data: Path | None = None,
    data_dir: Path | None = None,
    seed: int = 0,
    synthetic: bool = False,
    synthetic_fallback: bool = False,
) -> ValidationReport:
    """Run both checks (the second only with a reference).

    Args:
        threshold: parity tolerance, max abs action difference (unnormalized units).
        max_energy: limit on the mean relative energy distance.
        observations: N; samples: K noise draws per observation per export.
        store: a store URL whose held-out split supplies the observations (default:
            ``$REFLEX_STORE``, else ``data_dir``'s SQLite store when its file exists).
        data: a demonstration directory, used when the store gives no observations.
        synthetic, synthetic_fallback: use synthetic observations when no real ones
            are found (the report's ``observations_source`` says so).

    Raises:
        ValidationError: a missing or unreadable export, exports with different
            dimensions, no observations, K < 2.
        StoreError: the store cannot be opened.
    """
    from ..gates.evidence import EvidenceError, default_store_url, replay_observations
    from ..runtime.cache import PrefixCache
    from ..runtime.policy import Policy
    if samples < 2 or observations < 1:
        raise ValidationError("need --samples >= 2 and --observations >= 1")
    cache = PrefixCache(64 << 20)  # exports that share prefix.onnx share entries
    try:
        pol = Policy(student_dir, cache=cache)
        ref = Policy(reference_dir, cache=cache) if reference_dir is not None else None
        parity = _parity(Path(student_dir), pol)
    except (ExportError, FileNotFoundError, ValueError) as exc:
        raise ValidationError(str(exc)) from None
    report = ValidationReport(
        student=str(student_dir),
        student_version=pol.version,
        student_num_steps=pol.num_steps,
        threshold=threshold,
        parity_max_abs=parity,
        parity_ok=parity <= threshold,
        max_energy=max_energy,
        min_spread=min_spread,
    )
    if ref is None:
        return report
    _compatible(pol.manifest, ref.manifest)
    try:
        replay = replay_observations(
            ref.manifest,
            ref.stats,
            observations,
            store=store if store is not None else default_store_url(data_dir),
            data=data,
            synthetic=synthetic or synthetic_fallback,
            seed=seed,
        )
    except EvidenceError as exc:
        raise ValidationError(str(exc)) from None
    if not replay.observations:
        tried = "; ".join(replay.notes) or "no store has rows and no --data was given"
        raise ValidationError(
            f"no real observations to compare on ({tried}): give --store URL with a "
            "held-out split, --data DEMO_DIR, or --synthetic for random ones"
        )
    report.reference, report.reference_version = str(reference_dir), ref.version
    report.reference_num_steps = ref.num_steps
    report.is_parent = pol.manifest.parent_version == ref.manifest.digest
    report.observations_source, report.samples = replay.source, samples
    report.per_observation = compare(pol, ref, replay.observations, samples, seed, min_spread)
    return report
