"""Each documented TensorRT / QNN rule: a small model that breaks it and one that keeps it."""

from __future__ import annotations

import pytest

from onnxq.deploy import check_structure, structural_rules
from onnxq.deploy.report import ERROR
from tests.deploy.qdq_models import conv_model, matmul_model, single_op_model

# -- TensorRT ------------------------------------------------------------------------------

TRT_OK = dict(act="int8", act_zp=0, weight="int8", weight_axis=0)

TRT_CASES = {
    # rule: (failing model kwargs, passing model kwargs)
    "TRT001": (dict(act="uint8", act_zp=128), {}),
    "TRT002": (dict(act_zp=3), {}),
    "TRT003": (dict(scale_input=True), {}),
    "TRT004": (dict(act_axis_channels=True), {}),
    "TRT005": (dict(weight_axis=1), {}),
    "TRT006": (dict(weight_block=2, weight_axis=None, opset=21), dict(weight="int4", weight_block=2, weight_axis=None, opset=21)),
    "TRT007": (dict(weight_input="float"), {}),
    "TRT008": (dict(weight_input="runtime", activation_dq=False), {}),
    "TRT009": (dict(qdq_domain="com.microsoft", check=False), {}),
    "TRT010": (dict(opset=11, check=False), dict(opset=13)),
}


def _rule_ids(findings, rule):
    return [f for f in findings if f.rule == rule]


@pytest.mark.parametrize("rule", sorted(TRT_CASES))
def test_tensorrt_rule_fails_and_passes(rule):
    bad_kw, good_kw = TRT_CASES[rule]
    bad = check_structure(conv_model(**{**TRT_OK, **bad_kw}), "tensorrt")
    good = check_structure(conv_model(**{**TRT_OK, **good_kw}), "tensorrt")
    assert _rule_ids(bad, rule), f"{rule} not reported on the failing model: {bad}"
    assert not _rule_ids(good, rule), f"{rule} reported on the passing model: {_rule_ids(good, rule)}"


def test_tensorrt_clean_model_has_no_findings():
    assert check_structure(conv_model(**TRT_OK), "tensorrt") == []


def test_tensorrt_int32_bias_is_named_as_bias():
    found = _rule_ids(check_structure(conv_model(**TRT_OK, bias="int32"), "tensorrt"), "TRT001")
    assert len(found) == 1 and "bias" in found[0].message and found[0].severity == ERROR
    assert not _rule_ids(check_structure(conv_model(**TRT_OK, bias="float"), "tensorrt"), "TRT001")


def test_tensorrt_gemm_axis_follows_trans_b():
    from onnxq.targets import weight_output_axis

    assert weight_output_axis("Gemm", 2, trans_b=0) == 1
    assert weight_output_axis("Gemm", 2, trans_b=1) == 0
    assert weight_output_axis("ConvTranspose", 4) == 1
    assert weight_output_axis("ConvTranspose", 4, group=2) is None
    assert weight_output_axis("MatMul", 2) == 1


# -- QNN -----------------------------------------------------------------------------------

QNN_OK = dict(act="uint8", act_zp=128, weight="uint8", weight_axis=None, weight_zp=128, bias="int32")


def _qnn_conv(**kw):
    return conv_model(**{**QNN_OK, **kw})


QNN_CASES = {
    "QNN001": (lambda: _qnn_conv(act="int8", act_zp=0), lambda: _qnn_conv()),
    "QNN002": (lambda: _qnn_conv(act="uint16", act_zp=32768, check=False),
               lambda: _qnn_conv(act="uint16", act_zp=32768, opset=21)),
    "QNN003": (lambda: single_op_model("Softmax", wrap=False), lambda: single_op_model("Softmax")),
    "QNN004": (lambda: single_op_model("Erf"), lambda: single_op_model("Relu")),
    "QNN005": (lambda: _qnn_conv(in_shape=("N", 4, 8, 8)), lambda: _qnn_conv()),
    "QNN006": (lambda: matmul_model(a="uint8", b="int8"), lambda: matmul_model(a="uint8", b="uint8")),
    "QNN007": (lambda: _qnn_conv(weight="int8", weight_zp=0, weight_axis=1),
               lambda: _qnn_conv(weight="int8", weight_zp=0, weight_axis=0)),
    "QNN008": (lambda: _qnn_conv(bias="float"), lambda: _qnn_conv(bias="int32")),
    "QNN009": (lambda: _qnn_conv(in_shape=(1, 4, 4, 4, 4)), lambda: _qnn_conv()),
    "QNN010": (lambda: single_op_model("Sigmoid", act="uint16", opset=21, out_scale=0.1, out_zp=0),
               lambda: single_op_model("Sigmoid", act="uint16", opset=21, out_scale=1 / 65536, out_zp=0)),
}


