"""ONNX Runtime vs PyTorch eager on the same model, and prefix-cache hit vs miss.

    python bench/bench_runtime.py [--export DIR] [--rounds 200] [--threads 1]

Both measurements are /act-equivalent calls (validation, prefix, N Euler steps,
unnormalization) at batch 1, timed in alternation in one process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, summary

from reflex_serve.assets import default_teacher
from reflex_serve.export.parity import random_observations, torch_act
from reflex_serve.export.weights import load_model
from reflex_serve.runtime.cache import PrefixCache
from reflex_serve.runtime.policy import Policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--export", type=Path, default=None, help="export directory (default: shipped teacher)")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="threads for both ONNX Runtime and torch")
    args = ap.parse_args()
    export = args.export or default_teacher()
    torch.set_num_threads(args.threads)

    policy = Policy(export, intra_op_threads=args.threads)
    model = load_model(export / "model.safetensors")
    obs = random_observations(policy, 1)[0]
    noise = policy.make_noise(0)
    n = policy.num_steps
    print(f"export {export} version {policy.version}, {n} Euler steps, {args.threads} thread(s)\n")

    t = interleaved({
        "onnxruntime": lambda: policy.act(obs, noise=noise),
        "torch eager": lambda: torch_act(model, policy.stats, obs, noise, n),
    }, args.rounds)
    print("ONNX Runtime vs PyTorch eager (full act, cache off)")
    print(summary(t, "torch eager"), "\n")

    cached = Policy(export, intra_op_threads=args.threads, cache=PrefixCache(64 << 20))
    fresh = random_observations(cached, args.rounds + 20, seed=1)
    it = iter(fresh)
    cached.act(obs)
    t = interleaved({
        "cache miss": lambda: cached.act(next(it), noise=noise),
        "cache hit": lambda: cached.act(obs, noise=noise),
    }, args.rounds, warmup=2)
    print("Prefix KV cache: hit vs miss (ONNX Runtime)")
    print(summary(t, "cache miss"))
    st = cached.cache.stats()
    print(f"\ncache: {st.hits} hits, {st.misses} misses, {st.bytes} bytes in {st.entries} entries")


if __name__ == "__main__":
    main()
