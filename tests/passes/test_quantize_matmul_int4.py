"""QuantizeMatMulInt4Pass: the three formats against the numpy reference, the pass
contract, mixed precision, and AWQ folding."""

import numpy as np
import onnx_ir as ir
import pytest

from onnxq.int4.blocks import Int4Spec, rtn
from onnxq.int4.calibrate import collect_activation_stats
from onnxq.passes.quantize_matmul_int4 import INT8_REASON, QuantizeMatMulInt4Pass, plan_int4
from onnxq.passes.infer_shapes import InferShapesPass
from onnxq.passes.upgrade_opset import UpgradeOpsetPass
from onnxq.recipes import WeightOnlyInt4
from tests.helpers import assert_pass_idempotent, check_full, model_from_text, run_ort, to_bytes

RNG = np.random.default_rng(0)

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[B, 200] x) => (float[B, 24] y, float[B, 16] z) {
    n = Mul(g, x)
    a = MatMul(n, w1)
    b = MatMul(n, w2)
    c = Mul(a, b)
    y = MatMul(c, w3)
    z = Gemm(x, w4, bias) <transB: int = 1, alpha: float = 0.5>
}
"""


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "g": (1 + 0.1 * rng.standard_normal(200)).astype(np.float32),
        "w1": (rng.standard_normal((200, 40)) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((200, 40)) * 0.1).astype(np.float32),
        "w3": (rng.standard_normal((40, 24)) * 0.1).astype(np.float32),
        "w4": (rng.standard_normal((16, 200)) * 0.1).astype(np.float32),
        "bias": rng.standard_normal(16).astype(np.float32),
    }


def _model():
    model = model_from_text(TEXT, _weights())
    InferShapesPass()(model)
    return model


def _reference(x, wts, deq):
    """numpy forward pass with the dequantized weights ``deq`` (name -> [K, N])."""
    n = wts["g"] * x
    a = n @ deq["w1"]
    b = n @ deq["w2"]
    y = (a * b) @ deq["w3"]
    z = x @ deq["w4"] + wts["bias"]
    return y, z


def _session_outputs(model, feeds):
    if any(n.domain == "com.onnxq" for n in model.graph):
        from onnxq import runtime

        try:
            runtime.library_path()
        except Exception as e:
            pytest.skip(f"com.onnxq library not built: {str(e)[:80]}")
        sess = runtime.session(to_bytes(model), threads=1)
        return sess.run(None, feeds)
    return _run_exact(model, feeds)


def _run_exact(model, feeds):
    """ORT CPU with float activations everywhere: ORT fuses blocked DequantizeLinear ->
    MatMul into MatMulNBits with accuracy_level 4 (int8 activations) unless told not to."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(to_bytes(model), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _quantized(fmt, bs, sym, **kw):
    model = _model()
    if fmt == "qdq":
        UpgradeOpsetPass(21)(model)
    kw.setdefault("float_heads", False)  # every layer quantized: the reference dequantizes all four
    recipe = WeightOnlyInt4(block_size=bs, symmetric=sym, format=fmt, **kw)
    result = QuantizeMatMulInt4Pass(recipe)(model)
    assert result.modified
    return model


@pytest.mark.parametrize("bs,sym", [(32, True), (128, False), (16, False), (64, True)])
def test_three_formats_match_the_numpy_reference(bs, sym):
    wts = _weights()
    spec = Int4Spec(bs, sym)
    deq = {
        "w1": rtn(wts["w1"], spec).dequantize(),
        "w2": rtn(wts["w2"], spec).dequantize(),
        "w3": rtn(wts["w3"], spec).dequantize(),
        "w4": rtn(np.ascontiguousarray(wts["w4"].T * np.float32(0.5)), spec).dequantize(),
    }
    x = RNG.standard_normal((3, 200)).astype(np.float32)
    y_ref, z_ref = _reference(x, wts, deq)
    outputs = {}
    for fmt in ("qdq", "matmulnbits", "onnxq"):
        model = _quantized(fmt, bs, sym)
        check_full(model) if fmt != "onnxq" else None
        try:
            y, z = _session_outputs(model, {"x": x})
        except pytest.skip.Exception:
            continue
        outputs[fmt] = (y, z)
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(y_ref).max())
        np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4 * np.abs(z_ref).max())
    assert {"qdq", "matmulnbits"} <= set(outputs)
    ops = [n.op_type for n in _quantized("matmulnbits", bs, sym).graph]
    assert ops.count("MatMulNBits") == 4 and "MatMul" not in ops and "Gemm" not in ops


