"""What a native port of a LeRobot policy hands to the importer (docs/lerobot.md).

Each port (``smolvla.py``, ``pi0.py``, ...) reads a LeRobot 0.6.x checkpoint directory
with plain files only (config.json, model.safetensors, the saved processor JSON and
safetensors, the VLM's config.json and tokenizer.json) and returns an
:class:`ImportedPolicy`: two PyTorch modules with the export directory's graph
interfaces, plus everything the manifest needs. No LeRobot, no transformers.

Graph interfaces (all tensors batch-first, float32 unless said):

* ``prefix(images, tokens, token_mask[, state])``:
  images uint8 (B, cams, H, W, 3) at each camera's native size, tokens int64 (B, T),
  token_mask int64 (B, T) (1 real, 0 padding), state (B, max_state_dim) only when
  ``state_input == "prefix"`` (normalised, zero-padded) ->
  ``prefix_kv`` (B, L, 2, P, D), ``prefix_mask`` (B, P) (1.0 real, 0.0 padding).
* ``expert(x_t, t, s, [state,] prefix_kv, prefix_mask)``:
  x_t (B, H, max_action_dim) normalised, t (B,), s (B,) the SnapFlow target time
  (a zero-initialised target-time embedding phi(s), so the teacher ignores it),
  state (B, max_state_dim) only when ``state_input == "expert"`` -> velocity
  (B, H, max_action_dim). Time convention as ARCHITECTURE.md (noise at t = 1).

``state_input``: where the normalised state enters: ``"prefix"`` (SmolVLA: a prefix
token), ``"expert"`` (pi0: the first suffix token), ``"prompt"`` (pi0.5: discretised
into the prompt by the tokenizer; no graph takes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..export.manifest import CameraSpec
from ..policy.normalize import DatasetStats

STATE_INPUTS = ("prefix", "expert", "prompt")


class CheckpointError(ValueError):
    """A checkpoint cannot be imported; the message names the file or config field."""


@dataclass
class ImportedPolicy:
    """A LeRobot policy ported to native modules, ready to export.

    Attributes:
        kind: ``"smolvla"``, ``"pi0"`` or ``"pi05"``.
        prefix, expert: the two modules (interfaces in the module docstring), eval mode.
        state_input: ``"prefix"``, ``"expert"`` or ``"prompt"``.
        cameras: camera inputs in config order (native H, W of ``input_features``).
        state_dim, action_dim: the robot's widths (statistics have these sizes).
        max_state_dim, max_action_dim: the model's padded widths.
        chunk_size, n_action_steps, num_steps: from the config.
        max_text_tokens: T of the token input (``tokenizer_max_length``).
        prefix_len, num_kv_layers, kv_dim: the prefix KV shape (P, L, D).
        tokenizer: the manifest's ``tokenizer`` entry (kind and its settings).
        tokenizer_file: a tokenizer.json to copy into the export, if the kind needs one.
        stats: affine statistics of state and action (LeRobot modes mapped to mean/std).
        provenance: source checkpoint, its sha256, lerobot version, norm modes, config.
    """

    kind: str
    prefix: nn.Module
    expert: nn.Module
    state_input: str
    cameras: list[CameraSpec]
    state_dim: int
    action_dim: int
    max_state_dim: int
    max_action_dim: int
    chunk_size: int
    n_action_steps: int
    num_steps: int
    max_text_tokens: int
    prefix_len: int
    num_kv_layers: int
    kv_dim: int
    tokenizer: dict[str, Any]
    stats: DatasetStats
    tokenizer_file: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state_input not in STATE_INPUTS:
            raise ValueError(f"state_input must be one of {STATE_INPUTS}, got {self.state_input!r}")


class ImportedFlowModel(nn.Module):
    """An imported policy behind the distiller's model interface.

    The distiller (reflex_serve/distill) and the exporter call a policy through
    ``encode_prefix(*prefix_inputs)`` and ``velocity(x_t, t, s, state, prefix_kv,
    prefix_mask)``; this routes the state to whichever graph takes it.

    Args:
        prefix, expert: the port's modules (interfaces in this module's docstring).
        state_input: ``"prefix"``, ``"expert"`` or ``"prompt"``.
    """

    def __init__(self, prefix: nn.Module, expert: nn.Module, state_input: str) -> None:
        super().__init__()
        if state_input not in STATE_INPUTS:
            raise ValueError(f"state_input must be one of {STATE_INPUTS}, got {state_input!r}")
        self.prefix, self.expert, self.state_input = prefix, expert, state_input

    def encode_prefix(self, images, tokens, token_mask, state=None):
        """images uint8 (B, cams, H, W, 3), tokens / token_mask int64 (B, T), state
        float32 (B, max_state_dim) (used only when it enters the prefix) ->
        (prefix_kv (B, L, 2, P, D), prefix_mask (B, P))."""
        if self.state_input == "prefix":
            return self.prefix(images, tokens, token_mask, state)
        return self.prefix(images, tokens, token_mask)

    def velocity(self, x_t, t, s, state, prefix_kv, prefix_mask):
        """x_t (B, H, max_action_dim), t / s (B,), state (B, max_state_dim) (used only
        when the expert takes it) -> velocity (B, H, max_action_dim)."""
        if self.state_input == "expert":
            return self.expert(x_t, t, s, state, prefix_kv, prefix_mask)
        return self.expert(x_t, t, s, prefix_kv, prefix_mask)


def policy_from_export(export_dir: Path, manifest, stats: DatasetStats, model: ImportedFlowModel) -> ImportedPolicy:
    """An :class:`ImportedPolicy` with ``model``'s modules and an imported export's
    description (a distilled student of an imported teacher is exported this way).

    Args:
        export_dir: the imported export whose manifest, statistics and tokenizer file
            the policy takes (the teacher's).
        manifest: its :class:`~reflex_serve.export.manifest.Manifest`.
        stats: its statistics.
        model: the modules to export (the student's).
    """
    tokenizer_file = manifest.tokenizer.get("file")
    return ImportedPolicy(
        kind=manifest.policy_kind.removeprefix("lerobot-"),
        prefix=model.prefix,
        expert=model.expert,
        state_input=manifest.state_input,
        cameras=list(manifest.cameras),
        state_dim=manifest.state_dim,
        action_dim=manifest.action_dim,
        max_state_dim=manifest.model_state_dim,
        max_action_dim=manifest.model_action_dim,
        chunk_size=manifest.chunk_size,
        n_action_steps=manifest.n_action_steps,
        num_steps=manifest.num_steps,
        max_text_tokens=manifest.max_text_tokens,
        prefix_len=manifest.prefix_len,
        num_kv_layers=manifest.num_kv_layers,
        kv_dim=manifest.kv_dim,
        tokenizer=dict(manifest.tokenizer),
        stats=stats,
        tokenizer_file=Path(export_dir) / tokenizer_file if tokenizer_file else None,
        provenance=dict(manifest.provenance),
    )
