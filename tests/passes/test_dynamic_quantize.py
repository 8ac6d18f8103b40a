import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq.passes.dynamic_quantize import DynamicQuantizePass, plan_dynamic
from onnxq.recipes import DynamicInt8
from tests.helpers import assert_pass_idempotent, check_full, model_from_text, run_ort

RNG = np.random.default_rng(0)

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[B, S, 64] x) => (float[B, S, 48] y) {
    h = MatMul(x, w1)
    r = Relu(h)
    z = MatMul(r, w2)
    q = MatMul(x, w3)
    y = Add(z, q)
}
"""


def _mlp():
    return model_from_text(
        MLP,
        {
            "w1": RNG.standard_normal((64, 96)).astype(np.float32) * 0.1,
            "w2": RNG.standard_normal((96, 48)).astype(np.float32) * 0.1,
            "w3": RNG.standard_normal((64, 48)).astype(np.float32) * 0.1,
        },
    )


def _rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("fused", [False, True])
def test_matmul_rewrite_counts_and_matches_float(fused):
    model = _mlp()
    x = RNG.standard_normal((2, 5, 64)).astype(np.float32)
    (expected,) = run_ort(model, {"x": x})
    recipe = DynamicInt8(min_weight_elements=0, fused=fused)
    out = assert_pass_idempotent(lambda: DynamicQuantizePass(recipe), model)
    check_full(out)
    ops = [n.op_type for n in out.graph]
    if fused:
        assert ops.count("DynamicQuantizeMatMul") == 3 and "MatMul" not in ops
    else:
        assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops
        # x feeds two MatMuls: quantized once
        assert ops.count("DynamicQuantizeLinear") == 2
    assert not any(name in out.graph.initializers for name in ("w1", "w2", "w3"))
    (got,) = run_ort(out, {"x": x})
    assert _rel_err(got, expected) < 0.03


def test_gemm_trans_b_alpha_beta_bias():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 32] x) => (float[N, 24] y) {
        y = Gemm <transB: int = 1, alpha: float = 0.5, beta: float = 2.0> (x, w, c)
    }
    """
    model = model_from_text(
        text,
        {"w": RNG.standard_normal((24, 32)).astype(np.float32), "c": RNG.standard_normal(24).astype(np.float32)},
    )
    x = RNG.standard_normal((4, 32)).astype(np.float32)
    (expected,) = run_ort(model, {"x": x})
    out = assert_pass_idempotent(lambda: DynamicQuantizePass(DynamicInt8(min_weight_elements=0)), model)
    (got,) = run_ort(out, {"x": x})
    assert _rel_err(got, expected) < 0.03


def test_conv_per_channel_scales_and_bias():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    c (float[1, 8, 10, 10] x) => (float[1, 8, 10, 10] y) {
        h = Conv <pads: ints = [1, 1, 1, 1], group: int = 8> (x, wd, bd)
        y = Conv <pads: ints = [1, 1, 1, 1]> (h, w, b)
    }
    """
    w = RNG.standard_normal((8, 8, 3, 3)).astype(np.float32)
    w[0] *= 20  # very different channel ranges: per-channel scales must matter
    model = model_from_text(
        text,
        {
            "wd": RNG.standard_normal((8, 1, 3, 3)).astype(np.float32),
            "bd": RNG.standard_normal(8).astype(np.float32),
            "w": w,
            "b": RNG.standard_normal(8).astype(np.float32),
        },
    )
    x = RNG.standard_normal((1, 8, 10, 10)).astype(np.float32)
    (expected,) = run_ort(model, {"x": x})
    recipe = DynamicInt8(min_weight_elements=0, op_types=("Conv",))
    out = assert_pass_idempotent(lambda: DynamicQuantizePass(recipe), model)
    check_full(out)
    assert [n.op_type for n in out.graph].count("ConvInteger") == 2
    (got,) = run_ort(out, {"x": x})
    for c in range(1, 8):  # small channels keep their own precision
        assert _rel_err(got[0, c], expected[0, c]) < 0.05


def test_skips_activation_matmul_and_excluded_names_with_reasons():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    a (float[4, 16] x, float[16, 4] k) => (float[4, 4] y, float[4, 16] z) {
        y = MatMul(x, k)
        z = MatMul(x, w)
    }
    """
    model = model_from_text(text, {"w": RNG.standard_normal((16, 16)).astype(np.float32)})
    decisions = plan_dynamic(model, DynamicInt8(min_weight_elements=0))
    reasons = sorted(d.reason for d in decisions)
    assert reasons[0] == "" and "not a constant weight" in reasons[1]
    model.graph.node(1).name = "proj"
    decisions = plan_dynamic(model, DynamicInt8(min_weight_elements=0, exclude=("pr.*",)))
    assert not any(d.selected for d in decisions)
    assert any(d.reason == "excluded by name" for d in decisions)


