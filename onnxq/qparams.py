"""Reference quantization math: the spec every pass and every kernel is tested against.

One granularity vocabulary for every format (as in torchao's ``block_size``): a tuple with
one entry per dimension of the tensor, each the length of a block along that dimension.

- per-tensor:            ``block_size == x.shape``
- per-channel on axis a: ``block_size[a] == 1`` and the full length elsewhere
- per-block (int4):      e.g. ``(1, 128)`` for a ``[N, K]`` weight quantized in blocks of
                         128 along K

The scale and zero-point arrays have shape ``ceil(x.shape / block_size)``; the last block
along a dimension may be shorter (ragged), exactly as opset-21 blocked DequantizeLinear.

Pure numpy, no ONNX or ORT here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

__all__ = [
    "QType",
    "INT4",
    "UINT4",
    "INT8",
    "UINT8",
    "INT16",
    "UINT16",
    "QParams",
    "qtype_named",
    "per_tensor",
    "per_channel",
    "per_block",
    "scale_shape",
    "block_reduce_min_max",
    "qparams_from_range",
    "choose_qparams",
    "expand_to_tensor",
    "quantize",
    "dequantize",
    "fake_quantize",
]


@dataclasses.dataclass(frozen=True)
class QType:
    """An integer quantized type: its range and how it is stored in numpy and ONNX."""

    name: str
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def storage_dtype(self) -> np.dtype:
        """The numpy dtype holding unpacked values (int4 values live in int8/uint8)."""
        if self.bits <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        return np.dtype(np.int16 if self.signed else np.uint16)

    @property
    def onnx_dtype(self) -> int:
        import onnx

        return {
            "int4": onnx.TensorProto.INT4,
            "uint4": onnx.TensorProto.UINT4,
            "int8": onnx.TensorProto.INT8,
            "uint8": onnx.TensorProto.UINT8,
            "int16": onnx.TensorProto.INT16,
            "uint16": onnx.TensorProto.UINT16,
        }[self.name]

    def __str__(self) -> str:
        return self.name


INT4 = QType("int4", 4, True)
UINT4 = QType("uint4", 4, False)
INT8 = QType("int8", 8, True)
UINT8 = QType("uint8", 8, False)
INT16 = QType("int16", 16, True)
UINT16 = QType("uint16", 16, False)
_QTYPES = {q.name: q for q in (INT4, UINT4, INT8, UINT8, INT16, UINT16)}


def qtype_named(name: str) -> QType:
    try:
        return _QTYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown quantized type {name!r}; choose one of {', '.join(_QTYPES)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor, shaped ``scale_shape(shape, block_size)``."""

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: QType
    block_size: tuple[int, ...]

    @property
    def is_per_tensor(self) -> bool:
        return self.scale.size == 1

    def axis_and_block(self) -> tuple[int | None, int | None]:
        """The ONNX (axis, block_size) attributes: (None, None) per-tensor, (a, None)
        per-channel, (a, b) blocked. Raises if the granularity has no ONNX spelling."""
        grid = self.scale.shape
        split = [a for a, n in enumerate(grid) if n > 1]
        if not split:
            return None, None
        if len(split) == 1 and self.block_size[split[0]] == 1:
            return split[0], None
        blocked = [a for a in split if self.block_size[a] > 1]
        if len(blocked) == 1 and all(b == 1 for i, b in enumerate(self.block_size) if i != blocked[0]):
            return blocked[0], self.block_size[blocked[0]]
        raise ValueError(f"scale grid {grid} with block_size {self.block_size} has no ONNX spelling")


def per_tensor(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(int(d), 1) for d in shape)


def per_channel(shape: Sequence[int], axis: int) -> tuple[int, ...]:
    axis = axis % len(shape)
    return tuple(1 if i == axis else max(int(d), 1) for i, d in enumerate(shape))


def per_block(shape: Sequence[int], axis: int, block: int) -> tuple[int, ...]:
    """Blocks of ``block`` along ``axis``; every other dimension is split per element."""
    axis = axis % len(shape)
    return tuple(block if i == axis else 1 for i in range(len(shape)))


def scale_shape(shape: Sequence[int], block_size: Sequence[int]) -> tuple[int, ...]:
    if len(shape) != len(block_size):
        raise ValueError(f"block_size {tuple(block_size)} does not match rank of shape {tuple(shape)}")
    return tuple(math.ceil(int(d) / int(b)) if d else 0 for d, b in zip(shape, block_size))


def _blocked_view(x: np.ndarray, block_size: Sequence[int]) -> np.ndarray:
    """View x (padded at the end of each dimension where ragged) as [g0, b0, g1, b1, ...]."""
    grid = scale_shape(x.shape, block_size)
    padded = tuple(g * b for g, b in zip(grid, block_size))
    if padded != x.shape:
        pad = [(0, p - d) for p, d in zip(padded, x.shape)]
        x = np.pad(x, pad, mode="edge")  # edge padding never widens a block's range
    interleaved = []
    for g, b in zip(grid, block_size):
        interleaved.extend((g, b))
    return x.reshape(interleaved)


