"""The int4 algorithms against the numpy reference (onnxq.formats / onnxq.qparams)."""

import numpy as np
import pytest

from onnxq.formats import BlockInt4Format
from onnxq.int4.awq import awq_search
from onnxq.int4.blocks import BlockQuant, Int4Spec, pack_codes_kn, rtn, search_scales
from onnxq.int4.gptq import gptq, gptq_batch
from onnxq.int4.hqq import hqq

RNG = np.random.default_rng(0)


def _correlated(t, k, outliers=4, scale=20.0, seed=0):
    rng = np.random.default_rng(seed)
    mix = np.eye(k, dtype=np.float32) + 2 * rng.standard_normal((k, k)).astype(np.float32) / np.sqrt(k)
    x = rng.standard_normal((t, k)).astype(np.float32) @ mix
    x[:, :outliers] *= scale
    return x


def _out_err(x, w, bq):
    y = x @ w
    return float(np.mean((x @ bq.dequantize() - y) ** 2) / np.mean(y**2))


@pytest.mark.parametrize("k,n,bs,sym", [(256, 48, 128, True), (200, 40, 128, True), (100, 33, 32, False), (576, 64, 128, False), (40, 8, 16, True)])
def test_rtn_is_the_reference_byte_for_byte(k, n, bs, sym):
    w = RNG.standard_normal((k, n)).astype(np.float32)
    ref = BlockInt4Format(bs, sym).quantize(w)
    got = rtn(w, Int4Spec(bs, sym)).to_packed()
    assert np.array_equal(got.packed, ref.packed)
    assert np.array_equal(got.scales, ref.scales)
    if sym:
        assert got.zero_points is None
    else:
        assert np.array_equal(got.zero_points, ref.zero_points)
    np.testing.assert_array_equal(rtn(w, Int4Spec(bs, sym)).dequantize(), ref.dequantize())


def test_fast_packing_matches_the_format_declaration():
    codes = RNG.integers(0, 16, (200, 24)).astype(np.uint8)
    zero = RNG.integers(0, 16, (24, 2)).astype(np.uint8)
    fmt = BlockInt4Format(128, symmetric=False)
    assert np.array_equal(pack_codes_kn(codes, 128, zero), fmt.pack_codes(codes, zero))
    assert np.array_equal(pack_codes_kn(codes, 128, None), BlockInt4Format(128).pack_codes(codes, np.full((24, 2), 8)))


def test_rtn_chunks_do_not_change_the_result():
    w = RNG.standard_normal((64, 5000)).astype(np.float32)  # several column chunks
    a = rtn(w, Int4Spec(32, False))
    b = rtn(np.ascontiguousarray(w[:, :17]), Int4Spec(32, False))
    assert np.array_equal(a.codes[:, :17], b.codes) and np.array_equal(a.scales[:, :17], b.scales)


@pytest.mark.parametrize("sym", [True, False])
def test_scale_search_never_worse_than_minmax(sym):
    w = RNG.standard_normal((256, 64)).astype(np.float32)
    w[::37, ::5] *= 6  # a few outliers per block
    e_rtn = np.mean((rtn(w, Int4Spec(128, sym)).dequantize() - w) ** 2)
    e_mse = np.mean((rtn(w, Int4Spec(128, sym), mse=True).dequantize() - w) ** 2)
    assert e_mse < e_rtn


@pytest.mark.parametrize("sym", [True, False])
def test_hqq_reduces_weight_error(sym):
    w = (RNG.standard_normal((300, 64)) * 0.05).astype(np.float32)  # ragged: 300 = 2*128 + 44
    spec = Int4Spec(128, sym)
    e_rtn = np.mean((rtn(w, spec).dequantize() - w) ** 2)
    bq = hqq(w, spec)
    e_hqq = np.mean((bq.dequantize() - w) ** 2)
    if sym:
        # symmetric HQQ may only widen a block's scale: never worse than RTN, and the
        # block's largest weight is never clipped
        assert e_hqq <= e_rtn
        assert np.all(np.abs(bq.scales) >= np.abs(rtn(w, spec).scales) * (1 - 1e-6))
    else:
        assert e_hqq < 0.97 * e_rtn
        assert np.array_equal(bq.zeros, np.rint(bq.zeros))  # integer zero points by default
    bq.to_packed()  # packs as the declared layout


