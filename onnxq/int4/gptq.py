"""GPTQ: quantize the rows of ``W`` one input channel at a time, pushing each row's error
onto the rows not yet quantized through the inverse Hessian (Frantar et al., 2022).

``W`` is the ONNX MatMul weight ``[K, N]`` (``Y = X @ W``); ``H = X^T X`` ``[K, K]`` over
the calibration tokens of the MatMul's input. The layer's output error
``||X W - X W_hat||^2 = tr((W - W_hat)^T H (W - W_hat))`` is what GPTQ greedily minimises.

- dampening: ``H += percdamp * mean(diag H) * I``; input channels never active
  (``H_kk == 0``) get ``H_kk = 1`` and their weights are zeroed (they never contribute);
- lazy block updates: rows are processed in blocks of ``lazy_block`` (a divisor of the
  quantization block size, so each quantization block starts a lazy block, when every
  earlier update has reached its rows, and its scale is chosen from the updated rows);
  inside a lazy block row ``i`` is brought up to date with one small matrix-vector product
  of the block's earlier errors, and the rest of ``W`` once per lazy block with a matrix
  product;
- act-order (optional): rows in order of decreasing ``H_kk``; the block scales are then
  fixed beforehand from the original weights ("static groups"), so the stored layout stays
  the plain block layout (no ``g_idx``);
- a ragged last block (``K % block_size != 0``) is just a shorter group: its scale comes from
  the rows it has (ORT's GPTQ pads and crashes there).

Many problems of one shape (the same projection in every transformer layer) run as one
batch: the row loop — the part that cannot be vectorised — then runs once per batch
instead of once per layer. Weights sharing one input (q/k/v) share one Hessian; the caller
concatenates them along N.
"""

from __future__ import annotations

import logging

import numpy as np

from onnxq.formats import SYMMETRIC_ZERO_CODE
from onnxq.int4._blas import single_thread
from onnxq.int4.blocks import QMAX, BlockQuant, Int4Spec, rtn_params, search_scales

__all__ = ["gptq", "gptq_batch", "prepare_hessian"]

# clip ratios tried per group when GPTQ searches its scales (coarser than RTN's search: it
# runs on every group of every layer, and GPTQ's error feedback absorbs the rest)
_GPTQ_GRID = np.linspace(1.0, 0.55, 10, dtype=np.float32)

logger = logging.getLogger(__name__)


def prepare_hessian(h: np.ndarray, percdamp: float) -> tuple[np.ndarray, np.ndarray]:
    """Dampened float64 Hessian and the mask of dead input channels."""
    h = np.array(h, dtype=np.float64, copy=True)
    diag = np.diag(h).copy()
    dead = diag <= 0
    idx = np.flatnonzero(dead)
    h[idx, idx] = 1.0
    mean_diag = float(np.mean(np.diag(h)))
    h[np.diag_indices_from(h)] += percdamp * mean_diag
    return h, dead


