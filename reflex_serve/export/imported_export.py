"""Export an imported (LeRobot) policy to the export directory, and check its ONNX parity.

Same layout as :mod:`reflex_serve.export.onnx_export`, with the inputs an imported policy
needs (docs/lerobot.md, "The two graphs"):

* prefix.onnx: images uint8 (B, cams, H, W, 3), tokens int64 (B, T), token_mask int64
  (B, T) and, when ``state_input == "prefix"``, state float32 (B, max_state_dim) ->
  prefix_kv, prefix_mask.
* expert.onnx: x_t (B, H, max_action_dim), t (B,), s (B,), [state (B, max_state_dim)
  when ``state_input == "expert"``], prefix_kv, prefix_mask -> velocity.
* model.safetensors: ``prefix.*`` and ``expert.*`` tensors (metadata: policy_kind);
  stats.json; tokenizer.json when the tokenizer reads a file (an extra artifact).
* ``prefix.onnx.data`` / ``expert.onnx.data`` when a graph's weights exceed the 2 GB
  protobuf limit of one ONNX file (a real pi0's PaliGemma is about 12 GB in float32):
  the weights in one external-data file beside the graph (an extra artifact, so the
  digest covers it), instead of the exporter's one file per tensor.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..lerobot_import.imported import ImportedFlowModel, ImportedPolicy
from .manifest import (
    EXPERT_ONNX,
    PREFIX_ONNX,
    STATS,
    WEIGHTS,
    Manifest,
    write_manifest,
)
from .onnx_export import _onnx_export, prepare_export_dir
from .parity import DEFAULT_TOLERANCE, ParityReport, check_parity


def graph_inputs(state_input: str) -> tuple[list[str], list[str]]:
    """(prefix.onnx input names, expert.onnx input names) for a ``state_input``."""
    prefix = ["images", "tokens", "token_mask"] + (["state"] if state_input == "prefix" else [])
    expert = ["x_t", "t", "s"] + (["state"] if state_input == "expert" else []) + ["prefix_kv", "prefix_mask"]
    return prefix, expert


def _example(policy: ImportedPolicy, batch: int = 2) -> dict[str, torch.Tensor]:
    cam = policy.cameras[0]
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, policy.max_text_tokens, dtype=torch.int64)
    mask[:, policy.max_text_tokens // 2:] = 0
    return {
        "images": torch.randint(0, 256, (batch, len(policy.cameras), cam.height, cam.width, 3),
                                dtype=torch.uint8, generator=gen),
        "tokens": torch.zeros(batch, policy.max_text_tokens, dtype=torch.int64),
        "token_mask": mask,
        "state": torch.randn(batch, policy.max_state_dim, generator=gen),
        "x_t": torch.randn(batch, policy.chunk_size, policy.max_action_dim, generator=gen),
        "t": torch.rand(batch, generator=gen),
        "s": torch.rand(batch, generator=gen),
    }


def export_graph(module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                 external_data: bool = False) -> list[str]:
    """Export ``module`` to ``path`` (opset 17, TorchScript exporter).

    The exporter writes weights over ONNX's 2 GB limit as one external file per tensor;
    then (or always, with ``external_data``) they are gathered into ``<name>.data``
    beside the graph. Returns the names of the files written besides ``path`` (none, or
    that data file).
    """
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        _onnx_export(module, args, staged, inputs, outputs)
        if not external_data and [f for f in Path(tmp).iterdir() if f != staged] == []:
            shutil.move(staged, path)
            return []
        data = path.name + ".data"
        onnx.save_model(onnx.load(str(staged)), str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data, size_threshold=0)
        return [data]


def save_imported_weights(policy: ImportedPolicy, path: Path, policy_kind: str) -> None:
    """model.safetensors with ``prefix.*`` and ``expert.*`` float32 tensors."""
    model = ImportedFlowModel(policy.prefix, policy.expert, policy.state_input)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"policy_kind": policy_kind})


def export_imported(
    policy: ImportedPolicy,
    out_dir: Path,
    *,
    policy_kind: str,
    num_steps: int | None = None,
    target_time: str = "instantaneous",
    parent_version: str | None = None,
    provenance: dict[str, Any] | None = None,
    prefix_onnx_from: Path | None = None,
    overwrite: bool = False,
    external_data: bool = False,
) -> Manifest:
    """Write an export directory for an imported policy.

    Args:
        policy: the port's :class:`ImportedPolicy` (modules are put in eval mode).
        out_dir: target directory; must not exist or be empty unless ``overwrite``.
        policy_kind: the manifest's kind, e.g. ``"lerobot-smolvla"``.
        num_steps: Euler steps recorded (the policy's if None).
        target_time, parent_version, prefix_onnx_from: as :func:`export_policy`.
        provenance: recorded in the manifest (the policy's own provenance if None).
        external_data: keep each graph's weights in ``<graph>.onnx.data`` even under
            the 2 GB limit (above it they always are).

    Returns:
        The written :class:`Manifest`.

    Raises:
        ExportError: if ``out_dir`` holds files and ``overwrite`` is False.
    """
    out_dir = prepare_export_dir(out_dir, overwrite)
    prefix, expert = policy.prefix.eval(), policy.expert.eval()
    prefix_names, expert_names = graph_inputs(policy.state_input)
    ex = _example(policy)
    extra: list[str] = []
    with torch.no_grad():
        if prefix_onnx_from is not None:
            for name in (PREFIX_ONNX, PREFIX_ONNX + ".data"):  # the graph and its weights, if apart
                if (Path(prefix_onnx_from).parent / name).is_file():
                    shutil.copyfile(Path(prefix_onnx_from).parent / name, out_dir / name)
                    extra += [name] if name != PREFIX_ONNX else []
        else:
            extra += export_graph(prefix, tuple(ex[n] for n in prefix_names), out_dir / PREFIX_ONNX,
                                  prefix_names, ["prefix_kv", "prefix_mask"], external_data)
        ex["prefix_kv"], ex["prefix_mask"] = prefix(*(ex[n] for n in prefix_names))
        extra += export_graph(expert, tuple(ex[n] for n in expert_names), out_dir / EXPERT_ONNX,
                              expert_names, ["velocity"], external_data)
    save_imported_weights(policy, out_dir / WEIGHTS, policy_kind)
    policy.stats.save(out_dir / STATS)
    if policy.tokenizer_file is not None:
        name = policy.tokenizer.get("file", "tokenizer.json")
        shutil.copyfile(policy.tokenizer_file, out_dir / name)
        extra.append(name)
    manifest = Manifest(
        policy_kind=policy_kind, action_dim=policy.action_dim, state_dim=policy.state_dim,
        chunk_size=policy.chunk_size, n_action_steps=policy.n_action_steps, cameras=list(policy.cameras),
        max_text_tokens=policy.max_text_tokens, tokenizer=dict(policy.tokenizer),
        num_steps=num_steps or policy.num_steps, prefix_len=policy.prefix_len,
        num_kv_layers=policy.num_kv_layers, kv_dim=policy.kv_dim, state_mode="proprio",
        target_time=target_time, parent_version=parent_version,
        provenance=provenance if provenance is not None else dict(policy.provenance),
        max_state_dim=policy.max_state_dim, max_action_dim=policy.max_action_dim,
        state_input=policy.state_input, extra_artifacts=extra,
    )
    return write_manifest(out_dir, manifest)


def check_imported_parity(policy: ImportedPolicy, export_dir: Path, *, observations: int = 3,
                          seed: int = 0, num_steps: int | None = None,
                          tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """ONNX Runtime (``Policy.act``) vs the port's torch modules on synthetic observations
    (:func:`~reflex_serve.export.parity.check_parity` on them).

    Raises:
        ParityError: if the max abs action difference exceeds ``tolerance``.
    """
    model = ImportedFlowModel(policy.prefix, policy.expert, policy.state_input)
    return check_parity(model, export_dir, observations=observations, seed=seed,
                        num_steps=num_steps, tolerance=tolerance)
