"""Import a LeRobot 0.6.x SmolVLA checkpoint as native modules (no LeRobot, no transformers).

``load_smolvla(checkpoint_dir, vlm_dir=None)`` reads config.json, model.safetensors, the
saved processors and the SmolVLM directory's config.json and tokenizer.json, and
returns an :class:`ImportedPolicy` whose prefix / expert reproduce LeRobot's
``predict_action_chunk`` (docs/lerobot.md, section 3). ``build_modules(arch)`` rebuilds
the two modules from a recorded :class:`SmolVLAArch` (an export's provenance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import (
    CONFIG,
    LEROBOT_VERSION,
    check_interface,
    int_pair,
    number,
    read_config,
    read_features,
    read_json,
    read_normalization,
    read_weights,
    refuse,
)
from .imported import CheckpointError, ImportedPolicy
from .smolvla_model import SmolVLAExpert, SmolVLAPrefix
from .smolvla_modules import ACTIVATIONS, SmolVLAArch

POLICY_KIND = "lerobot-smolvla"
VLM = "model.vlm_with_expert.vlm.model."
EXPERT = "model.vlm_with_expert.lm_expert."
# LeRobot key prefix -> (module, our key prefix)
_RENAMES = (
    (VLM + "vision_model.", "prefix", "vision."),
    (VLM + "connector.modality_projection.proj.", "prefix", "vision.proj."),
    (VLM + "text_model.embed_tokens.", "prefix", "embed_tokens."),
    (VLM + "text_model.layers.", "prefix", "layers."),
    ("model.state_proj.", "prefix", "state_proj."),
    (EXPERT + "layers.", "expert", "layers."),
    (EXPERT + "norm.", "expert", "norm."),
    ("model.action_", "expert", "action_"),
)
# Unused at inference: the LM head and the final norm of the VLM's text model.
_IGNORED = (VLM.replace(".model.", ".lm_head."), VLM + "text_model.norm.")


def _check_supported(config: dict[str, Any], path: Path) -> None:
    """Refuse, naming the config.json field (``path``), what the port does not reproduce."""
    where = str(path)
    refuse(config, "adapt_to_pi_aloha", bool(config.get("adapt_to_pi_aloha")),
           "the Aloha joint / gripper transforms are not ported")
    refuse(config, "use_delta_joint_actions_aloha", bool(config.get("use_delta_joint_actions_aloha")),
           "delta joint actions are not ported")
    refuse(config, "add_image_special_tokens", bool(config.get("add_image_special_tokens")),
           "image special tokens around the image features are not ported")
    refuse(config, "prefix_length", number(config, "prefix_length", where, integer=True, default=-1) > 0,
           "a padded fixed-length prefix is not ported")
    refuse(config, "attention_mode", config.get("attention_mode", "cross_attn") not in ("cross_attn", "self_attn"),
           "only cross_attn and self_attn are ported")
    rtc = config.get("rtc_config")
    refuse(config, "rtc_config", rtc is not None and bool(rtc.get("enabled", True)),
           "real-time chunking is not ported")
    refuse(config, "use_cache", config.get("use_cache", True) is False,
           "the prefix K/V cache is how the export splits the model")
    layers = number(config, "num_expert_layers", where, integer=True, default=-1)
    vlm_layers = number(config, "num_vlm_layers", where, integer=True)
    refuse(config, "num_expert_layers", layers > 0 and layers != vlm_layers,
           "an expert with fewer layers than the VLM is not ported")


def _vlm_directory(config: dict[str, Any], vlm_dir: str | Path | None) -> Path:
    if vlm_dir is None:
        name = config.get("vlm_model_name", "")
        if not name or not Path(name).is_dir():
            raise CheckpointError(
                f"config.json vlm_model_name={name!r} is not a local directory: pass --vlm DIR "
                "(the SmolVLM directory with config.json and tokenizer.json)"
            )
        vlm_dir = name
    vlm_dir = Path(vlm_dir)
    for name in ("config.json", "tokenizer.json"):
        if not (vlm_dir / name).is_file():
            raise CheckpointError(f"{vlm_dir / name} not found: --vlm must be a SmolVLM directory")
    return vlm_dir


def _count_layers(weights: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in weights if k.startswith(prefix)})


def _section(vlm_cfg: dict[str, Any], name: str, vlm_path: Path) -> dict[str, Any]:
    section = vlm_cfg.get(name) or {}
    if not isinstance(section, dict):
        raise CheckpointError(f"{vlm_path} field {name} is not a JSON object")
    return section


def _arch(config, vlm_cfg, weights, features, ckpt_config: Path, vlm_path: Path) -> SmolVLAArch:
    """Sizes from the weights' shapes, config.json (``ckpt_config``) and the head counts /
    norms of the VLM config (``vlm_path``). Raises CheckpointError naming file and field."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in weights:
            raise CheckpointError(f"model.safetensors lacks {key}")
        return weights[key].shape

    text, vision = _section(vlm_cfg, "text_config", vlm_path), _section(vlm_cfg, "vision_config", vlm_path)
    in_text, in_vision, own = f"{vlm_path} text_config", f"{vlm_path} vision_config", str(ckpt_config)

    def text_int(field: str, default: int) -> int:
        return number(text, field, in_text, integer=True, default=default)

    def own_int(field: str, **default: int) -> int:
        return number(config, field, own, integer=True, **default)

    heads = text_int("num_attention_heads", 32)
    v_hidden, _, patch, _ = shape(VLM + "vision_model.embeddings.patch_embedding.weight")
    t_inter, t_hidden = shape(VLM + "text_model.layers.0.mlp.gate_proj.weight")
    e_inter, e_hidden = shape(EXPERT + "layers.0.mlp.gate_proj.weight")
    sf = round((shape(VLM + "connector.modality_projection.proj.weight")[1] / v_hidden) ** 0.5)
    sizes = {(c.height, c.width) for c in features.cameras}
    if len(sizes) != 1:
        raise CheckpointError(f"config.json input_features: cameras of different sizes {sorted(sizes)}")
    width, height = int_pair(config, "resize_imgs_with_padding", own, None)
    acts = (text.get("hidden_act", "silu"), vision.get("hidden_act", "gelu_pytorch_tanh"))
    for act in acts:
        if act not in ACTIVATIONS:
            raise CheckpointError(f"{vlm_path}: activation {act!r} is not supported")
    return SmolVLAArch(
        num_cameras=len(features.cameras), image_hw=sizes.pop(), resize_hw=(height, width),
        vision_hidden=v_hidden, vision_intermediate=shape(VLM + "vision_model.encoder.layers.0.mlp.fc1.weight")[0],
        vision_layers=_count_layers(weights, VLM + "vision_model.encoder.layers."),
        vision_heads=number(vision, "num_attention_heads", in_vision, integer=True, default=16), vision_patch=patch,
        vision_image_size=patch * round(shape(VLM + "vision_model.embeddings.position_embedding.weight")[0] ** 0.5),
        vision_eps=number(vision, "layer_norm_eps", in_vision, default=1e-6), vision_act=acts[1], scale_factor=sf,
        vocab_size=shape(VLM + "text_model.embed_tokens.weight")[0], text_hidden=t_hidden,
        text_intermediate=t_inter, text_heads=heads,
        text_kv_heads=text_int("num_key_value_heads", heads),
        head_dim=text_int("head_dim", 0) or t_hidden // heads,
        text_eps=number(text, "rms_norm_eps", in_text, default=1e-6),
        text_act=acts[0], num_vlm_layers=own_int("num_vlm_layers"), expert_hidden=e_hidden,
        expert_intermediate=e_inter, attention_mode=config.get("attention_mode", "cross_attn"),
        self_attn_every_n_layers=own_int("self_attn_every_n_layers", default=2),
        max_state_dim=own_int("max_state_dim"), max_action_dim=own_int("max_action_dim"),
        chunk_size=own_int("chunk_size"), max_text_tokens=own_int("tokenizer_max_length"),
        min_period=number(config, "min_period", own, default=4e-3),
        max_period=number(config, "max_period", own, default=4.0),
    )


