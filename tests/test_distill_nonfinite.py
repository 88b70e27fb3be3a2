"""A distillation never writes NaN weights: rows that overflow float32 when normalised
are left out (and counted), a NaN loss stops the run with a clear error, and pi0.5's
state-out embedding reads the state clamped to the range its teacher's prompt bins cover."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from distill_helpers import make_teacher
from torch import nn

from reflex_serve.distill.data import DataError, _finish
from reflex_serve.export.manifest import read_manifest
from reflex_serve.lerobot_import.pi05_state_out import StateEmbedding
from reflex_serve.policy.normalize import DatasetStats
from reflex_serve.policy.training import LoopConfig, TrainingDiverged, run_loop


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = make_teacher(tmp_path_factory.mktemp("nonfinite") / "teacher")
    return read_manifest(path), DatasetStats.load(path / "stats.json")


def part(manifest, n: int, source: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    cam = manifest.cameras[0]
    return {
        "source": source,
        "images": rng.integers(0, 256, (n, 1, cam.height, cam.width, 3), dtype=np.uint8),
        "state": rng.standard_normal((n, manifest.state_dim)).astype(np.float32),
        "chunks": rng.standard_normal((n, manifest.chunk_size, manifest.action_dim)).astype(np.float32),
        "instructions": np.array(["reach the goal"] * n),
    }


def test_rows_too_extreme_to_normalise_are_left_out_and_counted(teacher):
    manifest, stats = teacher
    demo, served = part(manifest, 5, "demo", 0), part(manifest, 4, "served", 1)
    low = int(np.argmin(stats.state.std))
    assert stats.state.std[low] < 0.99
    served["state"][2, low] = 3.4e38  # finite, but not once divided by a std under 1
    demo["chunks"][1, 0, 0] = -3.4e38 if stats.action.std[0] < 1 else demo["chunks"][1, 0, 0]
    ids = [str(i) for i in range(9)]
    data = _finish([demo, served], manifest, stats, {"kind": "test"}, ids, None)
    skipped = 1 + int(stats.action.std[0] < 1)
    assert data.size == 9 - skipped and data.description["skipped_non_finite"] == skipped
    assert data.rows == {"demo": 5 - (skipped - 1), "served": 3}
    assert torch.isfinite(data.state).all() and torch.isfinite(data.chunks).all()
    assert data.images.shape[0] == data.tokens.shape[0] == data.size

    served["state"][:, low] = 3.4e38
    with pytest.raises(DataError, match="all 4 rows have states or actions too far outside"):
        _finish([served], manifest, stats, {"kind": "test"}, ids[:4], None)


def test_a_nan_loss_stops_the_run_before_updating(tmp_path):
    model = nn.Linear(2, 1)
    before = model.weight.detach().clone()

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        y = model(torch.ones(1, 2)).sum()
        loss = y * float("nan") if step == 3 else y**2
        return {"loss": loss, "fm": loss.detach()}

    loop = LoopConfig(steps=10, lr=1e-2, warmup=0, progress=False, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at step 3 \(loss=nan, fm=nan\)"):
        run_loop(model, list(model.parameters()), step_fn, loop, tmp_path)
    assert torch.isfinite(model.weight).all() and not torch.equal(model.weight, before)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2


def test_state_out_embedding_reads_the_state_clamped_to_the_prompt_bins():
    embed = StateEmbedding(4, 8, 8)
    nn.init.normal_(embed.mlp[2].weight)  # a trained output layer
    inside = torch.tensor([[0.5, -0.25, 1.0, -1.0]])
    beyond = torch.tensor([[0.5, -0.25, 1e30, -3e38]])
    torch.testing.assert_close(embed(beyond), embed(inside))
    assert not torch.equal(embed(inside), embed(torch.zeros(1, 4)))
