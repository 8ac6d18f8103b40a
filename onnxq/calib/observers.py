"""Observers: collect statistics in ``update``, choose a range in ``qparams``.

State is fixed-size (a running min/max, or a histogram of ``bins`` counts), so memory does
not grow with the number of samples.

``update(x, vmin=..., vmax=...)``: ``x`` holds values of the tensor (all of them, or a
sample: histogram observers are fine with a subsample); ``vmin``/``vmax`` are the exact
extremes when the caller computed them elsewhere (inside the ORT graph). Non-finite values
are ignored and counted.

Histogram observers keep ``bins`` equal-width bins on a grid anchored at 0 (every edge is
``k * width``). When new data falls outside the grid, the width doubles as often as needed
and old bins merge exactly into new ones (each old bin lies inside one new bin), so growth
loses no information beyond the coarser resolution. They also count the values that are
exactly 0 (``zeros``): 0 is always exactly representable (the zero point is an integer), so
range searches must not treat the spike of a ReLU output's zeros as mass spread over the
first bin (KL entropy calibration did, and clipped ReLU outputs far too hard).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from onnxq import qparams as qp

__all__ = [
    "Observer",
    "MinMaxObserver",
    "HistogramObserver",
    "PercentileObserver",
    "EntropyObserver",
    "MseObserver",
    "AutoObserver",
    "make_observer",
    "ChannelMeanObserver",
    "ChannelMaxObserver",
    "kl_divergences",
    "DEFAULT_BINS",
]

DEFAULT_BINS = 2048


class Observer:
    """Base: running exact min/max of everything seen."""

    needs_samples: ClassVar[bool] = False
    # whether the range is the exact extremes (else extremes from a subsample are enough:
    # the range comes from the distribution, the extremes only bound it)
    exact_extremes: ClassVar[bool] = True
    method: ClassVar[str] = ""

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.updates = 0
        self.nonfinite = 0
        self.infinite = 0  # +-inf values in the data (an additive -inf mask), left out of the range

    @property
    def seen(self) -> bool:
        return self.min <= self.max

    def _finite(self, x: np.ndarray | None) -> np.ndarray | None:
        if x is None:
            return None
        x = np.asarray(x).reshape(-1)
        if x.dtype.kind != "f":
            return x.astype(np.float32)
        ok = np.isfinite(x)
        if not ok.all():
            self.nonfinite += int(x.size - ok.sum())
            self.infinite += int(np.isinf(x).sum())
            x = x[ok]
        return x

    def _extremes(self, x: np.ndarray | None, vmin, vmax) -> tuple[float, float] | None:
        """(lo, hi) of this update from the exact extremes if given, else from ``x``
        (already finite); None when there is nothing finite."""
        if vmin is not None and vmax is not None:
            if np.ndim(vmin) == 0 and np.ndim(vmax) == 0:  # the common case: two scalars
                lo, hi = float(vmin), float(vmax)
                if math.isfinite(lo) and math.isfinite(hi):
                    return lo, hi
            lo_a = np.asarray(vmin, dtype=np.float64).ravel()
            hi_a = np.asarray(vmax, dtype=np.float64).ravel()
            self.nonfinite += int(np.isnan(lo_a).sum() + np.isnan(hi_a).sum())
            # a placeholder is (+inf, -inf); a -inf minimum or +inf maximum is data
            self.infinite += int((lo_a == -np.inf).sum() + (hi_a == np.inf).sum())
            lo_a = lo_a[np.isfinite(lo_a)]  # +inf / -inf: placeholders from untaken If branches
            hi_a = hi_a[np.isfinite(hi_a)]
            if lo_a.size == 0 or hi_a.size == 0:
                return None
            return float(lo_a.min()), float(hi_a.max())
        if x is not None and x.size:
            return float(x.min()), float(x.max())
        return None

    def update(self, x: np.ndarray | None = None, *, vmin=None, vmax=None) -> None:
        ext = self._extremes(self._finite(x) if vmin is None or vmax is None else None, vmin, vmax)
        if ext is None:
            return
        self.updates += 1
        self.min = min(self.min, ext[0])
        self.max = max(self.max, ext[1])

    def range(self, qtype: qp.QType = qp.UINT8, *, symmetric: bool = False) -> tuple[float, float]:
        """The chosen [rmin, rmax] (before widening to include 0)."""
        self._require_data()
        return self.min, self.max

    def qparams(self, qtype: qp.QType = qp.UINT8, *, symmetric: bool = False) -> qp.QParams:
        lo, hi = self.range(qtype, symmetric=symmetric)
        return qp.qparams_from_range(np.float64(lo), np.float64(hi), qtype, symmetric=symmetric)

    def _require_data(self) -> None:
        if not self.seen:
            raise ValueError("the observer saw no finite values")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min={self.min:.6g}, max={self.max:.6g}, updates={self.updates})"


class MinMaxObserver(Observer):
    """[min, max] of everything seen."""

    method = "minmax"


class HistogramObserver(Observer):
    """Exact min/max plus a fixed-size histogram (see the module docstring)."""

    needs_samples = True
    exact_extremes = False

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        super().__init__()
        if bins < 16:
            raise ValueError("bins must be >= 16")
        self.bins = int(bins)
        self.width = 0.0  # bin width; 0 until the first update
        self.start = 0  # absolute index (in units of width) of the first bin
        self._hist = np.zeros(self.bins, dtype=np.float64)
        self._pending: list[np.ndarray] = []  # samples not yet binned (binned in bulk)
        self._pending_size = 0
        self.zeros = 0.0  # how many of the binned values were exactly 0 (they lie in bin [0, w))

    flush_size: ClassVar[int] = 1 << 16

    @property
    def hist(self) -> np.ndarray:
        self._flush()
        return self._hist

    # -- grid -------------------------------------------------------------------------------

    def _occupied(self) -> tuple[int, int] | None:
        nz = np.flatnonzero(self._hist)
        if nz.size == 0:
            return None
        return self.start + int(nz[0]), self.start + int(nz[-1])

    def _init_grid(self, lo: float, hi: float) -> None:
        span = hi - lo
        if span <= 0:
            span = max(abs(hi), abs(lo), 1e-12)
        self.width = span / (self.bins - 2)
        self.start = math.floor(lo / self.width)
        while (self.start + self.bins) * self.width <= hi:  # float safety
            self.width *= 2
            self.start = math.floor(lo / self.width)

    def _fits(self, lo: float, hi: float) -> bool:
        return math.floor(lo / self.width) >= self.start and math.floor(hi / self.width) <= self.start + self.bins - 1

    def _grow(self, lo: float, hi: float) -> None:
        """Widen the grid (width * 2**m) to cover [lo, hi] and every occupied bin."""
        occ = self._occupied()
        m = 0
        while True:
            m += 1
            w = self.width * 2.0**m
            idx_lo = math.floor(lo / w)
            idx_hi = math.floor(hi / w)
            if occ is not None:
                idx_lo = min(idx_lo, math.floor(occ[0] / 2.0**m))
                idx_hi = max(idx_hi, math.floor(occ[1] / 2.0**m))
            if idx_hi - idx_lo <= self.bins - 1:
                break
        new = np.zeros(self.bins, dtype=np.float64)
        if occ is not None:
            absolute = self.start + np.arange(self.bins, dtype=np.float64)
            target = np.floor(absolute / 2.0**m).astype(np.int64) - idx_lo
            keep = self._hist > 0
            np.add.at(new, target[keep], self._hist[keep])
        self._hist = new
        self.width = w
        self.start = idx_lo

    def covering(self, lo: float, hi: float) -> "HistogramObserver":
        """A copy whose grid also covers [lo, hi] (e.g. to include 0)."""
        self._flush()
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._hist = self._hist.copy()
        if other.width and not other._fits(lo, hi):
            other._grow(lo, hi)
        return other

    # -- update -----------------------------------------------------------------------------

    def update(self, x: np.ndarray | None = None, *, vmin=None, vmax=None) -> None:
        x = self._finite(x)
        ext = self._extremes(x, vmin, vmax)
        if ext is None:
            return
        lo, hi = ext
        if x is not None and x.size:  # a sample may reach past given extremes by rounding
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        self.updates += 1
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        if x is None or x.size == 0:
            return
        self.zeros += float(x.size - np.count_nonzero(x))
        # binning many small samples at once costs far less Python overhead per run
        self._pending.append(x)
        self._pending_size += x.size
        if self._pending_size >= self.flush_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        x = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_size = [], 0
        if self.width == 0.0:
            self._init_grid(self.min, self.max)
        elif not self._fits(self.min, self.max):
            self._grow(self.min, self.max)
        scaled = x.astype(np.float64) * (1.0 / self.width)
        idx = np.floor(scaled, out=scaled).astype(np.int64)
        idx -= self.start
        np.clip(idx, 0, self.bins - 1, out=idx)
        self._hist += np.bincount(idx, minlength=self.bins)

    # -- views ------------------------------------------------------------------------------

    @property
    def edges(self) -> np.ndarray:
        self._flush()
        return (self.start + np.arange(self.bins + 1, dtype=np.float64)) * self.width

    @property
    def centers(self) -> np.ndarray:
        self._flush()
        return (self.start + 0.5 + np.arange(self.bins, dtype=np.float64)) * self.width

    def _require_hist(self) -> None:
        self._require_data()
        if self.hist.sum() == 0:
            raise ValueError("the histogram observer was given extremes but no values")


class PercentileObserver(HistogramObserver):
    """[q(100 - p), q(p)] of the values (a one-signed tensor keeps its exact 0-side); for
    types wider than 8 bits, [min, max]."""

    method = "percentile"

    def __init__(self, percentile: float = 99.999, bins: int = DEFAULT_BINS) -> None:
        super().__init__(bins)
        if not 0 < percentile <= 100:
            raise ValueError("percentile must be in (0, 100]")
        self.percentile = float(percentile)
        self.exact_extremes = self.percentile >= 100  # the range is then [min, max] itself

    def _quantile(self, q: float) -> float:
        cdf = np.cumsum(self.hist)
        total = cdf[-1]
        target = q * total
        k = int(np.searchsorted(cdf, target, side="left"))
        k = min(k, self.bins - 1)
        before = cdf[k - 1] if k > 0 else 0.0
        frac = 0.0 if self.hist[k] == 0 else (target - before) / self.hist[k]
        return float((self.start + k + min(max(frac, 0.0), 1.0)) * self.width)

    def range(self, qtype: qp.QType = qp.UINT8, *, symmetric: bool = False) -> tuple[float, float]:
        self._require_hist()
        p = self.percentile / 100.0
        if p >= 1.0 or qtype.bits > 8:
            # 16-bit steps are 256x finer: clipping the tail no longer buys resolution
            return self.min, self.max
        hi = min(self._quantile(p), self.max) if self.max > 0 else self.max
        lo = max(self._quantile(1.0 - p), self.min) if self.min < 0 else self.min
        return lo, hi


def _without_exact_zeros(obs: HistogramObserver) -> np.ndarray:
    """The histogram with the exact zeros taken out of bin [0, w)."""
    hist = obs.hist.copy()
    zero = -obs.start
    if 0 <= zero < hist.size:
        hist[zero] = max(hist[zero] - obs.zeros, 0.0)
    return hist


def _one_sided(obs: HistogramObserver, *, exclude_zeros: bool = True) -> tuple[np.ndarray, bool]:
    """The distribution of |x| on bins [0, w), [w, 2w), ... and whether x had both signs.

    The grid is anchored at 0, so folding negative bins onto positive ones is exact. With
    ``exclude_zeros`` the values that are exactly 0 are left out of bin [0, w): quantization
    represents them exactly, whatever the range."""
    h = obs.covering(0.0, 0.0)
    zero = -h.start  # relative index of the bin [0, w)
    pos = h.hist[zero:].copy()
    if exclude_zeros and pos.size:
        pos[0] = max(pos[0] - h.zeros, 0.0)
    neg = h.hist[:zero][::-1]
    n = max(pos.size, neg.size)
    out = np.zeros(n, dtype=np.float64)
    out[: pos.size] += pos
    out[: neg.size] += neg
    two_sided = obs.min < 0 and obs.max > 0
    last = np.flatnonzero(out)
    return (out[: last[-1] + 1] if last.size else out), two_sided


def kl_divergences(dist: np.ndarray, num_quant: int, candidates: np.ndarray) -> np.ndarray:
    """KL(P || Q) for each candidate threshold (a bin count ``i`` >= ``num_quant``).

    P: ``dist[:i]`` with the mass beyond ``i`` added to bin ``i - 1``. Q: ``dist[:i]``
    merged into ``num_quant`` groups of ``i // num_quant`` bins (the last group takes the
    remainder), each group's mass spread evenly over its non-empty bins. Both normalized;
    where P has the outlier mass on an empty last bin, q there is 1e-4 (smoothing).
    Vectorized over candidates: O(len(candidates) * num_quant)."""
    d = np.asarray(dist, dtype=np.float64)
    total = d.sum()
    cs = np.concatenate([[0.0], np.cumsum(d)])
    nzc = np.concatenate([[0], np.cumsum(d > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        dlogd = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    csl = np.concatenate([[0.0], np.cumsum(dlogd)])
    i = np.asarray(candidates, dtype=np.int64)
    m = i // num_quant
    g = np.arange(num_quant + 1, dtype=np.int64)
    bounds = m[:, None] * g[None, :]
    bounds[:, -1] = i
    s = cs[bounds[:, 1:]] - cs[bounds[:, :-1]]
    nz = nzc[bounds[:, 1:]] - nzc[bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        group_term = np.where(s > 0, s * np.log(np.where(s > 0, s, 1.0) / np.maximum(nz, 1)), 0.0).sum(axis=1)
    inside = cs[i]  # sum of dist[:i] (= sum of Q before normalizing)
    last = d[i - 1]
    outliers = total - inside
    p_last = last + outliers
    s_last, nz_last = s[:, -1], np.maximum(nz[:, -1], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        q_last = np.where(last > 0, s_last / nz_last, 1e-4 * inside)
        sum_plogp = csl[i - 1] + np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
        sum_plogq = group_term + np.where(outliers > 0, outliers * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
        sum_plogq = np.where(last > 0, sum_plogq, group_term + np.where(p_last > 0, p_last * np.log(q_last), 0.0))
        kl = (sum_plogp - total * np.log(total) - sum_plogq + total * np.log(inside)) / total
    return np.where(inside > 0, kl, np.inf)


class EntropyObserver(HistogramObserver):
    """The threshold that minimizes the KL divergence between the distribution of |x| and
    its quantized version (TensorRT's entropy calibration), searched over the histogram."""

    method = "entropy"
    max_candidates: ClassVar[int] = 256
    # the threshold clips at most this share of the non-zero values: KL alone clips far too hard
    # where |x| is not bell-shaped (a sigmoid's mass near 1 cut at 0.5, a swish's tail at 1.5
    # of 7.5: a CNN+LSTM OCR model at 4.5 dB output SQNR instead of 23)
    max_clipped: ClassVar[float] = 1e-3

    def range(self, qtype: qp.QType = qp.UINT8, *, symmetric: bool = False) -> tuple[float, float]:
        self._require_hist()
        dist, two_sided = _one_sided(self)
        levels = qtype.qmax - qtype.qmin
        num_quant = (levels + 1) // 2 if (two_sided or symmetric) else levels
        n = dist.size
        if n <= num_quant or np.count_nonzero(dist) <= 2:  # a constant or two values: nothing to clip
            return self.min, self.max
        cum = np.cumsum(dist)
        floor = int(np.searchsorted(cum, (1.0 - self.max_clipped) * cum[-1])) + 1  # bins kept whole
        first = max(num_quant, min(floor, n))
        step = max(1, (n - first) // self.max_candidates)
        candidates = np.arange(first, n + 1, step, dtype=np.int64)
        if candidates[-1] != n:
            candidates = np.append(candidates, n)
        kl = kl_divergences(dist, num_quant, candidates)
        best = int(candidates[int(np.argmin(kl))])
        threshold = best * self.width
        return max(self.min, -threshold), min(self.max, threshold)


class MseObserver(HistogramObserver):
    """The range [a * lo, a * hi] (a in (0, 1]) with the least expected squared
    quantization error, estimated from the histogram's bin centres."""

    method = "mse"
    steps: ClassVar[int] = 100

    def range(self, qtype: qp.QType = qp.UINT8, *, symmetric: bool = False) -> tuple[float, float]:
        self._require_hist()
        lo, hi = min(self.min, 0.0), max(self.max, 0.0)
        if symmetric:
            a = max(-lo, hi)
            lo, hi = -a, a
        hist = _without_exact_zeros(self)  # exact zeros quantize without error
        keep = hist > 0
        if not keep.any():
            return self.min, self.max
        counts = hist[keep]
        centers = np.clip(self.centers[keep], self.min, self.max)
        alphas = np.linspace(1.0 / self.steps, 1.0, self.steps)
        rmin, rmax = alphas * lo, alphas * hi
        p = qp.qparams_from_range(rmin, rmax, qtype, symmetric=symmetric)
        scale = p.scale.astype(np.float64)[:, None]
        zp = p.zero_point.astype(np.float64)[:, None]
        q = np.clip(np.rint(centers[None, :] / scale) + zp, qtype.qmin, qtype.qmax)
        err = (((q - zp) * scale - centers[None, :]) ** 2 * counts[None, :]).sum(axis=1)
        best = int(np.argmin(err))
        return max(float(rmin[best]), self.min), min(float(rmax[best]), self.max)


class AutoObserver(MseObserver):
    """For ``calibration="auto"``: the histogram of an mse observer, fed exactly as one (the
    sample and its extremes: a range search over exact extremes that an outlier stretches is
    coarser), plus the exact extremes on the side (``exact``) for the minmax candidate."""

    method = "auto"
    exact_extremes = True  # the probe computes the exact extremes: they go to ``exact``

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        super().__init__(bins)
        self.exact = MinMaxObserver()

    def update(self, x: np.ndarray | None = None, *, vmin=None, vmax=None) -> None:
        self.exact.update(x, vmin=vmin, vmax=vmax)
        if x is not None and np.size(x):
            super().update(x)
        elif not self.seen:  # extremes only, and no sample yet: they bound the histogram
            super().update(x, vmin=vmin, vmax=vmax)


class ChannelMeanObserver:
    """Running mean of a tensor per channel (``axis`` of a rank-``rank`` tensor with
    ``channels`` channels), from per-run channel means weighted by the batch rows. Used
    for bias correction. Rows containing NaN (untaken If branches) are skipped."""

    kind = "mean"

    def __init__(self, axis: int, rank: int, channels: int) -> None:
        self.axis, self.rank, self.channels = axis, rank, channels
        self.sum = np.zeros(channels, dtype=np.float64)
        self.count = 0.0

    def update(self, means: np.ndarray, weight: float = 1.0) -> None:
        m = np.asarray(means, dtype=np.float64).reshape(-1, self.channels)
        m = m[np.isfinite(m).all(axis=1)]
        self.sum += m.sum(axis=0) * weight
        self.count += m.shape[0] * weight

    @property
    def mean(self) -> np.ndarray | None:
        return self.sum / self.count if self.count else None


class ChannelMaxObserver:
    """Running maximum of a tensor per channel (for channel equalization)."""

    kind = "max"

    def __init__(self, axis: int, rank: int, channels: int) -> None:
        self.axis, self.rank, self.channels = axis, rank, channels
        self.max = np.full(channels, -np.inf, dtype=np.float64)

    def update(self, maxes: np.ndarray, weight: float = 1.0) -> None:
        m = np.asarray(maxes, dtype=np.float64).reshape(-1, self.channels)
        m = m[np.isfinite(m).all(axis=1)]
        if m.size:
            self.max = np.maximum(self.max, m.max(axis=0))


def make_observer(method: str, *, percentile: float = 99.999, bins: int = DEFAULT_BINS) -> Observer:
    if method == "minmax":
        return MinMaxObserver()
    if method == "percentile":
        return PercentileObserver(percentile, bins)
    if method == "entropy":
        return EntropyObserver(bins)
    if method == "mse":
        return MseObserver(bins)
    raise ValueError(f"unknown calibration method {method!r}; choose minmax, percentile, entropy or mse")


class ChannelNegMaxObserver(ChannelMaxObserver):
    """Running maximum of ``-x`` per channel, i.e. minus the channel minimum (channel
    equalization of tensors that take both signs)."""

    kind = "negmax"