def test_nothing_selected_means_not_modified():
    model = _mlp()
    out = assert_pass_idempotent(
        lambda: DynamicQuantizePass(DynamicInt8(min_weight_elements=10**9)), model, expect_modified=False
    )
    assert [n.op_type for n in out.graph].count("MatMul") == 3


def test_gather_embedding_table_per_row():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    e (int64[B, S] ids) => (float[B, S, 16] y) {
        y = Gather <axis: int = 0> (table, ids)
    }
    """
    table = RNG.standard_normal((100, 16)).astype(np.float32)
    table[3] *= 100  # one loud row must not cost the others precision
    model = model_from_text(text, {"table": table})
    ids = np.array([[0, 3, 99], [5, 5, 1]], dtype=np.int64)
    out = assert_pass_idempotent(lambda: DynamicQuantizePass(DynamicInt8(min_weight_elements=0)), model)
    check_full(out)
    (got,) = run_ort(out, {"ids": ids})
    expected = table[ids]
    rel = np.abs(got - expected).max(axis=-1) / np.abs(expected).max(axis=-1)
    assert rel.max() < 1 / 127
    q = [v for v in out.graph.initializers.values() if v.const_value.dtype.name == "INT8"]
    assert len(q) == 1 and q[0].shape == (100, 16)


GLU = """
<ir_version: 8, opset_import: ["" : {opset}]>
glu (float[B, S, 64] x) => (float[B, S, 64] y) {{
    g = MatMul(x, wg)
    u = MatMul(x, wu)
    sg = Sigmoid(g)
    a = Mul(g, sg)
    p = Mul(a, u)
    y = MatMul(p, wd)
}}
"""


def _glu(opset=17):
    rng = np.random.default_rng(5)
    return model_from_text(GLU.format(opset=opset), {
        "wg": rng.standard_normal((64, 160)).astype(np.float32) * 0.2,
        "wu": rng.standard_normal((64, 160)).astype(np.float32) * 0.2,
        "wd": rng.standard_normal((160, 64)).astype(np.float32) * 0.1,
    })


def _glu_input():
    """A few tokens 30x larger than the rest: one tensor scale for all rows (ORT's
    quantize_dynamic) leaves the others a handful of levels."""
    x = RNG.standard_normal((2, 24, 64)).astype(np.float32)
    x[:, [0, 7]] *= 30
    return x


def _sqnr(ref, y):
    return 10 * np.log10((ref**2).sum() / ((y - ref) ** 2).sum())


@pytest.mark.parametrize("opset", [17, 18])
def test_gated_mlp_down_projection_gets_one_scale_per_token(opset):
    x = _glu_input()
    ref = run_ort(_glu(opset), {"x": x})[0]
    results = {}
    for mode in ("none", "products", "all"):
        model = _glu(opset)
        assert_pass_idempotent(lambda: DynamicQuantizePass(DynamicInt8(min_weight_elements=0, token_scales=mode)), model)
        check_full(model)
        ops = [n.op_type for n in model.graph]
        assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops
        assert ops.count("ReduceMax") == {"none": 0, "products": 1, "all": 2}[mode]  # gate and up share one
        assert ops.count("DynamicQuantizeLinear") == {"none": 2, "products": 1, "all": 0}[mode]
        quiet = np.ones(x.shape[1], bool)
        quiet[[0, 7]] = False  # the ordinary tokens: with one tensor scale they get what the loud ones leave
        results[mode] = _sqnr(ref[:, quiet], run_ort(model, {"x": x})[0][:, quiet])
    assert results["products"] > results["none"] + 6, results
    assert results["all"] >= results["products"] - 0.5, results


def test_token_scales_is_validated():
    with pytest.raises(Exception, match="token_scales"):
        DynamicInt8(token_scales="rows")


def _flattened_product_gemm():
    rng = np.random.default_rng(6)
    return model_from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, S, 64] x) => (float[N, 32] y) {
    h = MatMul(x, wg)
    g = Sigmoid(h)
    u = MatMul(x, wu)
    p = Mul(g, u)
    f = Reshape(p, shape)
    y = Gemm(f, w, b)
}
""", {"shape": np.array([-1, 64], np.int64), "w": rng.standard_normal((64, 32)).astype(np.float32),
      "b": rng.standard_normal(32).astype(np.float32), "wg": rng.standard_normal((64, 64)).astype(np.float32) * 0.2,
      "wu": rng.standard_normal((64, 64)).astype(np.float32) * 0.2})


