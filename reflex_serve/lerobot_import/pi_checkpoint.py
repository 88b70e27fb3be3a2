"""Reading a LeRobot 0.6.1 pi0 / pi0.5 checkpoint into the native modules (files only).

Shared by :mod:`.pi0` and :mod:`.pi05`: config checks (refusals name the config field),
the state-dict rename from LeRobot's keys to the native modules', the sizes inferred
from the weights (:func:`infer_arch`), the normalisation statistics, and the assembly
of an :class:`~.imported.ImportedPolicy`. No LeRobot, no transformers.

Sizes (docs/lerobot.md, "pi0 and pi0.5"): LeRobot hard-codes gemma_2b / gemma_300m and
SigLIP-so400m, but a checkpoint's tensors say what it is, so every width, depth and
vocabulary comes from a weight shape. Two numbers no shape carries: the Gemma split of
``k_proj`` rows into kv_heads x head_dim (every LeRobot variant is multi-query,
kv_heads = 1, so head_dim = k_proj rows and heads = q_proj rows / head_dim) and the
SigLIP head count (16 for so400m). ``overrides`` (from a tiny checkpoint's
TINY_RANDOM_PI0.json, keys ``kv_heads`` and ``vision_heads``) replace those two.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import (
    CONFIG,
    LEROBOT_VERSION,
    Features,
    check_interface,
    int_pair,
    number,
    read_config,
    read_features,
    read_normalization,
    read_weights,
    refuse,
)
from .imported import CheckpointError, ImportedPolicy
from .paligemma import PaliGemmaPrefix, PiArch
from .pi_tokenizer import tokenizer_spec

SIZE_MARKER = "TINY_RANDOM_PI0.json"
SO400M_VISION_HEADS = 16
TOKENIZER_REPO = "google/paligemma-3b-pt-224"
_PALI = "paligemma_with_expert.paligemma.model."
_RENAMES = (  # LeRobot key prefix (without "model.") -> (module, native prefix)
    (_PALI + "vision_tower.vision_model.embeddings.", "prefix", "vision."),
    (_PALI + "vision_tower.vision_model.encoder.", "prefix", "vision."),
    (_PALI + "vision_tower.vision_model.post_layernorm.", "prefix", "vision.post_layernorm."),
    (_PALI + "multi_modal_projector.linear.", "prefix", "projector."),
    (_PALI + "language_model.embed_tokens.", "prefix", "embed_tokens."),
    (_PALI + "language_model.layers.", "prefix", "layers."),
    ("paligemma_with_expert.gemma_expert.model.layers.", "expert", "core.layers."),
    ("paligemma_with_expert.gemma_expert.model.norm.", "expert", "core.norm."),
)
_UNUSED = (  # read by nothing at inference
    _PALI + "language_model.norm.",
    "paligemma_with_expert.paligemma.lm_head.",
    "paligemma_with_expert.gemma_expert.lm_head.",
)


def read_pi_config(checkpoint: Path, kind: str) -> dict:
    """config.json of a LeRobot checkpoint of type ``kind`` ("pi0" / "pi05"), checked.

    Raises CheckpointError (naming the file or the field) for a missing file, another
    policy type, or a setting the port does not cover: ``use_relative_actions``,
    ``rtc_config`` enabled, a non-square ``image_resolution``, VISUAL normalisation
    other than IDENTITY.
    """
    config = read_config(Path(checkpoint))
    if config["type"] != kind:
        raise CheckpointError(
            f"{Path(checkpoint) / 'config.json'}: type {config['type']!r}, expected {kind!r}"
        )
    check_config(config)
    return config


def check_config(config: dict) -> None:
    """Refuse settings the port does not reproduce; the message names the config field."""
    refuse(
        config,
        "use_relative_actions",
        bool(config.get("use_relative_actions")),
        "the relative / absolute action processor steps are not ported",
    )
    refuse(
        config,
        "rtc_config",
        bool((config.get("rtc_config") or {}).get("enabled")),
        "real-time chunking guidance is not ported",
    )
    res = int_pair(config, "image_resolution", CONFIG, [224, 224])
    refuse(config, "image_resolution", res[0] != res[1], "PaliGemma needs a square resolution")
    visual = config.get("normalization_mapping", {}).get("VISUAL", "IDENTITY")
    refuse(config, "normalization_mapping", visual != "IDENTITY",
           f"VISUAL normalisation {visual} is not ported (images go to SigLIP in [-1, 1])")  # fmt: skip


def native_state_dicts(tensors: dict[str, torch.Tensor], kind: str) -> tuple[dict, dict]:
    """LeRobot keys -> (prefix state dict, expert state dict) of the native modules.

    Applies LeRobot's ``_fix_pytorch_state_dict_keys``: the "model." prefix is optional,
    time_mlp_* / action_time_mlp_* are renamed to the kind's names, pi0.5 drops a
    state_proj, a missing embed_tokens is taken from the tied lm_head. Unknown keys raise
    CheckpointError naming them.
    """
    prefix, expert = {}, {}
    for key, value in tensors.items():
        k = key.removeprefix("model.")
        if kind == "pi0" and k.startswith("time_mlp_"):
            k = "action_" + k
        if kind == "pi05" and k.startswith("action_time_mlp_"):
            k = k[len("action_") :]
        if kind == "pi05" and k.startswith("state_proj."):
            continue
        if k == "paligemma_with_expert.paligemma.lm_head.weight":
            prefix.setdefault("embed_tokens.weight", value)
        if k.startswith(_UNUSED):
            continue
        for old, target, new in _RENAMES:
            if k.startswith(old):
                (prefix if target == "prefix" else expert)[new + k[len(old) :]] = value
                break
        else:
            if "." not in k or k.startswith("paligemma_with_expert."):
                raise CheckpointError(f"model.safetensors: unexpected key {key!r}")
            expert[k] = value
    return prefix, expert


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_arch(
    config: dict, features: Features, prefix: dict, expert: dict, overrides: dict | None = None
) -> PiArch:
    """Sizes from the native state dicts' shapes plus config.json (module docstring).

    Raises CheckpointError when a needed tensor is missing or the shapes disagree with
    each other or with the config (resolution vs position embeddings, shared-attention
    widths, max_state_dim / max_action_dim).
    """
    overrides = overrides or {}
    try:
        vision_hidden, _, patch, _ = prefix["vision.patch_embedding.weight"].shape
        positions = prefix["vision.position_embedding.weight"].shape[0]
        vocab, vlm_width = prefix["embed_tokens.weight"].shape
        q_rows = prefix["layers.0.self_attn.q_proj.weight"].shape[0]
        kv_rows = prefix["layers.0.self_attn.k_proj.weight"].shape[0]
        expert_width = expert["core.layers.0.self_attn.q_proj.weight"].shape[1]
        expert_kv = expert["core.layers.0.self_attn.k_proj.weight"].shape[0]
        expert_q = expert["core.layers.0.self_attn.q_proj.weight"].shape[0]
        arch = PiArch(
            num_cameras=len(features.cameras),
            image_hw=(features.cameras[0].height, features.cameras[0].width),
            resolution=int_pair(config, "image_resolution", CONFIG, [224, 224])[0],
            vision_hidden=vision_hidden,
            vision_intermediate=prefix["vision.layers.0.mlp.fc1.weight"].shape[0],
            vision_layers=_count(prefix, r"vision\.layers\.(\d+)\."),
            vision_heads=int(overrides.get("vision_heads", SO400M_VISION_HEADS)),
            vision_patch=patch,
            vocab_size=vocab,
            vlm_width=vlm_width,
            vlm_mlp=prefix["layers.0.mlp.gate_proj.weight"].shape[0],
            vlm_layers=_count(prefix, r"layers\.(\d+)\."),
            expert_width=expert_width,
            expert_mlp=expert["core.layers.0.mlp.gate_proj.weight"].shape[0],
            expert_layers=_count(expert, r"core\.layers\.(\d+)\."),
            heads=q_rows // (kv_rows // int(overrides.get("kv_heads", 1))),
            kv_heads=int(overrides.get("kv_heads", 1)),
            head_dim=kv_rows // int(overrides.get("kv_heads", 1)),
            adarms="core.norm.dense.weight" in expert,
            max_state_dim=number(config, "max_state_dim", CONFIG, integer=True),
            max_action_dim=number(config, "max_action_dim", CONFIG, integer=True),
            chunk_size=number(config, "chunk_size", CONFIG, integer=True),
            max_text_tokens=number(config, "tokenizer_max_length", CONFIG, integer=True),
            min_period=number(config, "min_period", CONFIG),
            max_period=number(config, "max_period", CONFIG),
        )
    except KeyError as exc:
        raise CheckpointError(f"model.safetensors or config.json lacks {exc}") from exc
    problems = []
    if arch.image_tokens != positions:
        problems.append(
            f"image_resolution {arch.resolution} / patch {patch} != {positions} positions"
        )
    if (expert_kv, expert_q) != (kv_rows, q_rows):
        problems.append(
            "expert and PaliGemma q/k widths differ (shared attention needs equal heads)"
        )
    if arch.expert_layers != arch.vlm_layers:
        problems.append(f"{arch.expert_layers} expert layers vs {arch.vlm_layers} PaliGemma layers")
    if vision_hidden % arch.vision_heads or q_rows % arch.head_dim:
        problems.append("head counts do not divide the widths")
    if expert["action_in_proj.weight"].shape[1] != arch.max_action_dim:
        problems.append("config field max_action_dim does not match action_in_proj")
    if "state_proj.weight" in expert and expert["state_proj.weight"].shape[1] != arch.max_state_dim:
        problems.append("config field max_state_dim does not match state_proj")
    if problems:
        raise CheckpointError("; ".join(problems))
    return arch


def pi_features(config: dict, checkpoint: Path) -> Features:
    """Cameras, state and action widths; LeRobot's ``empty_camera_*`` are dropped (their
    tokens are masked and do not advance positions, so they change nothing)."""
    features = read_features(config, Path(checkpoint) / "config.json")
    features.cameras[:] = [c for c in features.cameras if not c.name.startswith("empty_camera_")]
    sizes = {(c.height, c.width) for c in features.cameras}
    if len(sizes) != 1:
        raise CheckpointError(f"config.json input_features: cameras of different sizes {sizes}")
    return features


def default_tokenizer_file() -> Path | None:
    """PaliGemma's tokenizer.json in the Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub,
    ~/.cache/huggingface/hub), or None."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    repo = hub / ("models--" + TOKENIZER_REPO.replace("/", "--"))
    found = sorted(repo.glob("snapshots/*/tokenizer.json"))
    return found[0] if found else None


