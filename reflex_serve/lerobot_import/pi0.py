"""LeRobot 0.6.1 pi0 as native PyTorch modules (no LeRobot, no transformers).

Ported from ``lerobot/policies/pi0/modeling_pi0.py`` (``PI0Pytorch.embed_suffix``,
``denoise_step``); the PaliGemma prefix and the Gemma expert layers are shared with
pi0.5 (:mod:`.paligemma`), the checkpoint reading too (:mod:`.pi_checkpoint`).

pi0's state is the first token of the expert's input (``state_proj``, its own attention
block), the actions one bidirectional block after it, each the MLP of
[action_in_proj(x_t), sinusoid(t)]; ``state_input`` is "expert".
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .imported import ImportedPolicy
from .paligemma import (
    GemmaExpertStack,
    PaliGemmaPrefix,
    PiArch,
    TargetTimeEmbedding,
    sinusoidal_f64,
    time_scaling,
)
from .pi_checkpoint import build_from_export, import_checkpoint

POLICY_KIND = "lerobot-pi0"


class Pi0Expert(nn.Module):
    """pi0's action expert: velocity of the flow at (x_t, t) given the state and the prefix.

    forward(x_t float32 (B, H, max_action_dim), t (B,), s (B,), state float32
    (B, max_state_dim) normalised and zero-padded, prefix_kv (B, L, 2, P, kv_dim),
    prefix_mask (B, P)) -> velocity float32 (B, H, max_action_dim).
    The time embedding is LeRobot's float64 sinusoid of t plus phi(s) (zero at import),
    fed with action_in_proj(x_t) to action_time_mlp_in -> SiLU -> action_time_mlp_out.
    """

    def __init__(self, a: PiArch) -> None:
        super().__init__()
        w = a.expert_width
        self.chunk_size = a.chunk_size
        self.state_proj = nn.Linear(a.max_state_dim, w)
        self.action_in_proj = nn.Linear(a.max_action_dim, w)
        self.action_time_mlp_in = nn.Linear(2 * w, w)
        self.action_time_mlp_out = nn.Linear(w, w)
        self.action_out_proj = nn.Linear(w, a.max_action_dim)
        scaling = time_scaling(w, a.min_period, a.max_period)
        self.register_buffer("time_scaling", scaling, persistent=False)
        self.phi = TargetTimeEmbedding(w, scaling)
        self.core = GemmaExpertStack(a, blocks=[1, 1] + [0] * (a.chunk_size - 1))

    def forward(self, x_t, t, s, state, prefix_kv, prefix_mask):
        time_emb = sinusoidal_f64(t, self.time_scaling) + self.phi(s)
        action_emb = self.action_in_proj(x_t)
        fused = torch.cat([action_emb, time_emb[:, None, :].expand_as(action_emb)], dim=2)
        fused = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))
        suffix = torch.cat([self.state_proj(state)[:, None, :], fused], dim=1)
        out = self.core(suffix, prefix_kv, prefix_mask)
        return self.action_out_proj(out[:, -self.chunk_size :])


def load_pi0(checkpoint_dir, tokenizer_file=None) -> ImportedPolicy:
    """Import a LeRobot 0.6.1 pi0 checkpoint directory (config.json, model.safetensors,
    policy_{pre,post}processor*.json / .safetensors) as native modules.

    tokenizer_file: PaliGemma's tokenizer.json (default: google/paligemma-3b-pt-224 in
    the Hugging Face cache). Sizes come from the weights (pi_checkpoint.infer_arch).
    Raises CheckpointError naming the file or config field that cannot be imported.
    """
    return import_checkpoint("pi0", Path(checkpoint_dir), tokenizer_file, Pi0Expert, "expert")


def build_modules(config: dict, weights_path, overrides: dict | None = None):
    """(prefix, expert) rebuilt from an export: ``config`` is the checkpoint's config.json
    (manifest provenance "config"), ``weights_path`` a model.safetensors of ``prefix.*`` /
    ``expert.*`` tensors, ``overrides`` the provenance "size_overrides" (tiny checkpoints).
    Raises CheckpointError when tensors are missing or do not fit."""
    return build_from_export(config, weights_path, Pi0Expert, overrides)


def modules_from_provenance(provenance: dict) -> tuple[PaliGemmaPrefix, Pi0Expert]:
    """Fresh (prefix, expert) of the architecture an export recorded
    (``provenance["architecture"]``, a :class:`PiArch` dict); weights not loaded.
    Raises KeyError when the provenance has no architecture."""
    arch = PiArch.from_dict(provenance["architecture"])
    return PaliGemmaPrefix(arch).eval(), Pi0Expert(arch).eval()
