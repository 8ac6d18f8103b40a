"""A silero-vad-like graph: an outer If on a rank-0 input whose branches hold an LSTM and
MatMuls with constant weights, one branch with a nested If. Every recipe: no crash, output
passes the checker, runs in ORT and stays close to the float model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import onnxq
from onnxq.errors import OnnxqError
from onnxq.recipes import recipe_class

RNG = np.random.default_rng(5)
H = 32


def _const(name, shape):
    return h.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.2, name + "_v"))


def _branch(tag, nested):
    nodes = [
        _const(f"{tag}_w1", (H, H)),
        h.make_node("MatMul", ["x", f"{tag}_w1"], [f"{tag}_h"]),
        h.make_node("Relu", [f"{tag}_h"], [f"{tag}_r"]),
        _const(f"{tag}_wx", (1, 4 * H, H)),
        _const(f"{tag}_wr", (1, 4 * H, H)),
        h.make_node("Unsqueeze", [f"{tag}_r", "axes1"], [f"{tag}_seq"]),
        h.make_node("LSTM", [f"{tag}_seq", f"{tag}_wx", f"{tag}_wr"], [f"{tag}_y", f"{tag}_yh"], hidden_size=H),
        h.make_node("Squeeze", [f"{tag}_yh", "axes0"], [f"{tag}_s"]),
        _const(f"{tag}_w2", (H, H)),
    ]
    if nested:
        inner_then = h.make_graph([h.make_node("MatMul", [f"{tag}_s", f"{tag}_w2"], ["inner_a"])], "inner_then", [], [h.make_tensor_value_info("inner_a", T.FLOAT, ["N", H])])
        inner_else = h.make_graph([h.make_node("Identity", [f"{tag}_s"], ["inner_b"])], "inner_else", [], [h.make_tensor_value_info("inner_b", T.FLOAT, ["N", H])])
        nodes.append(h.make_node("If", ["flag"], [f"{tag}_out"], then_branch=inner_then, else_branch=inner_else))
    else:
        nodes.append(h.make_node("MatMul", [f"{tag}_s", f"{tag}_w2"], [f"{tag}_out"]))
    return h.make_graph(nodes, f"{tag}_branch", [], [h.make_tensor_value_info(f"{tag}_out", T.FLOAT, ["N", H])])


def _model():
    graph = h.make_graph(
        [
            h.make_node("Constant", [], ["axes0"], value=onnx.numpy_helper.from_array(np.array([0], np.int64))),
            h.make_node("Constant", [], ["axes1"], value=onnx.numpy_helper.from_array(np.array([0], np.int64))),
            h.make_node("Greater", ["sr", "threshold"], ["flag"]),
            h.make_node("If", ["flag"], ["y"], then_branch=_branch("a", nested=True), else_branch=_branch("b", nested=False)),
        ],
        "vad_like",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", H]), h.make_tensor_value_info("sr", T.INT64, [])],
        [h.make_tensor_value_info("y", T.FLOAT, ["N", H])],
        [onnx.numpy_helper.from_array(np.array(8000, np.int64), "threshold")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("recipe_name", ["int8-dynamic", "int8-static", "int4-weight-only"])
def test_nested_if_lstm_model(recipe_name, tmp_path):
    src = tmp_path / "vad.onnx"
    onnx.save(_model(), str(src))
    before = src.read_bytes()
    feeds = [{"x": RNG.standard_normal((3, H)).astype(np.float32), "sr": np.array(sr, np.int64)} for sr in (16000, 8000)]
    recipe = recipe_class(recipe_name)(**({"block_size": 16} if recipe_name == "int4-weight-only" else {}))
    data = [dict(f) for f in feeds for _ in range(2)] if recipe_name == "int8-static" else None
    try:
        model = onnxq.quantize(src, recipe, data=data)
    except OnnxqError as e:  # a clean refusal is acceptable; a crash is not
        assert str(e)
        return
    out = tmp_path / "q.onnx"
    onnxq.save(model, out)
    assert src.read_bytes() == before
    onnx.checker.check_model(str(out), full_check=True)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for f in feeds:  # both branches
        a, b = ref.run(None, f)[0], got.run(None, f)[0]
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 0.25 * np.abs(a).max() + 1e-6


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
def test_int4_calibrated_algorithms_with_matmuls_in_if_branches(algorithm, tmp_path):
    """Data-driven int4 calibrates the root graph's MatMuls; those inside If bodies (no
    statistics of their own) are rounded with RTN, and the report says so."""
    src = tmp_path / "vad.onnx"
    onnx.save(_model(), str(src))
    feeds = [{"x": RNG.standard_normal((3, H)).astype(np.float32), "sr": np.array(16000, np.int64)} for _ in range(4)]
    model, report = onnxq.quantize_with_report(src, onnxq.WeightOnlyInt4(algorithm=algorithm, block_size=16), data=feeds)
    assert any("inside If/Loop bodies" in n for n in report.notes)
    out = tmp_path / "q.onnx"
    onnxq.save(model, out)
    onnx.checker.check_model(str(out), full_check=True)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    assert np.abs(got - ref).max() < 0.2 * np.abs(ref).max()


def test_compare_measures_the_layers_inside_the_taken_branch(tmp_path):
    """compare inlines the branch the data takes (both models alike) and measures the layers
    in it, by name; samples that take the other branch are refused with a clear message."""
    from onnxq.compare import compare_models

    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_model(), src)
    feeds = [{"x": RNG.standard_normal((2, H)).astype(np.float32), "sr": np.array(16000, np.int64)} for _ in range(6)]
    onnxq.save(onnxq.quantize(src, onnxq.StaticInt8(op_types=("MatMul",)), data=feeds), out)
    c = compare_models(src, out, feeds)
    names = {layer.name for layer in c.layers}
    assert {"a_h", "a_s"} <= names and not any(n.startswith("b_") for n in names), names
    assert all(np.isfinite(layer.sqnr_db) for layer in c.layers)
    # a sample on the other branch counts in the outputs (from the files as they are), not in the layers
    other = {"x": feeds[0]["x"], "sr": np.array(4000, np.int64)}
    mixed = compare_models(src, out, feeds[:2] + [other])
    alone = compare_models(src, out, [other], per_layer=False)
    assert mixed.samples == 3 and {layer.name for layer in mixed.layers} == names
    assert mixed.outputs[0].sqnr_db != c.outputs[0].sqnr_db and np.isfinite(alone.outputs[0].sqnr_db)


def test_inline_if_branches_pass_is_exact_and_idempotent():
    import onnx_ir as ir

    from onnxq.passes.inline_if_branches import InlineIfBranchesPass
    from tests.helpers import assert_pass_idempotent, run_ort

    model = ir.serde.deserialize_model(_model())
    feed = {"x": RNG.standard_normal((2, H)).astype(np.float32), "sr": np.array(16000, np.int64)}
    before = run_ort(model, feed)[0]
    out = assert_pass_idempotent(lambda: InlineIfBranchesPass({"y": True}), model)
    assert [n.op_type for n in out.graph].count("If") == 1  # the nested one, now in the main graph
    assert out.graph.outputs[0].name == "y"
    np.testing.assert_allclose(run_ort(out, feed)[0], before, rtol=1e-6, atol=1e-6)


def test_compare_survives_a_sample_the_inlined_branch_cannot_run(tmp_path):
    """The condition is a graph input here: a sample for the other branch (whose input the
    inlined branch could not even reshape) goes to the files as they are."""
    from onnx import numpy_helper as nh

    from onnxq.compare import compare_models

    then_g = h.make_graph([h.make_node("Relu", ["x"], ["t1"]), h.make_node("Reshape", ["t1", "shp"], ["t2"])], "then", [],
                          [h.make_tensor_value_info("t2", T.FLOAT, None)], [nh.from_array(np.array([2, 2], np.int64), "shp")])
    else_g = h.make_graph([h.make_node("Neg", ["x"], ["e1"])], "else", [], [h.make_tensor_value_info("e1", T.FLOAT, None)])
    g = h.make_graph([h.make_node("If", ["c"], ["yi"], then_branch=then_g, else_branch=else_g),
                      h.make_node("ReduceSum", ["yi"], ["y"], keepdims=0)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [None]), h.make_tensor_value_info("c", T.BOOL, [])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    path = tmp_path / "if.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    data = [{"x": np.arange(4, dtype=np.float32), "c": np.array(True)},
            {"x": np.arange(3, dtype=np.float32), "c": np.array(False)}]
    c = compare_models(path, path, data)
    assert c.samples == 2 and {layer.name for layer in c.layers} >= {"t1", "t2"}
