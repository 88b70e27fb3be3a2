"""The export directory: a self-describing, immutable policy version.

Layout (see ARCHITECTURE.md, "The export directory")::

    manifest.json      this module's :class:`Manifest`
    prefix.onnx        images uint8 (B, cams, H, W, 3) + tokens int64 (B, T)
                       -> prefix_kv float32 (B, L, 2, P, D), prefix_mask float32 (B, P)
    expert.onnx        x_t (B, H, A), t (B,), s (B,), state (B, S), prefix_kv, prefix_mask
                       -> velocity float32 (B, H, A)       (all normalized units)
    model.safetensors  PyTorch weights
    stats.json         normalization statistics (:mod:`reflex_serve.policy.normalize`)

A version's identity is its content digest: SHA-256 over the digests of the artifact
files and the manifest's content fields (creation time and the digest itself excluded),
so re-exporting the same weights gives the same version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREFIX_ONNX = "prefix.onnx"
EXPERT_ONNX = "expert.onnx"
WEIGHTS = "model.safetensors"
STATS = "stats.json"
ARTIFACTS = (PREFIX_ONNX, EXPERT_ONNX, WEIGHTS, STATS)
_VOLATILE = ("digest", "created_at")
# Optional fields added after format 1 shipped: left out of the digest while they hold
# their default, so every earlier export keeps its digest.
_OPTIONAL_DEFAULTS = {"max_state_dim": None, "max_action_dim": None, "state_input": "expert",
                      "extra_artifacts": []}


class ExportError(ValueError):
    """An export directory is missing, incomplete, corrupt or of an unknown format."""


@dataclass(frozen=True)
class CameraSpec:
    """One camera input: name and image size in pixels (uint8 RGB, H x W x 3)."""

    name: str
    height: int
    width: int


@dataclass
class Manifest:
    """Contents of ``manifest.json``.

    Attributes:
        policy_kind: model family, e.g. ``"reflex-flow-vla"``.
        action_dim, state_dim: vector sizes (A, S).
        chunk_size: actions per chunk (H).
        n_action_steps: actions a controller executes before asking again (<= H).
        cameras: camera inputs in the order of the images tensor's ``cams`` axis.
        max_text_tokens: length T of the token input.
        tokenizer: tokenizer description, see :mod:`reflex_serve.policy.tokenizer`.
        num_steps: default number of Euler steps (10 for a teacher, 1 for a student).
        prefix_len, num_kv_layers, kv_dim: the prefix KV shape (P, L, D).
        state_mode: ``"full"`` (39-d MetaWorld observation) or ``"proprio"``.
        target_time: what the expert's target-time input ``s`` receives at each Euler
            step from t to t + dt: ``"instantaneous"`` (s = t: a flow-matching teacher)
            or ``"shortcut"`` (s = t + dt: a SnapFlow student; 1 step is s = 0, t = 1).
        parent_version: digest of the teacher this version was distilled from, if any.
        digest: content digest, ``"sha256:<hex>"``; filled by :func:`write_manifest`.
        provenance: free-form training provenance (data, steps, seed, losses).
        max_state_dim, max_action_dim: the model's padded state / action widths (the
            graphs' ``state`` and ``x_t`` widths); None means ``state_dim`` /
            ``action_dim``. The runtime zero-pads the normalised state to
            ``max_state_dim``, draws noise of width ``max_action_dim`` and keeps the
            first ``action_dim`` columns (an imported LeRobot policy pads both).
        state_input: where the normalised state enters: ``"expert"`` (an expert.onnx
            input), ``"prefix"`` (a prefix.onnx input) or ``"prompt"`` (written into the
            instruction tokens by the tokenizer; no graph takes it).
        extra_artifacts: further files of the export covered by the digest (e.g. the
            ``tokenizer.json`` an ``hf-tokenizers`` tokenizer reads).
    """

    policy_kind: str
    action_dim: int
    state_dim: int
    chunk_size: int
    n_action_steps: int
    cameras: list[CameraSpec]
    max_text_tokens: int
    tokenizer: dict[str, Any]
    num_steps: int
    prefix_len: int
    num_kv_layers: int
    kv_dim: int
    state_mode: str = "full"
    target_time: str = "instantaneous"
    parent_version: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    action_limits: dict[str, list[float]] | None = None
    max_state_dim: int | None = None
    max_action_dim: int | None = None
    state_input: str = "expert"
    extra_artifacts: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    digest: str = ""
    created_at: str = ""

    @property
    def model_state_dim(self) -> int:
        """Width of the graphs' state input (``max_state_dim`` or ``state_dim``)."""
        return self.max_state_dim or self.state_dim

    @property
    def model_action_dim(self) -> int:
        """Width of ``x_t`` and the velocity (``max_action_dim`` or ``action_dim``)."""
        return self.max_action_dim or self.action_dim

    @property
    def version(self) -> str:
        """Short version id: the first 12 hex digits of the digest."""
        return self.digest.split(":")[-1][:12]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build from a parsed manifest; raises :class:`ExportError` on unknown formats."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ExportError(
                f"manifest format_version {data.get('format_version')!r} is not supported "
                f"(this build reads {FORMAT_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            kwargs["cameras"] = [CameraSpec(**c) for c in data["cameras"]]
            return cls(**kwargs)
        except (KeyError, TypeError) as exc:
            raise ExportError(f"manifest is malformed: {exc}") from exc


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compute_digest(
    export_dir: Path, manifest: Manifest, file_hashes: dict[str, str] | None = None
) -> str:
    """Content digest of an export directory, ``"sha256:<hex>"``.

    Args:
        file_hashes: filled with each artifact's SHA-256 hex by file name, for a caller
            that needs them too (the runtime keys its prefix cache by the prefix's), so
            that no file is read twice.

    Raises:
        ExportError: if an artifact file is missing.
    """
    h = hashlib.sha256()
    for name in (*ARTIFACTS, *manifest.extra_artifacts):
        path = Path(export_dir) / name
        if not path.is_file():
            raise ExportError(f"{path} is missing")
        digest = _file_sha256(path)
        if file_hashes is not None:
            file_hashes[name] = digest
        h.update(f"{name}:{digest}\n".encode())
    content = {
        k: v
        for k, v in manifest.to_dict().items()
        if k not in _VOLATILE and not (k in _OPTIONAL_DEFAULTS and v == _OPTIONAL_DEFAULTS[k])
    }
    h.update(json.dumps(content, sort_keys=True).encode())
    return "sha256:" + h.hexdigest()