def test_product_is_found_through_a_flatten_before_a_gemm():
    x = _glu_input()
    ref = run_ort(_flattened_product_gemm(), {"x": x})[0]
    model = _flattened_product_gemm()
    DynamicQuantizePass(DynamicInt8(min_weight_elements=0))(model)
    check_full(model)
    assert [n.op_type for n in model.graph].count("ReduceMax") == 1
    y = run_ort(model, {"x": x})[0]
    assert y.shape == ref.shape == (48, 32)
    assert _sqnr(ref, y) > 25


def test_per_token_codes_match_the_qparams_reference():
    """The run-time per-token codes are the reference format: symmetric uint8 per row
    (qparams_from_range over the last axis, zero point 128), bit for bit."""
    from onnx import helper

    from onnxq import qparams as qp
    from tests.helpers import to_bytes

    model = _glu()
    DynamicQuantizePass(DynamicInt8(min_weight_elements=0))(model)
    cast = next(n for n in model.graph if n.op_type == "Cast" and n.outputs[0].dtype == ir.DataType.UINT8)
    proto = onnx.load_from_string(to_bytes(model))
    proto.graph.output.append(helper.make_tensor_value_info(cast.outputs[0].name, onnx.TensorProto.UINT8, None))
    proto.graph.output.append(helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, None))  # what it quantizes
    _, codes, p = run_ort(proto.SerializeToString(), {"x": _glu_input()})
    peak = np.abs(p).max(axis=-1, keepdims=True)
    ref = qp.qparams_from_range(-peak, peak, qp.UINT8, symmetric=True, block_size=(1, 1, p.shape[-1]))
    assert np.array_equal(codes, qp.quantize(p, ref))



def test_products_are_judged_on_the_original_graph():
    """A rewritten MatMul's result is itself Mul(acc, scale): the next MatMul must not be taken
    for a product of activations because of it (nor a MatMul after a quantized Gather)."""
    rng = np.random.default_rng(7)
    model = model_from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (int64[1, 8] ids) => (float[1, 8, 64] y) {
    e = Gather(table, ids)
    a = MatMul(e, w1)
    y = MatMul(a, w2)
}
""", {"table": rng.standard_normal((256, 64)).astype(np.float32),
      "w1": rng.standard_normal((64, 64)).astype(np.float32), "w2": rng.standard_normal((64, 64)).astype(np.float32)})
    DynamicQuantizePass(DynamicInt8(min_weight_elements=0))(model)
    ops = [n.op_type for n in model.graph]
    assert ops.count("MatMulInteger") == 2 and "ReduceMax" not in ops


def test_opset_spelt_ai_onnx_gets_the_reduce_max_form_of_its_version():
    import onnx
    from onnx import helper, numpy_helper

    w = np.random.default_rng(8).standard_normal((64, 48)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["p"]), helper.make_node("MatMul", ["p", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5, 48])], [numpy_helper.from_array(w, "W")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx", 13)]))
    DynamicQuantizePass(DynamicInt8(min_weight_elements=0, token_scales="all"))(model)
    check_full(model)
    assert "ReduceMax" in [n.op_type for n in model.graph]
    x = RNG.standard_normal((5, 64)).astype(np.float32)
    assert _sqnr((x * x) @ w, run_ort(model, {"x": x})[0]) > 30


def test_fused_keeps_one_scale_per_tensor():
    """ORT's DynamicQuantizeMatMul takes one scale per tensor: fused wins over token_scales."""
    model = _glu()
    DynamicQuantizePass(DynamicInt8(min_weight_elements=0, fused=True))(model)
    ops = [n.op_type for n in model.graph]
    assert ops.count("DynamicQuantizeMatMul") == 3 and "ReduceMax" not in ops


