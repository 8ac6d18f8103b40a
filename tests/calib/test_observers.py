"""Observers against straightforward numpy computations."""

import numpy as np
import pytest

from onnxq import qparams as qp
from onnxq.calib.observers import (
    ChannelMaxObserver,
    ChannelMeanObserver,
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MseObserver,
    PercentileObserver,
    kl_divergences,
)

RNG = np.random.default_rng(0)


def _batches():
    return [RNG.standard_normal(2000).astype(np.float32) * s + o for s, o in ((0.1, 0), (1, 0.5), (5, -2), (0.5, 1), (20, 0))]


def test_minmax_matches_numpy_and_ignores_nonfinite():
    xs = _batches()
    o = MinMaxObserver()
    for x in xs:
        o.update(x)
    o.update(np.array([np.nan, np.inf], np.float32))
    allx = np.concatenate(xs)
    assert (o.min, o.max) == (float(allx.min()), float(allx.max()))
    assert o.nonfinite == 2
    p = o.qparams(qp.UINT8)
    ref = qp.choose_qparams(allx, qp.UINT8, qp.per_tensor(allx.shape), symmetric=False)
    assert float(p.scale) == pytest.approx(ref.scale.item()) and int(p.zero_point) == ref.zero_point.item()


def test_minmax_from_graph_extremes_skips_placeholders():
    o = MinMaxObserver()
    o.update(vmin=np.array([np.inf, -1.0]), vmax=np.array([-np.inf, 3.0]))
    assert (o.min, o.max) == (-1.0, 3.0)


@pytest.mark.parametrize("bins", [64, 2048])
def test_histogram_growth_equals_numpy_histogram_on_the_final_grid(bins):
    xs = _batches()
    o = HistogramObserver(bins)
    for x in xs:  # the range grows several times: old bins merge exactly
        o.update(x)
    allx = np.concatenate(xs).astype(np.float64)
    ref, _ = np.histogram(allx, bins=o.edges)
    np.testing.assert_array_equal(o.hist, ref)
    assert o.hist.sum() == allx.size
    assert o.edges[0] <= allx.min() and o.edges[-1] > allx.max()
    assert np.allclose(o.edges / o.width, np.round(o.edges / o.width))  # anchored at 0


def test_histogram_uses_exact_extremes_with_a_subsample():
    x = RNG.standard_normal(10000).astype(np.float32)
    o = HistogramObserver()
    o.update(x[::10], vmin=x.min(), vmax=x.max())
    assert (o.min, o.max) == (float(x.min()), float(x.max()))
    assert o.hist.sum() == 1000


def test_percentile_matches_numpy_within_a_bin():
    xs = _batches()
    o = PercentileObserver(99.0)
    for x in xs:
        o.update(x)
    allx = np.concatenate(xs)
    lo, hi = o.range()
    ref_lo, ref_hi = np.percentile(allx, [1.0, 99.0])
    assert abs(lo - ref_lo) <= o.width and abs(hi - ref_hi) <= o.width


def test_percentile_keeps_zero_side_of_relu_outputs():
    x = np.maximum(RNG.standard_normal(50000), 0).astype(np.float32)
    o = PercentileObserver(99.9)
    o.update(x)
    lo, hi = o.range()
    assert lo == 0.0 and hi == pytest.approx(np.percentile(x, 99.9), abs=3 * o.width)  # sparse tail bins


def _naive_kl(d, nq, i):
    d = d.astype(np.float64)
    p = d[:i].copy()
    p[i - 1] += d[i:].sum()
    m = i // nq
    q = np.zeros(i)
    for g in range(nq):
        a, b = g * m, ((g + 1) * m if g < nq - 1 else i)
        seg = d[a:b]
        nz = seg > 0
        if nz.any():
            q[a:b][nz] = seg.sum() / nz.sum()
    inside = d[:i].sum()
    if q[i - 1] == 0 and p[i - 1] > 0:
        q[i - 1] = 1e-4 * inside
    pn, qn = p / p.sum(), q / inside
    keep = pn > 0
    return float((pn[keep] * np.log(pn[keep] / qn[keep])).sum())


def test_vectorized_kl_equals_the_loop():
    d = np.abs(RNG.standard_normal(5000))
    hist, _ = np.histogram(d, bins=300)
    hist[250] = 0  # empty bins inside, including a last bin of some candidates
    cands = np.arange(16, 301, 7)
    got = kl_divergences(hist, 16, cands)
    want = [_naive_kl(hist, 16, int(i)) for i in cands]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_entropy_clips_a_long_tail_but_not_a_plain_uniform():
    tail = np.concatenate([np.abs(RNG.standard_normal(200000)), [50.0]]).astype(np.float32)
    e = EntropyObserver()
    e.update(tail)
    lo, hi = e.range(qp.UINT8)
    assert 0.0 <= lo < 1e-3 and 3.0 < hi < 20.0
    u = RNG.uniform(0, 1, 100000).astype(np.float32)
    e = EntropyObserver()
    e.update(u)
    assert e.range(qp.UINT8)[1] > 0.95