def write_manifest(export_dir: Path, manifest: Manifest) -> Manifest:
    """Fill in digest and creation time and write ``manifest.json``; returns the manifest."""
    manifest.digest = compute_digest(export_dir, manifest)
    manifest.created_at = datetime.now(UTC).isoformat()
    (Path(export_dir) / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest


def read_manifest(
    export_dir: Path, verify: bool = False, file_hashes: dict[str, str] | None = None
) -> Manifest:
    """Read ``manifest.json`` from an export directory.

    Args:
        verify: also recompute the content digest and compare.
        file_hashes: with ``verify``, filled as :func:`compute_digest` does.

    Raises:
        ExportError: if the directory or manifest is missing or malformed, or if
            ``verify`` finds that the files do not match the recorded digest.
    """
    path = Path(export_dir) / MANIFEST
    if not Path(export_dir).exists():
        raise ExportError(f"{export_dir} is not an export directory: it does not exist")
    if not path.is_file():
        raise ExportError(f"{export_dir} is not an export directory: {MANIFEST} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON: {exc}") from exc
    manifest = Manifest.from_dict(data)
    if verify:
        actual = compute_digest(export_dir, manifest, file_hashes)
        if actual != manifest.digest:
            raise ExportError(
                f"{export_dir} does not match its manifest digest "
                f"(recorded {manifest.digest}, found {actual})"
            )
    return manifest
