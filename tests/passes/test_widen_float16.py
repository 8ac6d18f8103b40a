"""WidenFloat16Pass and int8 of float16 models: float32 compute inside, float16 I/O kept."""

import collections

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxq
from onnxq.errors import OnnxqError
from onnxq.passes.widen_float16 import WidenFloat16Pass, computes_in_float16
from tests.helpers import assert_pass_idempotent, check_full, run_ort

RNG = np.random.default_rng(16)


def _mlp(io_type: int = T.FLOAT16, opset: int = 17) -> ir.Model:
    """x -> MatMul(W1) -> Add(Constant) -> Relu -> If(cond: Mul by fp16 const | Identity)
    -> MatMul(W2) -> y, plus a ConstantOfShape and a Cast to float16 in the middle. With
    float32 I/O it is a keep_io_types conversion: Cast to float16 after the input, Cast to
    float32 before the output."""
    w1 = (RNG.standard_normal((64, 128)) * 0.1).astype(np.float16)
    w2 = (RNG.standard_normal((128, 32)) * 0.1).astype(np.float16)
    then_g = h.make_graph(
        [h.make_node("Constant", [], ["two"], value=nh.from_array(np.array(2.0, np.float16))),
         h.make_node("Mul", ["r", "two"], ["t_out"])],
        "then", [], [h.make_tensor_value_info("t_out", T.FLOAT16, None)])
    else_g = h.make_graph([h.make_node("Identity", ["r"], ["e_out"])], "else", [],
                          [h.make_tensor_value_info("e_out", T.FLOAT16, None)])
    nodes = []
    x = "x"
    if io_type == T.FLOAT:
        nodes.append(h.make_node("Cast", ["x"], ["x16"], to=T.FLOAT16))
        x = "x16"
    nodes += [
        h.make_node("MatMul", [x, "W1"], ["mm1"]),
        h.make_node("Constant", [], ["b1"], value=nh.from_array(np.full(128, 0.05, np.float16))),
        h.make_node("Add", ["mm1", "b1"], ["a1"]),
        h.make_node("Relu", ["a1"], ["r"]),
        h.make_node("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g),
        h.make_node("Shape", ["branch"], ["shp"]),
        h.make_node("ConstantOfShape", ["shp"], ["zeros"], value=nh.from_array(np.array([0.0], np.float16))),
        h.make_node("Add", ["branch", "zeros"], ["b2"]),
        h.make_node("Cast", ["b2"], ["b3"], to=T.FLOAT16),
        h.make_node("MatMul", ["b3", "W2"], ["y16" if io_type == T.FLOAT else "y"]),
    ]
    if io_type == T.FLOAT:
        nodes.append(h.make_node("Cast", ["y16"], ["y"], to=T.FLOAT))
    graph = h.make_graph(
        nodes, "mlp16",
        [h.make_tensor_value_info("x", io_type, ["B", 64]), h.make_tensor_value_info("cond", T.BOOL, [])],
        [h.make_tensor_value_info("y", io_type, ["B", 32])],
        [nh.from_array(w1, "W1"), nh.from_array(w2, "W2")],
    )
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _feeds(io_type, n=8, cond=True):
    dt = np.float16 if io_type == T.FLOAT16 else np.float32
    return {"x": RNG.standard_normal((n, 64)).astype(dt), "cond": np.array(cond)}


def _sqnr(ref, y):
    ref, y = ref.astype(np.float64), y.astype(np.float64)
    return 10 * np.log10((ref**2).sum() / max(((y - ref) ** 2).sum(), 1e-30))


@pytest.mark.parametrize("io_type", [T.FLOAT16, T.FLOAT])
def test_widened_model_keeps_io_types_and_computes_the_same(io_type):
    model = _mlp(io_type)
    feeds = _feeds(io_type)
    ref = run_ort(model, feeds)[0]
    widened = assert_pass_idempotent(WidenFloat16Pass, model)
    check_full(widened)
    assert not computes_in_float16(widened)
    inner = [v for g in (widened.graph,) for n in g for v in n.outputs if v.dtype == ir.DataType.FLOAT16]
    # only the boundary Cast back to float16 produces float16 inside the graph
    assert [v.name for v in inner] == (["y"] if io_type == T.FLOAT16 else [])
    assert widened.graph.inputs[0].dtype == ir.DataType(io_type)
    assert widened.graph.outputs[0].dtype == ir.DataType(io_type)
    ops = collections.Counter(n.op_type for n in widened.graph)
    # float16 I/O: one Cast in, one out, the float16 Cast in the middle gone; keep_io_types: every Cast gone
    assert ops["Cast"] == (2 if io_type == T.FLOAT16 else 0), ops
    for cond in (True, False):
        f = _feeds(io_type, cond=cond)
        y16, y32 = run_ort(model, f)[0], run_ort(widened, f)[0]
        assert y32.dtype == y16.dtype
        assert _sqnr(y32, y16) > 50  # float16 rounding only
    assert ref.shape == (8, 32)


def test_float32_model_is_left_alone():
    model = _mlp(T.FLOAT16)
    WidenFloat16Pass()(model)
    # the widened model still has float16 I/O: a plain float32 model has none at all
    proto = onnx.helper.make_model(
        h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", T.FLOAT, [2])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2])]))
    plain = ir.serde.deserialize_model(proto)
    assert_pass_idempotent(WidenFloat16Pass, plain, expect_modified=False)


def test_custom_domain_float16_attribute_is_refused():
    graph = h.make_graph(
        [h.make_node("Cast", ["x"], ["x16"], to=T.FLOAT16),
         h.make_node("MyOp", ["x16"], ["y"], domain="com.example", to=T.FLOAT16)],
        "g", [h.make_tensor_value_info("x", T.FLOAT, [2])], [h.make_tensor_value_info("y", T.FLOAT16, [2])])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.example", 1)])
    with pytest.raises(OnnxqError, match=r"MyOp.*float16.*convert the model to float32 first"):
        WidenFloat16Pass()(ir.serde.deserialize_model(proto))


@pytest.mark.parametrize("io_type", [T.FLOAT16, T.FLOAT])
@pytest.mark.parametrize("recipe", ["dynamic", "static"])
def test_float16_model_quantizes_to_int8(io_type, recipe):
    model = _mlp(io_type)
    feeds = _feeds(io_type, n=16)
    ref = run_ort(model, feeds)[0]
    if recipe == "dynamic":
        q, report = onnxq.quantize_with_report(model, onnxq.DynamicInt8())
    else:
        calib = [_feeds(io_type, n=4) for _ in range(8)]
        q, report = onnxq.quantize_with_report(model, onnxq.StaticInt8(), calib)
    assert any("float16" in n for n in report.notes), report.notes
    assert sum(d.selected for d in report.decisions if d.node.op_type in ("MatMul", "Gemm")) == 2
    check_full(q)
    ops = collections.Counter(n.op_type for n in q.graph)
    assert ops["DynamicQuantizeLinear" if recipe == "dynamic" else "QuantizeLinear"] >= 1, ops
    y = run_ort(q, feeds)[0]
    assert y.dtype == ref.dtype
    assert _sqnr(ref, y) > (30 if recipe == "dynamic" else 25)


def test_float16_mobilenet_int8_static(mobilenet_path, corpus, tmp_path):
    """A real float16 model (MobileNetV2 converted by onnxruntime's float16 tool): int8-static
    keeps its float16 interface, stores int8 weights (about half the float16 file) and agrees
    with the float32 model on most photos."""
    import json

    from onnxruntime.transformers.float16 import convert_float_to_float16

    from onnxq.preprocess import image_files, load_image

    p16 = tmp_path / "m16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(mobilenet_path))), str(p16))
    calib = [{"input": load_image(p).astype(np.float16)} for p in image_files(corpus / "images")[::3][:12]]
    q, report = onnxq.quantize_with_report(p16, onnxq.StaticInt8(), calib)
    out = onnxq.save(q, tmp_path / "q.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    assert out.stat().st_size < 0.6 * p16.stat().st_size
    import onnxruntime as ort

    s32 = ort.InferenceSession(str(mobilenet_path), providers=["CPUExecutionProvider"])
    sq = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sq.get_inputs()[0].type == "tensor(float16)" and sq.get_outputs()[0].type == "tensor(float16)"
    labels = json.loads((corpus / "imagenet_dev" / "labels.json").read_text())[:12]
    agree = 0
    for e in labels:
        x = load_image(corpus / "imagenet_dev" / e["file"])
        agree += int(s32.run(None, {"input": x})[0].argmax() == sq.run(None, {"input": x.astype(np.float16)})[0].argmax())
    assert agree >= 9, agree


def test_bfloat16_model_is_widened_and_quantizes():
    """bfloat16 compute behind float32 inputs/outputs (a mixed-precision export; ORT CPU has no
    bfloat16 MatMul, so the model itself does not run there): widened, the boundary Casts go,
    and the int8 model runs in ORT CPU."""
    import ml_dtypes

    w1 = (RNG.standard_normal((64, 128)) * 0.1).astype(ml_dtypes.bfloat16)
    w2 = (RNG.standard_normal((128, 32)) * 0.1).astype(ml_dtypes.bfloat16)
    graph = h.make_graph(
        [h.make_node("Cast", ["x"], ["xb"], to=T.BFLOAT16), h.make_node("MatMul", ["xb", "W1"], ["h"]),
         h.make_node("Relu", ["h"], ["r"]), h.make_node("MatMul", ["r", "W2"], ["yb"]),
         h.make_node("Cast", ["yb"], ["y"], to=T.FLOAT)],
        "bf16", [h.make_tensor_value_info("x", T.FLOAT, ["B", 64])],
        [h.make_tensor_value_info("y", T.FLOAT, ["B", 32])],
        [nh.from_array(w1, "W1"), nh.from_array(w2, "W2")])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    assert computes_in_float16(model)
    x = RNG.standard_normal((16, 64)).astype(np.float32)
    ref = np.maximum(x @ w1.astype(np.float32), 0) @ w2.astype(np.float32)
    q, report = onnxq.quantize_with_report(model, onnxq.DynamicInt8(min_weight_elements=0))
    assert any("bfloat16" in n for n in report.notes), report.notes
    assert not any(n.op_type == "Cast" and n.attributes["to"].value == T.BFLOAT16 for n in q.graph)
    assert not computes_in_float16(q)
    y = run_ort(q, {"x": x})[0]
    assert _sqnr(ref, y) > 25


def test_no_op_cast_returning_an_outer_value_from_a_branch_is_kept():
    """A branch whose output is Cast(outer value, to=float16) becomes a no-op Cast when widened;
    it stays (a subgraph output must be made in the subgraph), and the model loads and runs."""
    then_g = h.make_graph([h.make_node("Cast", ["r"], ["t_out"], to=T.FLOAT16)], "then", [],
                          [h.make_tensor_value_info("t_out", T.FLOAT16, None)])
    else_g = h.make_graph([h.make_node("Neg", ["r"], ["e_out"])], "else", [],
                          [h.make_tensor_value_info("e_out", T.FLOAT16, None)])
    w = (RNG.standard_normal((64, 32)) * 0.1).astype(np.float16)
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["r"]), h.make_node("If", ["cond"], ["y"], then_branch=then_g,
                                                                else_branch=else_g)],
        "g", [h.make_tensor_value_info("x", T.FLOAT16, ["B", 64]), h.make_tensor_value_info("cond", T.BOOL, [])],
        [h.make_tensor_value_info("y", T.FLOAT16, ["B", 32])], [nh.from_array(w, "W")])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    f = {"x": RNG.standard_normal((4, 64)).astype(np.float16), "cond": np.array(True)}
    ref = run_ort(model, f)[0]
    widened = assert_pass_idempotent(WidenFloat16Pass, model)
    check_full(widened)
    assert _sqnr(ref, run_ort(widened, f)[0]) > 50


