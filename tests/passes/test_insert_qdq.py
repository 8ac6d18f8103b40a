"""InsertQdqPass + FoldScalesPass on tiny ONNX-text models, against ORT."""

import collections
import os
import tempfile

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
import pytest

import onnxq
from onnxq import StaticInt8
from onnxq import qparams as qp
from onnxq.passes.fold_scales import FoldScalesPass
from onnxq.passes.insert_qdq import InsertQdqPass, plan_static
from tests.helpers import assert_pass_idempotent, check_full, model_from_text, run_ort, to_bytes

RNG = np.random.default_rng(0)

CNN = """
<ir_version: 8, opset_import: ["" : 17]>
cnn (float[N, 3, 12, 12] x) => (float[N, 10] y) {
    c = Conv <pads: ints = [1, 1, 1, 1]> (x, w1, b1)
    r = Relu(c)
    d = Conv <pads: ints = [1, 1, 1, 1], group: int = 8> (r, wd, bd)
    k = Clip(d, lo, hi)
    e = Conv (k, w2)
    a = Add(e, r)
    m = MaxPool <kernel_shape: ints = [2, 2], strides: ints = [2, 2]> (a)
    cat = Concat <axis: int = 1> (m, m)
    p = GlobalAveragePool(cat)
    f = Flatten(p)
    h = Gemm <transB: int = 1> (f, wg, bg)
    y = Softmax(h)
}
"""


def _cnn():
    rng = np.random.default_rng(1)  # the same weights on every call
    return model_from_text(
        CNN,
        {
            "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
            "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
            "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * np.array([0.05, 1, 2, 5, 1, 1, 0.5, 20], np.float32).reshape(8, 1, 1, 1),
            "bd": rng.standard_normal(8).astype(np.float32) * 0.1,
            "lo": np.array(0, np.float32),
            "hi": np.array(6, np.float32),
            "w2": rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3,
            "wg": rng.standard_normal((10, 16)).astype(np.float32),
            "bg": rng.standard_normal(10).astype(np.float32),
        },
    )