@pytest.mark.parametrize("fmt", ["qdq", "matmulnbits", "onnxq"])
def test_pass_is_idempotent_and_drops_float_weights(fmt):
    model = _model()
    if fmt == "qdq":
        UpgradeOpsetPass(21)(model)
    recipe = WeightOnlyInt4(block_size=32, format=fmt, algorithm="hqq", float_heads=False)
    out = assert_pass_idempotent(lambda: QuantizeMatMulInt4Pass(recipe), model)
    names = set(out.graph.initializers)
    assert not {"w1", "w2", "w3", "w4"} & names
    if fmt == "matmulnbits":
        assert out.opset_imports["com.microsoft"] == 1
    if fmt == "onnxq":
        assert out.opset_imports["com.onnxq"] == 1


def test_qdq_format_needs_opset_21():
    model = _model()
    with pytest.raises(ir.passes.PreconditionError, match="UpgradeOpsetPass"):
        QuantizeMatMulInt4Pass(WeightOnlyInt4(format="qdq"))(model)


def test_qdq_weights_are_int4_blocked_dequantize():
    model = _quantized("qdq", 32, True)
    deqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert len(deqs) == 4
    for n in deqs:
        assert n.attributes.get_int("block_size") == 32 and n.attributes.get_int("axis") == 0
        assert n.inputs[0].const_value.dtype == ir.DataType.INT4
    asym = _quantized("qdq", 32, False)
    d = next(n for n in asym.graph if n.op_type == "DequantizeLinear")
    assert d.inputs[0].const_value.dtype == ir.DataType.UINT4 and d.inputs[2].const_value.dtype == ir.DataType.UINT4


def test_keep_8bit_and_keep_float():
    model = _model()
    names = {n.outputs[0].name: n for n in model.graph}
    names["y"].name, names["z"].name, names["a"].name = "down", "head", "up"
    recipe = WeightOnlyInt4(format="matmulnbits", keep_8bit=("head",), keep_float=("down",))
    decisions = {d.node.name: d for d in plan_int4(model, recipe)}
    assert decisions["head"].reason == INT8_REASON and not decisions["down"].selected
    x = RNG.standard_normal((2, 200)).astype(np.float32)
    ref = run_ort(model, {"x": x})
    QuantizeMatMulInt4Pass(recipe)(model)
    ops = [n.op_type for n in model.graph]
    assert ops.count("MatMulNBits") == 2 and ops.count("DequantizeLinear") == 1 and ops.count("MatMul") == 2
    y, z = run_ort(model, {"x": x})
    # int8 per-channel head: close; float down_proj: exact given its (quantized) input
    assert np.abs(z - ref[1]).max() < 0.02 * np.abs(ref[1]).max()


def _calibrated(model, n=8, outliers=True):
    feeds = []
    for i in range(n):
        x = RNG.standard_normal((16, 200)).astype(np.float32)
        if outliers:
            x[:, :4] *= 25.0
        feeds.append({"x": x})
    values = [(node.inputs[0], 200 if node.inputs[1].name != "w3" else 40) for node in model.graph if node.op_type == "MatMul"]
    return collect_activation_stats(model, values, feeds), feeds


def _output_error(model, feeds, ref_model):
    err, tot = 0.0, 0.0
    for f in feeds:
        got = run_ort(model, f)[0]
        ref = run_ort(ref_model, f)[0]
        err += float(((got - ref) ** 2).sum())
        tot += float((ref**2).sum())
    return err / tot


