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
  block's earlier errors, the rest of the outer block once per lazy block with a matrix
  product, and each outer block, before it starts, with one matrix product of all earlier
  rows' errors ("left-looking": the product's output is one outer block, not the rest of
  ``W``) (without act-order an outer block is a multiple of the quantization block, so each
  quantization block starts when every earlier update has reached all its rows, and its
  scale is chosen from the updated rows);
- ``U`` (the upper Cholesky factor of ``H^-1``) from one Cholesky factorisation and its
  triangular inverse computed together by recursive blocking, all in matrix products that
  skip the zero halves of triangular factors;
- scale search (``mse``): symmetric, a faster form of ``blocks.search_scales`` (tested
  against it); asymmetric, ``search_scales`` itself;
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
concatenates them along N. A batch runs on a few threads (``workers``): one problem per
thread while preparing (static groups, the factorisation), column slices of the batch in
the row loop; BLAS stays single-threaded in each.
"""

from __future__ import annotations

import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np

from onnxq.formats import SYMMETRIC_ZERO_CODE
from onnxq.int4 import _blas
from onnxq.int4._blas import single_thread
from onnxq.int4.blocks import QMAX, BlockQuant, Int4Spec, rtn_params, search_scales, symmetric_anchor

__all__ = ["gptq", "gptq_batch", "prepare_hessian", "refit_scales"]

# clip ratios tried per group when GPTQ searches its scales (coarser than RTN's search: it
# runs on every group of every layer, and GPTQ's error feedback absorbs the rest)
_GPTQ_GRID = np.linspace(1.0, 0.55, 10, dtype=np.float32)

logger = logging.getLogger(__name__)

_OUTER = 128  # rows of an outer block (see _row_loop)
_MIN_UNIT_COLS = 128  # the row loop splits columns across threads only into slices this wide

T = TypeVar("T")


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


_TRI_MIN = 96  # below this size a triangular product is one plain matrix product


def _split(n: int) -> int:
    """Where a recursive halving of ``n`` splits (a multiple of 32)."""
    return (n // 2 + 31) // 32 * 32


def _lmul_tri(t: np.ndarray, m: np.ndarray, lower: bool) -> np.ndarray:
    """``t @ m`` for a triangular ``t`` ``[n, n]`` (lower or upper, the other triangle
    stored as zeros) by recursive halving, so the zero half costs nothing: about half the
    multiply-adds of a plain ``t @ m`` (a BLAS ``trmm``, which numpy does not expose)."""
    n = t.shape[0]
    if n <= _TRI_MIN:
        return t @ m
    h = _split(n)
    out = np.empty((n, m.shape[1]), dtype=np.result_type(t, m))
    if lower:
        out[:h] = _lmul_tri(t[:h, :h], m[:h], True)
        out[h:] = _lmul_tri(t[h:, h:], m[h:], True)
        out[h:] += t[h:, :h] @ m[:h]
    else:
        out[:h] = _lmul_tri(t[:h, :h], m[:h], False)
        out[:h] += t[:h, h:] @ m[h:]
        out[h:] = _lmul_tri(t[h:, h:], m[h:], False)
    return out


def _syrk_lower(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``c - a @ a.T`` on and below the diagonal (above it: unspecified; ``c``'s upper
    triangle is never read): about half the multiply-adds of the full product (a BLAS
    ``syrk``)."""
    n = c.shape[0]
    if n <= _TRI_MIN:
        return c - a @ a.T
    h = _split(n)
    out = np.empty_like(c, shape=c.shape)
    out[:h, :h] = _syrk_lower(c[:h, :h], a[:h])
    np.subtract(c[h:, :h], a[h:] @ a[:h].T, out=out[h:, :h])
    out[h:, h:] = _syrk_lower(c[h:, h:], a[h:])
    return out


