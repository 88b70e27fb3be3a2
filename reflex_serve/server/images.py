"""Camera images off the wire: decode and check them against the manifest's cameras.

Every function returns a C-contiguous uint8 array of shape (height, width, 3) (RGB) or
raises :class:`ApiError` (422) naming ``field``.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image

from reflex_serve.export.manifest import CameraSpec
from reflex_serve.server.errors import ApiError

_FORMATS = ("PNG", "JPEG")
_FLOAT_TOLERANCE = 1e-3


def _check_shape(arr: np.ndarray, cam: CameraSpec, field: str) -> np.ndarray:
    expected = (cam.height, cam.width, 3)
    if arr.shape != expected:
        raise ApiError.invalid(field, f"expected shape {expected} (H, W, 3), got {arr.shape}")
    return arr


def decode_image_file(raw: bytes, cam: CameraSpec, field: str) -> np.ndarray:
    """Decode PNG or JPEG bytes; the size is checked before any pixel is decoded.

    Non-RGB modes (grey, palette, RGBA) are converted to RGB.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=_FORMATS)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError.invalid(field, "could not be decoded as a PNG or JPEG image") from None
    if img.size != (cam.width, cam.height):
        w, h = img.size
        raise ApiError.invalid(
            field, f"expected shape {(cam.height, cam.width, 3)} (H, W, 3), got ({h}, {w}, 3)"
        )
    try:
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img)
    except (OSError, ValueError):
        raise ApiError.invalid(field, "could not be decoded as a PNG or JPEG image") from None
    return _check_shape(arr, cam, field)


def decode_base64_image(text: str, cam: CameraSpec, field: str) -> np.ndarray:
    """Decode a base64 PNG/JPEG string (a ``data:image/...;base64,`` prefix is allowed)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError.invalid(field, "is not valid base64") from None
    if not raw:
        raise ApiError.invalid(field, "is empty")
    return decode_image_file(raw, cam, field)


def uint8_array(arr: np.ndarray, cam: CameraSpec, field: str) -> np.ndarray:
    """Accept a uint8 (H, W, 3) array as is (no copy when already C-contiguous)."""
    if arr.dtype != np.uint8:
        raise ApiError.invalid(field, f"wrong dtype: expected uint8, got {arr.dtype}")
    return np.ascontiguousarray(_check_shape(arr, cam, field))


def nested_list_image(value: list, cam: CameraSpec, field: str) -> np.ndarray:
    """Convert a nested JSON list of integers 0..255 of shape (H, W, 3)."""
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        raise ApiError.invalid(field, "must be a nested list of shape (H, W, 3)") from None
    if arr.dtype == object or arr.ndim != 3:
        raise ApiError.invalid(field, f"expected shape {(cam.height, cam.width, 3)} (H, W, 3)")
    if arr.dtype.kind not in "iu":
        raise ApiError.invalid(field, f"wrong dtype: expected integers 0..255, got {arr.dtype}")
    _check_shape(arr, cam, field)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ApiError.invalid(field, "wrong dtype: values must lie in 0..255 (uint8)")
    return arr.astype(np.uint8)


def http_image(value: object, cam: CameraSpec, field: str) -> np.ndarray:
    """An image from a JSON or msgpack ``/act`` body.

    Accepted: base64 PNG/JPEG ``str``; PNG/JPEG ``bytes`` (msgpack ``bin``); a nested list
    of ints (JSON); a uint8 ndarray (msgpack-numpy).
    """
    if isinstance(value, str):
        return decode_base64_image(value, cam, field)
    if isinstance(value, (bytes, bytearray)):
        return decode_image_file(bytes(value), cam, field)
    if isinstance(value, np.ndarray):
        return uint8_array(value, cam, field)
    if isinstance(value, list):
        return nested_list_image(value, cam, field)
    raise ApiError.invalid(
        field, "must be a base64 PNG/JPEG string, a nested uint8 list or a uint8 array"
    )


def openpi_image(value: object, cam: CameraSpec, field: str) -> np.ndarray:
    """An image as openpi clients send it, converted to uint8 (H, W, 3).

    Accepted: uint8 HWC or CHW; floating HWC or CHW with values in [0, 1] (scaled by 255
    and rounded); encoded PNG/JPEG bytes or base64 strings. Anything else is rejected.
    """
    if not isinstance(value, np.ndarray):
        if isinstance(value, (str, bytes, bytearray)):
            return http_image(value, cam, field)
        raise ApiError.invalid(field, "must be an image array (H, W, 3) or (3, H, W)")
    arr = value
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype.kind == "f":
        _check_shape(arr, cam, field)
        if not np.isfinite(arr).all():
            raise ApiError.invalid(field, "contains NaN or Inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
            raise ApiError.invalid(
                field, f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]"
            )
        return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return uint8_array(arr, cam, field)
