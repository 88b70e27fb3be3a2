"""Training-loop plumbing shared by policy training and distillation.

EMA of weights, a warm-up + cosine learning-rate schedule, resumable checkpoints, a JSONL
log and a rich progress bar. The objectives live with their callers.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


class EMA:
    """Exponential moving average of a module's parameters (a frozen copy)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend in ``model``; the decay ramps up over the first steps ((1+step)/(10+step))."""
        d = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.mul_(d).add_(p.detach(), alpha=1 - d)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@dataclass
class LoopConfig:
    """Optimisation settings; ``max_minutes`` stops early (the run stays resumable)."""

    steps: int
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 300
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    log_every: int = 50
    max_minutes: float | None = None
    progress: bool = True


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf: the run stops instead of writing NaN weights."""


def run_loop(
    model: nn.Module,
    params: list[nn.Parameter],
    step_fn: Callable[[int], dict[str, torch.Tensor]],
    loop: LoopConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    description: str = "training",
    generator: torch.Generator | None = None,
) -> EMA:
    """Optimise ``params`` with AdamW on the loss that ``step_fn(step)`` returns.

    ``step_fn`` returns a dict of scalar tensors; its ``"loss"`` entry is minimised and
    every entry is shown on the progress bar and written to ``train_log.jsonl``. A
    checkpoint (model, EMA, optimiser, step, the global RNG and ``generator``, the one
    that draws batches) is written every ``checkpoint_every`` steps and at the end;
    ``resume`` continues from it with the same batch sequence as an uninterrupted run.

    Returns:
        the EMA (its ``model`` holds the averaged weights).

    Raises:
        TrainingDiverged: the loss is NaN or Inf at some step (before that step's update).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(params, lr=loop.lr, weight_decay=loop.weight_decay)
    ema = EMA(model, loop.ema_decay)
    start = 0
    ckpt_path = out_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        ema.model.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        if generator is not None and ckpt.get("generator") is not None:
            generator.set_state(ckpt["generator"])
        start = ckpt["step"]

    def save(step: int) -> None:
        torch.save({"model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state(), "step": step,
                    "generator": generator.get_state() if generator is not None else None}, ckpt_path)

    t0 = time.monotonic()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    step = start
    with Progress(*columns, disable=not loop.progress) as bar, (out_dir / LOG).open("a") as log:
        task = bar.add_task(description, total=loop.steps, completed=start, info="")
        model.train()
        for step in range(start, loop.steps):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, loop.steps, loop.lr, loop.warmup)
            terms = step_fn(step)
            if not torch.isfinite(terms["loss"]):
                raise TrainingDiverged(
                    f"{description}: the loss is {float(terms['loss'].detach())} at step {step} "
                    f"({', '.join(f'{k}={float(v.detach()):.4g}' for k, v in terms.items())}); nothing "
                    "was written after the last checkpoint. Look for extreme values in the "
                    "data, or lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, loop.grad_clip)
            opt.step()
            ema.update(model, step)
            if step % loop.log_every == 0 or step == loop.steps - 1:
                values = {k: round(float(v.detach()), 5) for k, v in terms.items()}
                bar.update(task, info=" ".join(f"{k}={v:.4f}" for k, v in values.items()))
                log.write(json.dumps({"step": step, "lr": opt.param_groups[0]["lr"], **values}) + "\n")
                log.flush()
            bar.advance(task)
            if (step + 1) % loop.checkpoint_every == 0:
                save(step + 1)
            if loop.max_minutes is not None and time.monotonic() - t0 > 60 * loop.max_minutes:
                step += 1
                break
        else:
            step = loop.steps
    save(step)
    model.eval()
    return ema