def _inverse_cholesky(a: np.ndarray, out: np.ndarray, diag: np.ndarray) -> None:
    """``out`` <- ``L^-1`` (lower, zeros above the diagonal) and ``diag`` <- ``diag(L)`` for
    the lower Cholesky factor ``L`` of ``a`` (only its lower triangle is read), by recursive
    2x2 blocking so the work is in matrix products (single-threaded LAPACK ``potrf`` was
    measured 2-3x slower at K = 1536): ``L11 = chol(A11)``, ``L21 = A21 L11^-T``, ``L22 =
    chol(A22 - L21 L21^T)``, ``L^-1 = [[L11^-1, 0], [-L22^-1 L21 L11^-1, L22^-1]]``. ``L``
    itself is never assembled (only ``L21`` of each level is used), the inverse is written in
    place, and the products by triangular factors and the symmetric update skip the zero /
    mirrored halves (:func:`_lmul_tri`, :func:`_syrk_lower`): about 2/3 ``n^3``
    multiply-adds instead of 4/3 ``n^3``."""
    n = a.shape[0]
    if n <= 64:
        lower = np.linalg.cholesky(a)  # reads the lower triangle only
        diag[:] = np.diagonal(lower)
        out[:] = np.tril(np.linalg.inv(lower))
        return
    m = _split(n)
    x11 = out[:m, :m]
    _inverse_cholesky(a[:m, :m], x11, diag[:m])
    l21 = _lmul_tri(x11, a[m:, :m].T, lower=True).T  # A21 L11^-T
    x22 = out[m:, m:]
    _inverse_cholesky(_syrk_lower(a[m:, m:], l21), x22, diag[m:])
    out[:m, m:] = 0.0
    p = _lmul_tri(x11.T, l21.T, lower=False).T  # L21 L11^-1
    np.negative(_lmul_tri(x22, p, lower=True), out=out[m:, :m])


def _upper_cholesky_of_inverse(h: np.ndarray, *, reversed_: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), float32, dampening more
    if needed.

    With ``J`` the order reversal and ``J H J = L L^T``: ``U = J L^-1 J`` (upper, and
    ``U^T U = J L^-T L^-1 J = H^-1``): one Cholesky and one triangular inverse (computed
    together), no general inverse. float32 is enough once H is dampened (GPTQ's reference
    code does the same). (GPTQ can also be written with ``L`` alone — Babai's nearest plane,
    feeding back ``w_i - q_i`` of the original rows — but those residuals are large and
    cancel: measured in float32 it drifted from the float64 result where this form matches.)

    ``reversed_``: ``h`` is already ``J H J`` in float32 (and may be changed); ``out``: where
    ``U`` goes."""
    hr = h if reversed_ and h.dtype == np.float32 else np.array(h if reversed_ else h[::-1, ::-1], dtype=np.float32)
    inv_lower = np.empty_like(hr)
    ldiag = np.empty(hr.shape[0], dtype=hr.dtype)
    damp = 0.0
    for _ in range(8):
        try:
            _inverse_cholesky(hr, inv_lower, ldiag)
            if np.all(ldiag > 0) and np.all(np.isfinite(inv_lower)):
                if out is None:
                    return np.ascontiguousarray(inv_lower[::-1, ::-1])
                out[...] = inv_lower[::-1, ::-1]
                return out
        except np.linalg.LinAlgError:
            pass
        damp = damp * 10 if damp else 1e-4 * float(np.mean(np.diag(hr)))
        hr[np.diag_indices_from(hr)] += damp
        logger.debug("GPTQ: Hessian not positive definite in float32, added %.3g to its diagonal", damp)
    raise np.linalg.LinAlgError("Hessian is not positive definite even after extra dampening")


def _group_params(
    rows: np.ndarray, symmetric: bool, mse: bool, importance: np.ndarray | None = None, positive: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale/zero ``[B, N]`` of one block of rows ``[B, r, N]`` of each problem (r <= block
    size); with ``mse`` a clip search weighted by ``importance`` ``[B, r]`` (the Hessian
    diagonal: clipping a weight that meets a massive activation channel is never "cheap").
    Symmetric: :func:`_search_symmetric` (the same search as ``search_scales``, faster)."""
    if mse:
        if symmetric:
            return _search_symmetric(rows, importance, _GPTQ_GRID, positive), None
        return search_scales(rows, symmetric, None if importance is None else importance[:, :, None], grid=_GPTQ_GRID)
    return rtn_params(rows, symmetric, positive)


