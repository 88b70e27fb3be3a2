"""Measure, on a SmolVLA checkpoint, the facts the export design rests on (docs/lerobot.md).

RUN ONLY INSIDE THE LEROBOT VENV (see offline.py). Usage:

    .venv-lerobot/bin/python reflex_serve/lerobot_import/in_venv/smolvla_facts.py CKPT \
        [--pad-to 16] [--hf-home DIR]

Prints one JSON line:
    prefix_len            tokens of the prefix (cams x image tokens + language + 1 state)
    prefix_blocks         the prefix's att_masks (0 = joins the bidirectional block)
    kv_shape              one layer's cached keys, [B, kv_heads, P, head_dim]
    image_lang_kv_diff    per layer, max |K| and |V| difference of the image + language
                          tokens between two different states (0.0: state-independent)
    state_kv_diff         per layer, the same for the state token (> 0)
    language_tokens       the instruction's token count (LeRobot pads to the longest)
    padded_language_diff  max |actions| difference when the language is padded to
                          --pad-to tokens with mask 0 (what a fixed-length graph does)
    one_step_diff         max |num_steps=1 output - (noise - v(noise, t=1))|
    act_ms                {"1": ms, "10": ms}: median of 5 predict_action_chunk calls
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from offline import offline_env


def prefix_cache(policy, batch):
    """(DynamicCache, pad_masks, att_masks) of SmolVLA's prefix for a preprocessed batch."""
    import torch
    from lerobot.policies.common.vla_utils import make_att_2d_masks

    model = policy.model
    images, img_masks = policy.prepare_images(batch)
    embs, pad, att = model.embed_prefix(
        images,
        img_masks,
        batch["observation.language.tokens"],
        batch["observation.language.attention_mask"],
        state=policy.prepare_state(batch),
    )
    _, cache = model.vlm_with_expert.forward(
        attention_mask=make_att_2d_masks(pad, att),
        position_ids=torch.cumsum(pad, dim=1) - 1,
        past_key_values=None,
        inputs_embeds=[embs, None],
        use_cache=True,
    )
    return cache, pad, att


def kv_diffs(a, b, tokens: slice) -> list[float]:
    """Per layer, max abs difference of keys and values over `tokens` of two caches."""
    out = []
    for la, lb in zip(a.layers, b.layers, strict=True):
        keys = (la.keys[:, :, tokens] - lb.keys[:, :, tokens]).abs().max()
        values = (la.values[:, :, tokens] - lb.values[:, :, tokens]).abs().max()
        out.append(float(max(keys, values)))
    return out


def measure(checkpoint: Path, pad_to: int) -> dict:
    """The facts above for `checkpoint` on a fixed random observation."""
    import numpy as np
    import torch
    from lerobot.policies.utils import prepare_observation_for_inference
    from reference import load

    policy, pre, _ = load(checkpoint)
    rng = np.random.default_rng(0)
    cameras = list(policy.config.image_features)
    c, h, w = policy.config.image_features[cameras[0]].shape
    images = {k: rng.integers(0, 256, (h, w, c), dtype=np.uint8) for k in cameras}
    state_dim = policy.config.robot_state_feature.shape[0]

    def batch_for(state):
        raw = {**{k: v.copy() for k, v in images.items()}, "observation.state": state}
        cpu = torch.device("cpu")
        return pre(prepare_observation_for_inference(raw, cpu, "pick the cube"))

    states = rng.standard_normal((2, state_dim)).astype(np.float32)
    batch = batch_for(states[0])
    with torch.no_grad():
        (k1, pad, att), (k2, _, _) = (prefix_cache(policy, batch_for(s)) for s in states)
        noise = torch.from_numpy(
            rng.standard_normal((1, policy.config.chunk_size, policy.config.max_action_dim))
        ).float()
        ref = policy.predict_action_chunk(dict(batch), noise=noise.clone())
        tokens = batch["observation.language.tokens"]
        mask = batch["observation.language.attention_mask"]
        extra = pad_to - tokens.shape[1]
        padded = dict(batch)
        padded["observation.language.tokens"] = torch.cat(
            [tokens, torch.ones(1, extra, dtype=tokens.dtype)], dim=1
        )
        padded["observation.language.attention_mask"] = torch.cat(
            [mask, torch.zeros(1, extra, dtype=mask.dtype)], dim=1
        )
        padded_out = policy.predict_action_chunk(padded, noise=noise.clone())
        steps = policy.config.num_steps
        policy.config.num_steps = 1
        one = policy.predict_action_chunk(dict(batch), noise=noise.clone())
        v = policy.model.denoise_step(pad, k1, noise.clone(), torch.ones(1))
        action_dim = one.shape[-1]
        timings = {}
        for n in (1, steps):
            policy.config.num_steps = n
            ms = []
            for _ in range(5):
                start = time.perf_counter()
                policy.predict_action_chunk(dict(batch), noise=noise.clone())
                ms.append((time.perf_counter() - start) * 1e3)
            timings[str(n)] = round(float(np.median(ms)), 2)
        policy.config.num_steps = steps
    return {
        "prefix_len": int(pad.shape[1]),
        "prefix_blocks": att[0].int().tolist(),
        "kv_shape": list(k1.layers[0].keys.shape),
        "image_lang_kv_diff": kv_diffs(k1, k2, slice(0, -1)),
        "state_kv_diff": kv_diffs(k1, k2, slice(-1, None)),
        "language_tokens": int(tokens.shape[1]),
        "padded_language_diff": float((padded_out - ref).abs().max()),
        "one_step_diff": float((one - (noise - v)[:, :, :action_dim]).abs().max()),
        "act_ms": timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--pad-to", type=int, default=16)
    parser.add_argument("--hf-home", type=Path, default=None)
    args = parser.parse_args()
    offline_env(args.hf_home)
    print(json.dumps(measure(args.checkpoint.resolve(), args.pad_to)))


if __name__ == "__main__":
    main()