def test_untyped_model_that_computes_in_float16_is_widened():
    """No value_info at all, float32 I/O: the float16 compute is seen from its Cast(to=float16)
    and float16 Constant, not from value types."""
    w = nh.from_array((RNG.standard_normal((64, 32)) * 0.1).astype(np.float16))
    graph = h.make_graph(
        [h.make_node("Cast", ["x"], ["xh"], to=T.FLOAT16), h.make_node("Constant", [], ["W"], value=w),
         h.make_node("MatMul", ["xh", "W"], ["yh"]), h.make_node("Cast", ["yh"], ["y"], to=T.FLOAT)],
        "g", [h.make_tensor_value_info("x", T.FLOAT, ["B", 64])], [h.make_tensor_value_info("y", T.FLOAT, ["B", 32])])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    assert computes_in_float16(model)
    feeds = _feeds(T.FLOAT, n=16)
    del feeds["cond"]
    ref = run_ort(model, feeds)[0]
    q = onnxq.quantize(model, onnxq.DynamicInt8(min_weight_elements=0))
    assert any(n.op_type == "MatMulInteger" for n in q.graph)
    assert _sqnr(ref, run_ort(q, feeds)[0]) > 30


def test_an_output_listed_twice_keeps_both_names():
    w = (RNG.standard_normal((64, 32)) * 0.1).astype(np.float16)
    graph = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT16, ["B", 64])],
                         [h.make_tensor_value_info("y", T.FLOAT16, ["B", 32])] * 2, [nh.from_array(w, "W")])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    widened = assert_pass_idempotent(WidenFloat16Pass, model)
    assert [v.name for v in widened.graph.outputs] == ["y", "y"]
    assert all(v.dtype == ir.DataType.FLOAT16 for v in widened.graph.outputs)