def build_modules(arch: SmolVLAArch) -> tuple[SmolVLAPrefix, SmolVLAExpert]:
    """Fresh (prefix, expert) of ``arch`` (random weights, phi zero), in eval mode."""
    return SmolVLAPrefix(arch).eval(), SmolVLAExpert(arch).eval()


def modules_from_provenance(provenance: dict[str, Any]) -> tuple[SmolVLAPrefix, SmolVLAExpert]:
    """Fresh modules of the architecture an export recorded (``provenance["architecture"]``).

    Raises KeyError when the provenance has no architecture.
    """
    return build_modules(SmolVLAArch.from_dict(provenance["architecture"]))


def load_lerobot_weights(prefix, expert, weights: dict[str, np.ndarray]) -> None:
    """Copy LeRobot's model.safetensors tensors into the modules (every key must match).

    Raises CheckpointError naming unknown, missing or mis-shaped keys.
    """
    modules = {"prefix": prefix, "expert": expert}
    states: dict[str, dict[str, torch.Tensor]] = {"prefix": {}, "expert": {}}
    unknown = []
    for key, value in weights.items():
        for src, module, dst in _RENAMES:
            if key.startswith(src):
                states[module][dst + key[len(src):]] = torch.from_numpy(np.asarray(value, np.float32))
                break
        else:
            if not key.startswith(_IGNORED):
                unknown.append(key)
    if unknown:
        raise CheckpointError(f"model.safetensors has keys the SmolVLA port does not know: {unknown[:5]}")
    for name, module in modules.items():
        own = module.state_dict()
        extra = sorted(k for k in states[name] if k not in own)
        if extra:  # e.g. text layers beyond num_vlm_layers
            raise CheckpointError(f"model.safetensors keys do not fit the {name}: {extra[:5]}")
        for key, value in states[name].items():
            if own[key].shape != value.shape:
                raise CheckpointError(f"model.safetensors {name}.{key}: shape {tuple(value.shape)}, "
                                      f"expected {tuple(own[key].shape)}")
        keep = {k for k in own if k.startswith("target_time_mlp.")}  # phi: not in LeRobot, stays zero
        missing = sorted(set(own) - set(states[name]) - keep)
        if missing:
            raise CheckpointError(f"model.safetensors lacks {name} weights: {missing[:5]}")
        module.load_state_dict({**{k: own[k] for k in keep}, **states[name]})