def _data(n=8):
    return [{"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.all_nodes())


def _ort_optimized_ops(model) -> collections.Counter:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = os.path.join(d, "o.onnx")
        ort.InferenceSession(to_bytes(model), so, providers=["CPUExecutionProvider"])
        m = onnx.load(so.optimized_model_filepath)
    return collections.Counter(n.op_type for n in m.graph.node)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_plan_rules_groups_and_reasons():
    model = _cnn()
    plan = plan_static(model, StaticInt8())
    by_op = {d.node.op_type: d for d in plan.decisions}
    assert all(d.selected for d in plan.decisions), [(d.name, d.reason) for d in plan.decisions if not d.selected]
    assert "Softmax" not in by_op  # not a quantized op type
    g = {t: grp for grp in plan.groups for t in grp.members}
    assert g["r"] is not None and "c" not in g  # Relu folded: Q after the activation
    assert g["k"].upper_bound == 6.0 and "d" not in g  # Clip folded, bounded
    assert g["a"] is g["m"]  # MaxPool shares its input's scale
    assert g["m"] is g["cat"]  # Concat inputs share the output scale
    assert g["p"] is g["f"]  # Flatten passes the scale through
    assert set(g["cat"].observe) == {"a", "cat"}  # m and... derived members are not observed
    # only the float Softmax reads the Gemm's result: not rounded to 8 bits (ORT's QGemm with a
    # float result; a Gemm without C that an Add reads keeps its Q, see _float_result_runs_int8)
    assert "h" not in g and "y" not in g


def test_insert_then_fold_idempotent_matches_float_and_fuses_in_ort():
    model = _cnn()
    x = RNG.standard_normal((2, 3, 12, 12)).astype(np.float32)
    (ref,) = run_ort(model, {"x": x})
    recipe = StaticInt8()
    from onnxq.calib.static import calibrate_plan

    plan = plan_static(model, recipe)
    qparams, biases, weight_scales, _, _ = calibrate_plan(model, plan, recipe, _data())
    out = assert_pass_idempotent(lambda: InsertQdqPass(recipe), model)
    ops = _ops(out)
    assert ops["Conv"] == 3 and ops["DequantizeLinear"] >= 10
    for init in ("w1", "wd", "w2", "wg"):  # float weights replaced by int8 initializers
        assert init not in out.graph.initializers
    assert out.graph.initializers["w1_quantized"].const_value.dtype == onnx.TensorProto.INT8
    out = assert_pass_idempotent(lambda: FoldScalesPass(qparams, biases, weight_scales), out)
    check_full(out)
    assert out.graph.initializers["b1_quantized"].const_value.dtype == onnx.TensorProto.INT32
    (got,) = run_ort(out, {"x": x})
    assert _rel(got, ref) < 0.08
    fused = _ort_optimized_ops(out)
    assert fused["QLinearConv"] == 3 and fused["Conv"] == 0, fused
    assert fused["QGemm"] == 1 and fused["QLinearAdd"] == 1 and fused["QLinearConcat"] == 1
    assert "Relu" not in fused and "Clip" not in fused  # folded into the quantized range


def _with_and_without_equalization(text: str, inits: dict, rng):
    """Calibration data and a held-out input drawn from ``rng``; the float output on the
    input and the model quantized with and without channel equalization."""
    data = [{"x": rng.standard_normal((1, 3, 10, 10)).astype(np.float32)} for _ in range(8)]
    x = {"x": rng.standard_normal((2, 3, 10, 10)).astype(np.float32)}
    (ref,) = run_ort(model_from_text(text, inits), x)
    on = onnxq.quantize(model_from_text(text, inits), StaticInt8(), data=data)
    off = onnxq.quantize(model_from_text(text, inits), StaticInt8(channel_equalization=False), data=data)
    return x, ref, on, off


def test_channel_equalization_moves_scales_exactly():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    eq (float[N, 3, 10, 10] x) => (float[N, 8, 10, 10] y) {
        c = Conv <pads: ints = [1, 1, 1, 1]> (x, w1, b1)
        r = Relu(c)
        y = Conv <pads: ints = [1, 1, 1, 1], group: int = 8> (r, wd, bd)
    }
    """
    rng = np.random.default_rng(3)
    spread = np.array([0.002, 0.01, 0.05, 0.2, 1, 1, 2, 4], np.float32)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None],
        "b1": np.abs(rng.standard_normal(8)).astype(np.float32) * spread,
        "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None],
        "bd": rng.standard_normal(8).astype(np.float32),
    }
    x, ref, on, off = _with_and_without_equalization(text, inits, rng)
    e_on, e_off = _rel(run_ort(on, x)[0], ref), _rel(run_ort(off, x)[0], ref)
    assert e_on < 0.25 * e_off, (e_on, e_off)  # small channels no longer drown in noise
    assert _ort_optimized_ops(on)["QLinearConv"] == 2


def test_channel_equalization_of_a_conv_output_without_activation():
    """Conv (e.g. with a folded BatchNormalization, no activation) straight into a
    depthwise conv: channels take both signs; equalization uses each channel's magnitude
    and the scaled tensor's exact [min, max]."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    eq (float[N, 3, 10, 10] x) => (float[N, 8, 10, 10] y) {
        c = Conv <pads: ints = [1, 1, 1, 1]> (x, w1, b1)
        y = Conv <pads: ints = [1, 1, 1, 1], group: int = 8> (c, wd, bd)
    }
    """
    rng = np.random.default_rng(4)
    spread = np.array([0.002, 0.01, 0.05, 0.2, 1, 1, 2, 4], np.float32)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None],
        "b1": rng.standard_normal(8).astype(np.float32) * spread,
        "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None],
        "bd": rng.standard_normal(8).astype(np.float32),
    }
    x, ref, on, off = _with_and_without_equalization(text, inits, rng)
    e_on, e_off = _rel(run_ort(on, x)[0], ref), _rel(run_ort(off, x)[0], ref)
    assert e_on < 0.25 * e_off, (e_on, e_off)
    assert _ort_optimized_ops(on)["QLinearConv"] == 2


def test_matmul_two_activations_add_mul_constants_and_graph_output_name():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    att (float[B, 4, 8] q, float[B, 8, 4] k) => (float[B, 4, 4] y, float[B, 4, 16] z) {
        s = MatMul(q, k)
        t = Mul(s, half)
        y = Add(t, bias)
        z = MatMul(q, w)
    }
    """
    model = model_from_text(
        text,
        {"half": np.array(0.5, np.float32), "bias": RNG.standard_normal(4).astype(np.float32),
         "w": RNG.standard_normal((8, 16)).astype(np.float32)},
    )
    data = [{"q": RNG.standard_normal((1, 4, 8)).astype(np.float32), "k": RNG.standard_normal((1, 8, 4)).astype(np.float32)} for _ in range(6)]
    feed = data[0]
    ref = run_ort(model, feed)
    out = onnxq.quantize(model, StaticInt8(), data=data)
    check_full(out)
    assert [v.name for v in out.graph.outputs] == ["y", "z"]
    got = run_ort(out, feed)
    for g, r in zip(got, ref):
        assert _rel(g, r) < 0.05
    fused = _ort_optimized_ops(out)
    assert fused["MatMul"] == 0, fused


def test_weights_in_constant_nodes_and_exclude_and_overrides():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 16] x) => (float[N, 8] y) {
        w = Constant <value = float[16, 8] {%s}> ()
        h = MatMul(x, w)
        y = Relu(h)
    }
    """ % ", ".join(str(v) for v in np.round(RNG.standard_normal(128), 3))
    model = model_from_text(text)
    data = [{"x": RNG.standard_normal((2, 16)).astype(np.float32)} for _ in range(4)]
    out = onnxq.quantize(model, StaticInt8(tensor_overrides={"y": {"range": [0.0, 10.0]}}), data=data)
    ops = _ops(out)
    assert ops["Constant"] == 0 and ops["MatMul"] == 1
    scale = [n for n in out.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name.startswith("y")][0].inputs[1]
    assert float(scale.const_value.numpy()) == pytest.approx(10.0 / 255)
    (got,) = run_ort(out, data[0])
    (ref,) = run_ort(model_from_text(text), data[0])
    assert _rel(got, ref) < 0.05
    model = model_from_text(text)
    model.graph.node(1).name = "proj"
    plan = plan_static(model, StaticInt8(exclude=("pr.*",)))
    assert [d.reason for d in plan.decisions] == ["excluded by name"] and not plan.groups


def test_if_and_loop_bodies_are_quantized_and_calibrated():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1, 8] x, bool c) => (float[1, 8] y, float[1, 8] z) {
        y = If (c) <
            then_branch = g1 () => (float[1, 8] t) { t = MatMul(x, w1) },
            else_branch = g2 () => (float[1, 8] e) { e = MatMul(x, w2) }
        >
        n = Constant <value = int64 {3}> ()
        t0 = Constant <value = bool {1}> ()
        z = Loop (n, t0, x) <body = body (int64 i, bool cond, float[1, 8] h) => (bool co, float[1, 8] ho) {
            co = Identity(cond)
            ho = MatMul(h, w3)
        }>
    }
    """
    inits = {k: (RNG.standard_normal((8, 8)) * 0.5).astype(np.float32) for k in ("w1", "w2", "w3")}
    model = model_from_text(text, inits)
    data = [{"x": RNG.standard_normal((1, 8)).astype(np.float32), "c": np.array(i % 2 == 0)} for i in range(6)]
    plan = plan_static(model, StaticInt8())
    assert sum(d.selected for d in plan.decisions) == 3
    out = onnxq.quantize(model, StaticInt8(), data=data)
    check_full(out)
    # 3 weights and the MatMul inputs (x, the loop's h); the MatMul results leave the bodies in
    # float (no int8 node reads them: they become the model's outputs)
    assert _ops(out)["DequantizeLinear"] >= 5
    for feed in data[:2]:
        ref = run_ort(model_from_text(text, inits), feed)
        got = run_ort(out, feed)
        for g, r in zip(got, ref):
            assert _rel(g, r) < 0.1


