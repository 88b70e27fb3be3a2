"""HTTP /act vs in-process Policy, and msgpack vs JSON bodies, measured side by side.

    python bench/bench_http.py [--export DIR] [--rounds 300]

The server runs in its own process (`reflex serve --port 0`, prefix cache off so that
every call computes the prefix); the in-process policy runs in this process with the
same thread settings. Calls alternate between variants so that machine noise hits all.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, summary

from reflex_serve.assets import default_teacher
from reflex_serve.client import ReflexClient
from reflex_serve.export.parity import random_observations
from reflex_serve.runtime.policy import Policy
from reflex_serve.server import codec
from reflex_serve.server.runner import spawn_server


def start_server(export: Path) -> tuple[subprocess.Popen, str]:
    """`reflex serve` on a free loopback port (prefix cache off); returns process and URL."""
    return spawn_server(export, "--cache-mb", "0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--export", type=Path, default=None, help="export directory (default: shipped teacher)")
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    export = args.export or default_teacher()
    proc, url = start_server(export)
    with ExitStack() as stack:  # closes the websocket, then stops the server
        stack.callback(proc.wait, timeout=20)
        stack.callback(proc.terminate)
        policy = Policy(export)
        obs = random_observations(policy, 1)[0]
        msgpack_client = ReflexClient(url)
        msgpack_client.wait_ready()
        json_client = ReflexClient(url, use_msgpack=False)
        body = codec.packb({"images": obs.images, "state": obs.state, "instruction": obs.instruction, "seed": 1})
        raw = httpx.Client(base_url=url)
        ws = stack.enter_context(connect(url.replace("http", "ws"), compression=None, max_size=None))
        ws.recv()  # metadata frame
        ws_msg = codec.packb({"observation/image": obs.images[policy.manifest.cameras[0].name],
                              "observation/state": obs.state, "prompt": obs.instruction, "seed": 1})

        def websocket_call() -> None:
            ws.send(ws_msg)
            ws.recv()

        print(f"export {export} version {policy.version}, {policy.num_steps} Euler steps, server {url}\n")
        t = interleaved({
            "in-process Policy.act": lambda: policy.act(obs, seed=1),
            "HTTP msgpack (raw httpx)": lambda: raw.post("/act", content=body,
                                                          headers={"Content-Type": "application/msgpack"}),
            "HTTP msgpack (ReflexClient)": lambda: msgpack_client.act(obs, seed=1),
            "HTTP JSON (ReflexClient)": lambda: json_client.act(obs, seed=1),
            "websocket (openpi protocol)": websocket_call,
        }, args.rounds, warmup=20)
        print(summary(t, "in-process Policy.act"))
        base = float(np.percentile(t["in-process Policy.act"], 50))
        for name in ("HTTP msgpack (ReflexClient)", "websocket (openpi protocol)"):
            print(f"\n{name} adds {float(np.percentile(t[name], 50)) - base:+.3f} ms at p50 over in-process")
        js, mp = (float(np.percentile(t[k], 50)) for k in ("HTTP JSON (ReflexClient)", "HTTP msgpack (ReflexClient)"))
        print(f"msgpack / JSON p50 ratio: {mp / js:.3f}")


if __name__ == "__main__":
    main()
