"""SmolVLA (LeRobot 0.6.1) as two native PyTorch modules: the prefix and the action expert.

Ported function by function from ``lerobot/policies/smolvla/{modeling_smolvla,
smolvlm_with_expert}.py``, ``lerobot/policies/common/vla_utils.py`` and the SmolVLM /
Llama modules of transformers that SmolVLA runs (docs/lerobot.md, section 3). Submodule
names follow LeRobot's state-dict keys so that a checkpoint loads by prefix renaming
(:mod:`reflex_serve.lerobot_import.smolvla`). Only torch is imported.

* :class:`SmolVLAPrefix`: images uint8 (B, cams, H, W, 3), tokens int64 (B, T),
  token_mask int64 (B, T), state float32 (B, max_state_dim) -> prefix_kv float32
  (B, L, 2, P, kv_heads * head_dim) (keys after RoPE, values), prefix_mask float32 (B, P).
* :class:`SmolVLAExpert`: x_t (B, H, max_action_dim), t (B,), s (B,), prefix_kv,
  prefix_mask -> velocity (B, H, max_action_dim); alternating shared-attention /
  cross-attention layers, plus the SnapFlow target-time embedding phi(s) (zero output
  layer, so the imported teacher equals LeRobot).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ROPE_MAX_WAVELENGTH = 10_000  # SmolVLA's apply_rope hard-codes it (the VLM's rope_theta is ignored)
ACTIVATIONS = {
    "silu": F.silu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


@dataclass(frozen=True)
class SmolVLAArch:
    """Every size the two modules need; recorded in an export's manifest provenance.

    Image geometry: cameras ``num_cameras`` of native ``image_hw`` resized with padding
    to ``resize_hw`` (height, width). Vision tower: ``vision_*``; pixel-shuffle
    ``scale_factor``. Text model (Llama): ``text_*`` with ``num_vlm_layers`` layers.
    Expert (Llama without embeddings): ``expert_hidden``, ``expert_intermediate``, as many
    layers as the VLM; layer i is shared attention when ``attention_mode`` is
    ``"self_attn"`` or ``i % self_attn_every_n_layers == 0``, cross-attention otherwise.
    """

    num_cameras: int
    image_hw: tuple[int, int]
    resize_hw: tuple[int, int]
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    vision_patch: int
    vision_image_size: int
    vision_eps: float
    vision_act: str
    scale_factor: int
    vocab_size: int
    text_hidden: int
    text_intermediate: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    text_eps: float
    text_act: str
    num_vlm_layers: int
    expert_hidden: int
    expert_intermediate: int
    attention_mode: str
    self_attn_every_n_layers: int
    max_state_dim: int
    max_action_dim: int
    chunk_size: int
    max_text_tokens: int
    min_period: float
    max_period: float

    @property
    def kv_dim(self) -> int:
        return self.text_kv_heads * self.head_dim

    @property
    def image_tokens(self) -> int:
        """Tokens per camera after the connector."""
        rh, rw = self.resize_hw
        return (rh // self.vision_patch) * (rw // self.vision_patch) // self.scale_factor**2

    @property
    def prefix_len(self) -> int:
        return self.num_cameras * self.image_tokens + self.max_text_tokens + 1

    def is_shared_layer(self, i: int) -> bool:
        n = self.self_attn_every_n_layers
        return "cross" not in self.attention_mode or (n > 0 and i % n == 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SmolVLAArch:
        data = dict(data)
        data["image_hw"], data["resize_hw"] = tuple(data["image_hw"]), tuple(data["resize_hw"])
        return cls(**data)


def rope_timescale(head_dim: int) -> torch.Tensor:
    """float32 (head_dim / 2,): ``max_wavelength ** freq_exponents`` as SmolVLA's apply_rope."""
    exponents = (2.0 / head_dim) * torch.arange(head_dim // 2, dtype=torch.float32)
    return ROPE_MAX_WAVELENGTH**exponents


def apply_rope(x: torch.Tensor, positions: torch.Tensor, timescale: torch.Tensor) -> torch.Tensor:
    """RoPE of x float32 (B, L, heads, D) at positions float (B, L) -> (B, L, heads, D)."""
    radians = (positions[..., None].to(torch.float32) / timescale[None, None, :])[..., None, :]
    sin, cos = torch.sin(radians), torch.cos(radians)
    x1, x2 = x.split(x.shape[-1] // 2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def sinusoidal_f64(t: torch.Tensor, scaling: torch.Tensor) -> torch.Tensor:
    """LeRobot's create_sinusoidal_pos_embedding: t (B,) -> float32 (B, 2 * len(scaling)).

    ``scaling`` is the float64 ``2 pi / period``; the product and sin / cos are float64
    and cast to float32 after, exactly as LeRobot on the CPU (docs/lerobot.md).
    """
    arg = scaling[None, :] * t.to(torch.float64)[:, None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(torch.float32)


def time_scaling(dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """float64 (dim / 2,): ``2 pi / period`` with periods geometric in [min, max]."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
    period = min_period * (max_period / min_period) ** fraction
    return 1.0 / period * 2 * math.pi


def attention(q, k, v, mask, kv_groups: int) -> torch.Tensor:
    """SmolVLA's eager_attention_forward.

    q (B, Q, heads, D), k / v (B, K, kv_heads, D), mask bool (B, Q, K) -> (B, Q, heads * D):
    GQA expansion, scale D ** -0.5, masked scores set to float32 min, float32 softmax.
    """
    b, nk, kv_heads, d = k.shape
    k = k[:, :, :, None, :].expand(b, nk, kv_heads, kv_groups, d).reshape(b, nk, -1, d)
    v = v[:, :, :, None, :].expand(b, nk, kv_heads, kv_groups, d).reshape(b, nk, -1, d)
    scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) * d**-0.5
    scores = torch.where(mask[:, None], scores, torch.finfo(torch.float32).min)
    out = torch.matmul(F.softmax(scores, dim=-1), v.permute(0, 2, 1, 3))
    return out.permute(0, 2, 1, 3).reshape(b, q.shape[1], -1)


class RMSNorm(nn.Module):
    """Llama RMSNorm: weight * x * rsqrt(mean(x^2) + eps), x (..., dim)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class _Projections(nn.Module):
    """q/k/v/o projections under LeRobot's names (``self_attn.{q,k,v,o}_proj``)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, kv_in: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(kv_in, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(kv_in, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)


class _GatedMLP(nn.Module):
    """Llama MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int, act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    """One Llama decoder layer's weights; the attention itself is done by the caller.

    ``kv_in`` is the input width of k_proj / v_proj (the hidden width, or the VLM's
    kv_heads * head_dim for an expert cross-attention layer).
    """

    def __init__(self, hidden, intermediate, heads, kv_heads, head_dim, eps, act, kv_in=None) -> None:
        super().__init__()
        self.self_attn = _Projections(hidden, heads, kv_heads, head_dim, kv_in or hidden)
        self.mlp = _GatedMLP(hidden, intermediate, act)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def finish(self, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Residual + MLP after attention: h (B, N, hidden), att (B, N, heads * D)."""
        h = self.self_attn.o_proj(att) + h
        return self.mlp(self.post_attention_layernorm(h)) + h


class _VisionLayer(nn.Module):
    """SigLIP encoder layer (SmolVLMEncoderLayer): pre-LN attention and GELU MLP."""

    def __init__(self, a: SmolVLAArch) -> None:
        super().__init__()
        d = a.vision_hidden
        self.heads = a.vision_heads
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, nn.Linear(d, d))
        self.layer_norm1 = nn.LayerNorm(d, eps=a.vision_eps)
        self.layer_norm2 = nn.LayerNorm(d, eps=a.vision_eps)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, a.vision_intermediate), nn.Linear(a.vision_intermediate, d)
        self.act = ACTIVATIONS[a.vision_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        sa = self.self_attn
        y = self.layer_norm1(x)
        q, k, v = (p(y).view(b, n, self.heads, -1).transpose(1, 2) for p in (sa.q_proj, sa.k_proj, sa.v_proj))
        w = F.softmax(torch.matmul(q, k.transpose(-1, -2)) * (d // self.heads) ** -0.5, dim=-1)
        x = x + sa.out_proj(torch.matmul(w, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


def vision_position_ids(a: SmolVLAArch) -> torch.Tensor:
    """int64 (patches,): SmolVLMVisionEmbeddings' bucketised position ids for a full image."""
    side = a.vision_image_size // a.vision_patch
    rows, cols = (n // a.vision_patch for n in a.resize_hw)
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    ids = []
    for n in (rows, cols):
        coords = torch.arange(n, dtype=torch.float32) * (1.0 / torch.tensor(float(n)))
        ids.append(torch.bucketize(torch.clamp(coords, max=1.0 - 1e-6), boundaries, right=True))
    return (ids[0][:, None] * side + ids[1][None, :]).reshape(-1)


class SmolVLMVision(nn.Module):
    """Vision tower + connector: pixels float32 (N, 3, h, w) in [-1, 1] -> (N, tokens, text_hidden)."""

    def __init__(self, a: SmolVLAArch) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.patch_embedding = nn.Conv2d(3, a.vision_hidden, a.vision_patch, a.vision_patch)
        positions = (a.vision_image_size // a.vision_patch) ** 2
        self.embeddings.position_embedding = nn.Embedding(positions, a.vision_hidden)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_VisionLayer(a) for _ in range(a.vision_layers))
        self.post_layernorm = nn.LayerNorm(a.vision_hidden, eps=a.vision_eps)
        self.proj = nn.Linear(a.vision_hidden * a.scale_factor**2, a.text_hidden, bias=False)
        self.scale_factor = a.scale_factor
        self.register_buffer("position_ids", vision_position_ids(a), persistent=False)

    def pixel_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """SmolVLMConnector.pixel_shuffle: (N, seq, d) -> (N, seq / sf^2, d * sf^2)."""
        n, seq, d = x.shape
        sf, side = self.scale_factor, int(seq**0.5)
        x = x.view(n, side, side // sf, d * sf).permute(0, 2, 1, 3)
        x = x.reshape(n, side // sf, side // sf, d * sf * sf).permute(0, 2, 1, 3)
        return x.reshape(n, seq // sf**2, d * sf * sf)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = x + self.embeddings.position_embedding(self.position_ids)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.proj(self.pixel_shuffle(self.post_layernorm(x)))
