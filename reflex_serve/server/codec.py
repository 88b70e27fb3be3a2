"""msgpack with NumPy arrays: the one wire codec shared by the server and the clients.

The array convention is openpi's (``openpi_client.msgpack_numpy``), so an openpi
client and this server understand each other byte for byte::

    np.ndarray  -> {b"__ndarray__": True, b"data": <raw bytes, C order>,
                    b"dtype": <numpy dtype string, e.g. "<f4">, b"shape": [d0, d1, ...]}
    np.generic  -> {b"__npgeneric__": True, b"data": <python scalar>, b"dtype": "<f8"}

Packing is openpi's. Unpacking is stricter, because the server unpacks bytes from the
network: only boolean, integer, unsigned and floating dtypes are accepted (no object,
void, complex or string arrays), the byte count must match ``shape`` and ``dtype``, and
the payload's own nesting and lengths are bounded by msgpack's defaults. Decoded arrays
are zero-copy, read-only views of the message buffer.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

CONTENT_TYPE = "application/msgpack"
#: Content types accepted as msgpack on requests (the first is the one we send).
CONTENT_TYPES = (CONTENT_TYPE, "application/x-msgpack", "application/vnd.msgpack")

_ALLOWED_KINDS = frozenset("biuf")
_MAX_NDIM = 8


class CodecError(ValueError):
    """A msgpack payload is malformed or holds an array this codec refuses to decode."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise TypeError(f"cannot pack arrays of dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": obj.tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot pack object of type {type(obj).__name__}")


def _decode_dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        raise CodecError("array dtype must be a string")
    try:
        dtype = np.dtype(raw)
    except TypeError as exc:
        raise CodecError(f"unknown array dtype {raw!r}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject:
        raise CodecError(f"array dtype {raw!r} is not supported (bool, int, uint, float only)")
    return dtype


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = _decode_dtype(obj.get(b"dtype"))
        data, shape = obj.get(b"data"), obj.get(b"shape")
        if not isinstance(data, bytes):
            raise CodecError("array data must be bytes")
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) > _MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise CodecError("array shape must be a list of non-negative integers")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dtype.itemsize != len(data):
            raise CodecError(
                f"array data has {len(data)} bytes, shape {list(shape)} of {dtype.str} needs "
                f"{count * dtype.itemsize}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _decode_dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"bad numpy scalar: {exc}") from exc
    return obj


def packb(obj: Any) -> bytes:
    """Serialize ``obj`` (dicts, lists, scalars, str, bytes, NumPy arrays) to msgpack bytes.

    Raises:
        TypeError: for objects msgpack cannot represent (object arrays included).
    """
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Deserialize msgpack bytes, turning openpi-style array dicts into NumPy arrays.

    String keys and values come back as ``str``, msgpack ``bin`` as ``bytes``. Arrays are
    read-only views into ``data``.

    Raises:
        CodecError: if the bytes are not one valid msgpack object or an array is malformed.
    """
    try:
        return msgpack.unpackb(data, object_hook=_unpack_hook, raw=False)
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, UnicodeDecodeError) as exc:
        # ExtraData, FormatError, StackError and truncated input all land here.
        raise CodecError(f"invalid msgpack: {exc}") from exc


def is_msgpack(content_type: str | None) -> bool:
    """Whether a Content-Type / Accept media type names msgpack (parameters ignored)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in CONTENT_TYPES
