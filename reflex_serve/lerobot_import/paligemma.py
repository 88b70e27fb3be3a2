"""PaliGemma + Gemma expert (LeRobot 0.6.1 pi0 / pi0.5) as native PyTorch pieces.

Ported function by function from ``lerobot/policies/pi0/modeling_pi0.py`` (and its twin
``pi05/modeling_pi05.py``), ``lerobot/policies/pi_gemma.py``,
``lerobot/policies/common/vla_utils.py`` and the transformers 5.5 Gemma / SigLIP /
PaliGemma modules those run (docs/lerobot.md, "pi0 and pi0.5"). Only torch is imported.
Submodule names follow LeRobot's state-dict keys after a prefix rename
(:mod:`reflex_serve.lerobot_import.pi_checkpoint`).

* :class:`PaliGemmaPrefix`: images uint8 (B, cams, H, W, 3), tokens int64 (B, T),
  token_mask int64 (B, T) -> prefix_kv float32 (B, L, 2, P, kv_heads * head_dim) (keys
  after RoPE, values), prefix_mask float32 (B, P). P = cams * image tokens + T.
* :class:`GemmaExpertStack`: the Gemma expert's layers attending to that cache (shared
  attention), optionally adaRMS-conditioned (pi0.5). pi0.py / pi05.py wrap it.
* :class:`TargetTimeEmbedding`: SnapFlow's phi(s), zero output layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .phi import target_time_mlp

MASK_VALUE = -2.3819763e38  # lerobot.utils.constants.OPENPI_ATTENTION_MASK_VALUE
GEMMA_EPS = 1e-6  # transformers GemmaConfig.rms_norm_eps default (LeRobot never sets it)
SIGLIP_EPS = 1e-6  # SiglipVisionConfig.layer_norm_eps default
ROPE_THETA = 10_000.0  # GemmaConfig default rope_theta


@dataclass(frozen=True)
class PiArch:
    """Every size the pi0 / pi0.5 modules need (inferred by pi_checkpoint.infer_arch).

    Cameras: ``num_cameras`` inputs of native ``image_hw`` (H, W), resized with centred
    padding to ``resolution`` x ``resolution``. SigLIP: ``vision_*``, one token per
    ``vision_patch`` patch. PaliGemma's Gemma: ``vlm_*`` with ``vocab_size`` embeddings;
    expert Gemma: ``expert_*``; both share ``heads`` / ``kv_heads`` / ``head_dim``
    (shared attention concatenates their keys). ``adarms``: the expert's norms are
    time-conditioned (pi0.5).
    """

    num_cameras: int
    image_hw: tuple[int, int]
    resolution: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    vision_patch: int
    vocab_size: int
    vlm_width: int
    vlm_mlp: int
    vlm_layers: int
    expert_width: int
    expert_mlp: int
    expert_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    adarms: bool
    max_state_dim: int
    max_action_dim: int
    chunk_size: int
    max_text_tokens: int
    min_period: float
    max_period: float

    @property
    def image_tokens(self) -> int:
        """SigLIP tokens per camera: (resolution / patch) ** 2."""
        return (self.resolution // self.vision_patch) ** 2

    @property
    def prefix_len(self) -> int:
        """P: image tokens of every camera, then the text tokens."""
        return self.num_cameras * self.image_tokens + self.max_text_tokens

    @property
    def kv_dim(self) -> int:
        """D of prefix_kv: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PiArch:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "image_hw": tuple(data["image_hw"])})


def rope_inv_freq(head_dim: int) -> torch.Tensor:
    """float32 (head_dim / 2,): GemmaRotaryEmbedding's default inverse frequencies."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (ROPE_THETA**exponents)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Gemma RoPE (rotate_half form): x (B, heads, S, D), positions float32 (B, S)."""
    freqs = positions[:, :, None] * inv_freq[None, None, :]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    cos, sin = emb.cos(), emb.sin()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def eager_attention(q, k, v, additive_mask, scaling: float) -> torch.Tensor:
    """transformers' eager_attention_forward.

    q (B, heads, Q, D), k / v (B, kv_heads, K, D), additive_mask float32 (B, 1, Q, K)
    (0 or MASK_VALUE) -> (B, Q, heads * D); float32 softmax.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        b, kvh, n, d = k.shape
        k = k[:, :, None].expand(b, kvh, groups, n, d).reshape(b, kvh * groups, n, d)
        v = v[:, :, None].expand(b, kvh, groups, n, d).reshape(b, kvh * groups, n, d)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling + additive_mask
    out = torch.matmul(F.softmax(scores, dim=-1, dtype=torch.float32), v)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """bool (B, Q, K) -> float32 (B, 1, Q, K): 0 where allowed, MASK_VALUE elsewhere."""
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(allowed[:, None], zero, torch.full((), MASK_VALUE, dtype=torch.float32))


def time_scaling(dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """float64 (dim / 2,): ``2 pi / period`` as create_sinusoidal_pos_embedding builds it."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
    period = min_period * (max_period / min_period) ** fraction
    return 1.0 / period * 2 * math.pi


