"""com.onnxq.MatMulBlockInt4 (CPU) against the numpy reference on the same packed bytes."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.formats import BlockInt4Format, PackedBlockInt4

from tests.ops.opmodels import int8_reference, op_model, packed_weight, reference, rel_err, session

TOL = 1e-5

# (K, N, block_size, symmetric, M): ragged K, odd N, all block sizes, M in {1, 3, 16, 129}
SHAPES = [
    (256, 33, 16, True, 1),
    (100, 7, 16, False, 3),  # 7 blocks of 16: a column is 56 bytes, a partial SIMD chunk
    (300, 31, 32, False, 16),
    (1000, 65, 64, True, 129),
    (4096, 17, 128, False, 3),
    (777, 19, 128, True, 16),
    (4000, 40, 256, False, 1),
    (513, 9, 256, True, 129),
]


@pytest.mark.parametrize("k,n,bs,sym,m", SHAPES)
def test_matches_reference(ops_lib, k, n, bs, sym, m):
    p = packed_weight(k, n, bs, sym, seed=k + n)
    rng = np.random.default_rng(m)
    bias = rng.standard_normal(n).astype(np.float32) if m % 2 else None
    a = rng.standard_normal((m, k)).astype(np.float32)
    y = session(op_model(p, bias=bias), ops_lib).run(None, {"A": a})[0]
    assert y.shape == (m, n) and y.dtype == np.float32
    assert rel_err(y, reference(a, p, bias)) <= TOL


@pytest.mark.parametrize("k,n,bs,sym,m", SHAPES[::2])
def test_int8_activations_match_emulation(ops_lib, k, n, bs, sym, m):
    """accuracy_level 4 equals the numpy emulation of the int8 A quantization, and stays
    close to the exact result."""
    p = packed_weight(k, n, bs, sym, seed=7)
    a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    y = session(op_model(p, accuracy_level=4), ops_lib).run(None, {"A": a})[0]
    assert rel_err(y, int8_reference(a, p)) <= TOL
    assert rel_err(y, reference(a, p)) <= 3e-2


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512", "vnni"])
@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_each_isa_and_kernel_path(ops_lib, monkeypatch, isa, path):
    """ONNXQ_ISA caps the instruction set, ONNXQ_KERNEL_PATH forces the small-M or panel
    kernel (both read when the session creates the kernel)."""
    import onnxruntime as ort

    monkeypatch.setenv("ONNXQ_ISA", isa)
    monkeypatch.setenv("ONNXQ_KERNEL_PATH", path)
    cases = [(300, 37, 16, False, 5), (1000, 33, 64, True, 2), (640, 21, 128, False, 9), (520, 5, 256, True, 3)]
    for k, n, bs, sym, m in cases:
        p = packed_weight(k, n, bs, sym, seed=k)
        a = np.random.default_rng(k).standard_normal((m, k)).astype(np.float32)
        try:
            s0 = session(op_model(p), ops_lib)
            s4 = session(op_model(p, accuracy_level=4), ops_lib)
        except ort.capi.onnxruntime_pybind11_state.Fail as e:  # CPU lacks the ISA
            assert "this CPU supports at most" in str(e)
            pytest.skip(f"CPU lacks {isa}")
        assert rel_err(s0.run(None, {"A": a})[0], reference(a, p)) <= TOL, (k, n, bs)
        assert rel_err(s4.run(None, {"A": a})[0], int8_reference(a, p)) <= TOL, (k, n, bs)


@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_row_tilings(ops_lib, monkeypatch, path):
    """Every row count up to a few register tiles (the panel kernel splits M into tiles)."""
    monkeypatch.setenv("ONNXQ_KERNEL_PATH", path)
    p = packed_weight(272, 35, 16, False, seed=3)
    s0, s4 = session(op_model(p), ops_lib), session(op_model(p, accuracy_level=4), ops_lib)
    for m in (1, 2, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 22, 29, 64):
        a = np.random.default_rng(m).standard_normal((m, 272)).astype(np.float32)
        assert rel_err(s0.run(None, {"A": a})[0], reference(a, p)) <= TOL, m
        assert rel_err(s4.run(None, {"A": a})[0], int8_reference(a, p)) <= TOL, m


@pytest.mark.parametrize("k,bs,sym", [(16384 + 300, 128, True), (16384 + 4096 + 64, 64, False)])
def test_int8_panel_kernel_long_k(ops_lib, monkeypatch, k, bs, sym):
    """K over the int8 panel depth (16384 k): the panel kernel carries Y across k panels."""
    monkeypatch.setenv("ONNXQ_KERNEL_PATH", "gemm")
    p = packed_weight(k, 37, bs, sym, seed=5)
    s4 = session(op_model(p, accuracy_level=4), ops_lib)
    for m in (3, 16):
        a = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
        assert rel_err(s4.run(None, {"A": a})[0], int8_reference(a, p)) <= TOL, m


def test_bad_isa_name_is_an_error(ops_lib, monkeypatch):
    monkeypatch.setenv("ONNXQ_ISA", "sse9")
    p = packed_weight(64, 4, 32, True)
    with pytest.raises(Exception, match="ONNXQ_ISA=sse9 is not one of"):
        session(op_model(p), ops_lib)


def test_ragged_tail_codes_are_ignored(ops_lib):
    """Bytes past K in the last block need not hold the zero point."""
    k, n, bs = 200, 6, 64
    p = packed_weight(k, n, bs, False)
    packed = p.packed.copy()
    tail = np.random.default_rng(0).integers(0, 256, size=packed[:, -1, (k % bs) // 2 :].shape, dtype=np.uint8)
    packed[:, -1, (k % bs) // 2 :] = tail
    a = np.random.default_rng(2).standard_normal((4, k)).astype(np.float32)
    for level in (0, 4):
        y = session(op_model(p, packed=packed, accuracy_level=level), ops_lib).run(None, {"A": a})[0]
        ref = reference(a, p) if level == 0 else int8_reference(a, p)
        assert rel_err(y, ref) <= TOL


def test_batched_rank3_input_and_threads(ops_lib):
    p = packed_weight(384, 150, 32, False)
    model = op_model(p, m_dims=("B", "S"))
    for batch in (1, 2):  # 3 rows: the small-M kernel; 6 rows: the panel kernel
        a = np.random.default_rng(3).standard_normal((batch, 3, 384)).astype(np.float32)
        y1 = session(model, ops_lib, threads=1).run(None, {"A": a})[0]
        y2 = session(model, ops_lib, threads=2).run(None, {"A": a})[0]
        assert y1.shape == (batch, 3, 150)
        assert np.array_equal(y1, y2)
        assert rel_err(y1, reference(a.reshape(-1, 384), p).reshape(batch, 3, 150)) <= TOL
    empty = session(model, ops_lib).run(None, {"A": np.zeros((0, 3, 384), np.float32)})[0]
    assert empty.shape == (0, 3, 150)


def test_float16(ops_lib):
    p = packed_weight(320, 24, 64, False)
    rng = np.random.default_rng(4)
    a = rng.standard_normal((5, 320)).astype(np.float16)
    bias = rng.standard_normal(24).astype(np.float16)
    for level in (0, 4):
        y = session(op_model(p, dtype=np.float16, bias=bias, accuracy_level=level), ops_lib).run(None, {"A": a})[0]
        assert y.dtype == np.float16
        p16 = PackedBlockInt4(p.fmt, p.k, p.n, p.packed, p.scales.astype(np.float16).astype(np.float32), p.zero_points)
        ref = reference(a.astype(np.float32), p16, bias.astype(np.float32))
        assert rel_err(y, ref) <= (2e-3 if level == 0 else 3e-2)


def test_float_zero_points(ops_lib):
    """HQQ-style fractional zero points: float [N, n_blocks] of A's type."""
    p = packed_weight(256, 12, 32, False)
    zf = p.zero_point_values() + np.random.default_rng(5).uniform(-0.5, 0.5, size=(12, 8)).astype(np.float32)
    pf = PackedBlockInt4(p.fmt, p.k, p.n, p.packed, p.scales, zf)
    a = np.random.default_rng(6).standard_normal((3, 256)).astype(np.float32)
    y = session(op_model(p, zero_points=zf), ops_lib).run(None, {"A": a})[0]
    assert rel_err(y, reference(a, pf)) <= TOL


