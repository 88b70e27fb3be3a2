import json
import shutil

import numpy as np
import pytest

from reflex_serve.export.manifest import ExportError, read_manifest
from reflex_serve.export.onnx_export import export_policy
from reflex_serve.export.parity import check_parity, random_observations, torch_act
from reflex_serve.export.weights import load_model
from reflex_serve.policy.normalize import DatasetStats
from reflex_serve.runtime.cache import PrefixCache
from reflex_serve.runtime.policy import Policy
from reflex_serve.runtime.types import InvalidObservation, Observation


def test_onnx_actions_match_pytorch_within_1e_4(tiny_export):
    model = load_model(tiny_export / "model.safetensors")
    for steps in (10, 1, 3):
        report = check_parity(model, tiny_export, observations=3, num_steps=steps)
        assert report.max_abs_diff < 1e-4


def test_manifest_records_dims_and_a_verifiable_digest(tiny_export):
    m = read_manifest(tiny_export, verify=True)
    assert (m.action_dim, m.state_dim, m.chunk_size, m.n_action_steps, m.num_steps) == (4, 39, 8, 4, 10)
    assert m.cameras[0].name == "corner2" and (m.cameras[0].height, m.cameras[0].width) == (64, 64)
    assert m.digest.startswith("sha256:") and len(m.version) == 12
    assert m.target_time == "instantaneous" and m.parent_version is None


def test_tampered_export_fails_digest_verification(tiny_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    stats = json.loads((copy / "stats.json").read_text())
    stats["action"]["mean"][0] += 1.0
    (copy / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ExportError, match="does not match its manifest digest"):
        read_manifest(copy, verify=True)


def test_reexport_is_refused_over_a_written_directory_and_same_weights_give_same_version(tiny_export, tmp_path):
    model = load_model(tiny_export / "model.safetensors")
    stats = DatasetStats.load(tiny_export / "stats.json")
    with pytest.raises(ExportError, match="immutable"):
        export_policy(model, stats, tiny_export)
    other = export_policy(model, stats, tmp_path / "again", prefix_onnx_from=tiny_export / "prefix.onnx",
                          provenance={"kind": "untrained", "seed": 0})
    assert (tmp_path / "again" / "prefix.onnx").read_bytes() == (tiny_export / "prefix.onnx").read_bytes()
    assert other.version == read_manifest(tiny_export).version


def test_not_an_export_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="manifest.json not found"):
        Policy(tmp_path)


def test_seeded_noise_is_deterministic_and_steps_are_overridable(tiny_export):
    policy = Policy(tiny_export)
    obs = random_observations(policy, 1, seed=3)[0]
    a = policy.act(obs, seed=7)
    b = policy.act(obs, seed=7)
    c = policy.act(obs, seed=8)
    assert a.actions.shape == (8, 4) and a.actions.dtype == np.float32
    assert np.array_equal(a.actions, b.actions) and not np.array_equal(a.actions, c.actions)
    one = policy.act(obs, seed=7, num_steps=1)
    assert one.num_steps == 1 and a.num_steps == 10
    assert not np.allclose(one.actions, a.actions)
    ref = torch_act(load_model(tiny_export / "model.safetensors"), policy, obs, policy.make_noise(7), 1)
    assert np.abs(ref - one.actions).max() < 1e-4


def test_prefix_cache_hits_on_identical_observation_and_serves_identical_actions(tiny_export):
    cache = PrefixCache(max_bytes=1 << 20)
    policy = Policy(tiny_export, cache=cache)
    obs = random_observations(policy, 1)[0]
    first = policy.act(obs, seed=1)
    second = policy.act(obs, seed=1)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert np.array_equal(first.actions, second.actions)
    changed = Observation(images=obs.images, state=obs.state, instruction=obs.instruction + " now")
    assert policy.act(changed, seed=1).cache_hit is False
    st = cache.stats()
    assert (st.hits, st.misses, st.entries) == (1, 2, 2)
    m = policy.manifest
    assert st.bytes == 2 * (m.num_kv_layers * 2 * m.prefix_len * m.kv_dim + m.prefix_len) * 4


def test_prefix_cache_evicts_least_recently_used_by_bytes():
    cache = PrefixCache(max_bytes=3000)
    value = (np.zeros(250, np.float32), np.zeros(0, np.float32))  # 1000 bytes each
    for k in "abc":
        cache.put(("g", k), value)
    assert cache.get(("g", "a")) is not None  # a is now most recent
    cache.put(("g", "d"), value)
    assert cache.get(("g", "b")) is None and cache.get(("g", "a")) is not None
    st = cache.stats()
    assert (st.evictions, st.entries, st.bytes) == (1, 3, 3000)
    cache.put(("g", "huge"), (np.zeros(10_000, np.float32), np.zeros(0, np.float32)))
    assert cache.get(("g", "huge")) is None and cache.stats().bytes == 3000


@pytest.mark.parametrize(
    "mutate, field, message",
    [
        (lambda o: {**o, "images": {}}, "images.corner2", "missing"),
        (lambda o: {**o, "images": {**o["images"], "wrist": o["images"]["corner2"]}}, "images.wrist", "unknown camera"),
        (lambda o: {**o, "images": {"corner2": np.zeros((32, 32, 3), np.uint8)}}, "images.corner2", "(64, 64, 3)"),
        (lambda o: {**o, "images": {"corner2": np.zeros((64, 64, 3), np.float32)}}, "images.corner2", "uint8"),
        (lambda o: {**o, "state": np.zeros(5, np.float32)}, "state", "expected 39"),
        (lambda o: {**o, "state": np.full(39, np.nan, np.float32)}, "state", "NaN"),
    ],
)
def test_invalid_observations_name_the_field(tiny_export, mutate, field, message):
    policy = Policy(tiny_export)
    base = random_observations(policy, 1)[0]
    fields = mutate({"images": base.images, "state": base.state, "instruction": base.instruction})
    with pytest.raises(InvalidObservation) as err:
        policy.act(Observation(**fields))
    assert err.value.field == field and message in err.value.reason


def test_num_steps_out_of_range_is_rejected(tiny_export):
    policy = Policy(tiny_export)
    obs = random_observations(policy, 1)[0]
    with pytest.raises(InvalidObservation, match="num_steps"):
        policy.act(obs, num_steps=0)
    with pytest.raises(InvalidObservation, match="num_steps"):
        policy.act(obs, num_steps=101)