def sinusoidal_f64(t: torch.Tensor, scaling: torch.Tensor) -> torch.Tensor:
    """create_sinusoidal_pos_embedding: t (B,) -> float32 (B, 2 * len(scaling)).

    t is cast to float64, multiplied by the float64 ``scaling``, sin / cos in float64,
    cast to float32 after: what LeRobot computes on the CPU (docs/lerobot.md).
    """
    arg = scaling[None, :] * t.to(torch.float64)[:, None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(torch.float32)


class TargetTimeEmbedding(nn.Module):
    """SnapFlow's phi(s): 2-layer MLP on the sinusoid of s (:func:`.phi.target_time_mlp`:
    output layer zero, first layer from a fixed seed).

    s (B,) -> float32 (B, width), added to the time embedding; 0 at import, so the
    imported teacher equals LeRobot exactly (s is ignored until distillation trains it).
    """

    def __init__(self, width: int, scaling: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scaling", scaling.clone(), persistent=False)
        self.target_time_mlp = target_time_mlp(width)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.target_time_mlp(sinusoidal_f64(s, self.scaling))


class GemmaNorm(nn.Module):
    """PiGemmaRMSNorm: plain (``x * rsqrt(mean x^2 + eps) * (1 + weight)``, gate None) or,
    with ``cond_dim``, adaRMS (``dense(cond)`` -> scale, shift, gate). x (B, S, dim)."""

    def __init__(self, dim: int, cond_dim: int | None = None) -> None:
        super().__init__()
        if cond_dim is None:
            self.weight = nn.Parameter(torch.zeros(dim))
        else:
            self.dense = nn.Linear(cond_dim, 3 * dim)
        self.adaptive = cond_dim is not None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        normed = x * torch.rsqrt(torch.mean(torch.square(x), dim=-1, keepdim=True) + GEMMA_EPS)
        if not self.adaptive:
            return normed * (1.0 + self.weight), None
        scale, shift, gate = self.dense(cond)[:, None].chunk(3, dim=-1)
        return normed * (1 + scale) + shift, gate


class _Attn(nn.Module):
    """Gemma q/k/v/o projections (``self_attn.*``, no bias)."""

    def __init__(self, width: int, a: PiArch) -> None:
        super().__init__()
        self.q_proj = nn.Linear(width, a.heads * a.head_dim, bias=False)
        self.k_proj = nn.Linear(width, a.kv_heads * a.head_dim, bias=False)
        self.v_proj = nn.Linear(width, a.kv_heads * a.head_dim, bias=False)
        self.o_proj = nn.Linear(a.heads * a.head_dim, width, bias=False)


class _GemmaMLP(nn.Module):
    """GemmaMLP: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, width: int, mlp: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp, bias=False)
        self.up_proj = nn.Linear(width, mlp, bias=False)
        self.down_proj = nn.Linear(mlp, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaLayer(nn.Module):
    """One PiGemma decoder layer; :meth:`qkv` and :meth:`finish` split it around attention."""

    def __init__(self, width: int, mlp: int, a: PiArch, cond_dim: int | None = None) -> None:
        super().__init__()
        self.head_dim = a.head_dim
        self.input_layernorm = GemmaNorm(width, cond_dim)
        self.self_attn = _Attn(width, a)
        self.post_attention_layernorm = GemmaNorm(width, cond_dim)
        self.mlp = _GemmaMLP(width, mlp)

    def qkv(self, x, positions, inv_freq, cond=None):
        """x (B, S, W) -> q (B, heads, S, D), k / v (B, kv_heads, S, D) after RoPE, gate."""
        h, gate = self.input_layernorm(x, cond)
        b, s, _ = h.shape

        def split(proj):
            return proj(h).view(b, s, -1, self.head_dim).transpose(1, 2)

        q, k, v = (
            split(self.self_attn.q_proj),
            split(self.self_attn.k_proj),
            split(self.self_attn.v_proj),
        )
        return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v, gate

    def finish(self, x, att, gate, cond=None):
        """Residual(s) and MLP after attention: x (B, S, W), att (B, S, heads * D)."""
        out = self.self_attn.o_proj(att)
        x = x + out if gate is None else x + out * gate
        h, gate = self.post_attention_layernorm(x, cond)
        out = self.mlp(h)
        return x + out if gate is None else x + out * gate


class _SiglipLayer(nn.Module):
    """SiglipEncoderLayer: pre-LayerNorm attention (with biases) and gelu_tanh MLP."""

    def __init__(self, a: PiArch) -> None:
        super().__init__()
        d = a.vision_hidden
        self.heads = a.vision_heads
        self.layer_norm1 = nn.LayerNorm(d, eps=SIGLIP_EPS)
        self.self_attn = nn.ModuleDict(
            {n: nn.Linear(d, d) for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
        )
        self.layer_norm2 = nn.LayerNorm(d, eps=SIGLIP_EPS)
        self.mlp = nn.ModuleDict(
            {"fc1": nn.Linear(d, a.vision_intermediate), "fc2": nn.Linear(a.vision_intermediate, d)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.layer_norm1(x)
        q, k, v = (
            self.self_attn[p](h).view(b, n, self.heads, -1).transpose(1, 2)
            for p in ("q_proj", "k_proj", "v_proj")
        )
        none = torch.zeros((1, 1, 1, 1), dtype=torch.float32)
        att = eager_attention(q, k, v, none, (d // self.heads) ** -0.5)
        x = x + self.self_attn["out_proj"](att)
        h = self.mlp["fc2"](F.gelu(self.mlp["fc1"](self.layer_norm2(x)), approximate="tanh"))
        return x + h


class SiglipVision(nn.Module):
    """SiglipVisionTransformer without head: pixels (B, 3, R, R) in [-1, 1] -> (B, N, hidden)."""

    def __init__(self, a: PiArch) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, a.vision_hidden, a.vision_patch, stride=a.vision_patch)
        self.position_embedding = nn.Embedding(a.image_tokens, a.vision_hidden)
        self.layers = nn.ModuleList(_SiglipLayer(a) for _ in range(a.vision_layers))
        self.post_layernorm = nn.LayerNorm(a.vision_hidden, eps=SIGLIP_EPS)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (
            self.patch_embedding(pixels).flatten(2).transpose(1, 2)
            + self.position_embedding.weight[None]
        )
        for layer in self.layers:
            x = layer(x)
        return self.post_layernorm(x)


def resize_with_pad(img: torch.Tensor, size: int) -> torch.Tensor:
    """resize_with_pad_torch for float images in [0, 1]: (B, 3, H, W) -> (B, 3, size, size).

    Bilinear (align_corners False, no antialias) to fit, clamp to [0, 1], zero padding
    centred (the extra pixel of an odd margin goes bottom / right).
    """
    h, w = img.shape[-2:]
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    img = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    top, left = (size - rh) // 2, (size - rw) // 2
    return F.pad(img, (left, size - rw - left, top, size - rh - top), value=0.0)


class PaliGemmaPrefix(nn.Module):
    """images + text -> per-layer prefix K/V (PI0Pytorch.embed_prefix + the prefix pass).

    forward(images uint8 (B, cams, H, W, 3), tokens int64 (B, T), token_mask int64 (B, T))
    -> (prefix_kv float32 (B, L, 2, P, kv_dim), prefix_mask float32 (B, P)).
    Each camera: /255, resize_with_pad to the resolution when its size differs, * 2 - 1,
    SigLIP, projector; text: embed_tokens * sqrt(width). One bidirectional block over
    valid tokens, positions cumsum(mask) - 1, Gemma RoPE, eager attention.
    """

    def __init__(self, a: PiArch) -> None:
        super().__init__()
        self.arch = a
        self.vision = SiglipVision(a)
        self.projector = nn.Linear(a.vision_hidden, a.vlm_width)
        self.embed_tokens = nn.Embedding(a.vocab_size, a.vlm_width)
        self.layers = nn.ModuleList(
            GemmaLayer(a.vlm_width, a.vlm_mlp, a) for _ in range(a.vlm_layers)
        )
        self.register_buffer(
            "embed_scale", torch.tensor(a.vlm_width**0.5, dtype=torch.float32), persistent=False
        )
        self.register_buffer("inv_freq", rope_inv_freq(a.head_dim), persistent=False)

    def embed_images(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images uint8 (B, cams, H, W, 3) -> per camera float32 (B, image_tokens, width)."""
        out = []
        for c in range(images.shape[1]):
            img = images[:, c].to(torch.float32).permute(0, 3, 1, 2) / 255
            if tuple(img.shape[-2:]) != (self.arch.resolution, self.arch.resolution):
                img = resize_with_pad(img, self.arch.resolution)
            out.append(self.projector(self.vision(img * 2.0 - 1.0)))
        return out

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor):
        embs = self.embed_images(images)
        n_img = sum(e.shape[1] for e in embs)
        x = torch.cat([*embs, self.embed_tokens(tokens) * self.embed_scale], dim=1)
        b = x.shape[0]
        pad = torch.cat(
            [torch.ones(b, n_img, dtype=torch.int64), token_mask.to(torch.int64)], dim=1
        )
        positions = (torch.cumsum(pad, dim=1) - 1).to(torch.float32)
        valid = pad > 0
        mask = additive(valid[:, None, :] & valid[:, :, None])
        scaling = self.arch.head_dim**-0.5
        kv = []
        for i, layer in enumerate(self.layers):
            q, k, v, gate = layer.qkv(x, positions, self.inv_freq)
            kv.append(torch.stack([_flat(k), _flat(v)], dim=1))
            if i + 1 < len(self.layers):  # the last layer's output feeds nothing the expert reads
                x = layer.finish(x, eager_attention(q, k, v, mask, scaling), gate)
        return torch.stack(kv, dim=1), pad.to(torch.float32)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, kv_heads, P, D) -> (B, P, kv_heads * D)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