def tokenizer_path(tokenizer_file) -> Path:
    """``tokenizer_file`` (--tokenizer), else PaliGemma's tokenizer.json in the Hugging
    Face cache. Raises CheckpointError saying which is missing."""
    if tokenizer_file is not None:
        tok = Path(tokenizer_file)
        if not tok.is_file():
            raise CheckpointError(
                f"--tokenizer {tok} does not exist or is not a file "
                "(it must be PaliGemma's tokenizer.json)"
            )
        return tok
    tok = default_tokenizer_file()
    if tok is None:
        raise CheckpointError(
            f"{TOKENIZER_REPO}'s tokenizer.json is not in the Hugging Face cache: "
            "pass --tokenizer FILE (PaliGemma's tokenizer.json)"
        )
    return tok


def size_overrides(checkpoint: Path) -> dict:
    """The ``sizes`` of a tiny checkpoint's TINY_RANDOM_PI0.json (empty for a real one)."""
    path = Path(checkpoint) / SIZE_MARKER
    return dict(json.loads(path.read_text()).get("sizes", {})) if path.is_file() else {}


def build(
    config: dict, features: Features, prefix_sd: dict, expert_sd: dict, expert_cls, overrides=None
):
    """(prefix, expert, arch): modules of ``infer_arch`` sizes, weights loaded (a missing
    phi(s) keeps its zero initialisation), eval mode. Raises CheckpointError."""
    arch = infer_arch(config, features, prefix_sd, expert_sd, overrides)
    prefix, expert = PaliGemmaPrefix(arch), expert_cls(arch)
    for module, sd, name in ((prefix, prefix_sd, "prefix"), (expert, expert_sd, "expert")):
        missing, unexpected = module.load_state_dict(
            {k: v.to(torch.float32) for k, v in sd.items()}, strict=False
        )
        missing = [k for k in missing if not k.startswith("phi.")]
        if missing or unexpected:
            raise CheckpointError(
                f"{name} weights: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    return prefix.eval(), expert.eval(), arch


def build_from_export(config: dict, weights_path, expert_cls, overrides=None):
    """(prefix, expert) from an export's model.safetensors (``prefix.*`` / ``expert.*``)."""
    tensors = load_file(str(weights_path))
    split = {
        p: {k[len(p) + 1 :]: v for k, v in tensors.items() if k.startswith(p + ".")}
        for p in ("prefix", "expert")
    }
    if not split["prefix"] or not split["expert"]:
        raise CheckpointError(f"{weights_path}: no prefix.* / expert.* tensors")
    features = pi_features(config, Path("config.json"))
    prefix, expert, _ = build(
        config, features, split["prefix"], split["expert"], expert_cls, overrides
    )
    return prefix, expert


def import_checkpoint(
    kind: str, checkpoint, tokenizer_file, expert_cls, state_input: str
) -> ImportedPolicy:
    """The shared body of load_pi0 / load_pi05 (see those). Raises CheckpointError."""
    checkpoint = Path(checkpoint).resolve()
    config = read_pi_config(checkpoint, kind)
    features = pi_features(config, checkpoint)
    check_interface(config, features, str(checkpoint / CONFIG))
    tok = tokenizer_path(tokenizer_file)
    overrides = size_overrides(checkpoint)
    # safetensors.torch (not numpy): real pi0 / pi0.5 weights may be stored as bfloat16
    tensors, sha = read_weights(checkpoint, load_file)
    prefix_sd, expert_sd = native_state_dicts(tensors, kind)
    prefix, expert, arch = build(config, features, prefix_sd, expert_sd, expert_cls, overrides)
    stats, norm = read_normalization(checkpoint, features)
    return ImportedPolicy(
        kind=kind,
        prefix=prefix,
        expert=expert,
        state_input=state_input,
        cameras=features.cameras,
        state_dim=features.state_dim,
        action_dim=features.action_dim,
        max_state_dim=arch.max_state_dim,
        max_action_dim=arch.max_action_dim,
        chunk_size=arch.chunk_size,
        n_action_steps=number(config, "n_action_steps", CONFIG, integer=True),
        num_steps=number(config, "num_inference_steps", CONFIG, integer=True),
        max_text_tokens=arch.max_text_tokens,
        prefix_len=arch.prefix_len,
        num_kv_layers=arch.vlm_layers,
        kv_dim=arch.kv_dim,
        tokenizer=tokenizer_spec(kind, tok, arch.max_text_tokens),
        stats=stats,
        tokenizer_file=tok,
        provenance={
            "source": "lerobot",
            "lerobot_version": LEROBOT_VERSION,
            "type": kind,
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha,
            "tokenizer_repo": TOKENIZER_REPO,
            "normalization": norm,
            "config": config,
            "architecture": arch.to_dict(),
            "size_overrides": overrides,
            "compute_dtype": "float32",
        },
    )
