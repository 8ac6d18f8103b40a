import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxq.passes.fold_conv_affine import FoldConvAffinePass
from tests.helpers import assert_pass_idempotent, check_full, run_ort, to_bytes

RNG = np.random.default_rng(3)


def _bn_inits(prefix: str, c: int) -> list[onnx.TensorProto]:
    return [
        nh.from_array(RNG.uniform(0.5, 2.0, c).astype(np.float32), f"{prefix}_gamma"),
        nh.from_array(RNG.standard_normal(c).astype(np.float32), f"{prefix}_beta"),
        nh.from_array(RNG.standard_normal(c).astype(np.float32), f"{prefix}_mean"),
        nh.from_array(RNG.uniform(0.1, 3.0, c).astype(np.float32), f"{prefix}_var"),
    ]


def _model(op: str = "Conv", group: int = 1, bias: bool = True, bn_is_output: bool = False, shared: bool = False):
    cin, cout = 4, 4 if group > 1 else 6
    if op == "Conv":
        w = RNG.standard_normal((cout, cin // group, 3, 3)).astype(np.float32)
    else:
        w = RNG.standard_normal((cin, cout // group, 3, 3)).astype(np.float32)
    inits = [nh.from_array(w, "w"), *_bn_inits("bn", cout)]
    conv_in = ["x", "w"]
    if bias:
        inits.append(nh.from_array(RNG.standard_normal(cout).astype(np.float32), "b"))
        conv_in.append("b")
    nodes = [
        h.make_node(op, conv_in, ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group, name="conv"),
        h.make_node("BatchNormalization", ["c", "bn_gamma", "bn_beta", "bn_mean", "bn_var"], ["y"], epsilon=1e-3,
                    name="bn"),
    ]
    outputs = ["y"]
    if not bn_is_output:
        nodes.append(h.make_node("Relu", ["y"], ["r"], name="relu"))
        outputs = ["r"]
    if shared:
        outputs.append("c")
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, cin, 8, 8])],
        [h.make_tensor_value_info(o, T.FLOAT, [1, cout, 8, 8]) for o in outputs], inits,
    )
    return ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 15)]))


@pytest.mark.parametrize("op,group,bias", [("Conv", 1, True), ("Conv", 1, False), ("Conv", 4, True),
                                           ("ConvTranspose", 1, True)])
def test_folded_conv_computes_the_same(op, group, bias):
    model = _model(op, group, bias)
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    before = run_ort(to_bytes(model), {"x": x})[0]
    out = assert_pass_idempotent(FoldConvAffinePass, model)
    check_full(out)
    assert [n.op_type for n in out.graph] == [op, "Relu"]
    conv = next(iter(out.graph))
    assert conv.outputs[0].name == "y"  # the folded output carries the BN output's name
    np.testing.assert_allclose(run_ort(to_bytes(out), {"x": x})[0], before, rtol=1e-4, atol=1e-4)


def test_bn_that_is_the_graph_output_keeps_its_name():
    model = _model(bn_is_output=True)
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    before = run_ort(to_bytes(model), {"x": x})[0]
    out = assert_pass_idempotent(FoldConvAffinePass, model)
    assert [v.name for v in out.graph.outputs] == ["y"]
    np.testing.assert_allclose(run_ort(to_bytes(out), {"x": x})[0], before, rtol=1e-4, atol=1e-4)


def test_conv_output_used_elsewhere_is_not_folded():
    assert_pass_idempotent(FoldConvAffinePass, _model(shared=True), expect_modified=False)


def _chain_model(consts: dict[str, np.ndarray], ops: list[tuple[str, str]], pads=(1, 1, 1, 1)):
    """x -> Conv -> op(const) -> ... -> Relu; ``ops``: (op type, const name) in order."""
    w = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    inits = [nh.from_array(w, "w")] + [nh.from_array(a, k) for k, a in consts.items()]
    nodes = [h.make_node("Conv", ["x", "w"], ["t0"], kernel_shape=[3, 3], pads=list(pads), name="conv")]
    for i, (op, c) in enumerate(ops):
        nodes.append(h.make_node(op, [f"t{i}", c], [f"t{i + 1}"], name=f"{op}_{i}"))
    nodes.append(h.make_node("Relu", [f"t{len(ops)}"], ["r"], name="relu"))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])],
                         [h.make_tensor_value_info("r", T.FLOAT, [1, 6, 8, 8])], inits)
    return ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 15)]))


def test_scalar_and_per_channel_mul_add_sub_div_chains_fold():
    consts = {
        "s": np.array([1.7], np.float32), "b": np.array(0.3, np.float32),
        "cs": RNG.uniform(0.5, 2, (6, 1, 1)).astype(np.float32), "cb": RNG.standard_normal((1, 6, 1, 1)).astype(np.float32),
        "d": np.array(4.0, np.float32),
    }
    model = _chain_model(consts, [("Mul", "s"), ("Add", "b"), ("Mul", "cs"), ("Sub", "cb"), ("Div", "d")])
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    before = run_ort(to_bytes(model), {"x": x})[0]
    out = assert_pass_idempotent(FoldConvAffinePass, model)
    check_full(out)
    assert [n.op_type for n in out.graph] == ["Conv", "Relu"]
    assert sorted(out.graph.initializers) == ["b_folded", "w_folded"] or len(out.graph.initializers) == 2
    np.testing.assert_allclose(run_ort(to_bytes(out), {"x": x})[0], before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("const", [
    np.ones((6, 8, 8), np.float32),  # varies over space: not per channel
    np.ones((2, 6, 1, 1), np.float32),  # batch axis
    np.ones((1, 1, 1, 8), np.float32),  # along width
])
def test_constants_that_are_not_per_channel_are_left_alone(const):
    assert_pass_idempotent(FoldConvAffinePass, _chain_model({"c": const}, [("Mul", "c")]), expect_modified=False)


def test_div_of_a_constant_by_the_conv_output_is_left_alone():
    w = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    graph = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         h.make_node("Div", ["k", "c"], ["y"])], "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])], [h.make_tensor_value_info("y", T.FLOAT, [1, 6, 8, 8])],
        [nh.from_array(w, "w"), nh.from_array(np.array(2.0, np.float32), "k")],
    )
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 15)]))
    assert_pass_idempotent(FoldConvAffinePass, model, expect_modified=False)