def _bf16_lm(tied: bool) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """A small bfloat16 language model: token ids in, bfloat16 logits out (how torch exports a
    bfloat16 LLM); ``tied``: the lm_head reads the embedding table through a Transpose."""
    import ml_dtypes

    vocab, d = 96, 128
    w = {"E": RNG.standard_normal((vocab, d)) * 0.5, "W1": RNG.standard_normal((d, 256)) * 0.1,
         "W2": RNG.standard_normal((256, d)) * 0.1, "H": RNG.standard_normal((d, vocab)) * 0.1}
    w = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}
    head = [h.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]), h.make_node("MatMul", ["x3", "Et"], ["logits"])] \
        if tied else [h.make_node("MatMul", ["x3", "H"], ["logits"])]
    graph = h.make_graph(
        [h.make_node("Gather", ["E", "ids"], ["x0"]), h.make_node("MatMul", ["x0", "W1"], ["x1"]),
         h.make_node("Relu", ["x1"], ["x2"]), h.make_node("MatMul", ["x2", "W2"], ["x2b"]),
         h.make_node("Add", ["x2b", "x0"], ["x3"]), *head],
        "bf16lm", [h.make_tensor_value_info("ids", T.INT64, ["B", "S"])],
        [h.make_tensor_value_info("logits", T.BFLOAT16, ["B", "S", vocab])],
        [nh.from_array(v, k) for k, v in w.items() if tied is False or k != "H"])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto), {k: v.astype(np.float32) for k, v in w.items()}


