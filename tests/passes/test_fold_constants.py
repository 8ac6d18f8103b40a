import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxq.passes.fold_constants import FoldConstantsPass
from tests.helpers import assert_pass_idempotent, check_full, run_ort, to_bytes

RNG = np.random.default_rng(6)


def _model(nodes, inits, opset=13, out_shape=(1, 4, 5, 5)):
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 5, 5])],
                         [h.make_tensor_value_info("y", T.FLOAT, list(out_shape))], inits)
    return ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", opset)]))


def _check(model, expect_ops):
    x = RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)
    before = run_ort(to_bytes(model), {"x": x})[0]
    out = assert_pass_idempotent(FoldConstantsPass, model)
    check_full(out)
    assert [n.op_type for n in out.graph] == expect_ops
    np.testing.assert_allclose(run_ort(to_bytes(out), {"x": x})[0], before, rtol=1e-6, atol=1e-6)
    return out


def test_paddle_style_bias_reshape_becomes_a_constant():
    inits = [nh.from_array(RNG.standard_normal(4).astype(np.float32), "b"),
             nh.from_array(np.array([1, -1, 1, 1], np.int64), "shape")]
    nodes = [h.make_node("Reshape", ["b", "shape"], ["b4"]), h.make_node("Add", ["x", "b4"], ["y"])]
    out = _check(_model(nodes, inits), ["Add"])
    assert set(out.graph.initializers) == {"b4_folded"}  # the inputs went with the node


@pytest.mark.parametrize("opset", [11, 13])
def test_chains_of_shape_ops_and_arithmetic(opset):
    inits = [nh.from_array(RNG.uniform(1, 2, (4, 1)).astype(np.float64), "s"),
             nh.from_array(np.array(2.0, np.float64), "two")]
    unsq = (h.make_node("Unsqueeze", ["sd"], ["s3"], axes=[0]) if opset < 13 else
            h.make_node("Unsqueeze", ["sd", "ax"], ["s3"]))
    if opset >= 13:
        inits.append(nh.from_array(np.array([0], np.int64), "ax"))
    nodes = [
        h.make_node("Div", ["s", "two"], ["sd"]),
        unsq,  # [1, 4, 1]
        h.make_node("Unsqueeze", ["s3", "ax2"] if opset >= 13 else ["s3"], ["s4"], **({} if opset >= 13 else {"axes": [3]})),
        h.make_node("Cast", ["s4"], ["s4f"], to=T.FLOAT),
        h.make_node("Sqrt", ["s4f"], ["r"]),
        h.make_node("Mul", ["x", "r"], ["y"]),
    ]
    if opset >= 13:
        inits.append(nh.from_array(np.array([3], np.int64), "ax2"))
    _check(_model(nodes, inits, opset), ["Mul"])


def test_arithmetic_that_would_grow_the_file_is_left_alone():
    inits = [nh.from_array(RNG.standard_normal((4, 1, 1)).astype(np.float32), "a"),
             nh.from_array(RNG.standard_normal((1, 5, 5)).astype(np.float32), "b")]
    nodes = [h.make_node("Add", ["a", "b"], ["ab"]), h.make_node("Mul", ["x", "ab"], ["y"])]
    assert_pass_idempotent(FoldConstantsPass, _model(nodes, inits), expect_modified=False)
