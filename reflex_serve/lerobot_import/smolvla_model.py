"""The SmolVLA prefix and action expert (the two graphs of an export), native PyTorch.

``VLAFlowMatching.embed_prefix`` + the prefix prefill of ``SmolVLMWithExpertModel.forward``
become :class:`SmolVLAPrefix`; ``denoise_step`` (``embed_suffix`` + the expert pass over
the cached prefix K/V) becomes :class:`SmolVLAExpert`. Building blocks and the exact
numerics are in :mod:`reflex_serve.lerobot_import.smolvla_modules`; docs/lerobot.md,
section 3, describes what LeRobot computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .phi import target_time_mlp
from .smolvla_modules import (
    LlamaLayer,
    RMSNorm,
    SmolVLAArch,
    SmolVLMVision,
    apply_rope,
    attention,
    rope_timescale,
    sinusoidal_f64,
    time_scaling,
)


def resize_with_pad(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """LeRobot's resize_with_pad: (N, C, h, w) -> (N, C, height, width).

    Keeps the aspect ratio (bilinear, align_corners False, no antialias) and pads with
    zeros on the LEFT and TOP; an image already of the target size is returned as is.
    """
    cur_h, cur_w = img.shape[2:]
    if (cur_h, cur_w) == (height, width):
        return img
    ratio = max(cur_w / width, cur_h / height)
    rh, rw = int(cur_h / ratio), int(cur_w / ratio)
    img = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False)
    return F.pad(img, (max(0, width - rw), 0, max(0, height - rh), 0), value=0.0)


class SmolVLAPrefix(nn.Module):
    """Images + language + state -> per-layer prefix K/V (the cacheable graph).

    forward(images uint8 (B, cams, H, W, 3), tokens int64 (B, T), token_mask int64 (B, T),
    state float32 (B, max_state_dim) normalised and zero-padded) ->
    (prefix_kv float32 (B, L, 2, P, kv_dim): keys after RoPE and values of the
    ``num_vlm_layers`` text layers; prefix_mask float32 (B, P): 1 real, 0 padding).
    P = cams * image_tokens + T + 1 (the state token, its own attention block).
    """

    def __init__(self, arch: SmolVLAArch) -> None:
        super().__init__()
        a = self.arch = arch
        self.vision = SmolVLMVision(a)
        self.embed_tokens = nn.Embedding(a.vocab_size, a.text_hidden)
        self.layers = nn.ModuleList(
            LlamaLayer(a.text_hidden, a.text_intermediate, a.text_heads, a.text_kv_heads,
                       a.head_dim, a.text_eps, a.text_act)
            for _ in range(a.num_vlm_layers)
        )
        self.state_proj = nn.Linear(a.max_state_dim, a.text_hidden)
        self.register_buffer("rope_timescale", rope_timescale(a.head_dim), persistent=False)
        blocks = torch.zeros(a.prefix_len, dtype=torch.int64)
        blocks[-1] = 1  # images + language one bidirectional block, the state token its own
        self.register_buffer("block_causal", blocks[None, :] <= blocks[:, None], persistent=False)

    def embed(self, images, tokens, token_mask, state):
        """Prefix embeddings float32 (B, P, text_hidden) and pad mask bool (B, P)."""
        a = self.arch
        b, cams, h, w, _ = images.shape
        pixels = images.to(torch.float32) / 255
        pixels = pixels.permute(0, 1, 4, 2, 3).reshape(b * cams, 3, h, w)
        pixels = resize_with_pad(pixels, *a.resize_hw) * 2.0 - 1.0
        img = self.vision(pixels)
        img = img * torch.tensor(img.shape[-1] ** 0.5, dtype=img.dtype)
        img = img.reshape(b, cams * img.shape[1], -1)
        lang = self.embed_tokens(tokens) * math.sqrt(a.text_hidden)
        st = self.state_proj(state)[:, None, :]
        embs = torch.cat([img, lang, st], dim=1)
        ones = torch.ones(b, img.shape[1], dtype=torch.bool)
        pad = torch.cat([ones, token_mask > 0, ones[:, :1]], dim=1)
        return embs, pad

    def forward(self, images, tokens, token_mask, state):
        a = self.arch
        h, pad = self.embed(images, tokens, token_mask, state)
        mask = self.block_causal[None] & pad[:, None, :] & pad[:, :, None]
        positions = torch.cumsum(pad.to(torch.int64), dim=1) - 1
        b, p, _ = h.shape
        kv = []
        for i, layer in enumerate(self.layers):
            proj = layer.self_attn
            x = layer.input_layernorm(h)
            q = apply_rope(proj.q_proj(x).view(b, p, -1, a.head_dim), positions, self.rope_timescale)
            k = apply_rope(proj.k_proj(x).view(b, p, -1, a.head_dim), positions, self.rope_timescale)
            v = proj.v_proj(x).view(b, p, -1, a.head_dim)
            kv.append(torch.stack([k.reshape(b, p, -1), v.reshape(b, p, -1)], dim=1))
            if i + 1 < len(self.layers):  # the last layer's output feeds nothing
                att = attention(q, k, v, mask, a.text_heads // a.text_kv_heads)
                h = layer.finish(h, att)
        return torch.stack(kv, dim=1), pad.to(torch.float32)


class SmolVLAExpert(nn.Module):
    """The action expert: velocity of a noisy chunk given the prefix K/V.

    forward(x_t float32 (B, H, max_action_dim), t (B,), s (B,) SnapFlow target time,
    prefix_kv (B, L, 2, P, kv_dim), prefix_mask (B, P)) -> velocity (B, H, max_action_dim).
    Actions attend causally among themselves; shared-attention layers see the valid
    prefix plus the actions (RoPE positions from ``sum(prefix_mask)``), cross-attention
    layers project the cached prefix K/V and see the valid prefix only (positions 0..H).
    phi(s) (``target_time_mlp``, zero-initialised output) is added to the time embedding.
    """

    def __init__(self, arch: SmolVLAArch) -> None:
        super().__init__()
        a = self.arch = arch
        w = a.expert_hidden
        self.layers = nn.ModuleList(
            LlamaLayer(w, a.expert_intermediate, a.text_heads, a.text_kv_heads, a.head_dim,
                       a.text_eps, a.text_act, kv_in=None if a.is_shared_layer(i) else a.kv_dim)
            for i in range(a.num_vlm_layers)
        )
        self.norm = RMSNorm(w, a.text_eps)
        self.action_in_proj = nn.Linear(a.max_action_dim, w)
        self.action_out_proj = nn.Linear(w, a.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * w, w)
        self.action_time_mlp_out = nn.Linear(w, w)
        self.target_time_mlp = target_time_mlp(w)  # phi(s) = 0: the teacher ignores s
        self.register_buffer("time_scaling", time_scaling(w, a.min_period, a.max_period), persistent=False)
        self.register_buffer("rope_timescale", rope_timescale(a.head_dim), persistent=False)
        steps = torch.arange(a.chunk_size, dtype=torch.float32)
        self.register_buffer("action_positions", steps, persistent=False)
        self.register_buffer("causal", steps[None, :] <= steps[:, None], persistent=False)

    def embed_suffix(self, x_t, t, s):
        """Action tokens float32 (B, H, expert_hidden): action_in_proj + time MLP."""
        act = self.action_in_proj(x_t)
        te = sinusoidal_f64(t, self.time_scaling)
        te = te + self.target_time_mlp(sinusoidal_f64(s, self.time_scaling))
        te = te[:, None, :].expand_as(act)
        h = self.action_time_mlp_in(torch.cat([act, te], dim=2))
        return self.action_time_mlp_out(F.silu(h))

    def forward(self, x_t, t, s, prefix_kv, prefix_mask):
        a = self.arch
        h = self.embed_suffix(x_t, t, s)
        b, n, _ = h.shape
        p = prefix_kv.shape[3]
        valid = prefix_mask > 0.5
        cross_mask = valid[:, None, :].expand(b, n, p)
        shared_mask = torch.cat([cross_mask, self.causal[None].expand(b, n, n)], dim=2)
        shared_pos = prefix_mask.sum(dim=1, keepdim=True) + self.action_positions[None]
        cross_pos = self.action_positions[None].expand(b, n)
        groups = a.text_heads // a.text_kv_heads
        for i, layer in enumerate(self.layers):
            proj = layer.self_attn
            x = layer.input_layernorm(h)
            q = proj.q_proj(x).view(b, n, -1, a.head_dim)
            if a.is_shared_layer(i):
                q = apply_rope(q, shared_pos, self.rope_timescale)
                k = apply_rope(proj.k_proj(x).view(b, n, -1, a.head_dim), shared_pos, self.rope_timescale)
                k = torch.cat([prefix_kv[:, i, 0].view(b, p, -1, a.head_dim), k], dim=1)
                v = torch.cat([prefix_kv[:, i, 1].view(b, p, -1, a.head_dim),
                               proj.v_proj(x).view(b, n, -1, a.head_dim)], dim=1)
                att = attention(q, k, v, shared_mask, groups)
            else:
                q = apply_rope(q, cross_pos, self.rope_timescale)
                k = proj.k_proj(prefix_kv[:, i, 0]).view(b, p, -1, a.head_dim)
                v = proj.v_proj(prefix_kv[:, i, 1]).view(b, p, -1, a.head_dim)
                att = attention(q, k, v, cross_mask, groups)
            h = layer.finish(h, att)
        return self.action_out_proj(self.norm(h))
