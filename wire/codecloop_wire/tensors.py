"""Conversion between numpy arrays and the ``codecloop.v1.Tensor`` message.

Layout: row-major (C order), little-endian, ``len(data) == prod(shape) * itemsize``. INT8 carries a
positive ``scale`` and decodes to ``int8 * scale`` (float32). Decoding validates everything before
it allocates, so a malicious shape cannot make the receiver allocate more than the bytes it got.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.v1 import codecloop_pb2 as pb

_NUMPY: dict[int, np.dtype[Any]] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.INT8: np.dtype("i1"),
    pb.UINT8: np.dtype("u1"),
}
WIRE_DTYPES = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "int8": pb.INT8, "uint8": pb.UINT8}


def to_tensor(array: Any, dtype: str = "float32") -> pb.Tensor:
    """Pack an array; ``dtype`` is the wire type: float32, float16, int8 (symmetric scale) or uint8.

    int8 uses ``scale = max|x| / 127`` (1/127 when the array is all zeros) and rounds to nearest.
    """
    if dtype not in WIRE_DTYPES:
        raise CodecLoopValueError(f"dtype: {dtype!r} is not one of {sorted(WIRE_DTYPES)}")
    arr = np.asarray(array)
    msg = pb.Tensor(shape=list(arr.shape), dtype=WIRE_DTYPES[dtype])
    if dtype == "int8":
        peak = float(np.max(np.abs(arr))) if arr.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0 / 127.0
        # the wire's scale is a float32: never let a subnormal peak round it to 0 (which is invalid)
        msg.scale = max(scale, float(np.finfo(np.float32).tiny))
        arr = np.clip(np.rint(arr / np.float32(msg.scale)), -127, 127)
    msg.data = np.ascontiguousarray(arr, dtype=_NUMPY[msg.dtype]).tobytes()
    return msg


def from_tensor(msg: pb.Tensor, field: str, allowed: tuple[int, ...] = tuple(_NUMPY)) -> np.ndarray:
    """Unpack and validate a Tensor: uint8 stays uint8, every float type becomes float32.

    Raises:
        CodecLoopValueError: naming ``field``, for an unknown or disallowed dtype, a non-positive
            dimension, a byte length that does not match the shape, or a non-positive INT8 scale.
    """
    if msg.dtype not in _NUMPY or msg.dtype not in allowed:
        names = [pb.DType.Name(d) for d in allowed]
        raise CodecLoopValueError(f"{field}.dtype: {msg.dtype} is not allowed here; allowed: {names}")
    shape = tuple(int(d) for d in msg.shape)
    if not shape or any(d <= 0 for d in shape):
        raise CodecLoopValueError(f"{field}.shape: {list(shape)} must be non-empty with every dimension >= 1")
    dtype = _NUMPY[msg.dtype]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on huge dims
    if len(msg.data) != expected:
        raise CodecLoopValueError(
            f"{field}.data: {len(msg.data)} bytes, but shape {list(shape)} of {pb.DType.Name(msg.dtype)} "
            f"needs exactly {expected}"
        )
    arr: np.ndarray = np.frombuffer(msg.data, dtype=dtype).reshape(shape)
    if msg.dtype == pb.UINT8:
        return arr
    if msg.dtype == pb.INT8:
        if not (msg.scale > 0 and math.isfinite(msg.scale)):
            raise CodecLoopValueError(f"{field}.scale: {msg.scale} must be a finite number > 0 for INT8")
        scaled: np.ndarray = arr.astype(np.float32) * np.float32(msg.scale)
        return scaled
    floats: np.ndarray = arr.astype(np.float32)
    return floats
