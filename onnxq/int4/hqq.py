"""HQQ: half-quadratic optimisation of block scales/zero points, no calibration data.

Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models" (2023): minimise
``||W - dequant(quant(W))||_p^p`` with ``p < 1`` (robust to the few large weights) by
splitting off an error variable ``W_e`` that a generalised soft-threshold (the proximal
operator of ``|.|^p``) solves in closed form, then updating the quantization parameters in
closed form against ``W - W_e``, with the penalty ``beta`` growing each step.

How it is applied here:

- asymmetric: as published — the min/max scale stays fixed and the *float* zero point is
  optimised; the best iterate per block (mean absolute error, HQQ's own measure) is kept,
  and the iterations stop once the mean error no longer falls (HQQ's own stop).
  MatMulNBits and ``com.onnxq`` store float zero points as they are
  (``integer_zero=False``). Opset-21 DequantizeLinear needs uint4 zero points, so there the zero
  point is rounded to a code and the scale re-fitted by least squares for it (kept only
  where that lowers the block's squared error).
- symmetric: the zero point is the fixed code 8, so the splitting drives the *scale*
  (least-squares fit to ``W - W_e`` each step), bounded below by the min/max scale so the
  block's largest weight is never clipped; the best iterate per block is kept by squared
  error. With a free scale the robust ``|.|^p`` measure clips the outlier weights that LLM
  outputs depend on (SmolLM2's down_proj rows that meet massive activations: perplexity
  1.86x fp32 against RTN's 1.69x); bounded, symmetric HQQ can only move a block's scale up
  and stays close to RTN — data-free symmetric grids have little else to optimise.
"""

from __future__ import annotations

import numpy as np

from onnxq.int4.blocks import QMAX, BlockQuant, Int4Spec, _blocked, chunk_columns, quantize_codes, rtn_params
from onnxq.formats import SYMMETRIC_ZERO_CODE

__all__ = ["hqq", "hqq_blocked"]


def _shrink(x: np.ndarray, beta: float, p: float) -> np.ndarray:
    """Proximal operator of ``|x|^p / beta`` (generalised soft threshold, HQQ's ``shrink_lp``):
    ``sign(x) * max(|x| - |x|^(p-1) / beta, 0)``.

    For ``p < 2`` that is 0 wherever ``|x| <= beta^(-1/(2-p))``: quantization errors mostly
    are (about 0.17 at ``beta = 10, p = 0.7`` against weight steps of ~0.01), so the
    fractional power — most of HQQ's time — is taken only where the result can be nonzero
    (with a margin, so the values are exactly those of the full formula)."""
    ax = np.abs(x)
    if p < 2:
        thresh = np.float32(0.999 * (1.0 / beta) ** (1.0 / (2.0 - p)))
        idx = np.flatnonzero(ax > thresh)
        out = np.zeros_like(x)
        if idx.size:
            a = ax.reshape(-1)[idx]
            t = np.power(a + np.float32(1e-8), np.float32(p - 1.0))
            t *= np.float32(1.0 / beta)
            t = np.maximum(a - t, 0.0)
            out.reshape(-1)[idx] = np.copysign(t, x.reshape(-1)[idx])
        return out
    t = ax + np.float32(1e-8)
    np.power(t, np.float32(p - 1.0), out=t)
    t *= np.float32(1.0 / beta)
    np.subtract(ax, t, out=t)
    np.maximum(t, 0.0, out=t)
    return np.copysign(t, x, out=t)