def test_hqq_float_zero_points_pack_as_float():
    w = (RNG.standard_normal((256, 32)) * 0.05).astype(np.float32)
    bq = hqq(w, Int4Spec(64, False), integer_zero=False)
    assert bq.has_fractional_zeros
    p = bq.to_packed()
    assert p.zero_points.dtype == np.float32 and p.zero_points.shape == (32, 4)
    np.testing.assert_allclose(p.dequantize(), bq.dequantize(), rtol=0, atol=1e-6)
    assert np.mean((bq.dequantize() - w) ** 2) < np.mean((rtn(w, Int4Spec(64, False)).dequantize() - w) ** 2)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_reduces_output_error_on_correlated_inputs(sym, act_order):
    k, n = 256, 64
    x = _correlated(2048, k)
    w = (RNG.standard_normal((k, n)) * 0.05).astype(np.float32)
    spec = Int4Spec(64, sym)
    e_rtn = _out_err(x, w, rtn(w, spec))
    e_gptq = _out_err(x, w, gptq(w, x.T.astype(np.float64) @ x, spec, act_order=act_order))
    assert e_gptq < 0.5 * e_rtn


def test_gptq_handles_the_ragged_last_block_and_dead_channels():
    k, n = 200, 24  # 200 = 128 + 72: ORT's GPTQ crashes on this shape
    x = _correlated(1024, k, seed=1)
    x[:, 7] = 0.0  # a dead input channel
    w = (RNG.standard_normal((k, n)) * 0.05).astype(np.float32)
    bq = gptq(w, x.T.astype(np.float64) @ x, Int4Spec(128, True), act_order=True)
    assert bq.codes.shape == (k, n) and bq.scales.shape == (2, n)
    assert np.all(bq.dequantize()[7] == 0)  # dead channel weights are zeroed
    p = bq.to_packed()
    assert p.packed.shape == (n, 2, 64)
    assert _out_err(x, w, bq) < _out_err(x, w, rtn(w, Int4Spec(128, True)))


def test_gptq_batch_equals_one_at_a_time():
    spec = Int4Spec(32, False)
    ws = [(RNG.standard_normal((96, 16)) * 0.1).astype(np.float32) for _ in range(3)]
    hs = []
    for i in range(3):
        x = _correlated(512, 96, seed=10 + i)
        hs.append(x.T.astype(np.float64) @ x)
    batch = gptq_batch(ws, hs, spec, act_order=True)
    for w, h, b in zip(ws, hs, batch):
        one = gptq(w, h, spec, act_order=True)
        assert np.array_equal(one.codes, b.codes) and np.array_equal(one.scales, b.scales)


def test_awq_reduces_output_error_with_outlier_channels():
    k = 256
    x = _correlated(2048, k, outliers=6, scale=30.0, seed=3)
    ws = [(RNG.standard_normal((k, n)) * 0.05).astype(np.float32) for n in (64, 32)]
    h = x.T.astype(np.float64) @ x
    spec = Int4Spec(128, True)
    res = awq_search(ws, h, np.abs(x).mean(axis=0), spec)
    assert res.alpha > 0 and res.loss < res.loss_rtn
    for w in ws:
        e_rtn = _out_err(x, w, rtn(w, spec))
        scaled = rtn(w * res.scales[:, None], spec)
        w_hat = scaled.dequantize() / res.scales[:, None]
        y = x @ w
        e_awq = float(np.mean((x @ w_hat - y) ** 2) / np.mean(y**2))
        assert e_awq < e_rtn


def test_importance_weighted_search_uses_the_activations():
    k, n = 256, 64
    x = _correlated(2048, k, outliers=4, scale=30.0, seed=4)
    w = (RNG.standard_normal((k, n)) * 0.05).astype(np.float32)
    spec = Int4Spec(128, True)
    imp = (x.astype(np.float64) ** 2).sum(axis=0).astype(np.float32)
    plain = rtn(w, spec, mse=True)
    aware = rtn(w, spec, mse=True, importance=imp)
    assert _out_err(x, w, aware) <= _out_err(x, w, plain)


