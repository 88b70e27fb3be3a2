"""LeRobot's own actions for one observation and explicit noise: the parity reference.

RUN ONLY INSIDE THE LEROBOT VENV (see offline.py). Usage:

    .venv-lerobot/bin/python reflex_serve/lerobot_import/in_venv/reference.py \
        CHECKPOINT_DIR OBS.npz OUT.npz [--repeats 3] [--hf-home DIR]

OBS.npz (written by the host, numpy only):
    images       uint8 (cams, H, W, 3), cameras in the order of `cameras`
    cameras      str (cams,): LeRobot feature suffixes, e.g. "cam_high" for
                 "observation.images.cam_high"
    state        float32 (state_dim,), raw (unnormalised) robot state
    instruction  str ()
    noise        float32 (chunk_size, max_action_dim): x at t = 1, or (K, chunk_size,
                 max_action_dim) for K batch-1 runs in this one process (optional; when
                 absent it is drawn from torch.manual_seed(`seed`), `seed` defaulting to 0)

The path is LeRobot's deployment path with the noise made explicit:
`prepare_observation_for_inference` (uint8 HWC -> float CHW in [0, 1], batch dim,
task) -> the checkpoint's saved preprocessor (newline, tokenizer, normaliser) ->
`policy.predict_action_chunk(batch, noise=noise)` -> the saved postprocessor.

OUT.npz (actions, actions_normalized and noise gain a leading K when noise had one):
    actions             float32 (chunk_size, action_dim): unnormalised, what a robot gets
    actions_normalized  float32 (chunk_size, action_dim): the policy output before
                        the postprocessor
    noise               float32 (chunk_size, max_action_dim): the noise used
    state_normalized    float32 (state_dim,)
    lang_tokens         int64 (L,), lang_mask bool (L,): the tokenised instruction
    act_ms              float64 (K * repeats,): wall ms of each predict_action_chunk
                        call (preprocessing excluded); num_steps int: Euler steps of the
                        config (SmolVLA num_steps, pi0 num_inference_steps)
Errors: a camera the checkpoint's config.json lacks exits non-zero naming it, before
torch is imported; a missing or broken checkpoint raises and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from offline import offline_env


def load(checkpoint: Path):
    """(policy, preprocessor, postprocessor) from a saved LeRobot checkpoint directory.

    A tiny pi0 built by tiny.py (pi0_tiny.MARKER) gets its size patch and fake tokenizer
    cache entry first (under $HF_HOME, set by offline_env).
    """
    import os

    from lerobot.configs import PreTrainedConfig
    from pi0_tiny import prepare_reload

    prepare_reload(checkpoint, Path(os.environ["HF_HOME"]))
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    config = PreTrainedConfig.from_pretrained(checkpoint)
    config.device = "cpu"
    policy = get_policy_class(config.type).from_pretrained(checkpoint, config=config).eval()
    pre, post = make_pre_post_processors(config, pretrained_path=str(checkpoint))
    return policy, pre, post


def num_steps(config) -> int:
    """Euler steps of a policy config: SmolVLA `num_steps`, pi0 / pi0.5 `num_inference_steps`."""
    return int(getattr(config, "num_steps", None) or config.num_inference_steps)


def check_cameras(checkpoint: Path, cameras: list[str]) -> None:
    """Exit naming any camera the checkpoint's config.json lacks (before importing torch)."""
    features = json.loads((checkpoint / "config.json").read_text())["input_features"]
    known = sorted(k for k, v in features.items() if v["type"] == "VISUAL")
    unknown = sorted({f"observation.images.{c}" for c in cameras} - set(known))
    if unknown:
        raise SystemExit(f"cameras {unknown} not in the policy's {known}")


def run(checkpoint: Path, obs_path: Path, out_path: Path, repeats: int) -> None:
    """Load the checkpoint, run the observation (per noise, `repeats` times), write OUT.npz."""
    import numpy as np

    obs = np.load(obs_path)
    cameras = [str(c) for c in obs["cameras"]]
    check_cameras(checkpoint, cameras)

    import torch
    from lerobot.policies.utils import prepare_observation_for_inference

    policy, pre, post = load(checkpoint)
    raw = {
        f"observation.images.{c}": np.ascontiguousarray(obs["images"][i])
        for i, c in enumerate(cameras)
    }
    raw["observation.state"] = obs["state"].astype(np.float32)
    if "noise" in obs.files:
        noise = torch.from_numpy(obs["noise"].astype(np.float32))
    else:
        torch.manual_seed(int(obs["seed"]) if "seed" in obs.files else 0)
        shape = (policy.config.chunk_size, policy.config.max_action_dim)
        noise = torch.randn(shape, dtype=torch.float32)
    stacked = noise.ndim == 3
    noises = noise if stacked else noise[None]

    batch = prepare_observation_for_inference(raw, torch.device("cpu"), str(obs["instruction"]))
    batch = pre(batch)
    times, normalized = [], []
    for x1 in noises:
        for _ in range(max(1, repeats)):
            policy.reset()
            start = time.perf_counter()
            out = policy.predict_action_chunk(dict(batch), noise=x1[None].clone())
            times.append((time.perf_counter() - start) * 1e3)
        normalized.append(out[0])
    normalized = torch.stack(normalized)
    actions = post(normalized)

    def shaped(x):
        x = x.numpy().astype(np.float32)
        return x if stacked else x[0]

    np.savez(
        out_path,
        actions=shaped(actions),
        actions_normalized=shaped(normalized),
        noise=shaped(noises),
        state_normalized=batch["observation.state"][0].numpy().astype(np.float32),
        lang_tokens=batch["observation.language.tokens"][0].numpy(),
        lang_mask=batch["observation.language.attention_mask"][0].numpy().astype(bool),
        act_ms=np.asarray(times),
        num_steps=np.asarray(num_steps(policy.config)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("obs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-home", type=Path, default=None)
    args = parser.parse_args()
    offline_env(args.hf_home)
    run(args.checkpoint.resolve(), args.obs, args.out, args.repeats)


if __name__ == "__main__":
    main()
