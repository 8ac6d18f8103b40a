"""Block-int4 weights in the layout the algorithms work in, and round-to-nearest.

A MatMul weight ``W`` is ``[K, N]`` (``Y = X @ W``); it is quantized per column ``n`` in
blocks of ``block_size`` consecutive ``k`` (the last block may be ragged). Algorithms work
in the natural ``[K, N]`` layout (GPTQ walks the rows ``k`` of ``W``; block reductions run
over axis 1 of a ``[n_blocks, block_size, N]`` view), and hand back a :class:`BlockQuant`:

- ``codes``  uint8 ``[K, N]``, unsigned 0..15
- ``scales`` float32 ``[n_blocks, N]``
- ``zeros``  float32 ``[n_blocks, N]`` zero-point codes (integral for every format that
  stores uint4 zero points), or None for symmetric (implicit 8)

``W_hat[k, n] = (codes[k, n] - zeros[k // bs, n]) * scales[k // bs, n]``, exactly
:meth:`onnxq.formats.PackedBlockInt4.dequantize` of :meth:`BlockQuant.to_packed`.

Symmetric scales follow ``onnxq.qparams`` "full range": the value of largest magnitude maps
to code 0 (``-8``), so a block's scale may be negative. Asymmetric scales map
``[min(w, 0), max(w, 0)]`` onto 0..15 with an integer zero point (``qparams_from_range``).
Pure numpy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from onnxq.formats import SYMMETRIC_ZERO_CODE, BlockInt4Format, PackedBlockInt4

__all__ = [
    "BlockQuant",
    "Int4Spec",
    "rtn",
    "rtn_params",
    "quantize_codes",
    "search_scales",
    "pack_codes_kn",
    "chunk_columns",
]

QMAX = 15


@dataclasses.dataclass(frozen=True)
class Int4Spec:
    """What grid a weight is quantized to: block size along K, symmetric or not."""

    block_size: int = 128
    symmetric: bool = True
    positive_scales: bool = False  # symmetric: a positive extreme maps to +7 instead of a negative scale

    def n_blocks(self, k: int) -> int:
        return math.ceil(k / self.block_size)

    @property
    def format(self) -> BlockInt4Format:
        return BlockInt4Format(block_size=self.block_size, symmetric=self.symmetric)


@dataclasses.dataclass
class BlockQuant:
    """A quantized ``[K, N]`` weight: codes, scales and zero points (see module doc)."""

    spec: Int4Spec
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None

    @property
    def k(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n(self) -> int:
        return int(self.codes.shape[1])

    @property
    def has_fractional_zeros(self) -> bool:
        return self.zeros is not None and not np.array_equal(self.zeros, np.rint(self.zeros))

    def zero_values(self) -> np.ndarray:
        if self.zeros is None:
            return np.full(self.scales.shape, SYMMETRIC_ZERO_CODE, dtype=np.float32)
        return self.zeros.astype(np.float32)

    def dequantize(self) -> np.ndarray:
        """Float ``[K, N]`` (float32)."""
        bs, k = self.spec.block_size, self.k
        z = np.repeat(self.zero_values(), bs, axis=0)[:k]
        s = np.repeat(self.scales.astype(np.float32), bs, axis=0)[:k]
        return ((self.codes.astype(np.float32) - z) * s).astype(np.float32)

    def to_packed(self) -> PackedBlockInt4:
        """The MatMulNBits/``com.onnxq`` byte layout of :mod:`onnxq.formats`."""
        fmt = self.spec.format
        zero_codes = None
        packed_zp = None
        if self.zeros is not None:
            zero_codes = np.ascontiguousarray(np.clip(np.rint(self.zeros.T), 0, QMAX)).astype(np.uint8)  # [N, nb]
            if self.has_fractional_zeros:
                packed_zp = np.ascontiguousarray(self.zeros.T, dtype=np.float32)  # float [N, nb] (HQQ)
            else:
                packed_zp = fmt.pack_zero_points(zero_codes)
        packed = pack_codes_kn(self.codes, self.spec.block_size, zero_codes)
        return PackedBlockInt4(
            fmt=fmt,
            k=self.k,
            n=self.n,
            packed=packed,
            scales=np.ascontiguousarray(self.scales.T, dtype=np.float32),
            zero_points=packed_zp,
        )


def pack_codes_kn(codes: np.ndarray, block_size: int, zero_codes_nb: np.ndarray | None) -> np.ndarray:
    """Codes ``[K, N]`` → packed uint8 ``[N, n_blocks, block_size // 2]`` (same bytes as
    :meth:`BlockInt4Format.pack_codes`, but pairing rows before the transpose so only the
    half-size uint8 array is transposed). ``zero_codes_nb`` ``[N, n_blocks]`` fills the
    ragged tail (None: the symmetric code 8)."""
    k, n = codes.shape
    nb = math.ceil(k / block_size)
    kp = nb * block_size
    if kp != k:
        tail_code = (
            np.full((1, n), SYMMETRIC_ZERO_CODE, dtype=np.uint8)
            if zero_codes_nb is None
            else np.asarray(zero_codes_nb, dtype=np.uint8)[:, -1][None, :]
        )
        codes = np.concatenate([codes, np.repeat(tail_code, kp - k, axis=0)], axis=0)
    if block_size % 16 == 0:
        # 16 codes along K make one little-endian uint64 (code j in bits 4j..4j+3, i.e.
        # byte m = code 2m | code 2m+1 << 4): the transpose then moves 8-byte words instead
        # of single bytes, several times faster
        c = codes.reshape(kp // 16, 16, n)
        words = c[:, 0, :].astype(np.uint64)
        for j in range(1, 16):
            words |= c[:, j, :].astype(np.uint64) << np.uint64(4 * j)
        return np.ascontiguousarray(words.T).view(np.uint8).reshape(n, nb, block_size // 2)
    pairs = codes.reshape(kp // 2, 2, n)
    packed_kn = pairs[:, 0, :] | (pairs[:, 1, :] << 4)  # [kp/2, N]
    return np.ascontiguousarray(packed_kn.T).reshape(n, nb, block_size // 2)


def chunk_columns(k: int, n: int, target_bytes: int = 1 << 21) -> int:
    """How many columns of a float32 ``[K, N]`` weight make a chunk of about ``target_bytes``."""
    return max(16, min(n, target_bytes // max(4 * k, 1)))


def _blocked(w: np.ndarray, bs: int) -> tuple[np.ndarray, int]:
    """``[K, n]`` → zero-padded float32 ``[n_blocks, bs, n]`` (a copy)."""
    k, n = w.shape
    nb = math.ceil(k / bs)
    out = np.zeros((nb * bs, n), dtype=np.float32)
    out[:k] = w
    return out.reshape(nb, bs, n), k


def symmetric_anchor(extreme: np.ndarray, positive: bool) -> np.ndarray | np.float32:
    """The code (minus 8) a block's extreme weight maps to: -8, so a positive extreme gets a
    negative scale ("full range"); with ``positive`` a positive extreme maps to +7 instead
    (runtimes that take positive scales only, TensorRT)."""
    if not positive:
        return np.float32(-8.0)
    return np.where(extreme < 0, np.float32(-8.0), np.float32(7.0)).astype(np.float32)


def rtn_params(wb: np.ndarray, symmetric: bool, positive: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Min/max scales (and integer zero points) of blocked ``[nb, bs, n]`` weights; zero
    padding never changes them (the range always includes 0)."""
    wmax = wb.max(axis=1)
    wmin = wb.min(axis=1)
    if symmetric:
        extreme = np.where(-wmin > wmax, wmin, wmax)
        scale = extreme / symmetric_anchor(extreme, positive)
        scale[scale == 0] = 1.0
        return scale.astype(np.float32), None
    # float64 as in qparams.qparams_from_range, so the bytes match the reference exactly
    wmin = np.minimum(wmin, 0.0).astype(np.float64)
    wmax = np.maximum(wmax, 0.0).astype(np.float64)
    scale = (wmax - wmin) / QMAX
    scale[scale == 0] = 1.0
    zero = np.clip(np.rint(-wmin / scale), 0, QMAX).astype(np.float32)
    return scale.astype(np.float32), zero


