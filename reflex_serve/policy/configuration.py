"""Configuration of the native flow-matching VLA (one dataclass, checked on creation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class PolicyConfig:
    """Sizes of the pi0-style flow-matching VLA.

    The default (width 128, 3 prefix layers, 4 expert layers, about 2M parameters) trains
    on two CPU cores in tens of minutes on MetaWorld demonstrations.

    Attributes:
        cameras: ``[name, height, width]`` per camera; height and width multiples of 16
            (the conv stem downsamples by 16: a 64x64 image gives 16 image tokens).
        state_dim, action_dim: S and A.
        chunk_size: H, actions per chunk; ``n_action_steps`` <= H are executed.
        width: transformer width D; ``num_heads`` must divide it.
        prefix_layers, expert_layers: depths of the prefix encoder and action expert;
            the prefix exposes one key/value pair per expert layer.
        max_text_tokens, vocab_size: instruction token length T and hashed vocabulary.
        num_steps: default Euler steps at inference.

    Raises:
        ValueError: on inconsistent sizes, naming the field.
    """

    cameras: list[list] = field(default_factory=lambda: [["corner2", 64, 64]])
    state_dim: int = 39
    action_dim: int = 4
    chunk_size: int = 8
    n_action_steps: int = 4
    width: int = 128
    num_heads: int = 4
    mlp_ratio: int = 2
    prefix_layers: int = 3
    expert_layers: int = 4
    max_text_tokens: int = 16
    vocab_size: int = 1024
    num_steps: int = 10
    state_mode: str = "full"

    def __post_init__(self) -> None:
        self.cameras = [list(c) for c in self.cameras]
        if not self.cameras:
            raise ValueError("cameras: at least one camera is required")
        if len({(h, w) for _, h, w in self.cameras}) > 1:
            raise ValueError("cameras: all cameras must have the same height and width")
        for name, h, w in self.cameras:
            if h % 16 or w % 16 or h <= 0 or w <= 0:
                raise ValueError(f"cameras: {name} is {h}x{w}; height and width must be multiples of 16")
        for name in ("state_dim", "action_dim", "chunk_size", "width", "prefix_layers",
                     "expert_layers", "max_text_tokens", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"n_action_steps must be in [1, chunk_size={self.chunk_size}], got {self.n_action_steps}"
            )
        if self.width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide width={self.width}")
        if self.vocab_size < 2:
            raise ValueError("vocab_size must be >= 2")

    @property
    def image_tokens(self) -> int:
        """Image tokens over all cameras: (h/16) * (w/16) per camera."""
        return sum((h // 16) * (w // 16) for _, h, w in self.cameras)

    @property
    def prefix_len(self) -> int:
        """P: image tokens plus instruction tokens."""
        return self.image_tokens + self.max_text_tokens

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown policy config fields: {unknown}")
        return cls(**d)
