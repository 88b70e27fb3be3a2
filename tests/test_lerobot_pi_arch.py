"""Sizes of a pi0 / pi0.5 port inferred from weight shapes (no LeRobot venv needed).

Native modules of a known PiArch give a state dict; infer_arch must find that PiArch
again from the shapes plus config.json fields, and refuse shapes that disagree.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reflex_serve.export.manifest import CameraSpec
from reflex_serve.lerobot_import.checkpoint import Features
from reflex_serve.lerobot_import.imported import CheckpointError
from reflex_serve.lerobot_import.paligemma import PaliGemmaPrefix, PiArch
from reflex_serve.lerobot_import.pi0 import Pi0Expert
from reflex_serve.lerobot_import.pi05 import Pi05Expert
from reflex_serve.lerobot_import.pi_checkpoint import infer_arch

ARCH = PiArch(
    num_cameras=2, image_hw=(48, 64), resolution=32, vision_hidden=24, vision_intermediate=40,
    vision_layers=3, vision_heads=3, vision_patch=8, vocab_size=50, vlm_width=40, vlm_mlp=56,
    vlm_layers=2, expert_width=24, expert_mlp=36, expert_layers=2, heads=4, kv_heads=1,
    head_dim=8, adarms=False, max_state_dim=7, max_action_dim=5, chunk_size=6,
    max_text_tokens=12, min_period=4e-3, max_period=4.0,
)  # fmt: skip
CONFIG = {"max_state_dim": 7, "max_action_dim": 5, "chunk_size": 6, "tokenizer_max_length": 12,
          "min_period": 4e-3, "max_period": 4.0, "image_resolution": [32, 32]}  # fmt: skip
FEATURES = Features([CameraSpec("a", 48, 64), CameraSpec("b", 48, 64)], state_dim=6, action_dim=4)


def state_dicts(arch: PiArch, expert_cls):
    return PaliGemmaPrefix(arch).state_dict(), expert_cls(arch).state_dict()


@pytest.mark.parametrize("expert_cls, adarms", [(Pi0Expert, False), (Pi05Expert, True)])
def test_sizes_round_trip_through_the_shapes(expert_cls, adarms):
    arch = dataclasses.replace(ARCH, adarms=adarms)
    prefix, expert = state_dicts(arch, expert_cls)
    assert infer_arch(CONFIG, FEATURES, prefix, expert, {"vision_heads": 3}) == arch
    assert arch.prefix_len == 2 * 16 + 12 and arch.kv_dim == 8


def test_without_overrides_the_so400m_head_count_is_assumed():
    prefix, expert = state_dicts(
        dataclasses.replace(ARCH, vision_hidden=32, vision_heads=16), Pi0Expert
    )
    assert infer_arch(CONFIG, FEATURES, prefix, expert).vision_heads == 16


def test_disagreeing_shapes_are_refused_by_name():
    prefix, expert = state_dicts(ARCH, Pi0Expert)
    with pytest.raises(CheckpointError, match="image_resolution"):
        infer_arch(
            {**CONFIG, "image_resolution": [64, 64]}, FEATURES, prefix, expert, {"vision_heads": 3}
        )
    with pytest.raises(CheckpointError, match="max_action_dim"):
        infer_arch({**CONFIG, "max_action_dim": 9}, FEATURES, prefix, expert, {"vision_heads": 3})
    del expert["core.layers.0.mlp.gate_proj.weight"]
    with pytest.raises(CheckpointError, match="gate_proj"):
        infer_arch(CONFIG, FEATURES, prefix, expert, {"vision_heads": 3})


@pytest.mark.parametrize("expert_cls", [Pi0Expert, Pi05Expert])
def test_phi_is_the_same_whatever_the_global_seed(expert_cls):
    """phi is not in a checkpoint: the importer draws its first layer from a fixed seed."""
    phis = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        phis.append(expert_cls(ARCH).phi.target_time_mlp.state_dict())
    assert all(torch.equal(phis[0][k], phis[1][k]) for k in phis[0])
    first = phis[0]["0.weight"]
    assert 0 < first.abs().max() <= ARCH.expert_width**-0.5
    assert not phis[0]["2.weight"].any() and not phis[0]["2.bias"].any()
