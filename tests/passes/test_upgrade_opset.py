"""UpgradeOpsetPass: the converted model means the same (ORT outputs, checker), agrees with
onnx.version_converter, and the pass contract holds."""

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
import pytest

from onnxq.passes.infer_shapes import InferShapesPass
from onnxq.passes.upgrade_opset import UpgradeOpsetPass
from tests.helpers import assert_pass_idempotent, check_full, model_from_text, run_ort

RNG = np.random.default_rng(0)

OPSET17 = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[2, 6, 8] x) => (float[2, 1, 8] mean, float[2, 6, 1] mx, float[2, 3, 8] s0, float[2, 3, 8] s1, float[2, 6, 5] y) {
    mean = ReduceMean <axes: ints = [1], keepdims: int = 1> (x)
    mx = ReduceMax <axes: ints = [-1]> (x)
    ss = ReduceSumSquare <axes: ints = [0, 2], keepdims: int = 0> (x)
    s0, s1 = Split <axis: int = 1> (x)
    l2 = ReduceL2 (x)
    h = MatMul(x, w)
    y = Add(h, l2)
}
"""

OPSET11 = """
<ir_version: 6, opset_import: ["" : 11]>
m (float[2, 6] x) => (float[1, 2, 6] y, float[2, 3] a, float[2, 3] b, float[2, 1] s) {
    y = Unsqueeze <axes: ints = [0]> (x)
    a, b = Split <axis: int = 1> (x)
    s = ReduceSum <axes: ints = [1]> (x)
}
"""


def _opset17():
    return model_from_text(OPSET17, {"w": RNG.standard_normal((8, 5)).astype(np.float32)})


def test_opset_17_to_21_rewrites_reduce_and_split_and_means_the_same():
    model = _opset17()
    x = RNG.standard_normal((2, 6, 8)).astype(np.float32)
    before = run_ort(model, {"x": x})
    out = assert_pass_idempotent(lambda: UpgradeOpsetPass(21), model)
    assert out.opset_imports[""] == 21 and out.ir_version >= 10
    check_full(out)
    for node in out.graph:
        if node.op_type.startswith("Reduce"):
            assert "axes" not in node.attributes
        if node.op_type == "Split":
            assert node.attributes.get_int("num_outputs") == 2
    after = run_ort(out, {"x": x})
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_agrees_with_onnx_version_converter():
    model = _opset17()
    x = RNG.standard_normal((2, 6, 8)).astype(np.float32)
    proto = ir.serde.serialize_model(model)
    theirs = onnx.version_converter.convert_version(proto, 21)
    UpgradeOpsetPass(21)(model)
    ours = run_ort(model, {"x": x})
    ref = run_ort(theirs.SerializeToString(), {"x": x})
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def test_old_opsets_go_through_the_onnx_converter():
    model = model_from_text(OPSET11)
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    before = run_ort(model, {"x": x})
    assert UpgradeOpsetPass(21)(model).modified
    assert model.opset_imports[""] == 21
    check_full(model)
    for a, b in zip(before, run_ort(model, {"x": x})):
        np.testing.assert_array_equal(a, b)


def test_already_there_is_a_no_op_and_downgrade_is_refused():
    model = _opset17()
    assert not UpgradeOpsetPass(17)(model).modified
    with pytest.raises(ir.passes.PreconditionError, match="does not downgrade"):
        UpgradeOpsetPass(16)(model)


def test_group_norm_scale_becomes_per_channel():
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    m (float[2, 4, 3] x) => (float[2, 4, 3] y) {
        y = GroupNormalization <num_groups: int = 2> (x, scale, bias)
    }
    """
    proto = onnx.parser.parse_model(text)  # GroupNormalization-18 is deprecated: no checker here
    for name, v in {"scale": [1.5, 0.5], "bias": [0.1, -0.2]}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(v, np.float32), name))
    model = ir.serde.deserialize_model(proto)
    InferShapesPass()(model)
    x = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    UpgradeOpsetPass(21)(model)
    check_full(model)
    (y,) = run_ort(model, {"x": x})
    g = x.reshape(2, 2, 6)
    norm = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(2, 4, 3)
    ref = norm * np.repeat([1.5, 0.5], 2)[None, :, None] + np.repeat([0.1, -0.2], 2)[None, :, None]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_real_model_upgrades(mobilenet_path):
    from onnxq import modelio

    model = modelio.load(mobilenet_path)
    x = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    before = run_ort(model, {"input": x})[0]
    UpgradeOpsetPass(21)(model)
    np.testing.assert_allclose(run_ort(model, {"input": x})[0], before, rtol=1e-5, atol=1e-5)


def test_old_opset_with_initializers_that_are_not_inputs():
    """onnx.version_converter only resolves initializers listed as graph inputs (the IR < 4
    rule); models with IR >= 4 at an old opset (the ONNX node tests' frozen inputs) used to
    fail with "Input y is undefined"."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    from onnxq.passes.upgrade_opset import UpgradeOpsetPass

    y = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    graph = h.make_graph([h.make_node("Add", ["x", "y"], ["z"])], "g", [h.make_tensor_value_info("x", T.FLOAT, [3, 4])],
                         [h.make_tensor_value_info("z", T.FLOAT, [3, 4])], [onnx.numpy_helper.from_array(y, "y")])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 7)], ir_version=8)
    model = ir.serde.deserialize_model(proto)
    assert UpgradeOpsetPass(13)(model).modified
    assert model.opset_imports[""] == 13
    assert [v.name for v in model.graph.inputs] == ["x"]  # y stays an initializer only
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], x + y)
