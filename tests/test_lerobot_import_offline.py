"""The LeRobot import path without LeRobot: export, serving, tokenizer, refusals.

A SmolVLA-shaped policy with random weights (the native port's modules, no checkpoint)
is exported and served; checkpoints that the importer must refuse are written as bare
config.json files. Needs no LeRobot venv.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models
from typer.testing import CliRunner

from reflex_serve.assets import default_teacher
from reflex_serve.cli import app
from reflex_serve.export.imported_export import check_imported_parity, export_imported
from reflex_serve.export.manifest import CameraSpec, ExportError, read_manifest
from reflex_serve.lerobot_import.imported import ImportedPolicy
from reflex_serve.lerobot_import.registry import load_modules
from reflex_serve.lerobot_import.smolvla import build_modules
from reflex_serve.lerobot_import.smolvla_modules import SmolVLAArch
from reflex_serve.policy.hf_tokenizer import HFTokenizer
from reflex_serve.policy.normalize import DatasetStats, Stats
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import Observation

CHARS = "\n abcdefghijklmnopqrstuvwxyz0123456789:;,"
ARCH = SmolVLAArch(
    num_cameras=2, image_hw=(24, 32), resize_hw=(32, 32), vision_hidden=16, vision_intermediate=32,
    vision_layers=1, vision_heads=2, vision_patch=8, vision_image_size=32, vision_eps=1e-6,
    vision_act="gelu_pytorch_tanh", scale_factor=2, vocab_size=2 + len(CHARS), text_hidden=32,
    text_intermediate=64, text_heads=4, text_kv_heads=2, head_dim=8, text_eps=1e-6, text_act="silu",
    num_vlm_layers=2, expert_hidden=24, expert_intermediate=48, attention_mode="cross_attn",
    self_attn_every_n_layers=2, max_state_dim=8, max_action_dim=8, chunk_size=5, max_text_tokens=12,
    min_period=4e-3, max_period=4.0,
)
SPEC = {"kind": "hf-tokenizers", "file": "tokenizer.json", "template": "{task}", "task_suffix": "\n",
        "padding": "max_length", "max_length": 12, "pad_id": 1}


def write_tokenizer(path: Path) -> Path:
    """A character-level tokenizer.json (ids 0 <unk>, 1 <pad>, then CHARS)."""
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<pad>", *CHARS])}
    Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")).save(str(path))
    return path


def affine(dim: int, seed: int) -> Stats:
    rng = np.random.default_rng(seed)
    mean, std = rng.standard_normal(dim).astype(np.float32), (0.5 + rng.random(dim)).astype(np.float32)
    return Stats(mean=mean, std=std, min=mean - 3 * std, max=mean + 3 * std)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> ImportedPolicy:
    torch.manual_seed(0)
    prefix, expert = build_modules(ARCH)
    tok = write_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return ImportedPolicy(
        kind="smolvla", prefix=prefix, expert=expert, state_input="prefix",
        cameras=[CameraSpec("top", 24, 32), CameraSpec("wrist", 24, 32)], state_dim=5, action_dim=6,
        max_state_dim=8, max_action_dim=8, chunk_size=5, n_action_steps=5, num_steps=4,
        max_text_tokens=12, prefix_len=ARCH.prefix_len, num_kv_layers=2, kv_dim=ARCH.kv_dim,
        tokenizer=SPEC, stats=DatasetStats(state=affine(5, 1), action=affine(6, 2)), tokenizer_file=tok,
        provenance={"source": "synthetic", "architecture": ARCH.to_dict()},
    )


@pytest.fixture(scope="module")
def export(imported, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "synthetic"
    export_imported(imported, out, policy_kind="lerobot-smolvla")
    return out


def observation(seed: int, instruction: str = "pick the cube") -> Observation:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for c in ("top", "wrist")}
    return Observation(images=images, state=rng.standard_normal(5).astype(np.float32), instruction=instruction)


def test_export_serves_padded_widths_with_onnx_parity(imported, export):
    report = check_imported_parity(imported, export, observations=2)
    assert report.max_abs_diff < 1e-4
    policy = Policy(export, verify=True)
    assert [i.name for i in policy._prefix.get_inputs()] == ["images", "tokens", "token_mask", "state"]
    assert [i.name for i in policy._expert.get_inputs()] == ["x_t", "t", "s", "prefix_kv", "prefix_mask"]
    assert policy.noise_shape == (5, 8)
    noise = policy.make_noise(3)
    first = policy.act(observation(0), noise=noise).actions
    assert first.shape == (5, 6)
    padded = noise.copy()
    padded[:, 6:] += 1.0  # the padded columns enter action_in_proj, as in LeRobot
    assert np.abs(policy.act(observation(0), noise=padded).actions - first).max() > 1e-3
    with pytest.raises(ValueError, match=r"expected shape \(5, 8\)"):
        policy.act(observation(0), noise=noise[:, :6])


def test_serving_an_imported_export_never_imports_lerobot(export):
    code = (
        "import sys, numpy as np\n"
        "from reflex_serve.server.app import create_app\n"
        "from reflex_serve.runtime.policy import Policy\n"
        "from reflex_serve.runtime.types import Observation\n"
        f"p = Policy({str(export)!r}, verify=True)\n"
        "imgs = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in p.manifest.cameras}\n"
        "a = p.act(Observation(imgs, np.zeros(5, np.float32), 'go'), seed=0).actions\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lerobot', 'transformers'))\n"
        "print(a.shape, bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "(5, 6) []"


def test_load_modules_rebuilds_prefix_and_expert(imported, export):
    prefix, expert = load_modules(export)
    for ours, theirs in ((prefix, imported.prefix), (expert, imported.expert)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_phi_is_zero_so_the_target_time_is_ignored_until_trained(imported):
    expert = imported.expert
    kv, mask = imported.prefix(torch.zeros(1, 2, 24, 32, 3, dtype=torch.uint8), torch.zeros(1, 12, dtype=torch.int64),
                               torch.ones(1, 12, dtype=torch.int64), torch.zeros(1, 8))
    x, t = torch.randn(1, 5, 8), torch.tensor([0.7])
    with torch.no_grad():
        assert torch.equal(expert(x, t, torch.tensor([0.7]), kv, mask), expert(x, t, torch.tensor([0.0]), kv, mask))
        trained = type(expert)(ARCH).eval()
        trained.load_state_dict(expert.state_dict())
        torch.nn.init.normal_(trained.target_time_mlp[2].weight)
        diff = trained(x, t, torch.tensor([0.7]), kv, mask) - trained(x, t, torch.tensor([0.0]), kv, mask)
    assert diff.abs().max() > 1e-3


def test_hf_tokenizer_reproduces_lerobot_text_processing(tmp_path):
    write_tokenizer(tmp_path / "tokenizer.json")
    tok = HFTokenizer(SPEC, 12, tmp_path)
    ids, mask = tok.encode("go")
    assert tok.prompt("go") == tok.prompt("go\n") == "go\n"  # the newline is not doubled
    assert ids.tolist() == [2 + CHARS.index(c) for c in "go\n"] + [1] * 9 and mask.sum() == 3
    ids, mask = tok.encode("a very long instruction indeed")
    assert mask.all() and ids.tolist() == [2 + CHARS.index(c) for c in "a very long "]
    spec = {**SPEC, "template": "task: {task}, state: {state};\n", "task_suffix": "", "task_clean": True,
            "max_length": 64}
    pi05 = HFTokenizer(spec, 64, tmp_path)
    assert pi05.uses_state and not tok.uses_state
    # pi0.5's bins: digitize(state, linspace(-1, 1, 257)[:-1]) - 1
    assert pi05.prompt(" pick_up\n", np.array([-1.0, 0.0, 0.999, 2.0])) == "task: pick up, state: 0 128 255 255;\n"
    with pytest.raises(ValueError, match="normalised state"):
        pi05.prompt("go")


def test_earlier_exports_keep_their_digest():
    raw = json.loads((default_teacher() / "manifest.json").read_text())
    assert "max_action_dim" not in raw and "extra_artifacts" not in raw
    m = read_manifest(default_teacher(), verify=True)
    assert (m.model_action_dim, m.model_state_dim, m.state_input) == (m.action_dim, m.state_dim, "expert")


def _import(*args: str):
    return CliRunner().invoke(app, ["import", "lerobot", *args])


# the robot interface of a checkpoint config: 1 camera, state 5, action 6, SmolVLA's defaults
FEATURES = {"input_features": {"observation.images.top": {"type": "VISUAL", "shape": [3, 24, 32]},
                               "observation.state": {"type": "STATE", "shape": [5]}},
            "output_features": {"action": {"type": "ACTION", "shape": [6]}},
            "chunk_size": 50, "n_action_steps": 50, "max_state_dim": 32, "max_action_dim": 32}


def _checkpoint(root: Path, **fields) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = {"type": "smolvla", "num_vlm_layers": 4, "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M", **fields}
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("field, value", [
    ("adapt_to_pi_aloha", True), ("add_image_special_tokens", True), ("prefix_length", 64),
    ("attention_mode", "sliding"), ("rtc_config", {"enabled": True}), ("num_expert_layers", 2),
    ("use_cache", False),
])
def test_unsupported_settings_are_refused_naming_the_field(tmp_path, field, value):
    result = _import(str(_checkpoint(tmp_path / "ckpt", **{field: value})), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert f"config.json field {field}=" in result.output and "not supported" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_or_invalid_checkpoint_files_are_named(tmp_path):
    out = str(tmp_path / "out")
    result = _import(str(tmp_path / "nowhere"), "--output", out)
    assert result.exit_code == 2 and "nowhere is not a directory" in result.output
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    result = _import(str(tmp_path / "broken"), "--output", out)
    assert result.exit_code == 2 and "config.json is not valid JSON" in result.output
    result = _import(str(_checkpoint(tmp_path / "act", type="act")), "--output", out)
    assert result.exit_code == 2 and "policy type 'act' is not supported" in result.output
    ckpt = _checkpoint(tmp_path / "ckpt", input_features={}, output_features={})
    result = _import(str(ckpt), "--output", out)
    assert result.exit_code == 2 and "features malformed" in result.output
    ckpt = _checkpoint(tmp_path / "ckpt2", **FEATURES)
    result = _import(str(ckpt), "--output", out)
    assert result.exit_code == 2 and "pass --vlm DIR" in result.output
    vlm = tmp_path / "vlm"
    vlm.mkdir()
    (vlm / "config.json").write_text("{}")
    write_tokenizer(vlm / "tokenizer.json")
    result = _import(str(ckpt), "--output", out, "--vlm", str(vlm))
    assert result.exit_code == 2 and "model.safetensors not found" in result.output


def test_weights_apart_from_the_graph_are_covered_and_served_alike(imported, export, tmp_path):
    """A graph over ONNX's 2 GB limit keeps its weights in <graph>.onnx.data (forced here
    on the small policy): one file per graph, listed as an artifact, in the digest, and
    served with the same actions; a student copying the prefix copies its weights too."""
    apart = tmp_path / "apart"
    m = export_imported(imported, apart, policy_kind="lerobot-smolvla", external_data=True)
    assert sorted(m.extra_artifacts) == ["expert.onnx.data", "prefix.onnx.data", "tokenizer.json"]
    graph, data = (apart / "prefix.onnx").stat().st_size, (apart / "prefix.onnx.data").stat().st_size
    assert graph < (export / "prefix.onnx").stat().st_size and data > 0.5 * graph
    obs, noise = observation(4), Policy(export).make_noise(1)
    same = Policy(apart, verify=True).act(obs, noise=noise).actions
    np.testing.assert_allclose(same, Policy(export).act(obs, noise=noise).actions, atol=1e-6)
    assert Policy(apart).prefix_digest != Policy(export).prefix_digest  # the weights are in the key

    copy = export_imported(imported, tmp_path / "copy", policy_kind="lerobot-smolvla",
                           prefix_onnx_from=apart / "prefix.onnx")
    assert "prefix.onnx.data" in copy.extra_artifacts
    assert (tmp_path / "copy" / "prefix.onnx.data").read_bytes() == (apart / "prefix.onnx.data").read_bytes()

    data = apart / "expert.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ExportError, match="does not match its manifest digest"):
        Policy(apart, verify=True)


@pytest.mark.parametrize("policy_type", ["smolvla", "pi0", "pi05"])
@pytest.mark.parametrize("fields, named, why", [
    ({"chunk_size": 3, "n_action_steps": 10}, "n_action_steps=10", "1..chunk_size (chunk_size=3)"),
    ({"n_obs_steps": 2}, "n_obs_steps=2", "only one observation step"),
    ({"max_state_dim": 4}, "max_state_dim=4", "smaller than the 5 values of observation.state"),
    ({"max_action_dim": 5}, "max_action_dim=5", "smaller than the 6 values of action"),
])
def test_inconsistent_interfaces_are_refused_by_every_kind(tmp_path, policy_type, fields, named, why):
    """LeRobot refuses n_action_steps > chunk_size; no port runs several observation steps
    or a state / action wider than its padding: one check, before any weights are read."""
    ckpt = _checkpoint(tmp_path / "ckpt", type=policy_type, **{**FEATURES, **fields})
    result = _import(str(ckpt), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert f"config.json field {named} is not supported" in result.output and why in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("policy_type", ["smolvla", "pi0", "pi05"])
@pytest.mark.parametrize("field, value, expected", [
    ("chunk_size", "50", "chunk_size='50' is not an integer"),
    ("max_action_dim", 7.5, "max_action_dim=7.5 is not an integer"),
    ("n_action_steps", None, "n_action_steps is missing"),
])
def test_malformed_config_numbers_name_the_field_and_file(tmp_path, policy_type, field, value, expected):
    ckpt = _checkpoint(tmp_path / "ckpt", type=policy_type, **{**FEATURES, field: value})
    result = _import(str(ckpt), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert f"error: {ckpt / 'config.json'} field {expected}" in result.output


def _pi_checkpoint(root: Path, policy_type: str = "pi0") -> Path:
    return _checkpoint(root, type=policy_type, **FEATURES)


@pytest.mark.parametrize("policy_type", ["pi0", "pi05"])
def test_corrupt_pi_weights_are_named_not_a_traceback(tmp_path, policy_type):
    ckpt, tok = _pi_checkpoint(tmp_path / "ckpt", policy_type), write_tokenizer(tmp_path / "tokenizer.json")
    save_file({"w": torch.ones(64, 64)}, str(tmp_path / "whole.safetensors"))
    truncated = (tmp_path / "whole.safetensors").read_bytes()[:-100]
    for name, data in (("garbage", b"not a safetensors file at all"), ("empty", b""), ("truncated", truncated)):
        (ckpt / "model.safetensors").write_bytes(data)
        result = _import(str(ckpt), "--output", str(tmp_path / name), "--tokenizer", str(tok))
        assert result.exit_code == 2, (name, result.output)
        assert "model.safetensors is not a readable safetensors file" in result.output, result.output
        assert not (tmp_path / name).exists()


def test_a_missing_tokenizer_says_which(tmp_path):
    ckpt = _pi_checkpoint(tmp_path / "ckpt")
    result = _import(str(ckpt), "--output", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "nope.json"))
    assert result.exit_code == 2 and "--tokenizer" in result.output and "nope.json does not exist" in result.output
    assert "pass --tokenizer" not in result.output


def test_an_output_that_is_a_file_is_refused_naming_output(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", **FEATURES)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for target, extra in ((afile, ()), (afile, ("--overwrite",)), (afile / "sub", ())):
        result = _import(str(ckpt), "--output", str(target), *extra)
        assert result.exit_code == 2, result.output
        assert f"--output {target}" in result.output and "an existing file, not a directory" in result.output
    assert afile.read_text() == "keep me"