class GemmaExpertStack(nn.Module):
    """The Gemma expert attending to the cached prefix (PaliGemmaWithExpertModel.forward
    with ``inputs_embeds=[None, suffix]`` and the prefix DynamicCache).

    forward(suffix float32 (B, S, W), prefix_kv (B, L, 2, P, kv_dim), prefix_mask (B, P),
    cond (B, W) or None) -> final-normed hidden (B, S, W). ``blocks`` are LeRobot's suffix
    att_masks (1 opens a block; a block sees the prefix, earlier blocks and itself);
    suffix positions start at sum(prefix_mask).
    """

    def __init__(self, a: PiArch, blocks: list[int]) -> None:
        super().__init__()
        cond = a.expert_width if a.adarms else None
        self.head_dim, self.kv_heads = a.head_dim, a.kv_heads
        self.layers = nn.ModuleList(
            GemmaLayer(a.expert_width, a.expert_mlp, a, cond) for _ in range(a.expert_layers)
        )
        self.norm = GemmaNorm(a.expert_width, cond)
        cum = torch.cumsum(torch.tensor(blocks, dtype=torch.int64), dim=0)
        self.register_buffer("suffix_allowed", cum[None, :] <= cum[:, None], persistent=False)
        self.register_buffer("inv_freq", rope_inv_freq(a.head_dim), persistent=False)

    def forward(self, suffix, prefix_kv, prefix_mask, cond=None):
        b, s, _ = suffix.shape
        p = prefix_mask.shape[1]
        positions = (
            prefix_mask.sum(dim=1, keepdim=True) + torch.arange(s, dtype=torch.float32)[None]
        )
        prefix_ok = (prefix_mask > 0.5)[:, None, :].expand(b, s, p)
        mask = additive(torch.cat([prefix_ok, self.suffix_allowed[None].expand(b, s, s)], dim=2))
        x = suffix
        for i, layer in enumerate(self.layers):
            q, k, v, gate = layer.qkv(x, positions, self.inv_freq, cond)
            pk = prefix_kv[:, i, 0].reshape(b, p, self.kv_heads, self.head_dim).transpose(1, 2)
            pv = prefix_kv[:, i, 1].reshape(b, p, self.kv_heads, self.head_dim).transpose(1, 2)
            att = eager_attention(
                q, torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), mask, self.head_dim**-0.5
            )
            x = layer.finish(x, att, gate, cond)
        return self.norm(x, cond)[0]
