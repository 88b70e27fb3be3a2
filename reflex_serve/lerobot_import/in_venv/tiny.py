"""Build a tiny random-weight LeRobot policy offline and save it as a LeRobot checkpoint.

RUN ONLY INSIDE THE LEROBOT VENV (see offline.py). Usage:

    .venv-lerobot/bin/python reflex_serve/lerobot_import/in_venv/tiny.py {smolvla,pi0,pi05} OUT_DIR \
        [--seed 0] [--hf-home DIR]

OUT_DIR receives what `policy.save_pretrained` and the processors' `save_pretrained`
write (config.json, model.safetensors, policy_preprocessor.json,
policy_postprocessor.json and their normaliser .safetensors state files) plus
for SmolVLA `tiny-smolvlm/`, the weightless SmolVLM directory the saved config points
at (an absolute path: the checkpoint must stay where it was built, or be rebuilt), and
for pi0 / pi0.5 the marker of pi0_tiny.py (its sizes are patched in at build and reload). A summary
(parameter count, file sizes, seconds) is printed as one JSON line on stdout.

Geometry (LEROBOT.md): two cameras 3x48x64, state 6, action 6, chunk 10 executing 10,
max_state_dim / max_action_dim 8, tokenizer max length 16. The dataset statistics are
synthetic but not trivial (mean != 0, std != 1) so that a normalisation bug shows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from offline import offline_env, write_tiny_smolvlm

CAMERAS = ("cam_high", "cam_wrist")
IMAGE_SHAPE = (3, 48, 64)
STATE_DIM = 6
ACTION_DIM = 6


def synthetic_stats(seed: int) -> dict:
    """Dataset statistics for state and action (mean/std/min/max/q01/q99), float32 tensors."""
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)
    stats = {}
    for key, dim in (("observation.state", STATE_DIM), ("action", ACTION_DIM)):
        mean = torch.randn(dim, generator=gen) * 0.5
        std = 0.5 + 1.5 * torch.rand(dim, generator=gen)
        stats[key] = {
            "mean": mean,
            "std": std,
            "min": mean - 3 * std,
            "max": mean + 3 * std,
            "q01": mean - 2.3 * std,
            "q99": mean + 2.3 * std,
        }
    for cam in CAMERAS:  # VISUAL is IDENTITY-normalised; stats are carried for completeness
        shape = (3, 1, 1)
        stats[f"observation.images.{cam}"] = {
            "mean": torch.full(shape, 0.5),
            "std": torch.full(shape, 0.25),
            "min": torch.zeros(shape),
            "max": torch.ones(shape),
        }
    return stats


def features():
    """(input_features, output_features) of the tiny policies."""
    from lerobot.configs import FeatureType, PolicyFeature

    inputs = {
        f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, IMAGE_SHAPE) for c in CAMERAS
    }
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}
    return inputs, outputs


def build_smolvla(out_dir: Path, seed: int):
    """Construct a tiny SmolVLA (random weights under `seed`) and its processors.

    Returns (policy, preprocessor, postprocessor). Writes OUT_DIR/tiny-smolvlm.
    """
    import torch
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    vlm_dir = write_tiny_smolvlm(out_dir / "tiny-smolvlm")
    inputs, outputs = features()
    config = SmolVLAConfig(
        input_features=inputs,
        output_features=outputs,
        vlm_model_name=str(vlm_dir.resolve()),
        load_vlm_weights=False,
        num_vlm_layers=4,
        chunk_size=10,
        n_action_steps=10,
        max_state_dim=8,
        max_action_dim=8,
        resize_imgs_with_padding=(64, 64),
        tokenizer_max_length=16,
        device="cpu",
    )
    torch.manual_seed(seed)
    policy = SmolVLAPolicy(config).eval()
    pre, post = make_smolvla_pre_post_processors(config, dataset_stats=synthetic_stats(seed))
    return policy, pre, post


def build_paligemma_family(kind: str, out_dir: Path, seed: int):
    """Construct a tiny pi0 or pi0.5 (random weights under `seed`, pi0_tiny sizes).

    Needs HF_HOME set (offline_env): the fake tokenizer cache entry is written there.
    Writes the pi0_tiny.MARKER file into `out_dir`. pi0.5 writes the discretised state
    into the prompt ("Task: ..., State: ...;\nAction: "), about 70 characters for 6
    dims, hence its longer token budget with the character-level tokenizer.
    """
    import os

    import torch
    from pi0_tiny import (
        IMAGE_SIZE,
        MARKER,
        marker_contents,
        patch_pi0_sizes,
        write_fake_paligemma_cache,
    )

    if kind == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy as Policy
        from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors as procs
    else:
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy as Policy
        from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors as procs

    write_fake_paligemma_cache(os.environ["HF_HOME"])
    patch_pi0_sizes()
    inputs, outputs = features()
    config = Config(
        input_features=inputs,
        output_features=outputs,
        chunk_size=10,
        n_action_steps=10,
        max_state_dim=8,
        max_action_dim=8,
        image_resolution=(IMAGE_SIZE, IMAGE_SIZE),
        tokenizer_max_length=16 if kind == "pi0" else 96,
        dtype="float32",
        device="cpu",
    )
    torch.manual_seed(seed)
    policy = Policy(config).eval()
    if kind == "pi05":
        randomise_adarms(policy, seed)
    pre, post = procs(config, dataset_stats=synthetic_stats(seed))
    (out_dir / MARKER).write_text(json.dumps(marker_contents()))
    return policy, pre, post


def randomise_adarms(policy, seed: int, std: float = 0.1) -> None:
    """Give pi0.5's adaRMS projections (``*.dense.weight``) random values.

    LeRobot zero-initialises them, so an untrained pi0.5 ignores the time entirely (its
    norms see only the biases); a trained one does not. Random values make the tiny
    policy's actions depend on the time embedding, as a parity test needs.
    """
    import torch

    gen = torch.Generator().manual_seed(20_000 + seed)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if name.endswith(".dense.weight"):
                param.copy_(torch.randn(param.shape, generator=gen) * std)


BUILDERS = {
    "smolvla": build_smolvla,
    "pi0": lambda out_dir, seed: build_paligemma_family("pi0", out_dir, seed),
    "pi05": lambda out_dir, seed: build_paligemma_family("pi05", out_dir, seed),
}


def save(kind: str, out_dir: Path, seed: int) -> dict:
    """Build policy `kind` with `seed` and save it to `out_dir`; returns the summary dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    policy, pre, post = BUILDERS[kind](out_dir, seed)
    built = time.perf_counter()
    policy.save_pretrained(out_dir)
    pre.save_pretrained(out_dir)
    post.save_pretrained(out_dir)
    files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
    return {
        "kind": kind,
        "seed": seed,
        "checkpoint": str(out_dir),
        "parameters": sum(p.numel() for p in policy.parameters()),
        "files": files,
        "build_s": round(built - start, 3),
        "save_s": round(time.perf_counter() - built, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(BUILDERS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-home", type=Path, default=None)
    args = parser.parse_args()
    offline_env(args.hf_home)
    print(json.dumps(save(args.kind, args.out_dir.resolve(), args.seed)))


if __name__ == "__main__":
    main()
