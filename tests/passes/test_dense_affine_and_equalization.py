"""FoldMatMulInputAffinePass and EqualizeDensePairsPass: exact in float, idempotent, and the
Keras pattern Dense -> ReLU -> BatchNormalization(Mul, Add) -> Dense quantizes well."""

import numpy as np
import onnx_ir as ir
import pytest

import onnxq
from onnxq import irutil
from onnxq.passes.equalize_dense_pairs import EqualizeDensePairsPass
from onnxq.passes.fold_matmul_input_affine import FoldMatMulInputAffinePass
from tests.helpers import assert_pass_idempotent, check_full, run_ort
from tests.helpers import model_from_text as _parsed


def model_from_text(text, initializers=None):
    """The parsed model with inferred shapes (the fold needs x's last axis), as the recipe runs it."""
    from onnxq.passes.infer_shapes import InferShapesPass

    model = _parsed(text, initializers)
    InferShapesPass()(model)
    return model

KERAS_HEAD = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 32] x) => (float[N, 10] y) {
    h = MatMul(x, w1)
    hb = Add(h, b1)
    r = Relu(hb)
    s = Mul(r, gamma)
    t = Add(s, beta)
    z = MatMul(t, w2)
    y = Add(z, b2)
}
"""


def _keras_head(spread=True):
    rng = np.random.default_rng(7)
    # a BatchNormalization after the ReLU: per-feature gains 0.1 .. 30 (features of very different scales)
    gamma = np.exp(rng.uniform(np.log(0.1), np.log(30), 64)) if spread else np.ones(64)
    w1 = rng.standard_normal((32, 64)) * 0.3 / gamma  # the small-scale features are the ones BN amplifies
    return model_from_text(KERAS_HEAD, {
        "w1": w1.astype(np.float32), "b1": (rng.standard_normal(64) * 0.05 / gamma).astype(np.float32),
        "gamma": gamma.astype(np.float32), "beta": rng.standard_normal(64).astype(np.float32),
        "w2": (rng.standard_normal((64, 10)) * 0.2).astype(np.float32), "b2": rng.standard_normal(10).astype(np.float32),
    })


def _feeds(n, seed=8):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(n)]


def _sqnr(ref, got):
    ref, got = np.concatenate(ref).astype(np.float64), np.concatenate(got).astype(np.float64)
    return 10 * np.log10((ref**2).sum() / ((ref - got) ** 2).sum())


def test_fold_moves_the_batchnorm_into_the_next_matmul_exactly():
    model = _keras_head()
    x = {"x": np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)}
    before = run_ort(model, x)[0]
    out = assert_pass_idempotent(FoldMatMulInputAffinePass, model)
    assert [n.op_type for n in out.graph] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    second = next(n for n in out.graph if n.op_type == "MatMul" and n.inputs[0].name == "r")
    # its result no longer equals the float model's z (the BiasAdd now adds beta @ w2): renamed
    assert second.outputs[0].name != "z" and out.graph.outputs[0].name == "y"
    check_full(out)
    np.testing.assert_allclose(run_ort(out, x)[0], before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["Gemm", "MatMul without a bias"])
def test_fold_into_a_gemm_or_a_matmul_without_bias(op):
    rng = np.random.default_rng(2)
    consumer = "z = Gemm <transB: int = 1> (t, w2t, b2)" if op == "Gemm" else "z = MatMul(t, w2)"
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 8] x) => (float[N, 3] z) {{
        s = Div(x, d)
        t = Sub(s, c)
        {consumer}
    }}
    """
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    model = model_from_text(text, {"d": rng.uniform(0.5, 2, 8).astype(np.float32), "c": rng.standard_normal(8).astype(np.float32),
                                   "w2": w2, "w2t": np.ascontiguousarray(w2.T), "b2": rng.standard_normal(3).astype(np.float32)})
    x = {"x": rng.standard_normal((5, 8)).astype(np.float32)}
    before = run_ort(model, x)[0]
    out = assert_pass_idempotent(FoldMatMulInputAffinePass, model)
    ops = [n.op_type for n in out.graph]
    assert ops == (["Gemm"] if op == "Gemm" else ["MatMul", "Add"])
    assert out.graph.outputs[0].name == "z"
    check_full(out)
    np.testing.assert_allclose(run_ort(out, x)[0], before, rtol=1e-4, atol=1e-4)