def test_mse_choice_is_near_the_brute_force_best():
    x = (RNG.standard_normal(100000) * np.where(RNG.uniform(size=100000) < 0.001, 30, 1)).astype(np.float32)
    o = MseObserver()
    o.update(x)
    lo, hi = o.range(qp.UINT8)

    def err(a):
        p = qp.qparams_from_range(np.float64(min(x.min(), 0) * a), np.float64(max(x.max(), 0) * a), qp.UINT8, symmetric=False)
        return float(np.mean((qp.fake_quantize(x, dataclasses_replace(p)) - x) ** 2))

    brute = min(err(a) for a in np.linspace(0.01, 1, 100))
    p = qp.qparams_from_range(np.float64(lo), np.float64(hi), qp.UINT8, symmetric=False)
    chosen = float(np.mean((qp.fake_quantize(x, dataclasses_replace(p)) - x) ** 2))
    assert chosen <= 1.3 * brute
    assert chosen < err(1.0)


def dataclasses_replace(p):
    import dataclasses

    return dataclasses.replace(p, block_size=(100000,) if p.scale.ndim == 1 else ())


def test_channel_observers():
    xs = [RNG.standard_normal((2, 4, 3, 3)).astype(np.float32) for _ in range(3)]
    mean, mx = ChannelMeanObserver(1, 4, 4), ChannelMaxObserver(1, 4, 4)
    for x in xs:
        mean.update(x.mean(axis=(0, 2, 3)), weight=2)
        mx.update(x.max(axis=(0, 2, 3)))
    mean.update(np.full(4, np.nan))  # an untaken If branch
    allx = np.concatenate(xs)
    np.testing.assert_allclose(mean.mean, allx.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(mx.max, allx.max(axis=(0, 2, 3)))


def test_entropy_and_mse_do_not_spread_a_relu_zero_spike_over_the_first_bin():
    """Half the values of a ReLU output are exactly 0 (representable exactly): KL entropy
    calibration that folded them into bin [0, w) and smeared them over the merged bins clipped
    such tensors at ~1.8 sigma instead of ~4."""
    x = np.maximum(RNG.standard_normal(200000), 0).astype(np.float32)
    e = EntropyObserver()
    e.update(x)
    assert e.zeros == pytest.approx(np.count_nonzero(x == 0))
    assert e.range(qp.UINT8)[1] > 3.0
    dense = EntropyObserver()
    dense.update(x[x > 0])
    dense.update(np.zeros(1, np.float32))
    assert e.range(qp.UINT8)[1] == pytest.approx(dense.range(qp.UINT8)[1], rel=0.05)
    m = MseObserver()
    m.update(x)
    assert m.range(qp.UINT8)[1] > 3.0


def test_percentile_keeps_the_extremes_for_16_bit_types():
    x = (RNG.standard_normal(100000) * np.where(RNG.uniform(size=100000) < 0.001, 30, 1)).astype(np.float32)
    o = PercentileObserver(99.99)
    o.update(x)
    assert o.range(qp.UINT16) == (o.min, o.max)
    lo, hi = o.range(qp.UINT8)
    assert o.min < lo < hi < o.max and o.exact_extremes is False
    assert PercentileObserver(100).exact_extremes is True


def test_entropy_keeps_a_constant_tensor_whole():
    """One value everywhere (an all-ones input): the KL search had clipped it to half."""
    from onnxq.calib.observers import EntropyObserver

    obs = EntropyObserver()
    for _ in range(4):
        obs.update(np.ones(256, np.float32))
    lo, hi = obs.range()
    assert hi >= 1.0 and lo <= 1.0


def test_entropy_clips_at_most_a_thousandth_of_the_values():
    """KL alone cuts a distribution that is not bell-shaped far inside its mass (a swish's
    tail); the threshold keeps at least 99.9 % of the non-zero values."""
    x = np.concatenate([RNG.exponential(0.3, 100000), RNG.uniform(2.0, 8.0, 2000)]).astype(np.float32)
    e = EntropyObserver()
    e.update(x)
    hi = e.range(qp.UINT8)[1]
    assert np.mean(x > hi) <= 1e-3 + 1e-4, (hi, np.mean(x > hi))
    plain = np.abs(RNG.standard_normal(200000)).astype(np.float32)  # where KL's cut is inside 99.9 %
    e = EntropyObserver()
    e.update(plain)
    assert e.range(qp.UINT8)[1] >= np.quantile(plain, 0.999) - 0.01
