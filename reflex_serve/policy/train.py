"""`reflex train policy`: flow-matching training of the native VLA on demonstrations.

Loss (pi0 convention, see :mod:`.flow`): ||v(x_t, t, s=t) - (eps - a)||^2 with
t ~ Beta(1.5, 1) * 0.999 + 0.001. The prefix is encoded once per sample and reused for
``noise_draws`` noise samples; images get small random shifts; the exported weights
are the EMA.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .configuration import PolicyConfig
from .data import FrameData, TrainingSet
from .flow import interpolate, sample_time
from .modeling import FlowMatchingVLA
from .normalize import DatasetStats
from .training import LoopConfig, run_loop

RUN_CONFIG = "run.json"


@dataclass
class TrainConfig:
    """Training settings for :func:`train_policy`."""

    batch_size: int = 64
    noise_draws: int = 2
    image_shift: int = 4
    seed: int = 0
    threads: int = 2


def flow_matching_loss(model: FlowMatchingVLA, images, tokens, state, chunks, noise_draws: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared velocity error for a batch; chunks are normalized actions (B, H, A)."""
    kv, mask = model.encode_prefix(images, tokens)
    k = noise_draws
    kv, mask = kv.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    state, chunks = state.repeat_interleave(k, 0), chunks.repeat_interleave(k, 0)
    b = chunks.shape[0]
    t = sample_time(b, generator)
    noise = torch.randn(chunks.shape, generator=generator)
    v = model.velocity(interpolate(chunks, noise, t), t, t, state, kv, mask)
    return ((v - (noise - chunks)) ** 2).mean()


def teacher_parameters(model: FlowMatchingVLA) -> list[torch.nn.Parameter]:
    """Every parameter except the SnapFlow target-time embedding phi(s).

    A flow-matching teacher never uses s (it is always s = t), so phi stays exactly zero
    and a student initialised from the teacher equals it at step 0 for every s.
    """
    return [p for name, p in model.named_parameters() if not name.startswith("expert.target_time_mlp.")]


def train_policy(frames: FrameData, cfg: PolicyConfig, out_dir: Path, loop: LoopConfig,
                 train: TrainConfig | None = None, *, resume: bool = False,
                 provenance: dict | None = None) -> tuple[FlowMatchingVLA, DatasetStats]:
    """Train a policy and write the run directory.

    The run directory holds ``checkpoint.pt`` (resumable), ``train_log.jsonl``,
    ``stats.json`` and ``run.json`` (configs and provenance).

    Returns:
        (the EMA model in eval mode, the normalization statistics).

    Raises:
        ValueError: if the data does not fit the config (dims, cameras, image size).
    """
    train = train or TrainConfig()
    torch.manual_seed(train.seed)
    torch.set_num_threads(train.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats_path = out_dir / "stats.json"
    if resume and stats_path.is_file():
        stats = DatasetStats.load(stats_path)
    else:
        stats = frames.fit_stats()
        stats.save(stats_path)
    data = TrainingSet(frames, cfg, stats)
    (out_dir / RUN_CONFIG).write_text(json.dumps(
        {"policy": cfg.to_dict(), "train": asdict(train), "loop": asdict(loop),
         "frames": data.size, "provenance": provenance or {}}, indent=2))
    model = FlowMatchingVLA(cfg)
    gen = torch.Generator().manual_seed(train.seed)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, data.size, (train.batch_size,), generator=gen)
        images, tokens, state, chunks = data.batch(idx, train.image_shift, gen)
        return {"loss": flow_matching_loss(model, images, tokens, state, chunks, train.noise_draws, gen)}

    ema = run_loop(model, teacher_parameters(model), step_fn, loop, out_dir, resume=resume,
                   description="train policy", generator=gen)
    return ema.model, stats


def load_run(run_dir: Path) -> tuple[FlowMatchingVLA, DatasetStats, dict]:
    """The EMA model, statistics and ``run.json`` of a training run directory.

    Raises:
        FileNotFoundError: if the run has no checkpoint, statistics or config.
    """
    run_dir = Path(run_dir)
    for name in (RUN_CONFIG, "stats.json", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a training run: {name} is missing")
    info = json.loads((run_dir / RUN_CONFIG).read_text())
    model = FlowMatchingVLA(PolicyConfig.from_dict(info["policy"]))
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    model.load_state_dict(ckpt["ema"])
    info["trained_steps"] = ckpt["step"]
    return model.eval(), DatasetStats.load(run_dir / "stats.json"), info