def test_a_written_out_gelu_is_not_a_gate_product():
    """x * f(x) (a GELU/SiLU written out) is one-sided: one asymmetric scale per tensor keeps a
    bit there; only a product of two separate branches (a GLU) gets per-token scales."""
    rng = np.random.default_rng(9)
    model = model_from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, S, 64] x) => (float[B, S, 32] y) {
    s = Sigmoid(x)
    p = Mul(x, s)
    y = MatMul(p, w)
}
""", {"w": rng.standard_normal((64, 32)).astype(np.float32)})
    DynamicQuantizePass(DynamicInt8(min_weight_elements=0))(model)
    assert "ReduceMax" not in [n.op_type for n in model.graph]


def test_gpt2_style_gelu_is_not_a_gate_product():
    """0.5 * x * (1 + tanh(...x...)): both factors are elementwise functions of x."""
    rng = np.random.default_rng(10)
    model = model_from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, S, 64] x) => (float[B, S, 32] y) {
    h = Mul(x, half)
    t = Tanh(x)
    o = Add(t, one)
    p = Mul(h, o)
    y = MatMul(p, w)
}
""", {"w": rng.standard_normal((64, 32)).astype(np.float32), "half": np.array(0.5, np.float32),
      "one": np.array(1.0, np.float32)})
    DynamicQuantizePass(DynamicInt8(min_weight_elements=0))(model)
    assert "ReduceMax" not in [n.op_type for n in model.graph]


LSTM_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[7, 2, 24] x, float[2, 2, 32] h0) => (float[7, 2, 2, 32] y, float[2, 2, 32] y_h, float[2, 2, 32] y_c) {
    y, y_h, y_c = LSTM <hidden_size: int = 32, direction: string = "bidirectional"> (x, w, r, b, , h0)
}
"""


def _lstm_model(layout_attr=""):
    hidden, feat = 32, 24
    text = LSTM_TEXT if not layout_attr else LSTM_TEXT.replace('"bidirectional">', '"bidirectional", layout: int = 1>')
    if layout_attr:  # batch first: x [2, 7, 24], y [2, 7, 2, 32], states [2, 2, 32]
        text = text.replace("float[7, 2, 24] x", "float[2, 7, 24] x").replace("float[7, 2, 2, 32] y", "float[2, 7, 2, 32] y")
    rng = np.random.default_rng(5)
    return model_from_text(text, {
        "w": (rng.standard_normal((2, 4 * hidden, feat)) * 0.2).astype(np.float32),
        "r": (rng.standard_normal((2, 4 * hidden, hidden)) * 0.2).astype(np.float32),
        "b": (rng.standard_normal((2, 8 * hidden)) * 0.1).astype(np.float32),
    })


def _sqnr_db(ref, got):
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return 10 * np.log10((ref**2).sum() / ((ref - got) ** 2).sum())


@pytest.mark.parametrize("per_channel", [True, False])
def test_lstm_becomes_dynamic_quantize_lstm_matching_float(per_channel):
    rng = np.random.default_rng(6)
    feeds = {"x": rng.standard_normal((7, 2, 24)).astype(np.float32),
             "h0": rng.standard_normal((2, 2, 32)).astype(np.float32) * 0.5}
    model = _lstm_model()
    ref = run_ort(model, feeds)
    w = irutil_const(model, "w")
    result = DynamicQuantizePass(DynamicInt8(per_channel=per_channel))(model)
    assert result.modified
    ops = [n.op_type for n in model.graph]
    assert ops == ["DynamicQuantizeLSTM"]
    node = next(iter(model.graph))
    assert node.domain == "com.microsoft" and node.attributes.get_string("direction") == "bidirectional"
    codes, scale, zero = (irutil_const(model, node.inputs[i].name) for i in (1, 8, 9))
    assert codes.dtype == np.int8 and codes.shape == (2, 24, 128)  # [directions, in, 4*hidden]
    assert zero.dtype == np.int8 and not zero.any()
    assert scale.shape == ((2, 128) if per_channel else (2,))
    # the codes are the reference's: symmetric int8 per gate row (per direction), transposed
    from onnxq import qparams as qp

    flat = w.reshape(256, 24) if per_channel else w.reshape(2, 128 * 24)
    params = qp.qparams_from_range(*qp.block_reduce_min_max(flat, qp.per_channel(flat.shape, 0)), qp.INT8,
                                   symmetric=True, block_size=qp.per_channel(flat.shape, 0))
    np.testing.assert_array_equal(codes, qp.quantize(flat, params).reshape(2, 128, 24).transpose(0, 2, 1))
    check_full(model)
    got = run_ort(model, feeds)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        assert _sqnr_db(r, g) > (30 if per_channel else 25)
    assert_pass_idempotent(lambda: DynamicQuantizePass(DynamicInt8(per_channel=per_channel)), model,
                           expect_modified=False)


def test_batch_first_lstm_is_left_float_with_the_reason():
    decisions = plan_dynamic(_lstm_model(layout_attr="1"), DynamicInt8())
    (d,) = [d for d in decisions if d.node.op_type == "LSTM"]
    assert not d.selected and "layout=1" in d.reason


def irutil_const(model, name):
    from onnxq import irutil

    return irutil.const_array(model.graph.initializers[name])
