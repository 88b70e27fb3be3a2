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

import numpy as np
import torch
from safetensors.torch import save_file

from ..lerobot_import.imported import ImportedFlowModel, ImportedPolicy
from ..policy.flow import euler_schedule
from ..policy.tokenizer import make_text_encoder
from ..runtime.policy import Policy
from ..runtime.types import Observation
from .manifest import (
    EXPERT_ONNX,
    PREFIX_ONNX,
    STATS,
    WEIGHTS,
    ExportError,
    Manifest,
    write_manifest,
)
from .onnx_export import _onnx_export
from .parity import DEFAULT_TOLERANCE, ParityError, ParityReport, max_abs_diff, random_observations


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
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir} is not empty; an export directory is immutable once written")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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


def torch_actions(policy: ImportedPolicy, encoder, obs: Observation, noise: np.ndarray,
                  num_steps: int, target_time: str = "instantaneous") -> np.ndarray:
    """The PyTorch reference of ``Policy.act`` for an imported policy: float32 (H, action_dim).

    ``encoder`` is the export's text encoder (:func:`make_text_encoder`); ``noise`` float32
    (H, max_action_dim).
    """
    state = np.zeros(policy.max_state_dim, np.float32)
    state[: policy.state_dim] = policy.stats.state.normalize(obs.state.astype(np.float32))
    tokens, mask = encoder.encode(obs.instruction, state[: policy.state_dim])
    images = np.stack([obs.images[c.name] for c in policy.cameras])[None]
    model = ImportedFlowModel(policy.prefix, policy.expert, policy.state_input).eval()
    st = torch.from_numpy(state[None])
    with torch.no_grad():
        kv, pmask = model.encode_prefix(torch.from_numpy(images), torch.from_numpy(tokens[None]),
                                        torch.from_numpy(mask[None]), st)
        x = _euler(model, kv, pmask, st, torch.from_numpy(noise[None]), num_steps, target_time)
    return policy.stats.action.unnormalize(x[0, :, : policy.action_dim].numpy())


def _euler(model, kv, pmask, state, x, num_steps: int, target_time: str) -> torch.Tensor:
    """Euler from x (noise at t = 1) as the runtime does: x <- x - (1/N) v(x, t, s)."""
    dt = np.float32(1.0 / num_steps)
    for t, s in euler_schedule(num_steps, target_time):
        v = model.velocity(x, torch.full((1,), t), torch.full((1,), s), state, kv, pmask)
        x = x - dt * v
    return x


def check_imported_parity(policy: ImportedPolicy, export_dir: Path, *, observations: int = 3,
                          seed: int = 0, num_steps: int | None = None,
                          tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """ONNX Runtime (``Policy.act``) vs the torch modules on synthetic observations.

    Raises:
        ParityError: if the max abs action difference exceeds ``tolerance``.
    """
    runtime = Policy(export_dir)
    encoder = make_text_encoder(runtime.manifest.tokenizer, runtime.manifest.max_text_tokens, export_dir)
    n = num_steps or runtime.num_steps
    worst = 0.0
    for i, obs in enumerate(random_observations(runtime, observations, seed)):
        noise = runtime.make_noise(seed + i)
        ours = runtime.act(obs, noise=noise, num_steps=n).actions
        ref = torch_actions(policy, encoder, obs, noise, n, runtime.manifest.target_time)
        worst = max(worst, max_abs_diff(ours, ref))
    report = ParityReport(max_abs_diff=worst, tolerance=tolerance, observations=observations, num_steps=n)
    if not report.ok:
        raise ParityError(f"ONNX Runtime vs torch max abs action difference {worst:.3g} > {tolerance:g} "
                          f"over {observations} observations at {n} steps")
    return report
