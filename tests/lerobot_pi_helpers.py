"""Checks shared by the pi0 and pi0.5 port tests (tests/test_lerobot_pi0_port.py, ..._pi05_port.py).

Each function takes a native port (an ImportedPolicy from load_pi0 / load_pi05) and
LeRobot's own output for the same tiny checkpoint (venv.reference_actions), and returns
the measured figure or raises AssertionError.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from lerobot_helpers import INSTRUCTION
from safetensors.torch import save_file

from reflex_serve.lerobot_import.imported import CheckpointError, ImportedPolicy
from reflex_serve.lerobot_import.pi_tokenizer import tokenize

TOLERANCE = 1e-4


def tokenizer_file(hf_home: Path) -> Path:
    """The tokenizer.json of the fake google/paligemma-3b-pt-224 cache entry under hf_home."""
    (path,) = Path(hf_home, "hub").glob("models--google--paligemma*/snapshots/*/tokenizer.json")
    return path


def expert_inputs(policy: ImportedPolicy, x, t, s, state, kv, mask) -> tuple:
    """The expert's positional inputs: the state only when it enters the expert (pi0)."""
    return (x, t, s) + ((state,) if policy.state_input == "expert" else ()) + (kv, mask)


def prefix_of(policy: ImportedPolicy, observation: dict, tokens, mask):
    """(prefix_kv, prefix_mask, padded normalised state (1, max_state_dim)) in torch."""
    state = torch.zeros(1, policy.max_state_dim)
    state[0, : policy.state_dim] = torch.from_numpy(
        policy.stats.state.normalize(observation["state"])
    )
    with torch.no_grad():
        kv, pmask = policy.prefix(
            torch.from_numpy(observation["images"])[None],
            torch.from_numpy(np.asarray(tokens))[None],
            torch.from_numpy(np.asarray(mask))[None],
        )
    return kv, pmask, state


def euler_actions(
    policy: ImportedPolicy, observation: dict, noise: np.ndarray, tokens, mask
) -> np.ndarray:
    """The native modules' LeRobot loop: x <- x + dt v from t = 1, dt = -1/N, N = num_steps;
    first action_dim columns, unnormalised. float32 (chunk_size, action_dim)."""
    kv, pmask, state = prefix_of(policy, observation, tokens, mask)
    x = torch.from_numpy(noise)[None]
    dt = -1.0 / policy.num_steps
    with torch.no_grad():
        for step in range(policy.num_steps):
            t = torch.tensor(1.0 + step * dt, dtype=torch.float32).expand(1)
            x = x + dt * policy.expert(*expert_inputs(policy, x, t, t, state, kv, pmask))
    return policy.stats.action.unnormalize(x[0, :, : policy.action_dim].numpy())


def check_tokens(policy: ImportedPolicy, ref: dict, tok_file: Path, observation: dict) -> None:
    """tokenize() on LeRobot's normalised state, and on ours, equals LeRobot's tokens / mask."""
    for state in (ref["state_normalized"], policy.stats.state.normalize(observation["state"])):
        tokens, mask = tokenize(policy.tokenizer, tok_file, INSTRUCTION, state)
        assert tokens.dtype == mask.dtype == np.int64
        assert tokens.shape == (policy.max_text_tokens,)
        np.testing.assert_array_equal(tokens, ref["lang_tokens"])
        np.testing.assert_array_equal(mask, ref["lang_mask"].astype(np.int64))


def check_actions(policy: ImportedPolicy, ref: dict, tok_file: Path, observation: dict) -> float:
    """Max abs difference of the native Euler actions vs LeRobot's, over every reference noise."""
    tokens, mask = tokenize(policy.tokenizer, tok_file, INSTRUCTION, ref["state_normalized"])
    worst = 0.0
    for k, noise in enumerate(ref["noise"]):
        ours = euler_actions(policy, observation, noise, tokens, mask)
        assert ours.shape == ref["actions"][k].shape
        worst = max(worst, float(np.abs(ours - ref["actions"][k]).max()))
    assert float(np.abs(ref["actions"][0] - ref["actions"][1]).max()) > 0.1  # noise matters
    assert worst < TOLERANCE, worst
    return worst