def _reference_logits(w: dict[str, np.ndarray], ids: np.ndarray, tied: bool) -> np.ndarray:
    x0 = w["E"][ids]
    x3 = np.maximum(x0 @ w["W1"], 0) @ w["W2"] + x0
    return x3 @ (w["E"].T if tied else w["H"])


def _logits_as_float32(model: ir.Model, feeds) -> np.ndarray:
    """Run ``model`` in ORT CPU with its bfloat16 output cast to float32 (ORT's Python API
    returns no bfloat16 arrays)."""
    proto = ir.serde.serialize_model(model)
    proto.graph.node.append(h.make_node("Cast", ["logits"], ["logits_f32"], to=T.FLOAT))
    proto.graph.output.append(h.make_tensor_value_info("logits_f32", T.FLOAT, None))
    sess = onnx_runtime_session(proto.SerializeToString())
    return sess.run(["logits_f32"], feeds)[0]


def onnx_runtime_session(data: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fmt", ["qdq", "matmulnbits"])
@pytest.mark.parametrize("tied", [False, True])
def test_bfloat16_language_model_int4_keeps_its_embedding_table_16_bit(fmt, tied):
    """int4 on a bfloat16 LM (used to be refused: "weight is BFLOAT16"): computed in float32,
    its bfloat16 logits kept; the embedding table stays bfloat16 for the Gather (widening it
    would double it), and a tied lm_head gets its own copy, quantized to int4."""
    model, w = _bf16_lm(tied)
    ids = RNG.integers(0, 96, (2, 12)).astype(np.int64)
    q, report = onnxq.quantize_with_report(
        model, onnxq.WeightOnlyInt4(block_size=32, format=fmt, accuracy_level=1))
    assert any("bfloat16" in n for n in report.notes), report.notes
    check_full(q)
    tables = {v.name: v.const_value.dtype for v in q.graph.initializers.values()
              if v.const_value.dtype in (ir.DataType.BFLOAT16, ir.DataType.FLOAT) and v.const_value.size >= 96 * 128}
    assert tables == {"E": ir.DataType.BFLOAT16}, tables  # no float32 table next to it
    assert q.graph.outputs[0].dtype == ir.DataType.BFLOAT16
    y = _logits_as_float32(q, {"ids": ids})
    assert _sqnr(_reference_logits(w, ids, tied), y) > 15  # int4 block 32 on Gaussian weights: ~18.5 dB
    assert computes_in_float16(q) and not computes_in_float16(q, kept_tables=True)
    assert not WidenFloat16Pass(keep_gather_tables=True)(q).modified


def test_kept_gather_table_pass_is_idempotent_and_exact():
    model, w = _bf16_lm(tied=True)
    widened = assert_pass_idempotent(lambda: WidenFloat16Pass(keep_gather_tables=True), model)
    ops = collections.Counter(n.op_type for n in widened.graph)
    assert ops["Cast"] == 2  # the Gather's rows to float32, the logits back to bfloat16
    ids = RNG.integers(0, 96, (1, 7)).astype(np.int64)
    y = _logits_as_float32(widened, {"ids": ids})
    ref = _reference_logits(w, ids, tied=True)
    np.testing.assert_allclose(y, ref, rtol=2e-2, atol=2e-2)  # only the final bfloat16 rounding differs


def test_gather_tables_are_widened_when_the_recipe_quantizes_gather():
    """int8-dynamic quantizes Gather tables (int8 rows): the table is widened first, as before."""
    model, _ = _bf16_lm(tied=False)
    q = onnxq.quantize(model, onnxq.DynamicInt8(min_weight_elements=0))
    assert not any(v.const_value.dtype == ir.DataType.BFLOAT16 for v in q.graph.initializers.values())


def test_bfloat16_inputs_calibrate_from_bfloat16_arrays():
    """int8-static on a model with bfloat16 inputs and outputs: calibration takes ml_dtypes
    bfloat16 arrays (ORT's Python API takes none: the calibration copy reads them as their
    exact float32 values), a float32 array is refused with the conversion to make."""
    import ml_dtypes

    from onnxq.data import float32_interface, ort_feed
    from onnxq.errors import CalibrationDataError

    w1 = (RNG.standard_normal((32, 64)) * 0.2).astype(ml_dtypes.bfloat16)
    w2 = (RNG.standard_normal((64, 16)) * 0.2).astype(ml_dtypes.bfloat16)
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "W1"], ["h"]), h.make_node("Relu", ["h"], ["r"]),
         h.make_node("MatMul", ["r", "W2"], ["y"])],
        "bf16io", [h.make_tensor_value_info("x", T.BFLOAT16, ["B", 32])],
        [h.make_tensor_value_info("y", T.BFLOAT16, ["B", 16])],
        [nh.from_array(w1, "W1"), nh.from_array(w2, "W2")])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 21)]))
    data = [{"x": RNG.standard_normal((8, 32)).astype(ml_dtypes.bfloat16)} for _ in range(8)]
    with pytest.raises(CalibrationDataError, match=r"ml_dtypes\.bfloat16"):
        onnxq.quantize(model, onnxq.StaticInt8(), data=[{"x": d["x"].astype(np.float32)} for d in data])
    q = onnxq.quantize(model, onnxq.StaticInt8(), data=data)
    check_full(q)
    assert q.graph.inputs[0].dtype == ir.DataType.BFLOAT16 and q.graph.outputs[0].dtype == ir.DataType.BFLOAT16
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph) >= 2
    float32_interface(q)  # to run it from Python; the output gets a Cast to float32 for the same reason
    proto = ir.serde.serialize_model(q)
    proto.graph.node.append(h.make_node("Cast", ["y"], ["y32"], to=T.FLOAT))
    proto.graph.output.append(h.make_tensor_value_info("y32", T.FLOAT, None))
    x = RNG.standard_normal((16, 32)).astype(ml_dtypes.bfloat16)
    y = onnx_runtime_session(proto.SerializeToString()).run(["y32"], ort_feed({"x": x}))[0]
    ref = np.maximum(x.astype(np.float32) @ w1.astype(np.float32), 0) @ w2.astype(np.float32)
    assert _sqnr(ref, y) > 25


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
def test_bfloat16_inputs_calibrate_int4(algorithm):
    """GPTQ/AWQ statistics on a bfloat16-input model come from bfloat16 arrays too, and the
    model written out keeps its bfloat16 input (the calibration session's retyping is undone)."""
    import ml_dtypes

    w = (RNG.standard_normal((64, 32)) * 0.2).astype(ml_dtypes.bfloat16)
    graph = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.BFLOAT16, ["B", 64])],
                         [h.make_tensor_value_info("y", T.BFLOAT16, ["B", 32])], [nh.from_array(w, "W")])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 21)]))
    data = [{"x": RNG.standard_normal((8, 64)).astype(ml_dtypes.bfloat16)} for _ in range(4)]
    q, report = onnxq.quantize_with_report(model, onnxq.WeightOnlyInt4(algorithm=algorithm, block_size=32), data=data)
    assert any("calibrated 1 MatMul inputs" in n for n in report.notes), report.notes
    assert q.graph.inputs[0].dtype == ir.DataType.BFLOAT16
    check_full(q)