def quantize_codes(wb: np.ndarray, scale: np.ndarray, zero: np.ndarray | None) -> np.ndarray:
    """Codes (float32, integral, 0..15) of blocked weights for the given params."""
    q = wb / scale[:, None, :]
    np.rint(q, out=q)
    q += np.float32(SYMMETRIC_ZERO_CODE) if zero is None else zero[:, None, :]
    np.clip(q, 0, QMAX, out=q)
    return q


_SEARCH_CHUNK = 1 << 18  # elements of a column chunk in search_scales


def search_scales(
    wb: np.ndarray,
    symmetric: bool,
    importance: np.ndarray | None = None,
    grid: np.ndarray | None = None,
    positive: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-block scale (and zero point) minimising the importance-weighted squared error
    ``sum_k d_k (w_k - w_hat_k)^2`` over shrunk ranges ``r * [min, max]`` (clipping search).

    ``importance``: ``[nb, bs]`` or ``[nb, bs, 1]`` weights per input channel (e.g. the
    Hessian diagonal ``diag(X^T X)``: the output error of a column is then the error each
    input channel contributes, cross terms ignored); zero on the padded tail. None: plain
    weight MSE (the tail is zero and quantizes exactly, so it adds no error)."""
    if grid is None:
        grid = np.linspace(1.0, 0.55, 19, dtype=np.float32)
    d = None if importance is None else np.asarray(importance, dtype=np.float32).reshape(wb.shape[0], wb.shape[1], 1)
    nb, bs, n = wb.shape
    cols = max(1, _SEARCH_CHUNK // max(nb * bs, 1))
    if n <= cols:
        return _search_chunk(wb, symmetric, d, grid, positive)
    # column chunks that stay in cache across the whole grid (one pass over memory instead
    # of one per candidate: 3x faster on SmolLM2's lm_head)
    scale = np.empty((nb, n), dtype=np.float32)
    zero = None if symmetric else np.empty((nb, n), dtype=np.float32)
    for c0 in range(0, n, cols):
        c1 = min(n, c0 + cols)
        s, z = _search_chunk(np.ascontiguousarray(wb[:, :, c0:c1]), symmetric, d, grid, positive)
        scale[:, c0:c1] = s
        if zero is not None:
            zero[:, c0:c1] = z
    return scale, zero


def _search_chunk(wb: np.ndarray, symmetric: bool, d: np.ndarray | None, grid: np.ndarray, positive: bool = False):
    """``search_scales`` of one column chunk; ``d`` is ``[nb, bs, 1]`` or None."""
    wmax = wb.max(axis=1)
    wmin = wb.min(axis=1)
    best_err = None
    best_s = best_z = None
    for r in grid:
        r = np.float32(r)
        if symmetric:
            extreme = np.where(-wmin > wmax, wmin, wmax) * r
            s = (extreme / symmetric_anchor(extreme, positive)).astype(np.float32)
            s[s == 0] = 1.0
            z = None
        else:
            lo = np.minimum(wmin * r, 0.0)
            hi = np.maximum(wmax * r, 0.0)
            s = ((hi - lo) / np.float32(QMAX)).astype(np.float32)
            s[s == 0] = 1.0
            z = np.clip(np.rint(-lo / s), 0, QMAX).astype(np.float32)
        # (the search only ranks candidates: multiplying by 1/s is fine here; the codes
        # that are stored always come from quantize_codes' exact division)
        q = wb * (np.float32(1.0) / s)[:, None, :]
        np.rint(q, out=q)
        if z is None:
            np.clip(q, -SYMMETRIC_ZERO_CODE, QMAX - SYMMETRIC_ZERO_CODE, out=q)
        else:
            q += z[:, None, :]
            np.clip(q, 0, QMAX, out=q)
            q -= z[:, None, :]
        q *= s[:, None, :]
        q -= wb
        q *= q
        err = q.sum(axis=1) if d is None else np.einsum("bkn,bkx->bn", q, d)
        if best_err is None:
            best_err, best_s, best_z = err, s, z
        else:
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s = np.where(better, s, best_s)
            if z is not None:
                best_z = np.where(better, z, best_z)
    return best_s.astype(np.float32), (None if best_z is None else best_z.astype(np.float32))


def rtn(
    w: np.ndarray,
    spec: Int4Spec,
    *,
    mse: bool = False,
    importance: np.ndarray | None = None,
) -> BlockQuant:
    """Round-to-nearest of ``w`` ``[K, N]``, in column chunks (memory stays flat in N; ``w``
    may be a memory map). ``mse``: clip search per block (``search_scales``) with optional
    per-input-channel ``importance`` ``[K]``."""
    k, n = w.shape
    bs = spec.block_size
    nb = spec.n_blocks(k)
    codes = np.empty((k, n), dtype=np.uint8)
    scales = np.empty((nb, n), dtype=np.float32)
    zeros = None if spec.symmetric else np.empty((nb, n), dtype=np.float32)
    imp = None
    if mse and importance is not None:
        imp = np.zeros(nb * bs, dtype=np.float32)
        imp[:k] = importance
        imp = imp.reshape(nb, bs)
    step = chunk_columns(k, n)
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        wb, _ = _blocked(np.asarray(w[:, c0:c1], dtype=np.float32), bs)
        if mse:
            s, z = search_scales(wb, spec.symmetric, imp, positive=spec.positive_scales)
        else:
            s, z = rtn_params(wb, spec.symmetric, spec.positive_scales)
        q = quantize_codes(wb, s, z)
        codes[:, c0:c1] = q.reshape(nb * bs, c1 - c0)[:k]
        scales[:, c0:c1] = s
        if zeros is not None:
            zeros[:, c0:c1] = z
    return BlockQuant(spec, codes, scales, zeros)