_SYM_SEARCH_CHUNK = 1 << 17  # elements of a column chunk in _search_symmetric


def _search_symmetric(
    wb: np.ndarray, importance: np.ndarray | None, grid: np.ndarray, positive: bool = False
) -> np.ndarray:
    """Symmetric scales of blocked ``wb`` ``[nb, bs, N]`` by the clipping search of
    :func:`onnxq.int4.blocks.search_scales` (its reference): per block the candidate
    ``s_r = r * extreme / -8`` minimising ``sum_k d_k (s_r q_k - w_k)^2``, ``q_k =
    clip(rint(w_k / s_r), -8, 7)``; the first of equal errors wins; a block of zeros gets
    scale 1. Faster, in the normalised form: with ``y = w / s_r = (w / extreme) * (-8 / r)``
    the error is ``(r * extreme / 8)^2 sum_k d_k (q_k - y_k)^2`` and ``extreme^2`` is common
    to all candidates of a block, so each candidate costs one scalar multiply, rint, clip,
    subtract, square and one matrix-vector product (no per-column broadcasts). Rounding of
    ``y`` differs from the reference's ``w * (1 / s)`` by an ulp, which can swap two
    candidates of (near) equal error; the scale stored is computed as the reference does."""
    nb, bs, n = wb.shape
    wmax = wb.max(axis=1)
    wmin = wb.min(axis=1)
    extreme = np.where(-wmin > wmax, wmin, wmax)  # [nb, N]
    anchor = np.broadcast_to(symmetric_anchor(extreme, positive), extreme.shape)  # the extreme's code - 8
    zero = extreme == 0
    inv = np.float32(1.0) / np.where(zero, np.float32(1.0), extreme)
    inv[zero] = 0.0
    if importance is None:
        d = np.ones((nb, 1, bs), dtype=np.float32)
    else:
        d = np.ascontiguousarray(np.asarray(importance, dtype=np.float32).reshape(nb, 1, bs))
    best_r = np.empty((nb, n), dtype=np.float32)
    cols = max(1, _SYM_SEARCH_CHUNK // max(nb * bs, 1))
    lo, hi = np.float32(-SYMMETRIC_ZERO_CODE), np.float32(QMAX - SYMMETRIC_ZERO_CODE)
    for c0 in range(0, n, cols):
        c1 = min(n, c0 + cols)
        wn = wb[:, :, c0:c1] * inv[:, None, c0:c1]  # in [-1, 1], the extreme at +1
        y = np.empty_like(wn)
        q = np.empty_like(wn)
        best_err = best = None
        for r in grid:
            r = np.float32(r)
            np.multiply(wn, anchor[:, None, c0:c1] / r, out=y)
            np.rint(y, out=q)
            np.clip(q, lo, hi, out=q)
            q -= y
            q *= q
            err = np.matmul(d, q)[:, 0] * (r * r)  # [nb, cols], over (extreme / 8)^2
            if best_err is None:
                best_err, best = err, np.full(err.shape, r, dtype=np.float32)
            else:
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best[better] = r
        best_r[:, c0:c1] = best
    scale = (extreme * best_r / anchor).astype(np.float32)
    scale[scale == 0] = 1.0
    return scale


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


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One lasting pool per worker count (starting threads per batch cost more than the
    small batches' work on a loaded machine)."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxq-gptq")
        return pool


def _parallel(fn: Callable[[T], None], items: Sequence[T], workers: int) -> None:
    """``fn(item)`` for every item, on up to ``workers`` threads (numpy and BLAS release the
    GIL in the heavy work); exceptions propagate."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    for _ in _pool(workers).map(fn, items):
        pass


def _work_units(nprob: int, n: int, workers: int) -> list[tuple[int, int, int, int]]:
    """``(b0, b1, c0, c1)`` slices of problems x columns for the row loop, one per worker:
    columns are independent given ``U`` (each column of ``W`` is its own GPTQ run), so wide
    weights split by columns (even shares, whatever the batch); narrow ones by problems."""
    if workers <= 1:
        return [(0, nprob, 0, n)]
    if n >= _MIN_UNIT_COLS * workers:
        cuts = [(n * i // workers) // 16 * 16 for i in range(workers)] + [n]
        return [(0, nprob, c0, c1) for c0, c1 in zip(cuts, cuts[1:]) if c1 > c0]
    cuts = [nprob * i // workers for i in range(workers + 1)]
    return [(b0, b1, 0, n) for b0, b1 in zip(cuts, cuts[1:]) if b1 > b0]


def gptq_batch(
    ws: list[np.ndarray],
    hs: list[np.ndarray],
    spec: Int4Spec,
    *,
    percdamp: float = 0.01,
    act_order: bool = False,
    lazy_block: int = 32,
    mse: bool = False,
    workers: int | None = None,
) -> list[BlockQuant]:
    """GPTQ of several same-shape problems at once: ``ws[b]`` ``[K, N]`` with Hessian
    ``hs[b]`` ``[K, K]`` (``X^T X``, any positive multiple).

    ``workers``: threads (None: :func:`onnxq.int4._blas.workers`); each runs single-threaded
    BLAS. The per-problem preparation (dampening, static groups, the factorisation) runs one
    problem per thread; the row loop in column (or problem) slices, one per thread. The
    result does not depend on ``workers`` beyond float32 rounding in the matrix products."""
    nprob = len(ws)
    k, n = ws[0].shape
    for w, h in zip(ws, hs):
        if w.shape != (k, n) or h.shape != (k, k):
            raise ValueError(f"GPTQ batch needs equal shapes: weight {w.shape} / Hessian {h.shape} vs ({k}, {n})")
    nw = max(1, _blas.workers() if workers is None else int(workers))
    bs = spec.block_size
    nb = spec.n_blocks(k)
    W = np.empty((nprob, k, n), dtype=np.float32)  # rows in processing order
    U = np.empty((nprob, k, k), dtype=np.float32)
    perms = np.empty((nprob, k), dtype=np.int64)
    diags = np.empty((nprob, k), dtype=np.float32)  # Hessian diagonal in processing order
    scales = np.empty((nprob, nb, n), dtype=np.float32)
    zeros = None if spec.symmetric else np.empty((nprob, nb, n), dtype=np.float32)

    def prepare(b: int) -> None:
        h = np.asarray(hs[b])
        diag64 = np.diag(h).astype(np.float64)
        dead = diag64 <= 0
        diag64[dead] = 1.0
        diag64 += percdamp * float(np.mean(diag64))  # prepare_hessian, without a float64 copy
        imp = diag64.astype(np.float32)  # the dampened diagonal, in the original order
        wb = np.asarray(ws[b], dtype=np.float32)
        if dead.any():
            wb = wb.copy()
            wb[dead, :] = 0.0
        if act_order:
            perm = np.argsort(-imp, kind="stable")
            # static groups from the original weights, all groups at once (zero padding
            # with zero importance changes neither min/max nor the weighted search; only
            # a ragged last block is padded, the rest is a view)
            full = k // bs
            if full:
                blocks = wb[: full * bs].reshape(full, bs, n)
                bimp = imp[: full * bs].reshape(full, bs)

                def search(cols: slice) -> None:
                    s, z = _group_params(blocks[:, :, cols], spec.symmetric, mse, bimp, spec.positive_scales)
                    scales[b, :full, cols] = s
                    if zeros is not None:
                        zeros[b, :full, cols] = z

                # a batch of one (lm_head) leaves the other threads idle: share its columns
                inner = nw if nprob == 1 else 1
                cuts = [n * i // inner for i in range(inner + 1)]
                _parallel(search, [slice(c0, c1) for c0, c1 in zip(cuts, cuts[1:]) if c1 > c0], inner)
            if full < nb:
                tail = np.zeros((bs, n), dtype=np.float32)
                tail[: k - full * bs] = wb[full * bs :]
                timp = np.zeros(bs, dtype=np.float32)
                timp[: k - full * bs] = imp[full * bs :]
                s, z = _group_params(tail[None], spec.symmetric, mse, timp[None], spec.positive_scales)
                scales[b, full:] = s
                if zeros is not None:
                    zeros[b, full:] = z
            np.take(wb, perm, axis=0, out=W[b])
        else:
            perm = np.arange(k)
            W[b] = wb
        perms[b] = perm
        diags[b] = imp[perm]
        # J P^T H P J in float32 in one gather (J: order reversal), dampened diagonal
        rev = perm[::-1]
        # (np.take by axis: 4x faster than np.ix_ indexing at K = 1536)
        hr = np.take(np.take(h.astype(np.float32), rev, axis=0), rev, axis=1)
        hr[np.diag_indices_from(hr)] = imp[rev]
        _upper_cholesky_of_inverse(hr, reversed_=True, out=U[b])

    codes_p = np.empty((nprob, k, n), dtype=np.uint8)  # codes in processing order
    rows = functools.partial(
        _row_loop, bs=bs, lazy_block=lazy_block, act_order=act_order, symmetric=spec.symmetric, mse=mse,
        positive=spec.positive_scales
    )

    def run(unit: tuple[int, int, int, int]) -> None:
        # views (numpy's matrix products take strided rows): updated in place
        b0, b1, c0, c1 = unit
        sl, cs = slice(b0, b1), slice(c0, c1)
        rows(
            W[sl, :, cs], U[sl], perms[sl] // bs, diags[sl], scales[sl, :, cs],
            None if zeros is None else zeros[sl, :, cs], codes_p[sl, :, cs],
        )

    with single_thread():
        _parallel(prepare, range(nprob), nw)
        _parallel(run, _work_units(nprob, n, nw), nw)
        del W, U
        codes = np.empty((nprob, k, n), dtype=np.uint8)

        def unpermute(unit: tuple[int, int, int, int]) -> None:
            b0, b1, c0, c1 = unit
            for b in range(b0, b1):
                codes[b, perms[b], c0:c1] = codes_p[b, :, c0:c1]

        _parallel(unpermute, _work_units(nprob, n, nw), nw)
    return [BlockQuant(spec, codes[b], scales[b], None if zeros is None else zeros[b]) for b in range(nprob)]


def _row_loop(
    W: np.ndarray,
    U: np.ndarray,
    groups: np.ndarray,
    diags: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray | None,
    codes_p: np.ndarray,
    *,
    bs: int,
    lazy_block: int,
    act_order: bool,
    symmetric: bool,
    mse: bool,
    positive: bool = False,
) -> None:
    """GPTQ's row loop over ``W`` ``[B, K, N]`` (rows in processing order; overwritten: each
    row ends as its scaled error) with ``U`` ``[B, K, K]``; writes ``codes_p`` (processing
    order) and, without act-order, ``scales``/``zeros``.

    Rows run in small lazy blocks (a per-row loop: row i is brought up to date with one
    matrix-vector product of the lazy block's earlier errors) inside outer blocks of about
    128 rows (after each lazy block one matrix product brings the rest of the outer block
    up to date; an outer block is brought up to date with all earlier rows' errors in one
    matrix product before it starts). A lazy block divides the
    quantization block and (without act-order) an outer block is a multiple of it, so
    every group starts a lazy block when all earlier updates have reached all its rows,
    and its scale is chosen from the updated rows."""
    nprob, k, n = W.shape
    step = min(bs, max(1, lazy_block))
    while bs % step:
        step -= 1
    outer = _OUTER if act_order else bs * max(1, _OUTER // bs)
    bidx = np.arange(nprob)[:, None]
    lo, hi = (-SYMMETRIC_ZERO_CODE, QMAX - SYMMETRIC_ZERO_CODE) if zeros is None else (0, QMAX)
    tmp = np.empty((nprob, n), dtype=np.float32)
    for o1 in range(0, k, outer):
        o2 = min(o1 + outer, k)
        if o1:
            # left-looking: the outer block takes every earlier row's update at once (the
            # rows before o1 of W now hold their scaled errors): one [o2-o1, o1] x [o1, N]
            # product whose output stays small, instead of updating all later rows of W
            # after each outer block
            W[:, o1:o2] -= np.matmul(U[:, :o1, o1:o2].transpose(0, 2, 1), W[:, :o1])
        for i1 in range(o1, o2, step):
            i2 = min(i1 + step, o2)
            if not act_order and i1 % bs == 0:
                s, z = _group_params(W[:, i1 : i1 + bs], symmetric, mse, diags[:, i1 : i1 + bs], positive)
                scales[:, i1 // bs] = s
                if zeros is not None:
                    zeros[:, i1 // bs] = z
            g = groups[:, i1:i2]
            S1 = scales[bidx, g]  # [B, r, N]
            Z1 = None if zeros is None else zeros[bidx, g]
            W1 = W[:, i1:i2]  # view: each row is brought up to date, then holds its scaled error
            Ut = np.ascontiguousarray(U[:, i1:i2, i1:i2].transpose(0, 2, 1))  # Ut[b, i, j] = U[b, i1 + j, i1 + i]
            dinv = np.float32(1.0) / U[:, np.arange(i1, i2), np.arange(i1, i2)][:, :, None]  # [B, r, 1]
            Q1 = np.empty((nprob, i2 - i1, n), dtype=np.float32)
            for i in range(i2 - i1):
                x = W1[:, i]
                if i:
                    x -= np.matmul(Ut[:, i : i + 1, :i], W1[:, :i])[:, 0]
                q = Q1[:, i]
                np.divide(x, S1[:, i], out=q)
                np.rint(q, out=q)
                if Z1 is not None:
                    q += Z1[:, i]
                np.clip(q, lo, hi, out=q)
                if Z1 is not None:
                    np.subtract(q, Z1[:, i], out=tmp)
                    tmp *= S1[:, i]
                else:
                    np.multiply(q, S1[:, i], out=tmp)
                x -= tmp
                x *= dinv[:, i]  # the row's scaled error, in place of the row
            if Z1 is None:
                Q1 += np.float32(SYMMETRIC_ZERO_CODE)
            codes_p[:, i1:i2] = Q1
            if i2 < o2:
                W[:, i2:o2] -= np.matmul(U[:, i1:i2, i2:o2].transpose(0, 2, 1), W1)


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    spec: Int4Spec,
    *,
    percdamp: float = 0.01,
    act_order: bool = False,
    lazy_block: int = 32,
    mse: bool = False,
    workers: int | None = None,
) -> BlockQuant:
    """GPTQ-quantize ``w`` ``[K, N]`` with Hessian ``h`` ``[K, K]`` (``X^T X``, any scale)."""
    if h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"Hessian shape {h.shape} does not match weight rows {w.shape[0]}")
    return gptq_batch(
        [w], [h], spec, percdamp=percdamp, act_order=act_order, lazy_block=lazy_block, mse=mse, workers=workers
    )[0]
