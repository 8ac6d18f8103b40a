"""NarrowFloatWeightsPass: weights an int8 recipe leaves in float keep a 16-bit model's size."""

import collections

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxq
from onnxq.passes.narrow_float_weights import NarrowFloatWeightsPass
from tests.helpers import assert_pass_idempotent, check_full, run_ort, to_bytes

RNG = np.random.default_rng(21)


def _float32_model(qdq: bool = True) -> ir.Model:
    """Conv(w16 exact in float16, bias not exact) -> Relu -> QDQ with a float16-exact scale
    (``qdq``) -> MatMul(weight exact in bfloat16 only) -> Add(tiny constant)."""
    w = (RNG.standard_normal((8, 4, 3, 3)) * 0.2).astype(np.float16).astype(np.float32)
    bias = (RNG.standard_normal(8) * 0.1).astype(np.float32) + np.float32(1e-4)  # not float16-exact
    fc = (RNG.standard_normal((8 * 6 * 6, 16)) * 0.05).astype(ml_dtypes.bfloat16).astype(np.float32)
    fc[0, 0] = np.float32(ml_dtypes.bfloat16(1e-30))  # below float16's range: exact in bfloat16 only
    nodes = [
        h.make_node("Conv", ["x", "w", "bias"], ["c"]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("QuantizeLinear", ["r", "scale", "zp"], ["q"]),
        h.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
        h.make_node("Flatten", ["dq"], ["f"]),
        h.make_node("MatMul", ["f", "fc"], ["m"]),
        h.make_node("Add", ["m", "tiny"], ["y"]),
    ]
    if not qdq:
        nodes[2:4] = [h.make_node("Identity", ["r"], ["dq"])]
    inits = [nh.from_array(w, "w"), nh.from_array(bias, "bias"), nh.from_array(fc, "fc"),
             nh.from_array(np.array(0.25, np.float32), "scale"), nh.from_array(np.array(0, np.uint8), "zp"),
             nh.from_array(np.full(16, 0.5, np.float32), "tiny")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 16])], inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    """Each original weight's stored type, through the Cast the pass may put after it."""
    out = {}
    for node in model.graph:
        for v in node.inputs:
            if v is None:
                continue
            p = v.producer()
            source = p.inputs[0] if p is not None and p.op_type == "Cast" else v
            if source.const_value is not None:
                out[source.name.split("/")[0]] = source.const_value.dtype
    return out


def test_float16_exact_weights_are_narrowed_and_the_model_computes_the_same():
    model = _float32_model()
    x = {"x": RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    ref = run_ort(model, x)[0]
    narrowed = assert_pass_idempotent(lambda: NarrowFloatWeightsPass(min_elements=64), model)
    check_full(narrowed)
    types = _dtypes(narrowed)
    assert types["w"] == ir.DataType.FLOAT16  # exact
    assert types["bias"] == ir.DataType.FLOAT  # not exact: kept
    assert types["fc"] == ir.DataType.FLOAT  # 1e-30 is not a float16
    assert types["scale"] == ir.DataType.FLOAT  # read by Q/DQ: kept
    assert types["tiny"] == ir.DataType.FLOAT  # below min_elements
    np.testing.assert_array_equal(run_ort(narrowed, x)[0], ref)  # bit for bit


def test_bfloat16_narrowing_takes_the_bfloat16_exact_weight():
    model = _float32_model()
    x = {"x": RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    ref = run_ort(model, x)[0]
    narrowed = assert_pass_idempotent(lambda: NarrowFloatWeightsPass(ir.DataType.BFLOAT16), model)
    types = _dtypes(narrowed)
    assert types["fc"] == ir.DataType.BFLOAT16
    assert types["w"] == ir.DataType.FLOAT  # float16's 10 mantissa bits do not fit bfloat16's 7
    np.testing.assert_array_equal(run_ort(narrowed, x)[0], ref)


def test_float32_model_is_not_narrowed_by_the_recipes():
    """Only a model that was 16-bit gets its weights narrowed back."""
    model = _float32_model(qdq=False)
    before = len(to_bytes(model))
    q, report = onnxq.quantize_with_report(model, onnxq.DynamicInt8(min_weight_elements=16))
    assert not any("float16 again" in n for n in report.notes)
    assert not any(n.op_type == "Cast" and n.inputs[0].const_value is not None for n in q.graph)
    assert len(to_bytes(q)) < before


def test_float16_mobilenet_int8_dynamic_stays_smaller_than_its_input(mobilenet_path, corpus, tmp_path):
    """A real float16 CNN under int8-dynamic: the Gemm becomes int8, the Convs stay float
    -- stored float16 as they came (they used to come out float32, ~145 % of the input),
    and ONNX Runtime folds their Casts at load (no Cast left on a weight)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from onnxq.preprocess import image_files, load_image

    p16 = tmp_path / "m16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(mobilenet_path))), str(p16))
    q, report = onnxq.quantize_with_report(p16, onnxq.DynamicInt8())
    assert any("float16 again" in n for n in report.notes), report.notes
    out = onnxq.save(q, tmp_path / "q.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    assert out.stat().st_size < 0.9 * p16.stat().st_size
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sq = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "opt.onnx"))
    init_names = {i.name for i in optimized.graph.initializer}
    weight_casts = [n for n in optimized.graph.node if n.op_type == "Cast" and n.input[0] in init_names]
    assert not weight_casts, [n.name for n in weight_casts]
    s16 = ort.InferenceSession(str(p16), providers=["CPUExecutionProvider"])
    agree = 0
    photos = image_files(corpus / "imagenet_dev")[:8]
    for p in photos:
        x = load_image(p).astype(np.float16)
        agree += int(s16.run(None, {"input": x})[0].argmax() == sq.run(None, {"input": x})[0].argmax())
    assert agree >= 7, agree
    assert collections.Counter(n.op_type for n in q.graph)["DynamicQuantizeLinear"] == 1