def test_nothing_selected_is_not_modified_and_opset_is_checked():
    model = _cnn()
    assert_pass_idempotent(lambda: InsertQdqPass(StaticInt8(op_types=("ConvTranspose",))), model, expect_modified=False)
    old = model_from_text(CNN.replace('"" : 17', '"" : 11').replace("Clip(d, lo, hi)", "Relu(d)"), {
        k: v for k, v in {
            "w1": np.zeros((8, 3, 3, 3), np.float32), "b1": np.zeros(8, np.float32), "wd": np.zeros((8, 1, 3, 3), np.float32),
            "bd": np.zeros(8, np.float32), "w2": np.zeros((8, 8, 1, 1), np.float32), "wg": np.zeros((10, 16), np.float32),
            "bg": np.zeros(10, np.float32)}.items()})
    with pytest.raises(onnxq.OnnxqError, match="opset >= 13"):
        InsertQdqPass(StaticInt8()).requires(old)


def test_fold_refuses_missing_qparams():
    model = _cnn()
    InsertQdqPass(StaticInt8())(model)
    with pytest.raises(onnxq.OnnxqError, match="no calibrated quantization parameters"):
        FoldScalesPass({})(model)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_histogram_methods_with_varying_shapes(method):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, T, 16] x) => (float[N, T, 8] y) {
        h = MatMul(x, w)
        y = Relu(h)
    }
    """
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    data = [{"x": RNG.standard_normal((1, t, 16)).astype(np.float32)} for t in (3, 50, 700, 9)]
    out = onnxq.quantize(model_from_text(text, {"w": w}), StaticInt8(calibration=method), data=data)
    check_full(out)
    (got,) = run_ort(out, data[2])
    (ref,) = run_ort(model_from_text(text, {"w": w}), data[2])
    cos = float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref))
    assert cos > (0.9 if method == "entropy" else 0.99)  # clipping methods: judged on the whole output


def test_uint16_activations_use_wide_qdq():
    model = _cnn()
    data = _data(4)
    out = onnxq.quantize(model, StaticInt8(activation_type="uint16"), data=data)
    x = data[0]  # a calibrated sample: 16-bit precision, no out-of-range clipping to blur it
    (ref,) = run_ort(_cnn(), x)
    (got,) = run_ort(out, x)
    assert _rel(got, ref) < 0.02
    assert out.opset_imports.get("com.microsoft") == 1  # opset 17: 16-bit Q/DQ from ORT's domain


def test_excluded_conv_stays_float_in_ort():
    """An excluded Conv really runs in float: float weights, no DequantizeLinear feeding it,
    no QuantizeLinear on its output; its quantized neighbours read and write those tensors
    in float (d's output k, after its Clip, is e's input), and everything else is fused."""
    import collections
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    from tests.helpers import to_bytes

    model = _cnn()
    for n in model.graph:
        n.name = n.outputs[0].name
    data = _data(4)
    plan = plan_static(model, StaticInt8(exclude=("e",)))
    assert {"k", "e"}.isdisjoint(plan.tensors) and {"x", "r", "a"} <= set(plan.tensors)
    out = onnxq.quantize(model, StaticInt8(calibration="minmax", exclude=("e",)), data=data)
    check_full(out)
    e = next(n for n in out.graph if n.name == "e")
    assert e.inputs[1].const_value is not None and e.inputs[1].dtype == onnx_ir.DataType.FLOAT
    assert e.inputs[0].producer().op_type == "Clip" and e.inputs[0].name == "k"
    assert [u.op_type for u, _ in e.outputs[0].uses()] == ["Add"]
    assert all(u.op_type != "QuantizeLinear" for u, _ in e.inputs[0].uses())
    d = next(n for n in out.graph if n.name == "d")
    assert d.inputs[1].producer().op_type == "DequantizeLinear"  # the neighbour keeps int8 weights
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(to_bytes(out), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
    ops = collections.Counter(n.op_type for n in opt.graph.node)
    assert ops["QLinearConv"] == 1, ops  # c; d writes k in float, e runs in float
    float_convs = [n for n in opt.graph.node if n.op_type in ("Conv", "FusedConv")]  # (NCHWc ones too)
    assert len(float_convs) == 2, ops
    inits = {i.name for i in opt.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    producers = {o: n for n in opt.graph.node for o in n.output}
    (w,) = [n.input[1] for n in float_convs if n.input[0] == "k"]
    assert w not in inits and (w not in producers or producers[w].op_type != "DequantizeLinear")
    (got,) = run_ort(out, data[0])
    (ref,) = run_ort(_cnn(), data[0])
    assert _rel(got, ref) < 0.05


def test_equalization_chain_through_a_depthwise_conv_stays_exact():
    """pw -> dw1 -> dw2 without activations: dw1 consumes one equalized tensor and would
    produce another; its weight scale can carry only one factor, so only the first link
    is equalized (both used to be written, the second overwriting the first)."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    eq (float[N, 3, 10, 10] x) => (float[N, 8, 10, 10] y) {
        c = Conv <pads: ints = [1, 1, 1, 1]> (x, w1, b1)
        d = Conv <pads: ints = [1, 1, 1, 1], group: int = 8> (c, wd, bd)
        y = Conv <pads: ints = [1, 1, 1, 1], group: int = 8> (d, we, be)
    }
    """
    rng = np.random.default_rng(5)
    spread = np.array([0.002, 0.01, 0.05, 0.2, 1, 1, 2, 4], np.float32)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None],
        "b1": rng.standard_normal(8).astype(np.float32) * spread,
        "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
        "bd": rng.standard_normal(8).astype(np.float32) * spread,
        "we": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None],
        "be": rng.standard_normal(8).astype(np.float32),
    }
    x, ref, on, off = _with_and_without_equalization(text, inits, rng)

    def snr(model):
        out = run_ort(model, x)[0]
        return 10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum()), out

    (s_on, out), (s_off, _) = snr(on), snr(off)
    assert s_on > s_off - 0.5, (s_on, s_off)  # a wrong factor made it 6 dB worse
    big = np.abs(out - ref)[:, 4:].max() / np.abs(ref[:, 4:]).max()
    assert big < 0.15, big  # the large channels come out right (each channel's gain is exact)


@pytest.mark.parametrize("size,attrs", [
    (8, dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1)),
    (10, dict(kernel_shape=[4, 4], strides=[3, 3], ceil_mode=1, count_include_pad=1, pads=[1, 1, 0, 0])),
])
def test_average_pool_ort_averages_differently_in_int8_stays_float(size, attrs):
    """ORT's QLinearAveragePool divides windows that ceil_mode runs past the edge by the whole
    kernel (the float op by the part inside): such a pool and the tensors around it stay float
    (a whole-map window becomes GlobalAveragePool instead: next test)."""
    from onnx import helper as h, numpy_helper as nh, TensorProto as T
    from onnxq.passes.insert_qdq import AVGPOOL_CEIL_PAD

    rng = np.random.default_rng(4)
    w, w2 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32), rng.standard_normal((4, 8, 1, 1)).astype(np.float32)

    def model(**kw):
        g = h.make_graph(
            [h.make_node("Conv", ["x", "w"], ["c"], name="conv"), h.make_node("AveragePool", ["c"], ["p"], name="pool", **kw),
             h.make_node("Conv", ["p", "w2"], ["y"], name="conv2")],
            "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 8, size, size])], [h.make_tensor_value_info("y", T.FLOAT, None)],
            [nh.from_array(w, "w"), nh.from_array(w2, "w2")])
        return onnx_ir.serde.deserialize_model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))

    data = [{"x": rng.standard_normal((1, 8, size, size)).astype(np.float32)} for _ in range(8)]
    (ref,) = run_ort(model(**attrs), data[0])
    out, report = onnxq.quantize_with_report(model(**attrs), StaticInt8(), data=data)
    assert {d.name: d.reason for d in report.decisions}["pool"] == AVGPOOL_CEIL_PAD
    (got,) = run_ort(out, data[0])  # with ORT's fusions
    assert _rel(got, ref) < 0.1
    control = dict(attrs, count_include_pad=0)  # averaged alike in int8: quantized
    _, report = onnxq.quantize_with_report(model(**control), StaticInt8(), data=data)
    assert {d.name: d.reason for d in report.decisions}["pool"] == ""


def test_whole_map_average_pool_becomes_global_and_runs_in_int8():
    """HF EfficientNet's pooler (kernel 640 over a 2x2 map, ceil_mode): as GlobalAveragePool it
    is the same mean in float and stays int8 next to its convs."""
    from onnx import helper as h, numpy_helper as nh, TensorProto as T
    from onnxq.passes.global_average_pool import GlobalAveragePoolPass

    rng = np.random.default_rng(6)
    w, fc = rng.standard_normal((8, 8, 1, 1)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    g = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         h.make_node("AveragePool", ["c"], ["p"], name="pool", kernel_shape=[640, 640], strides=[640, 640], ceil_mode=1,
                     count_include_pad=1),
         h.make_node("Flatten", ["p"], ["f"]), h.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="head")],
        "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 8, 2, 2])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])],
        [nh.from_array(w, "w"), nh.from_array(fc, "fc")])
    model = onnx_ir.serde.deserialize_model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    data = [{"x": rng.standard_normal((1, 8, 2, 2)).astype(np.float32)} for _ in range(8)]
    (ref,) = run_ort(model, data[0])
    from onnxq.passes.infer_shapes import InferShapesPass

    InferShapesPass()(model)
    rewritten = assert_pass_idempotent(GlobalAveragePoolPass, model)
    assert [n.op_type for n in rewritten.graph] == ["Conv", "GlobalAveragePool", "Flatten", "Gemm"]
    np.testing.assert_allclose(run_ort(rewritten, data[0])[0], ref, rtol=1e-5, atol=1e-6)
    g.node[1].name = "pool"
    out, report = onnxq.quantize_with_report(
        onnx_ir.serde.deserialize_model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)])), StaticInt8(), data=data)
    assert {d.name: d.reason for d in report.decisions}["pool"] == ""
    assert any("GlobalAveragePool" in n for n in report.notes)
    (got,) = run_ort(out, data[0])
    assert _rel(got, ref) < 0.1
    assert _ort_optimized_ops(out)["QLinearConv"] == 1


def test_16_bit_activations_with_a_constant_add_operand_below_opset_21():
    """A bias Add's constant is quantized with the activation type: at 16 bits below opset 21
    its DequantizeLinear must be com.microsoft's (ORT refused the model: uint16 input). A 3-D
    input: on a 2-D one the MatMul + Add is a Gemm with an int32 bias (FoldMatMulOutputAffinePass)."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 3, 16] x) => (float[N, 3, 8] y) {
        h = MatMul(x, w)
        a = Add(h, b)
        y = Relu(a)
    }
    """
    inits = {"w": RNG.standard_normal((16, 8)).astype(np.float32), "b": RNG.standard_normal(8).astype(np.float32)}
    data = [{"x": RNG.standard_normal((2, 3, 16)).astype(np.float32)} for _ in range(4)]
    out = onnxq.quantize(model_from_text(text, inits), StaticInt8(activation_type="uint16", quantize_islands=True),
                         data=data)
    check_full(out)
    dqs = [n for n in out.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None
           and n.inputs[0].const_value.dtype == onnx.TensorProto.UINT16]
    assert dqs and all(n.domain == "com.microsoft" for n in dqs)
    (got,) = run_ort(out, data[0])
    (ref,) = run_ort(model_from_text(text, inits), data[0])
    assert _rel(got, ref) < 0.02  # int8 weights


def test_a_result_split_between_int8_convs_stays_int8():
    """YOLOv8's C2f: SiLU (x * sigmoid(x)) -> Split -> two convs. The Mul's result reaches
    quantized convs through the Split (data movement), so it is not 'fed only to float ops'."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 4, 8, 8] x) => (float[N, 8, 8, 8] y) {
        c = Conv(x, w1)
        s = Sigmoid(c)
        a = Mul(c, s)
        p, q = Split <axis: int = 1> (a)
        e = Conv(p, w2)
        f = Conv(q, w3)
        y = Concat <axis: int = 1> (e, f)
    }
    """
    inits = {"w1": RNG.standard_normal((8, 4, 1, 1)).astype(np.float32), "w2": RNG.standard_normal((4, 4, 1, 1)).astype(
        np.float32), "w3": RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)}
    plan = plan_static(model_from_text(text, inits), StaticInt8())
    reasons = {d.node.op_type: d.reason for d in plan.decisions}
    assert reasons["Mul"] == "", reasons


def test_average_pool_whose_windows_fit_exactly_stays_int8():
    """ceil_mode changes nothing when the windows tile the map: such a pool (and its convs) stay int8."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1, 4, 8, 8] x) => (float[1, 4, 4, 4] y) {
        c = Conv(x, w)
        p = AveragePool <kernel_shape: ints = [2, 2], strides: ints = [2, 2], ceil_mode: int = 1, count_include_pad: int = 1> (c)
        y = Conv(p, w2)
    }
    """
    inits = {"w": RNG.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2": RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)}
    model = model_from_text(text, inits)
    from onnxq.passes.infer_shapes import InferShapesPass

    InferShapesPass()(model)
    plan = plan_static(model, StaticInt8())
    assert {d.node.op_type: d.reason for d in plan.decisions}["AveragePool"] == ""


def test_a_residual_add_padded_before_a_conv_stays_int8():
    """TF exports pad explicitly: Add -> Pad -> Conv. The Add's result reaches the conv."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
        c = Conv(x, w)
        a = Add(c, x)
        p = Pad(a, pads)
        y = Conv <kernel_shape: ints = [3, 3]> (p, w3)
    }
    """
    inits = {"w": RNG.standard_normal((4, 4, 1, 1)).astype(np.float32), "w3": RNG.standard_normal((4, 4, 3, 3)).astype(
        np.float32), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    plan = plan_static(model_from_text(text, inits), StaticInt8())
    assert {d.node.op_type: d.reason for d in plan.decisions}["Add"] == ""


def test_a_residual_add_before_a_leaky_relu_stays_int8_and_fuses(tmp_path):
    """Darknet/YOLO style: Add -> LeakyRelu -> Conv. ORT runs the LeakyRelu in int8
    (QLinearLeakyRelu) between a DQ and a Q, so the Add's result does reach an int8 conv: the
    Add keeps its int8 and ORT fuses the whole chain (no float Add, no float LeakyRelu)."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1, 8, 8, 8] x) => (float[1, 8, 8, 8] y) {
        c = Conv <pads: ints = [1, 1, 1, 1]> (x, w)
        r = LeakyRelu <alpha: float = 0.1> (c)
        d = Conv <pads: ints = [1, 1, 1, 1]> (r, w2)
        a = Add(d, r)
        l = LeakyRelu <alpha: float = 0.1> (a)
        y = Conv <pads: ints = [1, 1, 1, 1]> (l, w3)
    }
    """
    inits = {k: (RNG.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32) for k in ("w", "w2", "w3")}
    model = model_from_text(text, inits)
    plan = plan_static(model, StaticInt8())
    assert {d.node.op_type: d.reason for d in plan.decisions}["Add"] == ""
    feeds = [{"x": RNG.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(8)]
    q = onnxq.quantize(model_from_text(text, inits), StaticInt8(), data=feeds)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(to_bytes(q), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearAdd"] == 1 and ops["QLinearLeakyRelu"] == 2 and ops["Add"] == ops["LeakyRelu"] == 0, ops
    ref = run_ort(model, feeds[0])[0]
    got = run_ort(q, feeds[0])[0]
    assert 10 * np.log10((ref**2).sum() / ((got - ref) ** 2).sum()) > 25


HEAD = """
<ir_version: 8, opset_import: ["" : 17]>
head (float[N, 3, 8, 8] x) => (float[N, 12, 64] y) {
    c = Conv <pads: ints = [1, 1, 1, 1]> (x, w1)
    r = Relu(c)
    box = Conv (r, wb)
    cls = Conv (r, wc)
    cat = Concat <axis: int = 1> (box, cls)
    y = Reshape(cat, shape)
}
"""


@pytest.mark.parametrize("float_conv_results", [False, True])
def test_float_conv_results_leave_a_head_conv_result_float(float_conv_results):
    """A Conv result that only float ops read (a detection head's box and class logits going
    into a float Concat) keeps its Q for ORT's QLinearConv by default, and is left float with
    float_conv_results (the openvino target); a result that a quantized Conv reads keeps its Q."""
    rng = np.random.default_rng(3)
    model = model_from_text(HEAD, {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "wb": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3,
        "wc": (rng.standard_normal((8, 8, 1, 1)) * 3 - 4).astype(np.float32),  # logits of another range
        "shape": np.array([0, 12, 64], np.int64),
    })
    plan = plan_static(model, StaticInt8(float_conv_results=float_conv_results, op_types=("Conv", "Concat")))
    quantized = {t for g in plan.groups for t in g.members}
    assert "r" in quantized  # read by the quantized head Convs
    assert ({"box", "cls"} <= quantized) is (not float_conv_results)
    assert not ({"box", "cls"} & quantized) is float_conv_results
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    ref = run_ort(model, feeds[0])[0]
    out = onnxq.quantize(model, StaticInt8(float_conv_results=float_conv_results), data=feeds)
    check_full(out)
    assert _rel(run_ort(out, feeds[0])[0], ref) < 0.1