def test_search_scales_shapes():
    wb = RNG.standard_normal((3, 32, 10)).astype(np.float32)
    s, z = search_scales(wb, False)
    assert s.shape == (3, 10) and z.shape == (3, 10) and np.all(z == np.rint(z))
    s, z = search_scales(wb, True)
    assert z is None


def test_blockquant_dequantize_is_the_packed_reference():
    w = RNG.standard_normal((100, 7)).astype(np.float32)
    bq: BlockQuant = rtn(w, Int4Spec(32, False))
    np.testing.assert_array_equal(bq.to_packed().dequantize(), bq.dequantize())


@pytest.mark.parametrize("dtype,k", [(np.float64, 300), (np.float64, 64), (np.float32, 450)])
def test_blocked_inverse_cholesky_matches_lapack(dtype, k):
    from onnxq.int4.gptq import _inverse_cholesky

    x = _correlated(3 * k, k, seed=5).astype(np.float64)
    h = x.T @ x
    # float64: barely dampened; float32: dampened as GPTQ does (1% of the mean diagonal)
    h += (1e-3 if dtype == np.float64 else 0.01 * np.mean(np.diag(h))) * np.eye(k)
    ref = np.linalg.cholesky(h)
    hu = np.triu(np.full((k, k), np.nan), 1) + np.tril(h)  # the upper triangle is never read
    inv = np.full((k, k), np.nan, dtype=dtype)
    diag = np.empty(k, dtype=dtype)
    _inverse_cholesky(hu.astype(dtype), inv, diag)
    tol = 1e-8 if dtype == np.float64 else 2e-3
    assert np.all(np.triu(inv, 1) == 0)
    np.testing.assert_allclose(diag, np.diag(ref), rtol=tol)
    np.testing.assert_allclose(inv @ ref, np.eye(k), rtol=0, atol=tol)


def test_search_scales_in_column_chunks_equals_one_piece(monkeypatch):
    import onnxq.int4.blocks as blocks

    wb = RNG.standard_normal((3, 32, 700)).astype(np.float32)
    imp = RNG.random((3, 32)).astype(np.float32)
    for sym in (True, False):
        whole = search_scales(wb, sym, imp)
        monkeypatch.setattr(blocks, "_SEARCH_CHUNK", 3 * 32 * 64)  # 11 chunks, the last ragged
        chunked = search_scales(wb, sym, imp)
        monkeypatch.undo()
        assert np.array_equal(whole[0], chunked[0])
        assert (whole[1] is None and chunked[1] is None) or np.array_equal(whole[1], chunked[1])


def test_hqq_shrink_skips_only_exact_zeros():
    from onnxq.int4.hqq import _shrink

    x = (RNG.standard_normal(20000) * np.float32(10.0) ** RNG.integers(-4, 2, 20000)).astype(np.float32)
    for beta in (1.0, 10.0, 1000.0):
        for p in (0.3, 0.7, 1.0):
            ax = np.abs(x)
            t = np.power(ax + np.float32(1e-8), np.float32(p - 1.0)) * np.float32(1.0 / beta)
            ref = np.copysign(np.maximum(ax - t, 0.0), x)
            assert np.array_equal(_shrink(x, beta, p), ref)


