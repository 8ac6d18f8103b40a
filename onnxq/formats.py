"""Packed block-int4 weight layout, declared once.

A MatMul weight ``W`` of shape ``[K, N]`` (``Y = A @ W``) is quantized per column ``n`` in
blocks of ``block_size`` consecutive ``k``; ``n_blocks = ceil(K / block_size)`` (the last
block may be ragged). The layout is the one ORT's ``com.microsoft.MatMulNBits`` reads, so
our ``com.onnxq.MatMulBlockInt4`` op and MatMulNBits share bytes:

- ``packed``: uint8 ``[N, n_blocks, block_size * bits / 8]``. Element ``k`` of a block sits in
  byte ``k // 2``: even ``k`` in the low nibble, odd ``k`` in the high nibble. Values are
  unsigned codes 0..15; ragged tail positions hold the block's zero point (they dequantize
  to exactly 0).
- ``scales``: float ``[N, n_blocks]`` (float32, or float16 for fp16 models).
- ``zero_points``: absent for symmetric (implicit code 8); else uint8
  ``[N, ceil(n_blocks / 2)]`` with two blocks per byte, even block in the low nibble (a
  trailing odd block leaves the high nibble 0); or float ``[N, n_blocks]`` for HQQ-style
  fractional zero points.

Dequantized value: ``W[k, n] = (code - zero_point[n, k // block_size]) * scale[n, k // block_size]``.
The C++ side mirrors this in ``ops/include/onnxq/block_int4_format.h`` and the tests check
the two agree byte for byte.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from onnxq import qparams as qp

__all__ = ["BlockInt4Format", "PackedBlockInt4", "SUPPORTED_BLOCK_SIZES"]

SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128, 256)
SYMMETRIC_ZERO_CODE = 8


@dataclasses.dataclass(frozen=True)
class BlockInt4Format:
    """One block-int4 layout: bits, block size, symmetric or not."""

    block_size: int = 128
    symmetric: bool = True
    bits: int = 4
    nibble_order: str = "low-first"

    def __post_init__(self) -> None:
        if self.bits != 4:
            raise ValueError(f"only 4-bit blocks are supported, got bits={self.bits}")
        if self.block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(
                f"block_size {self.block_size} is not supported; use one of {SUPPORTED_BLOCK_SIZES}"
            )

    @property
    def bytes_per_block(self) -> int:
        return self.block_size * self.bits // 8

    def n_blocks(self, k: int) -> int:
        return math.ceil(k / self.block_size)

    def packed_shape(self, k: int, n: int) -> tuple[int, int, int]:
        return (n, self.n_blocks(k), self.bytes_per_block)

    def scales_shape(self, k: int, n: int) -> tuple[int, int]:
        return (n, self.n_blocks(k))

    def zero_points_shape(self, k: int, n: int) -> tuple[int, int]:
        return (n, math.ceil(self.n_blocks(k) / 2))

    def weight_block_size(self) -> tuple[int, int]:
        """The ``qparams`` granularity of a ``[K, N]`` weight in this format."""
        return (self.block_size, 1)

    # ---- codes <-> bytes -------------------------------------------------------------

    def pack_codes(self, codes: np.ndarray, zero_codes: np.ndarray) -> np.ndarray:
        """Codes ``[K, N]`` (0..15) → packed ``[N, n_blocks, bytes_per_block]``.

        ``zero_codes`` ``[N, n_blocks]`` fills the ragged tail."""
        codes = np.asarray(codes)
        k, n = codes.shape
        nb = self.n_blocks(k)
        if codes.size and (codes.min() < 0 or codes.max() > 15):
            raise ValueError("4-bit codes must lie in 0..15")
        padded = np.empty((n, nb * self.block_size), dtype=np.uint8)
        padded[:, :k] = codes.T
        if nb * self.block_size > k:
            tail = np.repeat(np.asarray(zero_codes, dtype=np.uint8)[:, -1:], nb * self.block_size - k, axis=1)
            padded[:, k:] = tail
        pairs = padded.reshape(n, nb, self.bytes_per_block, 2)
        return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)

    def unpack_codes(self, packed: np.ndarray, k: int) -> np.ndarray:
        """Packed ``[N, n_blocks, bytes_per_block]`` → codes ``[K, N]`` (uint8)."""
        packed = np.asarray(packed, dtype=np.uint8)
        n = packed.shape[0]
        low = packed & 0x0F
        high = packed >> 4
        codes = np.stack([low, high], axis=-1).reshape(n, -1)[:, :k]
        return np.ascontiguousarray(codes.T)

    @staticmethod
    def pack_zero_points(zero_codes: np.ndarray) -> np.ndarray:
        """Zero-point codes ``[N, n_blocks]`` → uint8 ``[N, ceil(n_blocks/2)]``."""
        z = np.asarray(zero_codes, dtype=np.uint8)
        n, nb = z.shape
        if nb % 2:
            z = np.concatenate([z, np.zeros((n, 1), dtype=np.uint8)], axis=1)
        return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)

    @staticmethod
    def unpack_zero_points(packed: np.ndarray, n_blocks: int) -> np.ndarray:
        p = np.asarray(packed, dtype=np.uint8)
        z = np.stack([p & 0x0F, p >> 4], axis=-1).reshape(p.shape[0], -1)
        return np.ascontiguousarray(z[:, :n_blocks])

    # ---- float <-> packed (reference) ---------------------------------------------------

    def quantize(self, w: np.ndarray, params: qp.QParams | None = None) -> "PackedBlockInt4":
        """Round-to-nearest quantization of ``w`` ``[K, N]``; ``params`` overrides the
        min/max choice (algorithms such as GPTQ/HQQ pass their own scales)."""
        w = np.asarray(w, dtype=np.float32)
        k, n = w.shape
        if params is None:
            params = self.choose_params(w)
        codes_signed = qp.quantize(w, params)
        return self.from_codes(codes_signed, params, k=k, n=n)

    def choose_params(self, w: np.ndarray) -> qp.QParams:
        if self.symmetric:
            return qp.choose_qparams(
                w, qp.INT4, self.weight_block_size(), symmetric=True, full_range_symmetric=True
            )
        return qp.choose_qparams(w, qp.UINT4, self.weight_block_size(), symmetric=False)

    def from_codes(self, codes: np.ndarray, params: qp.QParams, *, k: int, n: int) -> "PackedBlockInt4":
        """Integer codes as ``params.qtype`` values ``[K, N]`` plus their params → packed."""
        scales = np.ascontiguousarray(params.scale.T.astype(np.float32))  # [N, nb]
        if self.symmetric:
            if params.qtype != qp.INT4:
                raise ValueError("symmetric block-int4 expects int4 codes")
            ucodes = (codes.astype(np.int16) + SYMMETRIC_ZERO_CODE).astype(np.uint8)
            zero_codes = np.full(scales.shape, SYMMETRIC_ZERO_CODE, dtype=np.uint8)
            packed_zp = None
        else:
            if params.qtype != qp.UINT4:
                raise ValueError("asymmetric block-int4 expects uint4 codes")
            ucodes = codes.astype(np.uint8)
            zero_codes = np.ascontiguousarray(params.zero_point.T.astype(np.uint8))
            packed_zp = self.pack_zero_points(zero_codes)
        return PackedBlockInt4(
            fmt=self,
            k=k,
            n=n,
            packed=self.pack_codes(ucodes, zero_codes),
            scales=scales,
            zero_points=packed_zp,
        )


@dataclasses.dataclass(frozen=True)
class PackedBlockInt4:
    """A packed weight in a ``BlockInt4Format``; ``zero_points`` is None when symmetric,
    packed uint8 nibbles, or float ``[N, n_blocks]`` (fractional zero points)."""

    fmt: BlockInt4Format
    k: int
    n: int
    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None

    def __post_init__(self) -> None:
        f = self.fmt
        if self.packed.shape != f.packed_shape(self.k, self.n) or self.packed.dtype != np.uint8:
            raise ValueError(
                f"packed weight has shape {self.packed.shape} {self.packed.dtype}, "
                f"expected {f.packed_shape(self.k, self.n)} uint8"
            )
        if self.scales.shape != f.scales_shape(self.k, self.n):
            raise ValueError(f"scales have shape {self.scales.shape}, expected {f.scales_shape(self.k, self.n)}")
        z = self.zero_points
        if z is not None and z.dtype == np.uint8 and z.shape != f.zero_points_shape(self.k, self.n):
            raise ValueError(f"zero points have shape {z.shape}, expected {f.zero_points_shape(self.k, self.n)}")
        if z is not None and z.dtype != np.uint8 and z.shape != f.scales_shape(self.k, self.n):
            raise ValueError(f"float zero points have shape {z.shape}, expected {f.scales_shape(self.k, self.n)}")

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)

    def codes(self) -> np.ndarray:
        """Unsigned codes ``[K, N]``."""
        return self.fmt.unpack_codes(self.packed, self.k)

    def zero_point_values(self) -> np.ndarray:
        """Zero points ``[N, n_blocks]`` as float32 (8 when symmetric)."""
        nb = self.fmt.n_blocks(self.k)
        if self.zero_points is None:
            return np.full((self.n, nb), SYMMETRIC_ZERO_CODE, dtype=np.float32)
        if self.zero_points.dtype == np.uint8:
            return self.fmt.unpack_zero_points(self.zero_points, nb).astype(np.float32)
        return self.zero_points.astype(np.float32)

    def dequantize(self) -> np.ndarray:
        """The float ``[K, N]`` weight this packed form stands for: the reference."""
        bs = (self.fmt.block_size, 1)
        codes = self.codes().astype(np.float32)
        zp = qp.expand_to_tensor(self.zero_point_values().T, codes.shape, bs)
        scale = qp.expand_to_tensor(self.scales.T.astype(np.float32), codes.shape, bs)
        return ((codes - zp) * scale).astype(np.float32)