def test_a_table_already_cast_to_float32_is_widened_without_keep_gather_tables():
    """A float16 table whose rows a Cast already turns into float32 (a keep_io_types-style
    conversion): int8-dynamic/static (Gather quantized) widen it and store it int8."""
    e = (RNG.standard_normal((256, 64)) * 0.5).astype(np.float16)
    graph = h.make_graph(
        [h.make_node("Gather", ["E", "ids"], ["rows"]), h.make_node("Cast", ["rows"], ["r32"], to=T.FLOAT),
         h.make_node("MatMul", ["r32", "W"], ["y"])],
        "t", [h.make_tensor_value_info("ids", T.INT64, [1, 8])], [h.make_tensor_value_info("y", T.FLOAT, [1, 8, 64])],
        [nh.from_array(e, "E"), nh.from_array(RNG.standard_normal((64, 64)).astype(np.float32), "W")])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    assert computes_in_float16(model) and not computes_in_float16(model, kept_tables=True)
    q, report = onnxq.quantize_with_report(model, onnxq.DynamicInt8())
    assert [d.selected for d in report.decisions if d.node.op_type == "Gather"] == [True]
    assert "E" not in q.graph.initializers or q.graph.initializers["E"].const_value.dtype != ir.DataType.FLOAT16


def test_a_bfloat16_weight_that_is_also_an_input_keeps_its_type_for_calibration():
    """keep_initializers_as_inputs: a bfloat16 initializer listed as an input is a weight, not
    something calibration feeds: the calibration copy must not retype it."""
    import ml_dtypes

    w = (RNG.standard_normal((32, 16)) * 0.2).astype(ml_dtypes.bfloat16)
    graph = h.make_graph(
        [h.make_node("Cast", ["W"], ["Wf"], to=T.FLOAT), h.make_node("MatMul", ["x", "Wf"], ["y"])], "g",
        [h.make_tensor_value_info("x", T.FLOAT, ["B", 32]), h.make_tensor_value_info("W", T.BFLOAT16, [32, 16])],
        [h.make_tensor_value_info("y", T.FLOAT, ["B", 16])], [nh.from_array(w, "W")])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    data = [{"x": RNG.standard_normal((4, 32)).astype(np.float32)} for _ in range(4)]
    q = onnxq.quantize(model, onnxq.StaticInt8(), data=data)
    check_full(q)
    x = RNG.standard_normal((4, 32)).astype(np.float32)
    assert _sqnr(x @ w.astype(np.float32), run_ort(q, {"x": x})[0]) > 25


