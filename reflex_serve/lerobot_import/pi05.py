"""LeRobot 0.6.1 pi0.5 as native PyTorch modules (no LeRobot, no transformers).

Ported from ``lerobot/policies/pi05/modeling_pi05.py`` (``PI05Pytorch.embed_suffix``,
``denoise_step``); the PaliGemma prefix and the Gemma expert layers are shared with pi0
(:mod:`.paligemma`), the checkpoint reading too (:mod:`.pi_checkpoint`).

pi0.5 takes no state tensor: its pre-processor writes the normalised state, discretised
into 256 bins, into the prompt (:mod:`.pi_tokenizer`), so ``state_input`` is "prompt".
The expert's input is action_in_proj(x_t) alone, one bidirectional block; time enters
through adaRMS: every expert norm is modulated by silu(time_mlp_out(silu(time_mlp_in(
sinusoid(t))))).
"""

from __future__ import annotations

from pathlib import Path

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

POLICY_KIND = "lerobot-pi05"


class Pi05Expert(nn.Module):
    """pi0.5's action expert.

    forward(x_t float32 (B, H, max_action_dim), t (B,), s (B,), prefix_kv
    (B, L, 2, P, kv_dim), prefix_mask (B, P)) -> velocity float32 (B, H, max_action_dim).
    phi(s) (zero at import) is added to the float64 sinusoid of t, the input of the
    adaRMS conditioning MLP.
    """

    def __init__(self, a: PiArch) -> None:
        super().__init__()
        w = a.expert_width
        self.action_in_proj = nn.Linear(a.max_action_dim, w)
        self.time_mlp_in = nn.Linear(w, w)
        self.time_mlp_out = nn.Linear(w, w)
        self.action_out_proj = nn.Linear(w, a.max_action_dim)
        scaling = time_scaling(w, a.min_period, a.max_period)
        self.register_buffer("time_scaling", scaling, persistent=False)
        self.phi = TargetTimeEmbedding(w, scaling)
        self.core = GemmaExpertStack(a, blocks=[1] + [0] * (a.chunk_size - 1))

    def forward(self, x_t, t, s, prefix_kv, prefix_mask):
        time_emb = sinusoidal_f64(t, self.time_scaling) + self.phi(s)
        return self.conditioned(x_t, time_emb, prefix_kv, prefix_mask)

    def conditioned(self, x_t, time_emb, prefix_kv, prefix_mask):
        """The velocity for a given conditioning input ``time_emb`` float32 (B, width)
        (the sinusoid of t plus whatever is added to it), before the adaRMS MLP."""
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
        out = self.core(self.action_in_proj(x_t), prefix_kv, prefix_mask, cond)
        return self.action_out_proj(out)


def load_pi05(checkpoint_dir, tokenizer_file=None) -> ImportedPolicy:
    """Import a LeRobot 0.6.1 pi0.5 checkpoint directory as native modules.

    As :func:`.pi0.load_pi0`; the tokenizer entry describes the state-in-prompt template.
    Raises CheckpointError naming the file or config field that cannot be imported.
    """
    return import_checkpoint("pi05", Path(checkpoint_dir), tokenizer_file, Pi05Expert, "prompt")


def build_modules(config: dict, weights_path, overrides: dict | None = None):
    """(prefix, expert) rebuilt from an export, as :func:`.pi0.build_modules`."""
    return build_from_export(config, weights_path, Pi05Expert, overrides)


def modules_from_provenance(provenance: dict) -> tuple[PaliGemmaPrefix, Pi05Expert]:
    """Fresh (prefix, expert) of the architecture an export recorded
    (``provenance["architecture"]``, a :class:`PiArch` dict); weights not loaded. A
    ``--state-out`` student (``provenance["state_out"]``) gets its state-taking expert
    (:mod:`.pi05_state_out`). Raises KeyError when the provenance has no architecture,
    CheckpointError for a state-out design this version does not know."""
    arch = PiArch.from_dict(provenance["architecture"])
    if provenance.get("state_out"):
        from .pi05_state_out import expert_from_provenance

        return PaliGemmaPrefix(arch).eval(), expert_from_provenance(arch, provenance["state_out"])
    return PaliGemmaPrefix(arch).eval(), Pi05Expert(arch).eval()