@pytest.mark.parametrize("rule", sorted(QNN_CASES))
def test_qnn_rule_fails_and_passes(rule):
    bad_fn, good_fn = QNN_CASES[rule]
    bad = check_structure(bad_fn(), "qnn")
    good = check_structure(good_fn(), "qnn")
    assert _rule_ids(bad, rule), f"{rule} not reported on the failing model: {bad}"
    assert not _rule_ids(good, rule), f"{rule} reported on the passing model: {_rule_ids(good, rule)}"


def test_qnn_16bit_com_microsoft_qdq_is_accepted_below_opset_21():
    found = check_structure(_qnn_conv(act="uint16", act_zp=32768, qdq_domain="com.microsoft", check=False), "qnn")
    assert not _rule_ids(found, "QNN002") and not _rule_ids(found, "QNN004")


def test_qnn_per_channel_matmul_is_a_fallback():
    found = _rule_ids(check_structure(matmul_model(b="uint8", b_axis=1), "qnn"), "QNN006")
    assert found and "per-channel" in found[0].message


def test_qnn_clean_model_has_no_findings():
    assert check_structure(_qnn_conv(), "qnn") == []


def test_every_rule_has_a_test_and_a_source():
    for target, cases in (("tensorrt", TRT_CASES), ("qnn", QNN_CASES)):
        rules = structural_rules(target)
        assert {r.id for r in rules} == set(cases)
        assert all(r.source and r.summary for r in rules)


def test_runtime_targets_have_no_structural_rules():
    for t in ("ort-cpu", "ort-mobile", "openvino"):
        assert structural_rules(t) == ()


def test_tensorrt_int4_weight_only_matmul_is_not_a_fallback(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import onnxq

    w = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                          [numpy_helper.from_array(w, "w")])
    p = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    q = onnxq.quantize(p, onnxq.WeightOnlyInt4(block_size=32))
    found = check_structure(q, "tensorrt")
    assert not _rule_ids(found, "TRT007")  # weight-only INT4: float activations by design
    assert not _rule_ids(found, "TRT001") and not _rule_ids(found, "TRT006")


def test_qnn_conv_relu_clip_group_is_quantized():
    import numpy as np
    import onnx
    import onnx_ir as ir
    from onnx import helper, numpy_helper

    base = ir.serde.serialize_model(_qnn_conv())
    # put a Clip between the Conv and its output QuantizeLinear: DQ→Conv→Clip→Q
    nodes = list(base.graph.node)
    conv = next(n for n in nodes if n.op_type == "Conv")
    conv.output[0] = "c_pre"
    base.graph.initializer.extend([numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")])
    idx = nodes.index(conv)
    base.graph.node.insert(idx + 1, helper.make_node("Clip", ["c_pre", "lo", "hi"], ["c"], name="clip"))
    onnx.checker.check_model(base)
    good = check_structure(ir.serde.deserialize_model(base), "qnn")
    assert not _rule_ids(good, "QNN003")
    # a Clip whose output is not quantized breaks the group: both run in float
    y_q = next(n for n in base.graph.node if n.name == "y_Q")
    base.graph.node.remove(y_q)
    y_dq = next(n for n in base.graph.node if n.name == "y_DQ")
    base.graph.node.remove(y_dq)
    base.graph.node.append(helper.make_node("Identity", ["c"], ["y"], name="out"))
    bad = check_structure(ir.serde.deserialize_model(base), "qnn")
    assert {f.node for f in _rule_ids(bad, "QNN003")} == {"conv", "clip"}


def test_tensorrt_asymmetric_int4_weight_only_names_the_fix(tmp_path):
    """A uint4 (zero-point) weight-only MatMul is not TensorRT's INT4 weight-only form; the
    finding says so and how to get symmetric int4, not "quantize both inputs"."""
    import numpy as np

    import onnxq
    from tests.helpers import model_from_text

    rng = np.random.default_rng(1)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[N, 64] x) => (float[N, 32] y) {
            y = MatMul(x, w)
        }
        """,
        {"w": rng.standard_normal((64, 32)).astype(np.float32)},
    )
    q = onnxq.quantize(model, onnxq.WeightOnlyInt4(block_size=32, symmetric=False, format="qdq"))
    found = [f for f in check_structure(q, "tensorrt") if f.rule == "TRT007"]
    assert found and "symmetric int4" in found[0].message and "both inputs" not in found[0].message