@pytest.mark.parametrize("k,n,bs,sym", [(512, 40, 32, True), (1000, 23, 128, False), (272, 9, 16, False)])
def test_same_as_matmulnbits_on_identical_bytes(ops_lib, k, n, bs, sym):
    """ORT's com.microsoft.MatMulNBits reads the same bytes. Both quantize A per block the
    same way at accuracy_level 4, so that path agrees as closely as the exact one."""
    p = packed_weight(k, n, bs, sym, seed=11)
    a = np.random.default_rng(8).standard_normal((6, k)).astype(np.float32)
    ours = session(op_model(p), ops_lib).run(None, {"A": a})[0]
    theirs = session(op_model(p, op="MatMulNBits"), None).run(None, {"A": a})[0]
    assert rel_err(ours, theirs.astype(np.float64)) <= 1e-5
    ours4 = session(op_model(p, accuracy_level=4), ops_lib).run(None, {"A": a})[0]
    theirs4 = session(op_model(p, op="MatMulNBits", accuracy_level=4), None).run(None, {"A": a})[0]
    assert rel_err(ours4, theirs4.astype(np.float64)) <= 1e-5


# ---- invalid inputs: ORT error status with a clear message, never a crash --------------------

def _bad(ops_lib, model: bytes, a: np.ndarray, match: str) -> None:
    with pytest.raises(Exception, match=match):
        session(model, ops_lib).run(None, {"A": a})