def _codes_float_zero(wb: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    """HQQ's quantizer with a fractional zero point: ``clip(rint(w / s + z), 0, 15)``."""
    q = wb / s[:, None, :]
    q += z[:, None, :]
    np.rint(q, out=q)
    np.clip(q, 0, QMAX, out=q)
    return q


def hqq_blocked(
    wb: np.ndarray,
    mask: np.ndarray,
    symmetric: bool,
    *,
    iters: int = 20,
    lp: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    integer_zero: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Optimised ``(scale, zero)`` ``[nb, n]`` for blocked weights ``wb`` ``[nb, bs, n]``;
    ``mask`` ``[nb, bs, 1]`` is 1 on real rows, 0 on the ragged tail's padding."""
    if symmetric:
        return _hqq_symmetric(wb, mask, iters=iters, lp=lp, beta=beta, kappa=kappa)
    return _hqq_zero(wb, mask, iters=iters, lp=lp, beta=beta, kappa=kappa, integer_zero=integer_zero)


def _hqq_zero(wb, mask, *, iters, lp, beta, kappa, integer_zero):
    """HQQ as published: min/max scale fixed, float zero point optimised (``z = mean(q -
    (W - W_e) / s)``), best iterate per block by mean absolute error. With
    ``integer_zero`` the zero point is then rounded to a code and the scale re-fitted by
    least squares for the rounded zero point."""
    s, z0 = rtn_params(wb, symmetric=False)
    z = z0.astype(np.float32).copy()
    count = mask.sum(axis=1)

    def err_of(z_):
        q = _codes_float_zero(wb, s, z_)
        wr = (q - z_[:, None, :]) * s[:, None, :]
        return q, wr, (np.abs(wb - wr) * mask).sum(axis=1) / count

    q, wr, best_err = err_of(z)
    best_z = z.copy()
    last = float(best_err.mean())
    for _ in range(iters):
        we = _shrink(wb - wr, beta, lp) * mask
        z = (((q - (wb - we) / s[:, None, :]) * mask).sum(axis=1) / count).astype(np.float32)
        beta *= kappa
        q, wr, err = err_of(z)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_z = np.where(better, z, best_z)
        mean = float(err.mean())
        if mean >= last:
            break  # HQQ's own stop: the mean error no longer falls
        last = mean
    if not integer_zero:
        return s, best_z.astype(np.float32)
    zi = np.clip(np.rint(best_z), 0, QMAX).astype(np.float32)
    q = quantize_codes(wb, s, zi)
    c = (q - zi[:, None, :]) * mask
    num = (c * wb).sum(axis=1)
    den = (c * c).sum(axis=1)
    s2 = np.where(den > 0, num / np.where(den > 0, den, 1.0), s).astype(np.float32)
    s2[s2 <= 0] = s[s2 <= 0]
    # keep the re-fitted scale only where it lowers the block's squared error
    def sq(s_):
        d = ((quantize_codes(wb, s_, zi) - zi[:, None, :]) * s_[:, None, :] - wb) * mask
        return (d * d).sum(axis=1)
    s = np.where(sq(s2) < sq(s), s2, s).astype(np.float32)
    return s, zi


def _hqq_symmetric(wb, mask, *, iters, lp, beta, kappa):
    """Symmetric grids have no zero point to move, so the half-quadratic splitting drives
    the scale instead: each step fits the scale by least squares to ``W - W_e``. The best
    iterate per block is kept by squared error (with the scale free, HQQ's robust |.|^p
    measure would clip the outlier weights that LLM outputs depend on)."""
    s, _ = rtn_params(wb, symmetric=True)
    s = s.astype(np.float32).copy()
    # the block's largest weight maps to code 0 at the min/max scale; the scale never
    # shrinks below that, so it is never clipped: on SmolLM2, clipping those weights even by
    # half a step cost more perplexity than the smaller steps won (they meet the massive
    # activation channels, which a data-free method cannot see)
    s_min = np.abs(s)
    count = mask.sum(axis=1)
    zc = np.float32(SYMMETRIC_ZERO_CODE)
    # padded tail rows are 0 and quantize to code 8, so c = 0 and d = 0 there: no mask needed

    def block_err(s_):
        c = quantize_codes(wb, s_, None)
        c -= zc
        d = c * s_[:, None, :]
        d -= wb  # d = W_hat - W
        return c, d, np.einsum("bkn,bkn->bn", d, d) / count

    c, d, best_err = block_err(s)
    best_s = s.copy()
    last = float(best_err.mean())
    cw = np.einsum("bkn,bkn->bn", c, wb)
    for _ in range(iters):
        # target = W - W_e with W_e = shrink(W - W_hat) = -shrink(d)
        num = cw + np.einsum("bkn,bkn->bn", c, _shrink(d, beta, lp))
        den = np.einsum("bkn,bkn->bn", c, c)
        s = np.where(den > 0, num / np.where(den > 0, den, 1.0), s).astype(np.float32)
        s = (np.sign(best_s) * np.maximum(np.abs(s), s_min)).astype(np.float32)
        beta *= kappa
        c, d, err = block_err(s)
        cw = np.einsum("bkn,bkn->bn", c, wb)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
        mean = float(err.mean())
        if mean >= last:
            break
        last = mean
    return best_s.astype(np.float32), None


def hqq(
    w: np.ndarray,
    spec: Int4Spec,
    *,
    iters: int = 20,
    lp: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    integer_zero: bool = True,
) -> BlockQuant:
    """HQQ-optimised block-int4 quantization of ``w`` ``[K, N]``, in column chunks.
    ``integer_zero=False`` keeps HQQ's fractional zero points (asymmetric only; only
    MatMulNBits can store them)."""
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
        s, z = hqq_blocked(
            wb, mask, spec.symmetric, iters=iters, lp=lp, beta=beta, kappa=kappa, integer_zero=integer_zero
        )
        q = quantize_codes(wb, s, z) if integer_zero or z is None else _codes_float_zero(wb, s, z)
        codes[:, c0:c1] = q.reshape(nb * bs, c1 - c0)[:k]
        scales[:, c0:c1] = s
        if zeros is not None:
            zeros[:, c0:c1] = z
    return BlockQuant(spec, codes, scales, zeros)
