"""FoldScalesPass: given biases reach every Conv, quantized or fed in float."""

import numpy as np

from onnxq import StaticInt8
from onnxq import qparams as qp
from onnxq.passes.fold_scales import FoldScalesPass
from onnxq.passes.insert_qdq import InsertQdqPass, plan_static
from tests.helpers import assert_pass_idempotent, model_from_text, run_ort

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {
    a = Conv (x, w1, b1)
    h = Relu(a)
    y = Conv (h, w2, b2)
}
"""


def _model():
    rng = np.random.default_rng(5)
    return model_from_text(
        TEXT,
        {"w1": rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "b1": np.zeros(4, np.float32),
         "w2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "b2": np.zeros(4, np.float32)},
    )


def test_given_bias_is_written_for_a_conv_with_a_float_input():
    model = _model()
    for n in model.graph:
        n.name = n.outputs[0].name
    recipe = StaticInt8(exclude=("a",))  # a runs in float: y reads h in float
    plan = plan_static(model, recipe)
    assert plan.tensors == ["y"]
    InsertQdqPass(recipe)(model)
    params = {"y": qp.qparams_from_range(np.float64(-8.0), np.float64(8.0), qp.UINT8, symmetric=False)}
    bias = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    out = assert_pass_idempotent(lambda: FoldScalesPass(params, biases={"y": bias}), model)
    y_node = next(n for n in out.graph if n.name == "y")
    # no DequantizeLinear on its input, so no int32 bias: the given bias is written in float
    assert y_node.inputs[0].producer().op_type == "Relu"
    np.testing.assert_array_equal(y_node.inputs[2].const_value.numpy(), bias)
    (y,) = run_ort(out, {"x": np.zeros((1, 4, 6, 6), np.float32)})
    np.testing.assert_allclose(y[0, :, 0, 0], bias, atol=8.0 / 255)