def check_phi(policy: ImportedPolicy, observation: dict, tok_file: Path) -> None:
    """s changes nothing at import (phi's output layer is zero); a non-zero phi does."""
    tokens, mask = tokenize(
        policy.tokenizer, tok_file, INSTRUCTION, policy.stats.state.normalize(observation["state"])
    )
    kv, pmask, state = prefix_of(policy, observation, tokens, mask)
    x = torch.randn(
        1, policy.chunk_size, policy.max_action_dim, generator=torch.Generator().manual_seed(3)
    )
    t = torch.full((1,), 0.7)
    with torch.no_grad():
        outs = [
            policy.expert(*expert_inputs(policy, x, t, torch.full((1,), s), state, kv, pmask))
            for s in (0.7, 0.0, 0.31)
        ]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
        out_layer = policy.expert.phi.target_time_mlp[2]
        saved = out_layer.weight.clone()
        try:
            out_layer.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(4))
            moved = policy.expert(*expert_inputs(policy, x, t, torch.zeros(1), state, kv, pmask))
        finally:
            out_layer.weight.copy_(saved)
    assert float((moved - outs[0]).abs().max()) > 1e-3


def check_reproducible(loader, checkpoint: str, tok_file: Path) -> None:
    """Two imports of one checkpoint, whatever the global torch seed, hold the same
    weights (phi's first layer, which no checkpoint carries, included): the same export."""
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        policy = loader(checkpoint, tok_file)
        states.append({**{f"prefix.{k}": v for k, v in policy.prefix.state_dict().items()},
                       **{f"expert.{k}": v for k, v in policy.expert.state_dict().items()}})
    first, second = states
    assert first.keys() == second.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
    assert first["expert.phi.target_time_mlp.0.weight"].abs().max() > 0  # drawn, not zero


def check_refusal(loader, checkpoint: str, tmp: Path, tok_file: Path, field: str, value) -> None:
    """A copy of the checkpoint with config ``field`` = ``value`` is refused, the error naming it."""
    copy = tmp / f"refused-{field}"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config[field] = value
    (copy / "config.json").write_text(json.dumps(config))
    try:
        loader(copy, tok_file)
    except CheckpointError as exc:
        assert field in str(exc), exc
    else:
        raise AssertionError(f"{field}={value!r} was accepted")


def check_rebuild(
    policy: ImportedPolicy, port, tmp: Path, observation: dict, tok_file: Path
) -> None:
    """build_modules(config, weights) and modules_from_provenance + weights reproduce the
    velocity exactly (a trained phi included: its weights travel in the file)."""
    with torch.no_grad():
        policy.expert.phi.target_time_mlp[2].bias.fill_(0.25)  # as if distilled
    try:
        tensors = {f"prefix.{k}": v for k, v in policy.prefix.state_dict().items()}
        tensors |= {f"expert.{k}": v for k, v in policy.expert.state_dict().items()}
        path = tmp / "model.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        config = policy.provenance["config"]
        rebuilt = [port.build_modules(config, path, policy.provenance["size_overrides"])]
        prefix, expert = port.modules_from_provenance(policy.provenance)
        prefix.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("prefix.")})
        expert.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("expert.")})
        rebuilt.append((prefix, expert))
        tokens, mask = tokenize(
            policy.tokenizer,
            tok_file,
            INSTRUCTION,
            policy.stats.state.normalize(observation["state"]),
        )
        kv, pmask, state = prefix_of(policy, observation, tokens, mask)
        x = torch.randn(
            1, policy.chunk_size, policy.max_action_dim, generator=torch.Generator().manual_seed(5)
        )
        t, s = torch.full((1,), 0.4), torch.full((1,), 0.9)
        with torch.no_grad():
            want = policy.expert(*expert_inputs(policy, x, t, s, state, kv, pmask))
            for prefix, expert in rebuilt:
                images = torch.from_numpy(observation["images"])[None]
                kv2, pmask2 = prefix(
                    images, torch.from_numpy(tokens)[None], torch.from_numpy(mask)[None]
                )
                assert torch.equal(kv2, kv) and torch.equal(pmask2, pmask)
                assert torch.equal(
                    expert(*expert_inputs(policy, x, t, s, state, kv2, pmask2)), want
                )
    finally:
        with torch.no_grad():
            policy.expert.phi.target_time_mlp[2].bias.zero_()


