"""The msgpack-numpy wire codec and the observation parsers, without a server."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from reflex_serve.export.manifest import CameraSpec, Manifest
from reflex_serve.server import codec
from reflex_serve.server.errors import ApiError
from reflex_serve.server.images import openpi_image
from reflex_serve.server.observations import (
    flatten_keys,
    parse_act_body,
    parse_openpi_message,
    parse_state,
)
from reflex_serve.server.settings import ServerSettings, WebsocketKeys

CAM = CameraSpec("front", 4, 5)


def manifest(cameras=(("front", 4, 5), ("wrist", 4, 5))) -> Manifest:
    return Manifest(
        policy_kind="test",
        action_dim=2,
        state_dim=3,
        chunk_size=4,
        n_action_steps=2,
        cameras=[CameraSpec(*c) for c in cameras],
        max_text_tokens=8,
        tokenizer={},
        num_steps=10,
        prefix_len=1,
        num_kv_layers=1,
        kv_dim=1,
    )


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(6, dtype=np.int64).reshape(2, 3).T,  # non-contiguous
        np.zeros((0, 3), np.uint8),
        np.array(2.5),
        np.array([True, False]),
        np.float32(1.5),
        np.int16(-3),
    ],
)
def test_arrays_and_numpy_scalars_round_trip_with_dtype_and_shape(value):
    out = codec.unpackb(codec.packb({"x": value, "nested": [value]}))
    for got in (out["x"], out["nested"][0]):
        assert got.dtype == value.dtype and np.shape(got) == np.shape(value)
        np.testing.assert_array_equal(got, value)


def test_wire_layout_is_openpis():
    raw = msgpack.unpackb(codec.packb(np.zeros((2, 3), np.float32)), raw=False)
    assert raw == {b"__ndarray__": True, b"data": bytes(24), b"dtype": "<f4", b"shape": [2, 3]}


def test_unpacked_arrays_are_read_only_views():
    out = codec.unpackb(codec.packb(np.ones(4, np.float32)))
    assert not out.flags.writeable


@pytest.mark.parametrize(
    "obj",
    [
        {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "|O", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"\0" * 16, b"dtype": "<c16", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "<U1", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "nonsense", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "<f4", b"shape": [-1]},
        {b"__ndarray__": True, b"data": "text", b"dtype": "<f4", b"shape": [1]},
        {b"__npgeneric__": True, b"data": "x", b"dtype": "<f4"},
    ],
    ids=[
        "object",
        "complex",
        "unicode",
        "unknown",
        "short_data",
        "negative_dim",
        "str_data",
        "bad_scalar",
    ],
)
def test_unsafe_or_inconsistent_arrays_are_refused(obj):
    with pytest.raises(codec.CodecError):
        codec.unpackb(msgpack.packb({"x": obj}, use_bin_type=True))


@pytest.mark.parametrize("data", [b"", b"\xc1", codec.packb(1) + b"\x01", b"\x92\x01"])
def test_malformed_msgpack_is_a_codec_error(data):
    with pytest.raises(codec.CodecError):
        codec.unpackb(data)


def test_media_type_detection():
    assert codec.is_msgpack("application/msgpack")
    assert codec.is_msgpack("Application/X-Msgpack; charset=binary")
    assert not codec.is_msgpack("application/json")
    assert not codec.is_msgpack(None)


def test_openpi_images_convert_chw_and_unit_floats_and_reject_the_rest():
    hwc = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(openpi_image(hwc, CAM, "img"), hwc)
    np.testing.assert_array_equal(openpi_image(hwc.transpose(2, 0, 1), CAM, "img"), hwc)
    as_float = hwc.transpose(2, 0, 1).astype(np.float64) / 255.0
    np.testing.assert_array_equal(openpi_image(as_float, CAM, "img"), hwc)
    for bad in (hwc.astype(np.float32), hwc.astype(np.int32), hwc[:3], np.full((4, 5, 3), np.nan)):
        with pytest.raises(ApiError) as info:
            openpi_image(bad, CAM, "img")
        assert (info.value.status, info.value.field) == (422, "img")


def test_state_is_float32_and_must_be_finite():
    assert parse_state([1, 2.5, 3], 3).dtype == np.float32
    assert parse_state(np.arange(3, dtype=np.float64), 3).dtype == np.float32
    with pytest.raises(ApiError, match="NaN"):
        parse_state([1.0, float("nan"), 0.0], 3)
    with pytest.raises(ApiError, match="expected 3"):
        parse_state([1.0], 3)


def test_act_body_checks_every_camera_of_the_manifest():
    img = np.zeros((4, 5, 3), np.uint8)
    obs, params = parse_act_body(
        {"images": {"front": img, "wrist": img}, "state": [0, 0, 0], "seed": np.int64(3)},
        manifest(),
    )
    assert set(obs.images) == {"front", "wrist"} and obs.instruction == ""
    assert params.seed == 3 and params.num_steps is None
    with pytest.raises(ApiError) as info:
        parse_act_body({"images": {"front": img}, "state": [0, 0, 0]}, manifest())
    assert (info.value.code.value, info.value.field) == ("missing_field", "images.wrist")


def test_openpi_keys_default_map_image_and_wrist_image_to_the_cameras():
    img = np.zeros((4, 5, 3), np.uint8)
    msg = {
        "observation": {"image": img, "wrist_image": img, "state": np.zeros(3)},
        "prompt": "hi",
        "extra/ignored": 1,
    }
    assert set(flatten_keys(msg)) == {
        "observation/image",
        "observation/wrist_image",
        "observation/state",
        "prompt",
        "extra/ignored",
    }
    obs, _ = parse_openpi_message(msg, manifest(), WebsocketKeys())
    assert set(obs.images) == {"front", "wrist"} and obs.instruction == "hi"


def test_openpi_key_mapping_is_configurable():
    keys = WebsocketKeys(
        images={"cam_high": "front", "cam_wrist": "wrist"}, state=("qpos",), instruction=("task",)
    )
    img = np.zeros((3, 4, 5), np.uint8)
    obs, _ = parse_openpi_message(
        {"cam_high": img, "cam_wrist": img, "qpos": [1.0, 2.0, 3.0], "task": "t"},
        manifest(),
        keys,
    )
    assert obs.images["front"].shape == (4, 5, 3) and obs.instruction == "t"
    with pytest.raises(ApiError) as info:
        parse_openpi_message({"cam_high": img, "cam_wrist": img}, manifest(), keys)
    assert info.value.field == "qpos"


def test_settings_reject_nonsense():
    with pytest.raises(ValueError):
        ServerSettings(api_key="  ")
    with pytest.raises(ValueError):
        ServerSettings(num_steps=0)
    with pytest.raises(ValueError):
        ServerSettings(max_body_bytes=0)