@pytest.mark.parametrize("k,n,bs,sym", [(256, 48, 64, True), (200, 40, 128, True), (160, 24, 32, False)])
def test_refit_scales_lowers_the_layer_loss_and_recovers_exact_scales(k, n, bs, sym):
    from onnxq.int4.gptq import refit_scales

    x = _correlated(4 * k, k, seed=6)
    h = x.T.astype(np.float64) @ x
    w = (RNG.standard_normal((k, n)) * 0.05).astype(np.float32)
    spec = Int4Spec(bs, sym)

    def loss(bq):
        e = (w - bq.dequantize()).astype(np.float64)
        return float(np.einsum("kn,kj,jn->", e, h, e))

    for bq in (gptq(w, h, spec, act_order=True, percdamp=0.01), rtn(w, spec)):
        re = refit_scales(w, h, bq)
        assert np.array_equal(re.codes, bq.codes) and (bq.zeros is None or np.array_equal(re.zeros, bq.zeros))
        assert loss(re) <= loss(bq) * (1 + 1e-6)
        np.testing.assert_array_equal(re.to_packed().dequantize(), re.dequantize())  # the declared layout
    assert loss(refit_scales(w, h, rtn(w, spec))) < 0.95 * loss(rtn(w, spec))
    # weights that are exactly on a grid: from any wrong scales the refit finds the true ones
    true = rtn(w, spec)
    exact = true.dequantize()
    wrong = BlockQuant(spec, true.codes, true.scales * np.float32(1.3), true.zeros)
    got = refit_scales(exact, h, wrong)
    np.testing.assert_allclose(got.scales, true.scales, rtol=2e-3)


def test_first_token_weight_counts_each_samples_first_position_that_many_times():
    from onnxq.int4.calibrate import ActivationStats

    x = np.random.default_rng(7).standard_normal((2, 5, 8)).astype(np.float32)  # [batch, seq, K]
    plain = ActivationStats("x", np.zeros((8, 8)), np.zeros(8))
    heavy = ActivationStats("x", np.zeros((8, 8)), np.zeros(8), first_token_weight=8.0)
    for st in (plain, heavy):
        st.update(x)
        st.update(x[:, :3])
    x64 = x.astype(np.float64)
    ref = 2 * np.einsum("bsk,bsj->kj", x64[:, :3], x64[:, :3]) + np.einsum("bsk,bsj->kj", x64[:, 3:], x64[:, 3:])
    tol = 1e-5 * np.abs(ref).max()
    np.testing.assert_allclose(plain.hessian, ref, rtol=0, atol=tol)
    np.testing.assert_allclose(heavy.hessian, ref + 2 * 7.0 * x64[:, 0].T @ x64[:, 0], rtol=0, atol=8 * tol)
    assert heavy.n_tokens == plain.n_tokens == 16
    np.testing.assert_array_equal(heavy.abs_sum, plain.abs_sum)  # only H is weighted
    flat = ActivationStats("y", np.zeros((8, 8)), np.zeros(8), first_token_weight=8.0)
    flat.update(x[0])  # rank 2: no sequence axis, nothing weighted
    np.testing.assert_allclose(flat.hessian, x64[0].T @ x64[0], rtol=0, atol=tol)