def block_reduce_min_max(x: np.ndarray, block_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each block, shaped like the scale."""
    x = np.asarray(x, dtype=np.float32)
    v = _blocked_view(x, block_size)
    axes = tuple(range(1, v.ndim, 2))
    return v.min(axis=axes), v.max(axis=axes)


def qparams_from_range(
    rmin: np.ndarray,
    rmax: np.ndarray,
    qtype: QType,
    *,
    symmetric: bool,
    block_size: tuple[int, ...] = (),
    full_range_symmetric: bool = False,
) -> QParams:
    """Scale/zero point that map [rmin, rmax] (widened to include 0) onto ``qtype``.

    Symmetric: zero point is 0 for signed types and the mid-point for unsigned ones; the
    scale is ``absmax / qmax`` so that +-absmax are both representable (range
    [-qmax, qmax]). With ``full_range_symmetric`` the value of largest magnitude maps to
    ``qmin`` (e.g. -8 for int4), using the one extra negative level; the opposite extreme
    then clips to ``qmax`` by at most one step.

    A block whose range is zero gets scale 1 (every value is exactly 0 there).
    """
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if not (np.all(np.isfinite(rmin)) and np.all(np.isfinite(rmax))):
        raise ValueError("cannot choose quantization parameters: the observed range contains NaN or Inf")
    qmin, qmax = qtype.qmin, qtype.qmax
    if symmetric:
        absmax = np.maximum(-rmin, rmax)
        if full_range_symmetric:
            if not qtype.signed:
                raise ValueError("full_range_symmetric needs a signed type")
            signed_extreme = np.where(-rmin > rmax, rmin, rmax)
            scale = signed_extreme / qmin  # may be negative: the sign flips the grid
            scale = np.where(scale == 0, 1.0, scale)
        else:
            half = (qmax - qmin) // 2  # 127 for 8-bit, 7 for 4-bit
            scale = absmax / half
            scale = np.where(scale == 0, 1.0, scale)
        zp_value = 0 if qtype.signed else (qmax + qmin + 1) // 2
        zero_point = np.full(scale.shape, zp_value, dtype=np.int64)
    else:
        scale = (rmax - rmin) / (qmax - qmin)
        scale = np.where(scale == 0, 1.0, scale)
        zero_point = np.clip(np.round(qmin - rmin / scale), qmin, qmax).astype(np.int64)
    scale = scale.astype(np.float32)
    if not block_size:
        block_size = tuple(1 for _ in scale.shape)
    return QParams(
        scale=scale,
        zero_point=zero_point.astype(qtype.storage_dtype),
        qtype=qtype,
        block_size=tuple(block_size),
    )


def choose_qparams(
    x: np.ndarray,
    qtype: QType,
    block_size: Sequence[int],
    *,
    symmetric: bool,
    full_range_symmetric: bool = False,
) -> QParams:
    """Min/max quantization parameters of ``x`` at the granularity ``block_size``."""
    block_size = tuple(int(b) for b in block_size)
    rmin, rmax = block_reduce_min_max(x, block_size)
    return qparams_from_range(
        rmin,
        rmax,
        qtype,
        symmetric=symmetric,
        block_size=block_size,
        full_range_symmetric=full_range_symmetric,
    )


def expand_to_tensor(p: np.ndarray, shape: Sequence[int], block_size: Sequence[int]) -> np.ndarray:
    """Repeat a per-block array (scale or zero point) to the full tensor shape."""
    out = np.asarray(p)
    for axis, (d, b) in enumerate(zip(shape, block_size)):
        if b > 1:
            out = np.repeat(out, b, axis=axis)
        if out.shape[axis] != d:
            out = np.take(out, np.arange(d), axis=axis)
    return out


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """round-half-to-even(x / scale) + zero_point, saturated: ONNX QuantizeLinear semantics."""
    x = np.asarray(x, dtype=np.float32)
    scale = expand_to_tensor(qp.scale, x.shape, qp.block_size).astype(np.float32)
    zp = expand_to_tensor(qp.zero_point, x.shape, qp.block_size).astype(np.float32)
    q = np.rint(x / scale) + zp
    return np.clip(q, qp.qtype.qmin, qp.qtype.qmax).astype(qp.qtype.storage_dtype)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """(q - zero_point) * scale: ONNX DequantizeLinear semantics, float32 out."""
    q = np.asarray(q)
    scale = expand_to_tensor(qp.scale, q.shape, qp.block_size).astype(np.float32)
    zp = expand_to_tensor(qp.zero_point, q.shape, qp.block_size).astype(np.int32)
    return ((q.astype(np.int32) - zp).astype(np.float32) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    return dequantize(quantize(x, qp), qp)