def _tokenizer_spec(vlm_dir: Path, max_length: int) -> dict[str, Any]:
    """The manifest entry reproducing SmolVLA's NewLineTaskProcessorStep + TokenizerProcessorStep."""
    pad_token = None
    if (vlm_dir / "tokenizer_config.json").is_file():
        pad_token = read_json(vlm_dir / "tokenizer_config.json").get("pad_token")
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
    vocab = read_json(vlm_dir / "tokenizer.json")
    ids = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
    ids.update(vocab.get("model", {}).get("vocab", {}) if isinstance(vocab.get("model", {}).get("vocab"), dict) else {})
    pad_id = int(ids.get(pad_token, 0)) if pad_token is not None else 0
    return {"kind": "hf-tokenizers", "file": "tokenizer.json", "template": "{task}", "task_suffix": "\n",
            "padding": "max_length", "max_length": max_length, "pad_id": pad_id}


def load_smolvla(checkpoint_dir: str | Path, vlm_dir: str | Path | None = None) -> ImportedPolicy:
    """Read a LeRobot SmolVLA checkpoint into native modules.

    Args:
        checkpoint_dir: a ``save_pretrained`` directory (config.json, model.safetensors,
            policy_{pre,post}processor.json and their normaliser statistics).
        vlm_dir: the SmolVLM directory (config.json, tokenizer.json); default: the
            config's ``vlm_model_name`` when it is an existing local directory.

    Returns:
        An :class:`ImportedPolicy` with ``state_input == "prefix"``.

    Raises:
        CheckpointError: a missing / invalid file (named), a config that is not SmolVLA,
            an unsupported setting (the config field named), weights that do not fit.
    """
    checkpoint = Path(checkpoint_dir).resolve()
    config = read_config(checkpoint)
    if config["type"] != "smolvla":
        raise CheckpointError(f"{checkpoint / 'config.json'}: type {config['type']!r} is not smolvla")
    own = checkpoint / CONFIG
    _check_supported(config, own)
    features = read_features(config, own)
    features.cameras[:] = [c for c in features.cameras if not c.name.startswith("empty_camera_")]
    check_interface(config, features, str(own))
    vlm = _vlm_directory(config, vlm_dir)
    vlm_cfg = read_json(vlm / "config.json")
    weights, sha = read_weights(checkpoint)
    arch = _arch(config, vlm_cfg, weights, features, own, vlm / "config.json")
    prefix, expert = build_modules(arch)
    load_lerobot_weights(prefix, expert, weights)
    stats, norm = read_normalization(checkpoint, features)
    return ImportedPolicy(
        kind="smolvla", prefix=prefix, expert=expert, state_input="prefix",
        cameras=features.cameras, state_dim=features.state_dim, action_dim=features.action_dim,
        max_state_dim=arch.max_state_dim, max_action_dim=arch.max_action_dim,
        chunk_size=arch.chunk_size, n_action_steps=number(config, "n_action_steps", str(own), integer=True),
        num_steps=number(config, "num_steps", str(own), integer=True, default=10),
        max_text_tokens=arch.max_text_tokens,
        prefix_len=arch.prefix_len, num_kv_layers=arch.num_vlm_layers, kv_dim=arch.kv_dim,
        tokenizer=_tokenizer_spec(vlm, arch.max_text_tokens), stats=stats,
        tokenizer_file=vlm / "tokenizer.json",
        provenance={
            "source": "lerobot", "lerobot_version": LEROBOT_VERSION, "type": "smolvla",
            "checkpoint": str(checkpoint), "checkpoint_sha256": sha,
            "vlm": config.get("vlm_model_name"), "vlm_dir": str(vlm.resolve()),
            "normalization": norm, "config": config, "architecture": arch.to_dict(),
        },
    )
