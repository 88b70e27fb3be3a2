"""The native flow-matching VLA in PyTorch (pi0-style, Black et al. 2024).

Two parts with the interfaces the export directory fixes:

* the **prefix** encodes camera images (a patch stem, 16x16 pixels per token) and
  instruction tokens with a bidirectional transformer, then projects its output into
  one key/value pair per action-expert layer: ``prefix_kv`` (B, L, 2, P, D) and
  ``prefix_mask`` (B, P) (1.0 for real tokens, 0.0 for padding). It depends only on the
  observation's images and text, so it is computed once per observation and cached.
* the **action expert** takes a noisy action chunk ``x_t`` (B, H, A), the flow time
  ``t`` (B,), the SnapFlow target time ``s`` (B,), the normalized state (B, S) and the
  prefix KV, and returns the velocity (B, H, A). Each expert layer attends jointly over
  the prefix keys/values and its own tokens (a state token and H action tokens).

The target-time embedding phi(s) (SnapFlow, arXiv 2604.05656) is a 2-layer MLP on a
sinusoidal encoding of s whose output layer is zero-initialised, so a freshly built or
flow-matching-trained teacher ignores s exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration import PolicyConfig


def sinusoidal(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sinusoidal encoding of times in [0, 1] as in pi0: float (B,) -> float (B, dim).

    Periods are spaced geometrically between ``min_period`` and ``max_period``.
    """
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** fraction
    angles = t[:, None].float() * (2 * math.pi / period)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention with separate query and key/value sources and an additive mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, q_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """q_in (B, Q, D); k, v (B, K, D); bias (B, 1, 1, K) additive -> (B, Q, D)."""
        b, nq, d = q_in.shape
        h = self.heads
        q = self.q(q_in).reshape(b, nq, h, d // h).transpose(1, 2)
        k = k.reshape(b, -1, h, d // h).transpose(1, 2)
        v = v.reshape(b, -1, h, d // h).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // h)) + bias
        y = att.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, nq, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block; keys/values may be extended by external ones."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.kv = nn.Linear(width, 2 * width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor, ext_kv: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); ext_kv (B, 2, P, D) prepended to the keys/values; bias covers all keys."""
        h = self.norm1(x)
        k, v = self.kv(h).chunk(2, dim=-1)
        if ext_kv is not None:
            k = torch.cat([ext_kv[:, 0], k], dim=1)
            v = torch.cat([ext_kv[:, 1], v], dim=1)
        x = x + self.attn(h, k, v, bias)
        return x + self.mlp(self.norm2(x))


class PrefixEncoder(nn.Module):
    """Images uint8 (B, C, H, W, 3) + tokens int64 (B, T) -> prefix_kv (B, L, 2, P, D), mask (B, P)."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        d = cfg.width
        self.num_cams = len(cfg.cameras)
        # 8x8 patches, then a 2x2 conv: one token per 16x16 pixels (ViT-style hybrid stem,
        # a tenth of the cost of a strided conv stack on two CPU cores).
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 8, 8), nn.GELU(), nn.Conv2d(64, d, 2, 2))
        tokens_per_cam = cfg.image_tokens // self.num_cams
        self.image_pos = nn.Parameter(torch.randn(self.num_cams, tokens_per_cam, d) * 0.02)
        self.text_embed = nn.Embedding(cfg.vocab_size, d)
        self.text_pos = nn.Parameter(torch.randn(cfg.max_text_tokens, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.prefix_layers))
        self.norm = nn.LayerNorm(d)
        self.to_kv = nn.ModuleList(nn.Linear(d, 2 * d) for _ in range(cfg.expert_layers))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, hh, ww, _ = images.shape
        x = images.permute(0, 1, 4, 2, 3).reshape(b * c, 3, hh, ww).float() * (2.0 / 255.0) - 1.0
        img = self.stem(x).flatten(2).transpose(1, 2)  # (B*C, tokens, D)
        img = img.reshape(b, c, -1, img.shape[-1]) + self.image_pos
        img = img.reshape(b, -1, img.shape[-1])
        txt = self.text_embed(tokens) + self.text_pos
        x = torch.cat([img, txt], dim=1)
        mask = torch.cat([torch.ones(b, img.shape[1], dtype=torch.float32), (tokens != 0).float()], dim=1)
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        kv = torch.stack([proj(x).reshape(b, -1, 2, x.shape[-1]).transpose(1, 2) for proj in self.to_kv], dim=1)
        return kv, mask


class ActionExpert(nn.Module):
    """x_t (B, H, A), t (B,), s (B,), state (B, S), prefix_kv, prefix_mask -> velocity (B, H, A)."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        d = cfg.width
        self.width = d
        self.state_in = nn.Linear(cfg.state_dim, d)
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.action_pos = nn.Parameter(torch.randn(cfg.chunk_size, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.target_time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        nn.init.zeros_(self.target_time_mlp[2].weight)  # phi(s) = 0 at initialisation (SnapFlow)
        nn.init.zeros_(self.target_time_mlp[2].bias)
        self.fuse = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.expert_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.action_dim)

    def forward(self, x_t, t, s, state, prefix_kv, prefix_mask) -> torch.Tensor:
        cond = self.time_mlp(sinusoidal(t, self.width)) + self.target_time_mlp(sinusoidal(s, self.width))
        act = self.action_in(x_t) + self.action_pos
        act = self.fuse(torch.cat([act, cond[:, None, :].expand_as(act)], dim=-1))
        x = torch.cat([self.state_in(state)[:, None, :], act], dim=1)
        b, n = x.shape[0], x.shape[1]
        mask = torch.cat([prefix_mask, torch.ones(b, n, dtype=prefix_mask.dtype)], dim=1)
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x = block(x, bias, prefix_kv[:, i])
        return self.head(self.norm(x[:, 1:]))


class FlowMatchingVLA(nn.Module):
    """The whole policy: :class:`PrefixEncoder` + :class:`ActionExpert`.

    ``velocity`` is the network F(x_t, s, t) of SnapFlow; training and distillation call
    it through :meth:`encode_prefix` and :meth:`velocity` so that the prefix can be frozen
    or computed once per observation.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.config = cfg
        self.prefix = PrefixEncoder(cfg)
        self.expert = ActionExpert(cfg)

    def encode_prefix(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images uint8 (B, C, H, W, 3), tokens int64 (B, T) -> (prefix_kv, prefix_mask)."""
        return self.prefix(images, tokens)

    def velocity(self, x_t, t, s, state, prefix_kv, prefix_mask) -> torch.Tensor:
        """The action expert; see :class:`ActionExpert`."""
        return self.expert(x_t, t, s, state, prefix_kv, prefix_mask)

    @torch.no_grad()
    def sample(self, images, tokens, state, noise, num_steps: int, target_time: str = "instantaneous") -> torch.Tensor:
        """Euler-integrate from ``noise`` (B, H, A) at t = 1 to normalized actions at t = 0."""
        from .flow import euler_schedule

        kv, mask = self.encode_prefix(images, tokens)
        x = noise
        b = noise.shape[0]
        for t, s in euler_schedule(num_steps, target_time):
            v = self.velocity(x, torch.full((b,), t), torch.full((b,), s), state, kv, mask)
            x = x - v / num_steps
        return x
