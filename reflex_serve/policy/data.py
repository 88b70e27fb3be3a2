"""Training samples for the flow-matching policy: observations with action-chunk labels.

Independent of where the frames come from (demo files, the store): callers hand in
per-frame arrays ordered by episode and time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import tokenizer
from .configuration import PolicyConfig
from .normalize import DatasetStats, Stats


@dataclass
class FrameData:
    """Per-frame arrays, N frames, contiguous and time-ordered within each episode.

    Attributes:
        images: uint8 (N, cams, H, W, 3).
        state: float32 (N, S), unnormalized.
        action: float32 (N, A), unnormalized: the action taken at the frame.
        episode_index: int (N,), equal for the frames of one episode.
        instruction: (N,) str, the episode's instruction at each frame.
        cameras: camera names in the order of the images' ``cams`` axis, if known.
    """

    images: np.ndarray
    state: np.ndarray
    action: np.ndarray
    episode_index: np.ndarray
    instruction: np.ndarray
    cameras: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("state", "action", "episode_index", "instruction"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} frames, images has {n}")
        if n == 0:
            raise ValueError("no frames to train on")

    @classmethod
    def from_demos(cls, demos) -> FrameData:
        """Frames of a loaded demo directory (:class:`reflex_serve.sim.dataset.Demos`)."""
        return cls(images=demos.images, state=demos.state, action=demos.action,
                   episode_index=demos.episode_index, instruction=demos.frame_instructions(),
                   cameras=[c["name"] for c in demos.cameras])

    def fit_stats(self) -> DatasetStats:
        """Mean/std (with a floor) of state and action."""
        return DatasetStats(state=Stats.fit(self.state), action=Stats.fit(self.action))


def chunk_indices(episode_index: np.ndarray, chunk_size: int) -> np.ndarray:
    """Indices (N, H) of the H actions that follow each frame within its episode.

    Past the episode's last frame the last action is repeated (the robot holds).
    """
    n = len(episode_index)
    last = np.empty(n, dtype=np.int64)
    boundaries = np.flatnonzero(np.diff(episode_index) != 0)
    ends = np.append(boundaries, n - 1)
    starts = np.insert(boundaries + 1, 0, 0)
    for s, e in zip(starts, ends):
        last[s:e + 1] = e
    idx = np.arange(n)[:, None] + np.arange(chunk_size)[None, :]
    return np.minimum(idx, last[:, None])


class TrainingSet:
    """Tensors ready for batching: normalized state, action chunks, tokens, raw images."""

    def __init__(self, frames: FrameData, cfg: PolicyConfig, stats: DatasetStats) -> None:
        cams, h, w = frames.images.shape[1:4]
        if cams != len(cfg.cameras) or (h, w) != tuple(cfg.cameras[0][1:]):
            raise ValueError(f"images are {cams} x {h}x{w}, config expects {cfg.cameras}")
        if frames.state.shape[1] != cfg.state_dim or frames.action.shape[1] != cfg.action_dim:
            raise ValueError(
                f"data has state_dim {frames.state.shape[1]} / action_dim {frames.action.shape[1]}, "
                f"config expects {cfg.state_dim} / {cfg.action_dim}"
            )
        self.images = torch.from_numpy(np.ascontiguousarray(frames.images))
        self.state = torch.from_numpy(stats.state.normalize(frames.state))
        action = torch.from_numpy(stats.action.normalize(frames.action))
        self.chunks = action[torch.from_numpy(chunk_indices(frames.episode_index, cfg.chunk_size))]
        uniq, inverse = np.unique(frames.instruction.astype(str), return_inverse=True)
        table = np.stack([tokenizer.tokenize(s, cfg.max_text_tokens, cfg.vocab_size) for s in uniq])
        self.tokens = torch.from_numpy(table[inverse])
        self.size = len(frames.images)

    def batch(self, idx: torch.Tensor, shift: int = 0, generator: torch.Generator | None = None):
        """(images uint8 (B,C,H,W,3), tokens (B,T), state (B,S), chunks (B,H,A)) for ``idx``.

        ``shift`` > 0 applies a random translation of up to ``shift`` pixels per sample
        (edge-replicated), the image augmentation that helped on MetaWorld.
        """
        images = self.images[idx]
        if shift > 0:
            images = random_shift(images, shift, generator)
        return images, self.tokens[idx], self.state[idx], self.chunks[idx]


def random_shift(images: torch.Tensor, shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate uint8 images (B, C, H, W, 3) by up to ``shift`` pixels, edge-replicated."""
    b, c, h, w, _ = images.shape
    x = images.permute(0, 1, 4, 2, 3).reshape(b, c * 3, h, w).float()
    x = torch.nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
    offs = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator)
    out = torch.stack([x[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offs.tolist())])
    return out.reshape(b, c, 3, h, w).permute(0, 1, 3, 4, 2).to(torch.uint8)
