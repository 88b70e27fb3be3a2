"""pi0.5 with the state moved out of the prompt: the expert of a ``--state-out`` student.

pi0.5 writes the normalised state, discretised into 256 bins, into its prompt
("Task: ..., State: 12 200 ...;\\nAction: "), so its prefix (images + language through
PaliGemma) depends on the state and the prefix KV cache never hits across control steps.
A ``--state-out`` student (``reflex train distill --state-out``, docs/lerobot.md) keeps
the teacher's frozen prefix graph but feeds it a prompt without the state
(:data:`STATE_FREE_TEMPLATE`), and gives the state to the expert instead:

    time_emb = sinusoid(t) + phi(s) + state_embed(state)
    cond     = silu(time_mlp_out(silu(time_mlp_in(time_emb))))      (adaRMS, every layer)

``state_embed`` is Linear(max_state_dim -> width) -> SiLU -> Linear(width -> width) with
the output layer zero-initialised, the same place and form as SnapFlow's phi(s): at step
0 the expert is the teacher's expert exactly (on the state-free prefix), and the state
reaches every expert layer through the adaRMS scale / shift / gate. The manifest says
``state_input: "expert"``; the provenance entry ``state_out`` (:func:`provenance_entry`)
lets :func:`.pi05.modules_from_provenance` rebuild this class from the export alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .imported import CheckpointError
from .paligemma import PiArch, sinusoidal_f64
from .pi05 import Pi05Expert

#: The student's prompt: the teacher's template with the state bins left out. Every
#: other token of pi0.5's prompt stays ("Task: ", ", State: ", ";\nAction: "), so the
#: frozen PaliGemma reads the layout it was fine-tuned on and the student's expert, a
#: copy of the teacher's, starts from prefix features as close as possible to those it
#: was trained on; the task tokens keep their positions.
STATE_FREE_TEMPLATE = "Task: {task}, State: ;\nAction: "
DESIGN = "adarms-state-mlp"
PROVENANCE_KEY = "state_out"


class StateEmbedding(nn.Module):
    """state float32 (B, max_state_dim) (normalised, zero-padded) -> float32 (B, width).

    Linear -> SiLU -> Linear, output layer zero-initialised (0 until trained). The state
    is clamped to [-1, 1] first, the range the teacher's prompt resolves (256 bins over
    [-1, 1]; everything above reads as the top bin, everything below as one "-1"), so a
    state far outside the statistics cannot overflow the MLP.
    """

    def __init__(self, state_dim: int, width: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(state_dim, hidden), nn.SiLU(), nn.Linear(hidden, width))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.mlp(state.clamp(-1.0, 1.0))


class Pi05StateOutExpert(Pi05Expert):
    """pi0.5's expert taking the state explicitly (module docstring).

    forward(x_t float32 (B, H, max_action_dim), t (B,), s (B,), state float32
    (B, max_state_dim), prefix_kv (B, L, 2, P, kv_dim), prefix_mask (B, P)) -> velocity
    float32 (B, H, max_action_dim).
    """

    def __init__(self, a: PiArch, hidden: int | None = None) -> None:
        super().__init__(a)
        self.state_embed = StateEmbedding(a.max_state_dim, a.expert_width, hidden or a.expert_width)

    def forward(self, x_t, t, s, state, prefix_kv, prefix_mask):
        time_emb = sinusoidal_f64(t, self.time_scaling) + self.phi(s) + self.state_embed(state)
        return self.conditioned(x_t, time_emb, prefix_kv, prefix_mask)


def from_teacher(expert: Pi05Expert, arch: PiArch) -> Pi05StateOutExpert:
    """A :class:`Pi05StateOutExpert` holding a copy of ``expert``'s weights (phi
    included) and a zero-output state embedding, eval mode.

    Raises CheckpointError if ``expert`` is not a plain pi0.5 expert of ``arch``.
    """
    if type(expert) is not Pi05Expert:
        raise CheckpointError(f"--state-out needs a pi0.5 expert, got {type(expert).__name__}")
    with torch.random.fork_rng(devices=[]):  # a reproducible first layer, whatever the global seed
        torch.manual_seed(0)
        student = Pi05StateOutExpert(arch)
    missing, unexpected = student.load_state_dict(expert.state_dict(), strict=False)
    if unexpected or any(not k.startswith("state_embed.") for k in missing):
        raise CheckpointError(
            f"pi0.5 expert weights do not fit: missing {missing}, unexpected {unexpected}"
        )
    return student.eval()


def student_tokenizer(spec: dict[str, Any]) -> dict[str, Any]:
    """The student's manifest tokenizer entry: the teacher's (pi0.5, ``{state}`` in the
    template) with :data:`STATE_FREE_TEMPLATE` and no ``state_bins``.

    Raises CheckpointError when the teacher's template holds no ``{state}``.
    """
    if "{state}" not in str(spec.get("template", "")):
        raise CheckpointError(
            f"--state-out: the teacher's prompt {spec.get('template')!r} holds no state"
        )
    out = {k: v for k, v in spec.items() if k != "state_bins"}
    out["template"] = STATE_FREE_TEMPLATE
    return out


def provenance_entry(arch: PiArch, teacher_template: str) -> dict[str, Any]:
    """What the manifest's ``provenance["state_out"]`` records (enough to rebuild)."""
    return {
        "design": DESIGN,
        "state_dim": arch.max_state_dim,
        "hidden": arch.expert_width,
        "where": "added to sinusoid(t) + phi(s) before the adaRMS time MLP",
        "teacher_template": teacher_template,
        "template": STATE_FREE_TEMPLATE,
    }


def expert_from_provenance(arch: PiArch, entry: dict[str, Any]) -> Pi05StateOutExpert:
    """A fresh (weights not loaded) expert of a recorded ``state_out`` entry.

    Raises CheckpointError for an unknown design or a state width other than the arch's.
    """
    if entry.get("design") != DESIGN:
        raise CheckpointError(
            f"state_out design {entry.get('design')!r} is unknown (known: {DESIGN})"
        )
    if int(entry["state_dim"]) != arch.max_state_dim:
        raise CheckpointError(
            f"state_out state_dim {entry['state_dim']} != max_state_dim {arch.max_state_dim}"
        )
    return Pi05StateOutExpert(arch, int(entry["hidden"])).eval()
