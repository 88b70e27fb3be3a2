"""Export a flow-matching policy to the export directory (ARCHITECTURE.md).

The exporter works on the interface, not on the native class: anything with
``encode_prefix(images, tokens) -> (prefix_kv, prefix_mask)`` and
``velocity(x_t, t, s, state, prefix_kv, prefix_mask) -> v`` exports the same way.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..policy import tokenizer
from ..policy.modeling import FlowMatchingVLA
from ..policy.normalize import DatasetStats
from .manifest import (
    EXPERT_ONNX,
    PREFIX_ONNX,
    STATS,
    WEIGHTS,
    CameraSpec,
    ExportError,
    Manifest,
    write_manifest,
)
from .weights import save_weights

OPSET = 17
POLICY_KIND = "reflex-flow-vla"


class _PrefixGraph(nn.Module):
    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, images, tokens):
        return self.policy.encode_prefix(images, tokens)


class _ExpertGraph(nn.Module):
    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, x_t, t, s, state, prefix_kv, prefix_mask):
        return self.policy.velocity(x_t, t, s, state, prefix_kv, prefix_mask)


def _example_inputs(model: FlowMatchingVLA, batch: int = 2):
    cfg = model.config
    _, h, w = cfg.cameras[0]
    images = torch.randint(0, 256, (batch, len(cfg.cameras), h, w, 3), dtype=torch.uint8)
    tokens = torch.randint(1, cfg.vocab_size, (batch, cfg.max_text_tokens), dtype=torch.int64)
    tokens[:, cfg.max_text_tokens // 2:] = 0
    return images, tokens


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )


def prepare_export_dir(out_dir: Path | str, overwrite: bool) -> Path:
    """Create ``out_dir`` for a new export, emptying it first with ``overwrite``.

    Raises:
        ExportError: ``out_dir`` holds files and ``overwrite`` is False (an export
            directory is immutable once written).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir} is not empty; an export directory is immutable once written")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def export_policy(
    model: FlowMatchingVLA,
    stats: DatasetStats,
    out_dir: Path,
    *,
    num_steps: int | None = None,
    target_time: str = "instantaneous",
    parent_version: str | None = None,
    provenance: dict[str, Any] | None = None,
    prefix_onnx_from: Path | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Write an export directory for ``model``.

    Args:
        model: the policy (put in eval mode; weights are written as float32).
        stats: normalization statistics written as ``stats.json``.
        out_dir: target directory; must not exist or be empty unless ``overwrite``.
        num_steps: default Euler steps recorded in the manifest (config default if None).
        target_time: ``"instantaneous"`` (teacher) or ``"shortcut"`` (SnapFlow student).
        parent_version: digest of the teacher a student was distilled from.
        provenance: training provenance recorded in the manifest.
        prefix_onnx_from: copy this ``prefix.onnx`` instead of exporting the prefix (a
            student with a frozen prefix shares its teacher's file byte for byte, and so
            its prefix cache entries).

    Returns:
        The written :class:`Manifest` (with digest).

    Raises:
        ExportError: if ``out_dir`` holds files and ``overwrite`` is False.
    """
    out_dir = prepare_export_dir(out_dir, overwrite)
    model = model.eval()
    cfg = model.config

    images, tokens = _example_inputs(model)
    with torch.no_grad():
        if prefix_onnx_from is not None:
            shutil.copyfile(prefix_onnx_from, out_dir / PREFIX_ONNX)
        else:
            _onnx_export(_PrefixGraph(model), (images, tokens), out_dir / PREFIX_ONNX,
                         ["images", "tokens"], ["prefix_kv", "prefix_mask"])
        kv, mask = model.encode_prefix(images, tokens)
        b = images.shape[0]
        expert_args = (torch.randn(b, cfg.chunk_size, cfg.action_dim), torch.rand(b), torch.rand(b),
                       torch.randn(b, cfg.state_dim), kv, mask)
        _onnx_export(_ExpertGraph(model), expert_args, out_dir / EXPERT_ONNX,
                     ["x_t", "t", "s", "state", "prefix_kv", "prefix_mask"], ["velocity"])
    save_weights(model, out_dir / WEIGHTS)
    stats.save(out_dir / STATS)
    manifest = Manifest(
        policy_kind=POLICY_KIND,
        action_dim=cfg.action_dim,
        state_dim=cfg.state_dim,
        chunk_size=cfg.chunk_size,
        n_action_steps=cfg.n_action_steps,
        cameras=[CameraSpec(name, h, w) for name, h, w in cfg.cameras],
        max_text_tokens=cfg.max_text_tokens,
        tokenizer=tokenizer.spec(cfg.vocab_size),
        num_steps=num_steps or cfg.num_steps,
        prefix_len=cfg.prefix_len,
        num_kv_layers=cfg.expert_layers,
        kv_dim=cfg.width,
        state_mode=cfg.state_mode,
        target_time=target_time,
        parent_version=parent_version,
        provenance=provenance or {},
    )
    return write_manifest(out_dir, manifest)