@pytest.mark.parametrize("algorithm", ["gptq", "awq", "awq+gptq"])
def test_calibrated_algorithms_beat_rtn(algorithm):
    ref = _model()
    stats, feeds = _calibrated(ref)
    errs = {}
    for algo in ("rtn", algorithm):
        model = _model()
        recipe = WeightOnlyInt4(block_size=32, format="matmulnbits", algorithm=algo, accuracy_level=1)
        QuantizeMatMulInt4Pass(recipe, stats)(model)
        errs[algo] = _output_error(model, feeds, ref)
    assert errs[algorithm] < errs["rtn"], errs


def test_awq_folds_into_norm_weight_and_up_projection():
    ref = _model()
    stats, feeds = _calibrated(ref)
    model = _model()
    recipe = WeightOnlyInt4(block_size=32, format="matmulnbits", algorithm="awq", accuracy_level=1)
    QuantizeMatMulInt4Pass(recipe, stats)(model)
    muls = [n for n in model.graph if n.op_type == "Mul"]
    assert len(muls) == 2  # no activation Mul inserted: both scalings were folded
    g_new = next(n for n in muls if n.outputs[0].name == "n").inputs[0]
    assert g_new.name != "g" and not np.allclose(g_new.const_value.numpy(), _weights()["g"])


def test_awq_inserts_a_mul_when_nothing_can_be_folded():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[B, 128] x) => (float[B, 32] y) {
        y = MatMul(x, w)
    }
    """
    w = (RNG.standard_normal((128, 32)) * 0.1).astype(np.float32)
    model = model_from_text(text, {"w": w})
    feeds = [{"x": (RNG.standard_normal((8, 128)) * np.r_[np.full(4, 30.0), np.ones(124)]).astype(np.float32)} for _ in range(4)]
    stats = collect_activation_stats(model, [(model.graph.inputs[0], 128)], feeds)
    QuantizeMatMulInt4Pass(WeightOnlyInt4(block_size=32, format="matmulnbits", algorithm="awq"), stats)(model)
    ops = [n.op_type for n in model.graph]
    assert ops == ["Mul", "MatMulNBits"]
    got = run_ort(model, feeds[0])[0]
    ref = feeds[0]["x"] @ w
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("fmt", ["matmulnbits", "onnxq"])
def test_hqq_float_zero_points_match_the_reference(fmt):
    from onnxq.int4.hqq import hqq

    wts = _weights()
    spec = Int4Spec(32, False)
    deq = {
        "w1": hqq(wts["w1"], spec, integer_zero=False).dequantize(),
        "w2": hqq(wts["w2"], spec, integer_zero=False).dequantize(),
        "w3": hqq(wts["w3"], spec, integer_zero=False).dequantize(),
        "w4": hqq(np.ascontiguousarray(wts["w4"].T * np.float32(0.5)), spec, integer_zero=False).dequantize(),
    }
    x = RNG.standard_normal((3, 200)).astype(np.float32)
    y_ref, z_ref = _reference(x, wts, deq)
    model = _quantized(fmt, 32, False, algorithm="hqq")
    zps = [n.inputs[3].const_value for n in model.graph if n.domain in ("com.microsoft", "com.onnxq")]
    assert zps and all(z.dtype == ir.DataType.FLOAT for z in zps)
    y, z = _session_outputs(model, {"x": x})
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(y_ref).max())
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4 * np.abs(z_ref).max())


def test_calibrated_pass_is_idempotent():
    ref = _model()
    stats, _ = _calibrated(ref)
    recipe = WeightOnlyInt4(block_size=32, format="matmulnbits", algorithm="awq+gptq", keep_8bit=(), accuracy_level=4, float_heads=False)
    out = assert_pass_idempotent(lambda: QuantizeMatMulInt4Pass(recipe, stats), _model())
    assert all(n.attributes.get_int("accuracy_level") == 4 for n in out.graph if n.op_type == "MatMulNBits")