def _lower_triangular_inverse(lower: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by recursive 2x2 blocking (the work is in
    matrix products): ``[[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]``."""
    n = lower.shape[0]
    if n <= 96:
        return np.linalg.solve(lower, np.eye(n, dtype=lower.dtype))
    m = n // 2
    ai = _lower_triangular_inverse(lower[:m, :m])
    ci = _lower_triangular_inverse(lower[m:, m:])
    out = np.zeros_like(lower)
    out[:m, :m] = ai
    out[m:, m:] = ci
    out[m:, :m] = -(ci @ (lower[m:, :m] @ ai))
    return out


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), float32, dampening more
    if needed.

    With ``J`` the order reversal and ``J H J = L L^T``: ``U = J L^-1 J`` (upper, and
    ``U^T U = J L^-T L^-1 J = H^-1``): one Cholesky and one triangular inverse, no general
    inverse. float32 is enough once H is dampened (GPTQ's reference code does the same)."""
    h = np.array(h, dtype=np.float32)
    damp = 0.0
    for _ in range(8):
        try:
            with single_thread():
                lower = np.linalg.cholesky(np.ascontiguousarray(h[::-1, ::-1]))
            inv_lower = _lower_triangular_inverse(lower)
            if np.all(np.isfinite(inv_lower)):
                return np.ascontiguousarray(inv_lower[::-1, ::-1])
        except np.linalg.LinAlgError:
            pass
        damp = damp * 10 if damp else 1e-4 * float(np.mean(np.diag(h)))
        h[np.diag_indices_from(h)] += damp
        logger.debug("GPTQ: Hessian not positive definite in float32, added %.3g to its diagonal", damp)
    raise np.linalg.LinAlgError("Hessian is not positive definite even after extra dampening")


def _group_params(
    rows: np.ndarray, symmetric: bool, mse: bool, importance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale/zero ``[B, N]`` of one block of rows ``[B, r, N]`` of each problem (r <= block
    size); with ``mse`` a clip search weighted by ``importance`` ``[B, r]`` (the Hessian
    diagonal: clipping a weight that meets a massive activation channel is never "cheap")."""
    if mse:
        return search_scales(rows, symmetric, None if importance is None else importance[:, :, None], grid=_GPTQ_GRID)
    return rtn_params(rows, symmetric)


def gptq_batch(
    ws: list[np.ndarray],
    hs: list[np.ndarray],
    spec: Int4Spec,
    *,
    percdamp: float = 0.01,
    act_order: bool = False,
    lazy_block: int = 32,
    mse: bool = False,
) -> list[BlockQuant]:
    """GPTQ of several same-shape problems at once: ``ws[b]`` ``[K, N]`` with Hessian
    ``hs[b]`` ``[K, K]`` (``X^T X``, any positive multiple)."""
    nprob = len(ws)
    k, n = ws[0].shape
    for w, h in zip(ws, hs):
        if w.shape != (k, n) or h.shape != (k, k):
            raise ValueError(f"GPTQ batch needs equal shapes: weight {w.shape} / Hessian {h.shape} vs ({k}, {n})")
    bs = spec.block_size
    nb = spec.n_blocks(k)
    W = np.empty((nprob, k, n), dtype=np.float32)
    U = np.empty((nprob, k, k), dtype=np.float32)
    perms = np.empty((nprob, k), dtype=np.int64)
    diags = np.empty((nprob, k), dtype=np.float32)  # Hessian diagonal in processing order
    scales = np.empty((nprob, nb, n), dtype=np.float32)
    zeros = None if spec.symmetric else np.empty((nprob, nb, n), dtype=np.float32)
    for b, (w, h) in enumerate(zip(ws, hs)):
        hd, dead = prepare_hessian(h, percdamp)
        wb = np.array(w, dtype=np.float32, copy=True)
        wb[dead, :] = 0.0
        if act_order:
            perm = np.argsort(-np.diag(hd), kind="stable")
            # static groups from the original weights, all groups at once (zero padding
            # with zero importance changes neither min/max nor the weighted search)
            wpad = np.zeros((nb * bs, n), dtype=np.float32)
            wpad[:k] = wb
            imp = np.zeros(nb * bs, dtype=np.float32)
            imp[:k] = np.diag(hd)
            s, z = _group_params(wpad.reshape(nb, bs, n), spec.symmetric, mse, imp.reshape(nb, bs))
            scales[b] = s
            if zeros is not None:
                zeros[b] = z
            del wpad
            wb = wb[perm]
            hd = hd[np.ix_(perm, perm)]
        else:
            perm = np.arange(k)
        perms[b] = perm
        diags[b] = np.diag(hd)
        W[b] = wb
        U[b] = _upper_cholesky_of_inverse(hd)
        del hd, wb
    groups = perms // bs  # [B, K]: the block of each processed row
    codes = np.empty((nprob, k, n), dtype=np.uint8)
    # a lazy block divides the quantization block, so (without act-order) every group
    # starts a lazy block, when all earlier updates have reached its rows
    step = min(bs, max(1, lazy_block))
    while bs % step:
        step -= 1
    zero_const = np.float32(SYMMETRIC_ZERO_CODE)
    bidx = np.arange(nprob)
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        if not act_order and i1 % bs == 0:
            s, z = _group_params(W[:, i1 : i1 + bs], spec.symmetric, mse, diags[:, i1 : i1 + bs])
            scales[:, i1 // bs] = s
            if zeros is not None:
                zeros[:, i1 // bs] = z
        W1 = W[:, i1:i2]  # view: rows are brought up to date in place
        U1 = np.ascontiguousarray(U[:, i1:i2, i1:i2].transpose(0, 2, 1))  # U1t[b, i, j] = U[b, i1 + j, i1 + i]
        Err1 = np.zeros((nprob, i2 - i1, n), dtype=np.float32)
        for i in range(i2 - i1):
            if i:
                W1[:, i] -= np.matmul(U1[:, i : i + 1, :i], Err1[:, :i])[:, 0]
            g = groups[:, i1 + i]
            s = scales[bidx, g]  # [B, N]
            zp = zero_const if zeros is None else zeros[bidx, g]
            x = W1[:, i]
            q = x / s
            np.rint(q, out=q)
            q += zp
            np.clip(q, 0, QMAX, out=q)
            codes[bidx, perms[:, i1 + i]] = q.astype(np.uint8)
            q -= zp
            q *= s
            Err1[:, i] = (x - q) / U1[:, i, i][:, None]
        if i2 < k:
            W[:, i2:] -= np.matmul(U[:, i1:i2, i2:].transpose(0, 2, 1), Err1)
    return [
        BlockQuant(spec, codes[b], scales[b], None if zeros is None else zeros[b]) for b in range(nprob)
    ]


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    spec: Int4Spec,
    *,
    percdamp: float = 0.01,
    act_order: bool = False,
    lazy_block: int = 32,
    mse: bool = False,
) -> BlockQuant:
    """GPTQ-quantize ``w`` ``[K, N]`` with Hessian ``h`` ``[K, K]`` (``X^T X``, any scale)."""
    if h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"Hessian shape {h.shape} does not match weight rows {w.shape[0]}")
    return gptq_batch([w], [h], spec, percdamp=percdamp, act_order=act_order, lazy_block=lazy_block, mse=mse)[0]
