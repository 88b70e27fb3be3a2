"""SnapFlow distillation runs: teacher export + labelled data -> 1-step student export.

SnapFlow (arXiv 2604.05656), as ARCHITECTURE.md states it: the student starts as the
teacher (its zero-initialised target-time embedding phi(s) makes it equal at step 0);
each batch mixes flow-matching samples (labels: demo actions or the chunks the teacher
served) and two-step Euler shortcut consistency samples built from the student's own
stop-gradient velocities (:mod:`.snapflow`). The prefix is frozen by default (only the
action expert, phi included, trains) and its outputs come from :class:`.PrefixFeatures`.

A run directory (default ``<output>-run``) holds ``checkpoint.pt`` (resumable),
``train_log.jsonl`` (step, lr, loss, fm, cons) and ``distill.json`` (teacher digest,
settings, data filter and fingerprint). The student is exported with ``num_steps = 1``,
``target_time = "shortcut"`` (s = 0, t = 1) and the teacher's digest as parent; with the
prefix frozen its ``prefix.onnx`` is the teacher's file byte for byte, so both versions
share prefix-cache entries.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..policy.training import CHECKPOINT, LOG, LoopConfig, run_loop
from . import DEFAULT_LAMBDA
from .data import DistillData
from .prefix import PrefixFeatures
from .snapflow import OBJECTIVES, SnapFlowConfig, snapflow_loss
from .teacher import Teacher, make_student

RUN_CONFIG = "distill.json"
# settings a resumed run must share with the run it continues (steps may be extended)
_RESUME_KEYS = (
    "batch_size",
    "lr",
    "mix_ratio",
    "alpha",
    "lam",
    "objective",
    "train_prefix",
    "seed",
    "warmup",
    "weight_decay",
    "ema_decay",
    "state_out",
)
# resume keys added after runs were written: their value in a run that predates them
_RESUME_DEFAULTS = {"state_out": False}


class DistillError(RuntimeError):
    """A run cannot start or continue (e.g. resume against another teacher or other data)."""


@dataclass
class DistillConfig:
    """Distillation settings (defaults: the paper's and ``reflex train distill``'s).

    Attributes:
        steps: optimizer steps. batch_size: samples per step (split by ``mix_ratio``).
        lr: AdamW learning rate (warm-up then cosine decay to 10%).
        mix_ratio: fraction of each batch that is consistency samples.
        alpha, lam: loss weights, ``alpha * L_FM + (1 - alpha) * lam * L_cons``.
        objective: ``"snapflow"`` or ``"trajectory"`` (regress the 1-step output on the
            teacher's full N-step Euler result from the same noise).
        train_prefix: also train the prefix (its ONNX graph is then exported anew).
        seed: seeds every draw (batches, t, noise); same seed and data, same weights.
        threads: torch intra-op threads.
        prefix_cache_mb: bound of the frozen-prefix cache in MiB.
        warmup: learning-rate warm-up steps (default min(300, steps // 10)).
        ema_decay: the exported weights are the EMA of the trained ones.
        max_minutes: stop early (the run stays resumable).
        state_out: a pi0.5 teacher's state leaves the prompt for the student's expert
            (:mod:`.state_out`); the student's prefix inputs are then its own.
    """

    steps: int = 10000
    batch_size: int = 32
    lr: float = 1e-4
    mix_ratio: float = 0.5
    alpha: float = 0.5
    lam: float = DEFAULT_LAMBDA
    objective: str = "snapflow"
    train_prefix: bool = False
    seed: int = 0
    threads: int = 2
    prefix_cache_mb: float = 2048.0
    warmup: int | None = None
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    log_every: int = 50
    max_minutes: float | None = None
    progress: bool = True
    state_out: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("steps, batch_size and threads must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.warmup is None:
            self.warmup = max(1, min(300, self.steps // 10))
        self.snapflow(10)  # checks mix_ratio, alpha, lam

    def snapflow(self, teacher_steps: int) -> SnapFlowConfig:
        return SnapFlowConfig(
            mix_ratio=self.mix_ratio,
            alpha=self.alpha,
            lam=self.lam,
            objective=self.objective,
            teacher_steps=teacher_steps,
        )

    def loop(self) -> LoopConfig:
        return LoopConfig(
            steps=self.steps,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup=self.warmup,
            ema_decay=self.ema_decay,
            grad_clip=self.grad_clip,
            checkpoint_every=self.checkpoint_every,
            log_every=self.log_every,
            max_minutes=self.max_minutes,
            progress=self.progress,
        )


@dataclass
class DistillResult:
    """What :func:`distill` returns.

    Attributes:
        student: the EMA student (eval mode).
        steps: steps trained in total (this session and any it resumed).
        session_steps: steps run by this call; step_ms: their mean wall time, ms.
        losses: ``{"first": {...}, "last": {...}}`` records of ``train_log.jsonl``.
        prefix: how the prefix was handled (one line).
    """

    student: nn.Module
    run_dir: Path
    steps: int
    session_steps: int
    step_ms: float
    losses: dict[str, Any]
    prefix: str
    config: DistillConfig = field(repr=False, default_factory=DistillConfig)


def read_run(run_dir: Path) -> dict | None:
    """The run directory's ``distill.json``, or None for a new run."""
    path = Path(run_dir) / RUN_CONFIG
    return json.loads(path.read_text()) if path.is_file() else None


def _check_resume(
    run_dir: Path, teacher: Teacher, data: DistillData, cfg: DistillConfig, resume: bool
) -> None:
    has_ckpt = (run_dir / CHECKPOINT).is_file()
    if not resume:
        if has_ckpt:
            raise DistillError(
                f"{run_dir} already holds a run (checkpoint.pt): pass --resume "
                "to continue it, or choose another --run-dir"
            )
        return
    info = read_run(run_dir)
    if info is None or not has_ckpt:
        raise DistillError(f"--resume: {run_dir} holds no distillation run to continue")
    if info["teacher"]["digest"] != teacher.manifest.digest:
        raise DistillError(
            f"--resume: {run_dir} was distilled from {info['teacher']['digest']}, "
            f"not from {teacher.manifest.digest}"
        )
    if info["fingerprint"] != data.fingerprint:
        raise DistillError(
            f"--resume: the data differ from the run's ({info['data']['rows']} rows "
            f"then, {data.rows} now); resume needs the same rows"
        )
    for key in _RESUME_KEYS:
        before = info["config"].get(key, _RESUME_DEFAULTS.get(key))
        if before != getattr(cfg, key):
            raise DistillError(f"--resume: {key} was {before!r}, now {getattr(cfg, key)!r}")


def read_losses(run_dir: Path) -> dict[str, Any]:
    """First and last records of ``train_log.jsonl`` (empty if there is none)."""
    path = Path(run_dir) / LOG
    lines = path.read_text().splitlines() if path.is_file() else []
    return {"first": json.loads(lines[0]), "last": json.loads(lines[-1])} if lines else {}


def _student(teacher: Teacher, data: DistillData, cfg: DistillConfig) -> tuple[nn.Module, tuple]:
    """The student at step 0 and its prefix inputs for every frame of ``data``.
    Raises StateOutError (:mod:`.state_out`) when ``cfg.state_out`` does not apply."""
    if cfg.state_out:
        from .state_out import make_state_out_student

        made = make_state_out_student(teacher, data, cfg.train_prefix)
        return made.model, made.prefix_inputs
    return make_student(teacher, cfg.train_prefix), data.prefix_inputs()


def distill(
    teacher: Teacher,
    data: DistillData,
    cfg: DistillConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    echo: Callable[[str], None] = print,
) -> DistillResult:
    """Train a 1-step student from ``teacher`` on ``data``.

    Args:
        teacher: a loaded teacher (:func:`.teacher.load_teacher`).
        data: labelled observations in the teacher's units (:func:`.data.load_data`).
        run_dir: the run directory (checkpoints, log, ``distill.json``).
        resume: continue the checkpoint in ``run_dir`` (same teacher, data and settings).
        echo: where progress lines go.

    Raises:
        DistillError: a checkpoint exists without ``resume``, or ``resume`` against a
            different teacher, other data or other settings.
        StateOutError: ``cfg.state_out`` with a teacher other than an imported pi0.5.
    """
    student, inputs = _student(teacher, data, cfg)  # first: a refusal leaves no run behind
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(run_dir, teacher, data, cfg, resume)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    if not resume:
        (run_dir / RUN_CONFIG).write_text(
            json.dumps(
                {
                    "teacher": {
                        "path": str(teacher.path),
                        "digest": teacher.manifest.digest,
                        "phi_zero": teacher.phi_zero,
                    },
                    "config": asdict(cfg),
                    "data": data.description,
                    "fingerprint": data.fingerprint,
                },
                indent=2,
            )
            + "\n"
        )
    if not teacher.phi_zero:
        echo(
            "warning: the teacher's target-time embedding phi(s) is not zero (phi was trained "
            "with s = t), so the student's 1-step output starts away from the teacher's; "
            "SnapFlow trains it, but teachers should be trained with phi frozen"
        )
    sf = cfg.snapflow(teacher.manifest.num_steps)
    # frozen-prefix outputs: of the teacher's prefix (== the student's frozen one) on the
    # student's inputs; the teacher's own, for the trajectory target, when those differ
    # (trained prefix, or a state-out student's state-free prompt). Computed once per frame
    # when a run visits at least as many samples as there are frames.
    own = cfg.objective == "trajectory" and (cfg.train_prefix or cfg.state_out)
    budget = cfg.prefix_cache_mb * 2**20 / max(1, (not cfg.train_prefix) + own)
    precompute = cfg.steps * cfg.batch_size >= data.size
    features = None if cfg.train_prefix else PrefixFeatures(teacher.model, inputs, budget, precompute)
    teacher_features = PrefixFeatures(teacher.model, data.prefix_inputs(), budget, precompute) if own else None
    prefix_note = (
        "prefix trained (exported anew: its cache entries are not shared)"
        if cfg.train_prefix
        else f"prefix frozen; {features.describe()}"
    )
    if cfg.state_out:
        prefix_note += "; state-out: the student's prompt holds no state, its expert takes it"
    echo(prefix_note)
    gen = torch.Generator().manual_seed(cfg.seed)
    trained = student if cfg.train_prefix else student.expert
    calls = [0]

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        calls[0] += 1
        idx = torch.randint(0, data.size, (cfg.batch_size,), generator=gen)
        if cfg.train_prefix:
            kv, mask = student.encode_prefix(*(x[idx] for x in inputs))
        else:
            kv, mask = features.get(idx)
        teacher_prefix = teacher_features.get(idx) if own else None
        terms = snapflow_loss(
            student,
            sf,
            data.state[idx],
            kv,
            mask,
            data.chunks[idx],
            gen,
            teacher=teacher.model,
            teacher_prefix=teacher_prefix,
        )
        if cfg.objective == "trajectory":
            terms["traj"] = terms.pop("cons")
        return terms

    t0 = time.monotonic()
    ema = run_loop(
        trained,
        [p for p in trained.parameters() if p.requires_grad],
        step_fn,
        cfg.loop(),
        run_dir,
        resume=resume,
        description=f"distill ({cfg.objective})",
        generator=gen,
    )
    seconds = time.monotonic() - t0
    final = copy.deepcopy(student)
    (final if cfg.train_prefix else final.expert).load_state_dict(ema.model.state_dict())
    steps = torch.load(run_dir / CHECKPOINT, weights_only=False)["step"]
    return DistillResult(
        final.eval(),
        run_dir,
        steps,
        calls[0],
        1e3 * seconds / max(1, calls[0]),
        read_losses(run_dir),
        prefix_note,
        cfg,
    )
