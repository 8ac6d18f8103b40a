import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxq.passes.fuse_hard_swish import FuseHardSwishPass
from tests.helpers import assert_pass_idempotent, check_full, run_ort, to_bytes

RNG = np.random.default_rng(4)


def _model(kind: str, opset: int, div_first: bool = False, clip_attrs: bool = False):
    """x -> Relu -> written-out hard-sigmoid / hard-swish -> Neg (consumer)."""
    c = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1.0 / 6.0}
    inits = [nh.from_array(np.array(v, np.float32), k) for k, v in c.items()]
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("Add", ["r", "three"], ["a"])]
    if clip_attrs:
        nodes.append(h.make_node("Clip", ["a"], ["c"], min=0.0, max=6.0))
    else:
        nodes.append(h.make_node("Clip", ["a", "zero", "six"], ["c"]))
    if kind == "hardsigmoid":
        nodes.append(h.make_node("Div", ["c", "six"], ["y"]))
    elif div_first:
        nodes += [h.make_node("Mul", ["c", "sixth"], ["d"]), h.make_node("Mul", ["r", "d"], ["y"])]
    else:
        nodes += [h.make_node("Mul", ["r", "c"], ["m"]), h.make_node("Div", ["m", "six"], ["y"])]
    nodes.append(h.make_node("Neg", ["y"], ["out"]))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 8])],
                         [h.make_tensor_value_info("out", T.FLOAT, [2, 8])], inits)
    return ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", opset)]))


@pytest.mark.parametrize("kind,opset,div_first,clip_attrs,expect", [
    ("hardsigmoid", 13, False, False, ["Relu", "HardSigmoid", "Neg"]),
    ("hardswish", 14, False, False, ["Relu", "HardSwish", "Neg"]),
    ("hardswish", 14, True, False, ["Relu", "HardSwish", "Neg"]),
    ("hardswish", 13, False, False, ["Relu", "HardSigmoid", "Mul", "Neg"]),
    ("hardswish", 10, False, True, ["Relu", "HardSigmoid", "Mul", "Neg"]),
])
def test_written_out_activation_becomes_the_op(kind, opset, div_first, clip_attrs, expect):
    model = _model(kind, opset, div_first, clip_attrs)
    x = (RNG.standard_normal((2, 8)) * 4).astype(np.float32)
    before = run_ort(to_bytes(model), {"x": x})[0]
    unused_before = {name for name, v in model.graph.initializers.items() if not v.uses()}
    out = assert_pass_idempotent(FuseHardSwishPass, model)
    check_full(out)
    assert [n.op_type for n in out.graph] == expect
    # the pattern's constants went with it
    assert {name for name, v in out.graph.initializers.items() if not v.uses()} <= unused_before
    np.testing.assert_allclose(run_ort(to_bytes(out), {"x": x})[0], before, rtol=1e-5, atol=1e-6)


def test_other_constants_are_left_alone():
    model = _model("hardswish", 14)
    model.graph.initializers["three"].const_value = ir.tensor(np.array(2.5, np.float32), name="three")
    assert_pass_idempotent(FuseHardSwishPass, model, expect_modified=False)


def test_a_constant_that_would_broadcast_x_up_is_left_alone():
    """Add(x[4], three[1, 1]) is [1, 4]; HardSigmoid(x) would be [4]."""
    inits = [nh.from_array(np.full((1, 1), 3.0, np.float32), "three"), nh.from_array(np.array(0.0, np.float32), "zero"),
             nh.from_array(np.array(6.0, np.float32), "six")]
    graph = h.make_graph(
        [h.make_node("Add", ["x", "three"], ["a"]), h.make_node("Clip", ["a", "zero", "six"], ["c"]),
         h.make_node("Div", ["c", "six"], ["y"])], "g",
        [h.make_tensor_value_info("x", T.FLOAT, [4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], inits)
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 14)]))
    assert_pass_idempotent(FuseHardSwishPass, model, expect_modified=False)


def test_int8_static_fuses_paddle_style_chains_without_shape_info():
    """Paddle2ONNX writes 3 and 6 as [1]-shaped constants and no value_info: the recipe infers
    shapes first, so the chain after a Conv still becomes the op (PicoDet: 94 chains)."""
    import onnxq

    one = {k: nh.from_array(np.array([v], np.float32), k) for k, v in {"three": 3.0, "zero": 0.0, "six": 6.0}.items()}
    w = nh.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Add", ["c", "three"], ["a"]),
             h.make_node("Clip", ["a", "zero", "six"], ["k"]), h.make_node("Mul", ["c", "k"], ["m"]),
             h.make_node("Div", ["m", "six"], ["s"]), h.make_node("Conv", ["s", "w2"], ["y"])]
    w2 = nh.from_array(RNG.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], [w, w2, *one.values()])
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 14)]))
    assert model.graph.node(1).outputs[0].shape is None  # no shape info from the exporter
    data = [{"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    out, report = onnxq.quantize_with_report(model, onnxq.StaticInt8(), data)
    assert any("hard-sigmoid/hard-swish as the ops" in n for n in report.notes), report.notes
    assert "HardSwish" in [n.op_type for n in out.graph]
