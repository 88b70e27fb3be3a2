"""Distillation data: demo directories and stores, labels, the train split, dimension checks."""

from __future__ import annotations

import numpy as np
import pytest
from distill_helpers import CHUNK, make_demo_dir, make_store, make_teacher, one_thread  # noqa: F401

from reflex_serve.distill.data import DataError, DataSpec, load_data
from reflex_serve.export.manifest import read_manifest
from reflex_serve.policy.normalize import DatasetStats
from reflex_serve.sim.dataset import load_demos
from reflex_serve.storage.reader import split_of


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = make_teacher(tmp_path_factory.mktemp("data") / "teacher")
    return read_manifest(path), DatasetStats.load(path / "stats.json")


def test_demo_dir_labels_are_the_next_h_actions_normalized_by_the_teacher(teacher, tmp_path):
    manifest, stats = teacher
    demos_dir = make_demo_dir(tmp_path / "demos")
    data = load_data(DataSpec(data=str(demos_dir)), manifest, stats)
    demos = load_demos(demos_dir)
    assert data.size == len(demos) == 48 and data.rows == {"demo": 48}
    assert data.images.shape == (48, 1, 32, 32, 3) and data.tokens.shape == (48, 16)
    assert data.chunks.shape == (48, CHUNK, 4) and data.state.shape == (48, 6)
    np.testing.assert_allclose(data.chunks[0].numpy(), stats.action.normalize(demos.action[:CHUNK]))
    # past the episode's end the last action repeats (frame 11 is the last of episode 0)
    np.testing.assert_allclose(
        data.chunks[11].numpy(), stats.action.normalize(demos.action[[11] * CHUNK])
    )
    np.testing.assert_allclose(data.state.numpy(), stats.state.normalize(demos.state))
    assert data.description["kind"] == "demo-dir" and len(data.fingerprint) == 64
    with pytest.raises(DataError, match="no served rows"):
        load_data(DataSpec(data=str(demos_dir), source="served"), manifest, stats)


def test_store_reads_the_train_split_with_served_chunks_as_labels(teacher, tmp_path):
    manifest, stats = teacher
    url = make_store(f"sqlite:///{tmp_path / 'store.sqlite'}", served_version="v1")
    data = load_data(DataSpec(data=url), manifest, stats)
    demo_train = sum(12 for i in range(8) if split_of(f"demo-reach-v3-seed{i}-test", 10) == "train")
    served_train = sum(4 for e in range(6) if split_of(f"served-ep-{e}", 10) == "train")
    assert 0 < demo_train < 96 and 0 < served_train < 24  # both splits are populated
    assert data.rows == {"demo": demo_train, "served": served_train}
    assert data.description["split"] == "train" and data.description["kind"] == "store"
    served = load_data(DataSpec(data=url, source="served"), manifest, stats)
    assert served.rows == {"served": served_train}
    # the served chunk is the label, in the teacher's normalized units
    assert served.chunks.abs().max() > 0 and served.chunks.shape[1:] == (CHUNK, 4)
    # a version filter keeps demo rows and drops served rows of other versions
    other = load_data(DataSpec(data=url, model_version="v2"), manifest, stats)
    assert other.rows == {"demo": demo_train}
    with pytest.raises(DataError, match="no served rows"):
        load_data(DataSpec(data=url, source="served", model_version="v2"), manifest, stats)
    # a SQLite file path and a data directory name the same store
    assert (
        load_data(DataSpec(data=str(tmp_path / "store.sqlite")), manifest, stats).rows == data.rows
    )
    assert load_data(DataSpec(data=str(tmp_path)), manifest, stats).fingerprint == data.fingerprint


def test_dimension_mismatches_name_the_field_and_both_values(teacher, tmp_path):
    manifest, stats = teacher
    with pytest.raises(DataError, match="state_dim 5, the teacher's manifest has state_dim 6"):
        load_data(DataSpec(data=str(make_demo_dir(tmp_path / "d5", state_dim=5))), manifest, stats)
    with pytest.raises(DataError, match=r"cameras \[\('cam', 64, 64\)\].*\[\('cam', 32, 32\)\]"):
        load_data(DataSpec(data=str(make_demo_dir(tmp_path / "d64", size=64))), manifest, stats)
    url = make_store(f"sqlite:///{tmp_path / 's8.sqlite'}", chunk=8)
    with pytest.raises(DataError, match="chunk_size 8, the teacher's manifest has chunk_size 4"):
        load_data(DataSpec(data=url, source="served"), manifest, stats)


def test_bad_data_arguments(teacher, tmp_path):
    manifest, stats = teacher
    with pytest.raises(DataError, match="--source"):
        DataSpec(source="everything")
    with pytest.raises(DataError, match="no such file"):
        load_data(DataSpec(data=str(tmp_path / "missing")), manifest, stats)
    with pytest.raises(DataError, match="neither a demonstration directory"):
        load_data(DataSpec(data=str(tmp_path)), manifest, stats)
    with pytest.raises(DataError, match="no demo or served rows"):
        load_data(DataSpec(data_dir=tmp_path / "fresh"), manifest, stats)
