"""HQQ: half-quadratic optimisation of block scales/zero points, no calibration data.

Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models" (2023): minimise
``||W - dequant(quant(W))||_p^p`` with ``p < 1`` (robust to the few large weights) by
splitting off an error variable ``W_e`` that a generalised soft-threshold (the proximal
operator of ``|.|^p``) solves in closed form, then updating the quantization parameters in
closed form against ``W - W_e``, with the penalty ``beta`` growing each step.

What we changed so every format can hold the result (documented in the recipe too):

- the original updates only a *float* zero point with the scale fixed. Here each step is a
  least-squares fit of the block's dequantization line to ``W - W_e``:
  asymmetric: ``(scale, zero)`` jointly (affine fit of ``W - W_e`` on the codes), then the
  zero point is rounded to an integer code 0..15 and the scale re-fitted for that integer
  zero point — so the result packs as uint4 zero points (opset-21 DequantizeLinear,
  MatMulNBits, ``com.onnxq``) instead of needing float zero points;
  symmetric: the zero point is the fixed code 8 and only the scale is fitted.
- the best parameters seen are kept per block (by the mean absolute error of the block,
  HQQ's own stopping measure), not one global early stop.
"""

from __future__ import annotations

import numpy as np

from onnxq.int4.blocks import QMAX, BlockQuant, Int4Spec, _blocked, chunk_columns, quantize_codes, rtn_params
from onnxq.formats import SYMMETRIC_ZERO_CODE

__all__ = ["hqq", "hqq_blocked"]


def _shrink(x: np.ndarray, beta: float, p: float) -> np.ndarray:
    """Proximal operator of ``|x|^p / beta`` (generalised soft threshold, HQQ's ``shrink_lp``)."""
    ax = np.abs(x)
    thr = (1.0 / beta) * np.power(ax + 1e-8, p - 1.0)
    return np.sign(x) * np.maximum(ax - thr, 0.0)


def hqq_blocked(
    wb: np.ndarray,
    mask: np.ndarray,
    symmetric: bool,
    *,
    iters: int = 20,
    lp: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    init: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Optimised ``(scale, zero)`` ``[nb, n]`` for blocked weights ``wb`` ``[nb, bs, n]``;
    ``mask`` ``[nb, bs, 1]`` is 1 on real rows, 0 on the ragged tail's padding."""
    s, z = init if init is not None else rtn_params(wb, symmetric)
    s = s.astype(np.float32).copy()
    z = None if z is None else z.astype(np.float32).copy()
    count = mask.sum(axis=1)  # [nb, 1]

    def block_err(s_, z_):
        q = quantize_codes(wb, s_, z_)
        q -= np.float32(SYMMETRIC_ZERO_CODE) if z_ is None else z_[:, None, :]
        q *= s_[:, None, :]
        d = (wb - q) * mask
        return q, (d * d).sum(axis=1) / count

    best_s, best_z = s.copy(), None if z is None else z.copy()
    wr, best_err = block_err(s, z)
    for _ in range(iters):
        we = _shrink(wb - wr, beta, lp) * mask
        target = wb - we
        q = quantize_codes(wb, s, z)
        if symmetric:
            c = (q - np.float32(SYMMETRIC_ZERO_CODE)) * mask
            num = (c * target).sum(axis=1)
            den = (c * c).sum(axis=1)
            s = np.where(den > 0, num / np.where(den > 0, den, 1.0), s).astype(np.float32)
            s[s == 0] = 1.0
        else:
            qm = q * mask
            mq = qm.sum(axis=1) / count
            mt = (target * mask).sum(axis=1) / count
            dq = (q - mq[:, None, :]) * mask
            var = (dq * dq).sum(axis=1)
            cov = (dq * (target - mt[:, None, :])).sum(axis=1)
            ok = (var > 0) & (cov != 0)
            a = np.where(ok, cov / np.where(ok, var, 1.0), s)
            zf = np.where(ok, mq - mt / np.where(ok, a, 1.0), z)
            z = np.clip(np.rint(zf), 0, QMAX).astype(np.float32)
            c = (q - z[:, None, :]) * mask
            num = (c * target).sum(axis=1)
            den = (c * c).sum(axis=1)
            s = np.where(den > 0, num / np.where(den > 0, den, 1.0), s).astype(np.float32)
            s[s == 0] = 1.0
        beta *= kappa
        wr, err = block_err(s, z)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
        if z is not None:
            best_z = np.where(better, z, best_z)
    return best_s.astype(np.float32), (None if best_z is None else best_z.astype(np.float32))


def hqq(w: np.ndarray, spec: Int4Spec, *, iters: int = 20, lp: float = 0.7, beta: float = 10.0, kappa: float = 1.01) -> BlockQuant:
    """HQQ-optimised block-int4 quantization of ``w`` ``[K, N]``, in column chunks."""
    k, n = w.shape
    bs = spec.block_size
    nb = spec.n_blocks(k)
    mask = np.zeros((nb * bs, 1), dtype=np.float32)
    mask[:k] = 1.0
    mask = mask.reshape(nb, bs, 1)
    codes = np.empty((k, n), dtype=np.uint8)
    scales = np.empty((nb, n), dtype=np.float32)
    zeros = None if spec.symmetric else np.empty((nb, n), dtype=np.float32)
    step = chunk_columns(k, n, 1 << 20)
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        wb, _ = _blocked(np.asarray(w[:, c0:c1], dtype=np.float32), bs)
        s, z = hqq_blocked(wb, mask, spec.symmetric, iters=iters, lp=lp, beta=beta, kappa=kappa)
        q = quantize_codes(wb, s, z)
        codes[:, c0:c1] = q.reshape(nb * bs, c1 - c0)[:k]
        scales[:, c0:c1] = s
        if zeros is not None:
            zeros[:, c0:c1] = z
    return BlockQuant(spec, codes, scales, zeros)