def check_onnx(
    policy: ImportedPolicy, ref: dict, observation: dict, out: Path, policy_kind: str
) -> float:
    """Export (opset 17, dynamo=False), then ONNX Runtime's Policy.act on LeRobot's noises vs
    LeRobot's actions; returns the max abs difference (< TOLERANCE)."""
    from reflex_serve.export.imported_export import export_imported
    from reflex_serve.runtime.policy import Policy
    from reflex_serve.runtime.types import Observation

    export_imported(policy, out, policy_kind=policy_kind)
    runtime = Policy(out)
    images = {c: observation["images"][i] for i, c in enumerate(observation["cameras"])}
    obs = Observation(
        images=images, state=observation["state"], instruction=observation["instruction"]
    )
    worst = 0.0
    for k, noise in enumerate(ref["noise"]):
        actions = runtime.act(obs, noise=noise, num_steps=policy.num_steps).actions
        worst = max(worst, float(np.abs(actions - ref["actions"][k]).max()))
    assert worst < TOLERANCE, worst
    _check_load_modules(policy, out)
    return worst


def _check_load_modules(policy: ImportedPolicy, export_dir: Path) -> None:
    """registry.load_modules (the distiller's entry) rebuilds the port's exact modules."""
    from reflex_serve.lerobot_import.registry import load_modules

    prefix, expert = load_modules(export_dir)
    assert type(prefix) is type(policy.prefix) and type(expert) is type(policy.expert)
    for mine, theirs in ((policy.prefix, prefix), (policy.expert, expert)):
        want = mine.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in theirs.state_dict().items())


#: the seed an HTTP client sends; the server draws default_rng(seed) noise of (10, 8)
HTTP_SEED = 1234


def noises_with_http_seed() -> np.ndarray:
    """make_noises() plus, last, the noise the server draws for HTTP_SEED: (3, 10, 8)."""
    from lerobot_helpers import make_noises

    served = np.random.default_rng(HTTP_SEED).standard_normal((10, 8), dtype=np.float32)
    return np.concatenate([make_noises(), served[None]])


def check_http(policy: ImportedPolicy, ref: dict, observation: dict, out: Path, policy_kind: str) -> float:
    """Export, start `reflex serve` on it, POST /act (JSON) with HTTP_SEED; the served
    actions vs LeRobot's for that noise (ref's last); returns the max abs (< TOLERANCE)."""
    import httpx

    from reflex_serve.export.imported_export import export_imported
    from reflex_serve.server.runner import spawn_server

    export_imported(policy, out, policy_kind=policy_kind)
    proc, url = spawn_server(out)
    try:
        body = {
            "images": {c: observation["images"][i].tolist() for i, c in enumerate(observation["cameras"])},
            "state": observation["state"].tolist(),
            "instruction": observation["instruction"],
            "seed": HTTP_SEED,
        }
        response = httpx.post(f"{url}/act", json=body, timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["num_steps"] == policy.num_steps
    actions = np.asarray(response.json()["actions"], dtype=np.float32)
    worst = float(np.abs(actions - ref["actions"][-1]).max())
    assert worst < TOLERANCE, worst
    return worst


def pi_fixtures(kind: str, loader):
    """The module-scoped fixtures a port test needs, for ``kind`` ("pi0" / "pi05") and its
    loader (``load_pi0`` / ``load_pi05``): hf_home, checkpoint (built offline, seed 0),
    observation, ref (LeRobot's actions for noises_with_http_seed()) and policy (the port).
    Unpack them into module globals so pytest finds them."""
    import pytest
    from lerobot_helpers import make_observation

    from reflex_serve.lerobot_import import venv

    @pytest.fixture(scope="module")
    def hf_home(tmp_path_factory):
        return tmp_path_factory.mktemp("hf-home")

    @pytest.fixture(scope="module")
    def checkpoint(tmp_path_factory, hf_home):
        out = tmp_path_factory.mktemp(kind) / "ckpt"
        return venv.build_tiny(kind, out, seed=0, hf_home=hf_home)["checkpoint"]

    @pytest.fixture(scope="module")
    def observation():
        return make_observation()

    @pytest.fixture(scope="module")
    def ref(checkpoint, observation, hf_home):
        return venv.reference_actions(
            checkpoint, noise=noises_with_http_seed(), repeats=1, hf_home=hf_home, **observation
        )

    @pytest.fixture(scope="module")
    def policy(checkpoint, hf_home):
        return loader(checkpoint, tokenizer_file(hf_home))

    return hf_home, checkpoint, observation, ref, policy