def test_an_affine_map_read_by_something_else_is_left_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 8] x) => (float[N, 3] z, float[N, 8] s) {
        s = Mul(x, g)
        z = MatMul(s, w)
    }
    """
    model = model_from_text(text, {"g": np.full(8, 2, np.float32), "w": np.ones((8, 3), np.float32)})
    assert not FoldMatMulInputAffinePass()(model).modified


def test_equalization_is_exact_balances_ranges_and_is_idempotent():
    model = _keras_head()
    FoldMatMulInputAffinePass()(model)
    x = {"x": np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)}
    before = run_ort(model, x)[0]
    out = assert_pass_idempotent(EqualizeDensePairsPass, model)
    check_full(out)
    np.testing.assert_allclose(run_ort(out, x)[0], before, rtol=1e-4, atol=1e-4)
    first, second = (n for n in out.graph if n.op_type == "MatMul")
    r1 = np.abs(irutil.const_array(first.inputs[1])).max(axis=0)
    r2 = np.abs(irutil.const_array(second.inputs[1])).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)  # each feature's ranges meet in the middle


def test_keras_batchnorm_after_relu_quantizes_well():
    """The failure seen on a Keras VGG16 classifier (3.5 dB): per-feature BatchNormalization
    gains far apart, read by the next Dense. Folded and equalized, int8-static follows the
    float model; without (channel_equalization off) the small features are lost."""
    calib, held = _feeds(48), _feeds(32, seed=9)
    model = _keras_head()
    ref = [run_ort(model, f)[0] for f in held]
    scores = {}
    for eq in (True, False):
        q = onnxq.quantize(ir.from_proto(ir.to_proto(model)), onnxq.StaticInt8(channel_equalization=eq), data=calib)
        scores[eq] = _sqnr(ref, [run_ort(q, f)[0] for f in held])
    assert scores[True] > 30 and scores[True] > scores[False] + 6, scores


def test_compare_charges_the_matmul_whose_result_was_renamed(tmp_path):
    """After the fold, the second MatMul's result has a new name (the BiasAdd adds beta @ W):
    compare measures the BiasAdd's output and names the MatMul as the node to --exclude."""
    from onnxq.compare import compare_models

    text = KERAS_HEAD.replace("float[N, 10] y", "float[N, 10] o").replace("y = Add(z, b2)", "y = Add(z, b2)\n    o = Sigmoid(y)")
    rng = np.random.default_rng(7)
    gamma = np.exp(rng.uniform(np.log(0.1), np.log(30), 64))
    model = model_from_text(text, {
        "w1": (rng.standard_normal((32, 64)) * 0.3 / gamma).astype(np.float32), "b1": np.zeros(64, np.float32),
        "gamma": gamma.astype(np.float32), "beta": rng.standard_normal(64).astype(np.float32),
        "w2": (rng.standard_normal((64, 10)) * 0.2).astype(np.float32), "b2": np.zeros(10, np.float32),
    })
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    ir.save(model, src)
    onnxq.save(onnxq.quantize(src, onnxq.StaticInt8(), data=_feeds(16)), out)
    layers = {layer.name: layer for layer in compare_models(src, out, _feeds(8, seed=3)).layers}
    assert "z" not in layers  # renamed in the quantized model: not compared under the old name
    assert layers["y"].op_type in ("MatMul", "Gemm") and layers["y"].node == (next(n for n in model.graph if n.outputs[0].name == "z").name or "")


def test_equalization_sweeps_a_chain_to_a_fixed_point_and_skips_residual_adds():
    rng = np.random.default_rng(0)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    chain = model_from_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[2, 4] x) => (float[2, 2] out) {
            m1 = MatMul(x, w1)
            r1 = Relu(m1)
            m2 = MatMul(r1, w2)
            r2 = Relu(m2)
            out = MatMul(r2, w3)
        }
        """, {"w1": f(4, 5) * np.array([1, 50, .02, 3, .1], np.float32),
              "w2": f(5, 6) * np.array([9, .1, 1, 20, .5, .01], np.float32), "w3": f(6, 2)})
    x = {"x": f(2, 4)}
    before = run_ort(chain, x)[0]
    out = assert_pass_idempotent(EqualizeDensePairsPass, chain)  # balancing pair 2 unbalanced pair 1: swept
    np.testing.assert_allclose(run_ort(out, x)[0], before, rtol=1e-4, atol=1e-5)
    assert not {"m1", "r1", "m2", "r2"} & {v.name for n in out.graph for v in n.outputs}  # values that changed: renamed
    residual = model_from_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[2, 4] x, float[2, 3] y) => (float[2, 2] out) {
            m1 = MatMul(x, w1)
            a = Add(m1, y)
            r = Relu(a)
            out = MatMul(r, w2)
        }
        """, {"w1": f(4, 3) * np.array([1, 100, .01], np.float32), "w2": f(3, 2)})
    assert not EqualizeDensePairsPass()(residual).modified


def test_fold_skips_a_constant_that_would_widen_x():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[2, 1] x) => (float[2, 3] y) {
            a = Mul(x, s)
            y = MatMul(a, w)
        }
        """, {"s": np.arange(1, 5, dtype=np.float32), "w": np.ones((4, 3), np.float32)})
    assert not FoldMatMulInputAffinePass()(model).modified