@pytest.mark.parametrize("n", [200, 333])
def test_triangular_products_match_plain_products(n):
    from onnxq.int4.gptq import _lmul_tri, _syrk_lower

    rng = np.random.default_rng(7)
    t = np.tril(rng.standard_normal((n, n)))
    m = rng.standard_normal((n, 37))
    np.testing.assert_allclose(_lmul_tri(t, m, lower=True), t @ m, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_lmul_tri(t.T, m, lower=False), t.T @ m, rtol=1e-12, atol=1e-12)
    c = rng.standard_normal((n, n))
    a = rng.standard_normal((n, 50))
    got = _syrk_lower(c, a)
    np.testing.assert_allclose(np.tril(got), np.tril(c - a @ a.T), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nb,bs,n", [(3, 32, 700), (5, 128, 64)])
def test_symmetric_search_matches_the_reference_search(nb, bs, n):
    from onnxq.int4.gptq import _GPTQ_GRID, _search_symmetric

    rng = np.random.default_rng(11)
    wb = rng.standard_normal((nb, bs, n)).astype(np.float32) * rng.random((1, 1, n)).astype(np.float32)
    wb[:, :3] *= 6  # outliers: clipping pays somewhere
    wb[1, :, :5] = 0.0  # all-zero blocks
    imp = rng.random((nb, bs)).astype(np.float32)
    imp[-1, bs // 2 :] = 0.0  # a zero-padded tail
    wb[-1, bs // 2 :] = 0.0
    ref, _ = search_scales(wb, True, imp[:, :, None], grid=_GPTQ_GRID)
    got = _search_symmetric(wb, imp, _GPTQ_GRID)
    assert np.all(got[1, :5] == 1.0)

    def err(s):
        q = np.clip(np.rint(wb / s[:, None, :]), -8, 7) * s[:, None, :]
        return np.einsum("bkn,bk->bn", (q - wb).astype(np.float64) ** 2, imp)

    same = got == ref
    assert same.mean() > 0.995
    # where an ulp of rounding picked another candidate, it is as good
    np.testing.assert_allclose(err(got)[~same], err(ref)[~same], rtol=1e-5)


@pytest.mark.parametrize("n,act_order,sym", [(300, True, True), (300, False, False), (40, True, True)])
def test_gptq_batch_threads_give_the_single_thread_result(n, act_order, sym):
    # n = 300: the row loop splits columns across the threads; n = 40: problems
    spec = Int4Spec(32, sym)
    k = 96
    ws = [(RNG.standard_normal((k, n)) * 0.1).astype(np.float32) for _ in range(3)]
    hs = []
    for i in range(3):
        x = _correlated(512, k, seed=20 + i)
        hs.append(x.T.astype(np.float64) @ x)
    one = gptq_batch(ws, hs, spec, act_order=act_order, mse=True, workers=1)
    two = gptq_batch(ws, hs, spec, act_order=act_order, mse=True, workers=2)
    for a, b in zip(one, two):
        assert np.mean(a.codes == b.codes) > 0.999
        np.testing.assert_allclose(a.scales, b.scales, rtol=1e-5)


def test_single_thread_nests_across_threads_and_restores_the_count():
    from concurrent.futures import ThreadPoolExecutor

    from onnxq.int4 import _blas

    lib = _blas._openblas()
    if lib is None:
        pytest.skip("numpy without a bundled OpenBLAS")
    get, put = lib
    before = get()
    put(2)
    try:

        def work(_):
            with _blas.single_thread():
                assert get() == 1
                with _blas.single_thread():
                    assert get() == 1
                return get()

        with ThreadPoolExecutor(4) as ex:
            assert list(ex.map(work, range(16))) == [1] * 16
        assert get() == 2
    finally:
        put(before)


def test_workers_counts_idle_cpus(monkeypatch):
    import os

    from onnxq.int4 import _blas

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert _blas.workers() == min(8, _blas.MAX_WORKERS)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.8, 0.0, 0.0))  # ~1 idle CPU
    assert _blas.workers() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (20.0, 0.0, 0.0))
    assert _blas.workers() == 1


@pytest.mark.parametrize("algorithm", ["rtn", "rtn-mse", "gptq", "gptq-mse"])
def test_positive_scales_keep_every_scale_positive_and_the_extremes_exact(algorithm):
    """positive_scales (TensorRT): a block whose largest-magnitude weight is positive maps it to
    +7 with a positive scale instead of to -8 with a negative one; the error stays close to
    the full-range grid's."""
    rng = np.random.default_rng(21)
    k, n = 256, 96
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((512, k)).astype(np.float32)
    h = (x.T @ x).astype(np.float64)
    mse = algorithm.endswith("mse")
    errs = {}
    for positive in (False, True):
        spec = Int4Spec(128, True, positive)
        bq = rtn(w, spec, mse=mse) if algorithm.startswith("rtn") else gptq(w, h, spec, mse=mse)
        assert (bq.scales > 0).all() if positive else (bq.scales < 0).any()
        w_hat = bq.dequantize()
        errs[positive] = float(np.linalg.norm(x @ (w_hat - w)) / np.linalg.norm(x @ w))
        if positive and not mse and algorithm == "rtn":  # min/max grid: each block's extreme is exact
            blocks = w.reshape(2, 128, n)
            idx = np.abs(blocks).argmax(axis=1)
            ext = np.take_along_axis(blocks, idx[:, None, :], axis=1)[:, 0]
            got = np.take_along_axis(w_hat.reshape(2, 128, n), idx[:, None, :], axis=1)[:, 0]
            np.testing.assert_allclose(got, ext, rtol=1e-6)
    assert errs[True] < 1.15 * errs[False], errs