def test_bfloat16_io_model_from_npz_and_compared(tmp_path):
    """bfloat16 input and output around float32 compute: an .npz of ml_dtypes bfloat16 arrays
    (numpy stores them as 2-byte void) calibrates it, and compare / the CLI check run it."""
    import ml_dtypes
    from click.testing import CliRunner

    from onnxq.cli import main
    from onnxq.compare import compare_models

    w = RNG.standard_normal((32, 16)).astype(np.float32) * 0.2
    graph = h.make_graph(
        [h.make_node("Cast", ["x"], ["xf"], to=T.FLOAT), h.make_node("MatMul", ["xf", "W"], ["m"]),
         h.make_node("Relu", ["m"], ["r"]), h.make_node("Cast", ["r"], ["y"], to=T.BFLOAT16)], "g",
        [h.make_tensor_value_info("x", T.BFLOAT16, ["B", 32])], [h.make_tensor_value_info("y", T.BFLOAT16, ["B", 16])],
        [nh.from_array(w, "W")])
    src = tmp_path / "bf16io.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), src)
    x = RNG.standard_normal((16, 32)).astype(ml_dtypes.bfloat16)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", "int8-static",
                                  "--calib-data", str(tmp_path / "calib.npz")])
    assert r.exit_code == 0, r.output
    assert "check: 'y' vs the float model" in r.output
    comparison = compare_models(src, out, [{"x": x[:4]}, {"x": x[4:8]}])
    assert comparison.samples == 2 and comparison.outputs[0].sqnr_db > 25