def test_a_last_dim_must_equal_k(ops_lib):
    p = packed_weight(128, 8, 32, True)
    _bad(ops_lib, op_model(p, a_last_dim="K2"), np.zeros((2, 96), np.float32), r"last dimension must equal K")


def test_b_shape_mismatch(ops_lib):
    p = packed_weight(128, 8, 32, True)
    bad = np.zeros((8, 3, 16), np.uint8)  # n_blocks 3 instead of 4
    _bad(ops_lib, op_model(p, packed=bad), np.zeros((1, 128), np.float32), r"input B has shape \[8,3,16\], expected \[8,4,16\]")


def test_attribute_n_mismatch(ops_lib):
    p = packed_weight(128, 8, 32, True)
    _bad(ops_lib, op_model(p, attrs={"N": 9}), np.zeros((1, 128), np.float32), r"input B has shape \[8,4,16\], expected \[9,4,16\]")


def test_scales_shape_mismatch(ops_lib):
    p = packed_weight(128, 8, 32, True)
    _bad(ops_lib, op_model(p, scales=np.ones((8, 5), np.float32)), np.zeros((1, 128), np.float32), r"input scales has shape \[8,5\]")


def test_zero_points_shape_mismatch(ops_lib):
    p = packed_weight(128, 8, 32, False)
    zp = np.zeros((8, 3), np.uint8)  # ceil(4 / 2) = 2 bytes per column expected
    _bad(ops_lib, op_model(p, zero_points=zp), np.zeros((1, 128), np.float32), r"zero_points .* has shape \[8,3\], expected \[8,2\]")


def test_bias_shape_mismatch(ops_lib):
    p = packed_weight(128, 8, 32, True)
    _bad(ops_lib, op_model(p, bias=np.zeros(7, np.float32)), np.zeros((1, 128), np.float32), r"input bias has shape \[7\], expected \[8\]")


@pytest.mark.parametrize(
    "attrs,match",
    [
        ({"bits": 8}, "bits=8 is not supported"),
        ({"block_size": 48}, "block_size=48 is not supported"),
        ({"block_size": 512}, "block_size=512 is not supported"),
        ({"accuracy_level": 7}, "accuracy_level=7 must be 0..4"),
        ({"K": 0}, "K and N must be >= 1"),
    ],
)
def test_bad_attributes(ops_lib, attrs, match):
    p = packed_weight(128, 8, 32, True)
    _bad(ops_lib, op_model(p, attrs=attrs), np.zeros((1, 128), np.float32), match)


def test_missing_attribute(ops_lib):
    from onnx import helper

    p = packed_weight(128, 8, 32, True)
    model = op_model(p)
    import onnx

    m = onnx.load_from_string(model)
    del m.graph.node[0].attribute[:]
    m.graph.node[0].attribute.extend([helper.make_attribute("N", 8), helper.make_attribute("bits", 4), helper.make_attribute("block_size", 32)])
    _bad(ops_lib, m.SerializeToString(), np.zeros((1, 128), np.float32), "missing required int attribute 'K'")


def test_wrong_scales_dtype_is_rejected(ops_lib):
    """A float32 with float16 scales matches no registered kernel: ORT refuses the model."""
    p = packed_weight(128, 8, 32, True)
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(op_model(p))
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(p.scales.astype(np.float16), "S"))
    with pytest.raises(Exception):
        session(m.SerializeToString(), ops_lib)
