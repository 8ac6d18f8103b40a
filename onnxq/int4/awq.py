"""AWQ: activation-aware per-input-channel scaling (Lin et al., 2023).

For a MatMul input ``x`` shared by weights ``W_1..W_m`` (``[K, N_i]``, e.g. q/k/v), find a
positive scale per input channel ``s`` (``[K]``) and quantize ``diag(s) W_i`` instead of
``W_i``, feeding ``x / s``: the product is unchanged in float, but channels that carry large
activations get finer weight steps. ``s = mean|x|^alpha`` (normalised so that
``sqrt(max s * min s) = 1``), ``alpha`` searched on a grid (``alpha = 0`` is plain RTN, so the
search never does worse than RTN on the measured objective).

The objective is the layer's output error on the calibration tokens,
``sum_i tr(E_i^T H E_i)`` with ``H = X^T X`` and ``E_i = W_i - diag(1/s) Q(diag(s) W_i)``,
computed from the Hessian the calibration already collects (no activations are kept):
the top ``rank`` eigenpairs of ``H`` exactly, the rest through the residual diagonal. Columns
are subsampled (at most ``max_columns`` per weight) for the search only.

Where ``x / s`` goes (folded into the op before, or a ``Mul``) is the pass's business.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from onnxq.int4.blocks import Int4Spec, _blocked, quantize_codes, rtn_params
from onnxq.formats import SYMMETRIC_ZERO_CODE

__all__ = ["AwqResult", "awq_search", "HessianProxy"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AwqResult:
    scales: np.ndarray  # float32 [K]
    alpha: float
    loss: float
    loss_rtn: float


class HessianProxy:
    """``tr(E^T H E)`` for many ``E`` cheaply: ``||L^T E||^2 + sum_k r_k ||E_k||^2`` with
    ``L`` the top-``rank`` eigenvectors scaled by sqrt(eigenvalue) and ``r`` the part of the
    diagonal they leave out."""

    def __init__(self, h: np.ndarray, rank: int = 64) -> None:
        h = np.asarray(h, dtype=np.float64)
        k = h.shape[0]
        rank = min(rank, k)
        evals, evecs = np.linalg.eigh(h)
        evals = np.clip(evals[::-1][:rank], 0, None)
        evecs = evecs[:, ::-1][:, :rank]
        self.lt = (evecs * np.sqrt(evals)).T.astype(np.float32)  # [rank, K]
        resid = np.diag(h) - (evecs**2 * evals).sum(axis=1)
        self.resid = np.clip(resid, 0, None).astype(np.float32)  # [K]

    def loss(self, e: np.ndarray) -> float:
        p = self.lt @ e
        return float(np.einsum("ij,ij->", p, p) + (self.resid[:, None] * e * e).sum())


def _fake_quant_rtn(w: np.ndarray, spec: Int4Spec) -> np.ndarray:
    k, n = w.shape
    wb, _ = _blocked(w, spec.block_size)
    s, z = rtn_params(wb, spec.symmetric, spec.positive_scales)
    q = quantize_codes(wb, s, z)
    q -= np.float32(SYMMETRIC_ZERO_CODE) if z is None else z[:, None, :]
    q *= s[:, None, :]
    return q.reshape(-1, n)[:k]


def awq_search(
    weights: list[np.ndarray],
    h: np.ndarray,
    mean_abs: np.ndarray,
    spec: Int4Spec,
    *,
    grid: int = 20,
    rank: int = 64,
    max_columns: int = 1024,
) -> AwqResult:
    """Search the AWQ scales of one input shared by ``weights`` (each ``[K, N_i]``);
    ``h`` ``[K, K]`` is ``X^T X`` (any positive multiple), ``mean_abs`` ``[K]`` is ``mean|x|``."""
    k = h.shape[0]
    proxy = HessianProxy(h, rank)
    subs = []
    for w in weights:
        n = w.shape[1]
        cols = np.arange(n) if n <= max_columns else np.linspace(0, n - 1, max_columns).astype(np.int64)
        subs.append(np.ascontiguousarray(w[:, cols], dtype=np.float32))
    x = np.maximum(np.asarray(mean_abs, dtype=np.float64), 1e-8)
    best = None
    loss_rtn = None
    for i in range(grid):
        alpha = i / grid
        s = x**alpha
        s = s / np.sqrt(s.max() * s.min())
        s = np.clip(s, 1e-4, 1e4).astype(np.float32)
        loss = 0.0
        for w in subs:
            wq = _fake_quant_rtn(w * s[:, None], spec) / s[:, None]
            loss += proxy.loss(w - wq)
        if i == 0:
            loss_rtn = loss
        if best is None or loss < best[2]:
            best = (s, alpha, loss)
    s, alpha, loss = best
    logger.debug("AWQ: K=%d alpha=%.2f loss %.4g (RTN %.4g)", k, alpha, loss, loss_rtn)
    return AwqResult(scales=s, alpha=alpha, loss=loss, loss_rtn=loss_rtn)
