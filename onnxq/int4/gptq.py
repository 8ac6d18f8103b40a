"""GPTQ: quantize the rows of ``W`` one input channel at a time, pushing each row's error
onto the rows not yet quantized through the inverse Hessian (Frantar et al., 2022).

``W`` is the ONNX MatMul weight ``[K, N]`` (``Y = X @ W``); ``H = X^T X`` ``[K, K]`` over
the calibration tokens of the MatMul's input. The layer's output error
``||X W - X W_hat||^2 = tr((W - W_hat)^T H (W - W_hat))`` is what GPTQ greedily minimises.

- dampening: ``H += percdamp * mean(diag H) * I``; input channels never active
  (``H_kk == 0``) get ``H_kk = 1`` and their weights are zeroed (they never contribute);
- lazy block updates, two levels: rows are processed in lazy blocks of ``lazy_block`` (a
  divisor of the quantization block size) inside outer blocks of about 128 rows; inside a
  lazy block row ``i`` is brought up to date with one small matrix-vector product of the
  block's earlier errors, the rest of the outer block once per lazy block and the rest of
  ``W`` once per outer block with a matrix product (without act-order an outer block is a
  multiple of the quantization block, so each quantization block starts when every
  earlier update has reached all its rows, and its scale is chosen from the updated rows);
- ``U`` (the upper Cholesky factor of ``H^-1``) from one Cholesky factorisation and its
  triangular inverse computed together by recursive blocking, all in matrix products;
- act-order (optional): rows in order of decreasing ``H_kk``; the block scales are then
  fixed beforehand from the original weights ("static groups"), so the stored layout stays
  the plain block layout (no ``g_idx``);
- a ragged last block (``K % block_size != 0``) is just a shorter group: its scale comes from
  the rows it has (ORT's GPTQ pads and crashes there);
- optional scale refit (``refit_scales``): the codes kept, each column's block scales
  re-solved by least squares on the same objective.

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

__all__ = ["gptq", "gptq_batch", "prepare_hessian", "refit_scales"]

# clip ratios tried per group when GPTQ searches its scales (coarser than RTN's search: it
# runs on every group of every layer, and GPTQ's error feedback absorbs the rest)
_GPTQ_GRID = np.linspace(1.0, 0.55, 10, dtype=np.float32)

logger = logging.getLogger(__name__)

_OUTER = 128  # rows of an outer block (see gptq_batch)


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


def _cholesky_and_inverse(a: np.ndarray, need_inverse: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Lower Cholesky factor ``L`` of ``a`` (and ``L^-1`` if asked) by recursive 2x2 blocking,
    so the work is in matrix products (single-threaded LAPACK ``potrf`` was measured 2-3x
    slower at K = 1536): ``L11 = chol(A11)``, ``L21 = A21 L11^-T``, ``L22 = chol(A22 - L21
    L21^T)``, ``L^-1 = [[L11^-1, 0], [-L22^-1 L21 L11^-1, L22^-1]]``."""
    n = a.shape[0]
    if n <= 64:
        lower = np.linalg.cholesky(a)
        return lower, (np.linalg.inv(lower) if need_inverse else None)
    m = (n // 2 + 31) // 32 * 32
    l11, l11_inv = _cholesky_and_inverse(a[:m, :m], True)
    l21 = a[m:, :m] @ l11_inv.T
    l22, l22_inv = _cholesky_and_inverse(a[m:, m:] - l21 @ l21.T, need_inverse)
    lower = np.zeros_like(a)
    lower[:m, :m] = l11
    lower[m:, :m] = l21
    lower[m:, m:] = l22
    if not need_inverse:
        return lower, None
    inv = np.zeros_like(a)
    inv[:m, :m] = l11_inv
    inv[m:, m:] = l22_inv
    inv[m:, :m] = -(l22_inv @ (l21 @ l11_inv))
    return lower, inv


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), float32, dampening more
    if needed.

    With ``J`` the order reversal and ``J H J = L L^T``: ``U = J L^-1 J`` (upper, and
    ``U^T U = J L^-T L^-1 J = H^-1``): one Cholesky and one triangular inverse (computed
    together), no general inverse. float32 is enough once H is dampened (GPTQ's reference
    code does the same). (GPTQ can also be written with ``L`` alone — Babai's nearest plane,
    feeding back ``w_i - q_i`` of the original rows — but those residuals are large and
    cancel: measured in float32 it drifted from the float64 result where this form matches.)"""
    hr = np.array(h[::-1, ::-1], dtype=np.float32)
    damp = 0.0
    for _ in range(8):
        try:
            lower, inv_lower = _cholesky_and_inverse(hr, True)
            if np.all(np.isfinite(inv_lower)) and np.all(np.diag(lower) > 0):
                return np.ascontiguousarray(inv_lower[::-1, ::-1])
        except np.linalg.LinAlgError:
            pass
        damp = damp * 10 if damp else 1e-4 * float(np.mean(np.diag(hr)))
        hr[np.diag_indices_from(hr)] += damp
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


def refit_scales(w: np.ndarray, h: np.ndarray, bq: BlockQuant) -> BlockQuant:
    """The same codes with each column's block scales re-fitted by least squares on the
    layer's output error: per column ``n``, ``s_n = argmin (w - C_n s)^T H (w - C_n s)``
    with ``C_n`` ``[K, n_blocks]`` the column's ``code - zero`` in each block's rows (an
    ``n_blocks``-sized linear system per column). The objective never rises (the old
    scales are one candidate); a block whose codes are all at the zero point keeps its
    scale. ``H`` is ``X^T X`` (any positive multiple); costs about two ``[K, K] x [K, N]``
    products."""
    k, n = bq.codes.shape
    bs = bq.spec.block_size
    nb = bq.spec.n_blocks(k)
    h32 = np.asarray(h, dtype=np.float32)
    zero = np.repeat(bq.zero_values(), bs, axis=0)[:k]
    cz = np.zeros((nb * bs, n), dtype=np.float32)
    cz[:k] = bq.codes.astype(np.float32) - zero
    with single_thread():
        hw = h32 @ np.asarray(w, dtype=np.float32)  # [K, N]
        gram = np.empty((nb, nb, n), dtype=np.float32)  # gram[g, g', n] = c_g^T H c_g'
        czb = cz.reshape(nb, bs, n)
        for g in range(nb):
            r0, r1 = g * bs, min((g + 1) * bs, k)
            hc = np.zeros((nb * bs, n), dtype=np.float32)
            hc[:k] = h32[:, r0:r1] @ cz[r0:r1]
            gram[g] = np.einsum("gkn,gkn->gn", czb, hc.reshape(nb, bs, n))
        hwp = np.zeros((nb * bs, n), dtype=np.float32)
        hwp[:k] = hw
        rhs = np.einsum("gkn,gkn->gn", czb, hwp.reshape(nb, bs, n))  # [nb, N]
    a = np.ascontiguousarray(gram.transpose(2, 0, 1)).astype(np.float64)  # [N, nb, nb]
    diag = np.einsum("nii->ni", a)
    empty = diag <= 0
    ii = np.arange(nb)
    a[:, ii, ii] += 1e-6 * np.maximum(diag.max(axis=1, keepdims=True), 1e-30) + empty
    b = rhs.T.astype(np.float64)  # [N, nb]
    old = bq.scales.T.astype(np.float64)
    b[empty] = old[empty]  # empty blocks: row is ~e_g, rhs = old scale
    try:
        new = np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return bq
    ok = np.isfinite(new).all(axis=1)
    new[~ok] = old[~ok]
    # keep the old scales of a column where, in float64, the refit is not an improvement
    def loss(sc):
        return np.einsum("ni,nij,nj->n", sc, a, sc) - 2 * np.einsum("ni,ni->n", sc, b)
    worse = loss(new) > loss(old)
    new[worse] = old[worse]
    return BlockQuant(bq.spec, bq.codes, np.ascontiguousarray(new.T, dtype=np.float32), bq.zeros)


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
    W = np.empty((nprob, k, n), dtype=np.float32)  # rows in processing order
    U = np.empty((nprob, k, k), dtype=np.float32)
    perms = np.empty((nprob, k), dtype=np.int64)
    diags = np.empty((nprob, k), dtype=np.float32)  # Hessian diagonal in processing order
    scales = np.empty((nprob, nb, n), dtype=np.float32)
    zeros = None if spec.symmetric else np.empty((nprob, nb, n), dtype=np.float32)
    for b, (w, h) in enumerate(zip(ws, hs)):
        hd, dead = prepare_hessian(h, percdamp)
        hd = hd.astype(np.float32)
        wb = np.asarray(w, dtype=np.float32)
        if dead.any():
            wb = wb.copy()
            wb[dead, :] = 0.0
        if act_order:
            perm = np.argsort(-np.diag(hd), kind="stable")
            # static groups from the original weights, all groups at once (zero padding
            # with zero importance changes neither min/max nor the weighted search)
            if k == nb * bs:
                wpad = wb.reshape(nb, bs, n)
            else:
                wpad = np.zeros((nb * bs, n), dtype=np.float32)
                wpad[:k] = wb
                wpad = wpad.reshape(nb, bs, n)
            imp = np.zeros(nb * bs, dtype=np.float32)
            imp[:k] = np.diag(hd)
            s, z = _group_params(wpad, spec.symmetric, mse, imp.reshape(nb, bs))
            scales[b] = s
            if zeros is not None:
                zeros[b] = z
            del wpad
            W[b] = wb[perm]
            hd = hd[perm][:, perm]
        else:
            perm = np.arange(k)
            W[b] = wb
        perms[b] = perm
        diags[b] = np.diag(hd)
        with single_thread():
            U[b] = _upper_cholesky_of_inverse(hd)
        del hd, wb
    groups = perms // bs  # [B, K]: the block of each processed row
    codes_p = np.empty((nprob, k, n), dtype=np.uint8)  # codes in processing order
    # rows run in small lazy blocks (a per-row loop: row i is brought up to date with one
    # matrix-vector product of the lazy block's earlier errors) inside outer blocks of about
    # 128 rows (after each lazy block one matrix product brings the rest of the outer block
    # up to date, after each outer block one the rest of W). A lazy block divides the
    # quantization block and (without act-order) an outer block is a multiple of it, so
    # every group starts a lazy block when all earlier updates have reached all its rows,
    # and its scale is chosen from the updated rows.
    step = min(bs, max(1, lazy_block))
    while bs % step:
        step -= 1
    outer = _OUTER if act_order else bs * max(1, _OUTER // bs)
    bidx = np.arange(nprob)[:, None]
    lo, hi = (-SYMMETRIC_ZERO_CODE, QMAX - SYMMETRIC_ZERO_CODE) if zeros is None else (0, QMAX)
    for o1 in range(0, k, outer):
        o2 = min(o1 + outer, k)
        E = np.empty((nprob, o2 - o1, n), dtype=np.float32)  # scaled errors of the outer block
        for i1 in range(o1, o2, step):
            i2 = min(i1 + step, o2)
            if not act_order and i1 % bs == 0:
                s, z = _group_params(W[:, i1 : i1 + bs], spec.symmetric, mse, diags[:, i1 : i1 + bs])
                scales[:, i1 // bs] = s
                if zeros is not None:
                    zeros[:, i1 // bs] = z
            g = groups[:, i1:i2]
            S1 = scales[bidx, g]  # [B, r, N]
            Z1 = None if zeros is None else zeros[bidx, g]
            W1 = W[:, i1:i2]  # view: rows are brought up to date in place
            E1 = E[:, i1 - o1 : i2 - o1]
            Ut = np.ascontiguousarray(U[:, i1:i2, i1:i2].transpose(0, 2, 1))  # Ut[b, i, j] = U[b, i1 + j, i1 + i]
            d = np.ascontiguousarray(U[:, np.arange(i1, i2), np.arange(i1, i2)])[:, :, None]  # [B, r, 1]
            Q1 = np.empty((nprob, i2 - i1, n), dtype=np.float32)
            for i in range(i2 - i1):
                x = W1[:, i]
                if i:
                    x -= np.matmul(Ut[:, i : i + 1, :i], E1[:, :i])[:, 0]
                q = np.divide(x, S1[:, i])
                np.rint(q, out=q)
                if Z1 is not None:
                    q += Z1[:, i]
                np.clip(q, lo, hi, out=q)
                Q1[:, i] = q
                if Z1 is not None:
                    q -= Z1[:, i]
                q *= S1[:, i]
                e = E1[:, i]
                np.subtract(x, q, out=e)
                np.divide(e, d[:, i], out=e)
            if Z1 is None:
                Q1 += np.float32(SYMMETRIC_ZERO_CODE)
            codes_p[:, i1:i2] = Q1
            if i2 < o2:
                W[:, i2:o2] -= np.matmul(U[:, i1:i2, i2:o2].transpose(0, 2, 1), E1)
        if o2 < k:
            W[:, o2:] -= np.matmul(U[:, o1:o2, o2:].transpose(0, 2, 1), E)
    del W, U
    out = []
    for b in range(nprob):
        codes = np.empty((k, n), dtype=np.uint8)
        codes[perms[b]] = codes_p[b]
        out.append(BlockQuant(spec, codes, scales[b], None if zeros is None else zeros[b]))
    return out


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
