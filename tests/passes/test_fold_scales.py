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


def test_near_zero_channel_with_a_large_bias_gets_a_scale_its_int32_bias_fits(caplog):
    """A channel whose weights are ~0 has a tiny per-channel scale, so its bias step
    s_x * s_w is tiny and a bias of a few units overflows int32; its weight scale is
    widened instead of clipping the bias."""
    import onnxq

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 6, 6] x) => (float[N, 3, 6, 6] y) {
        y = Conv <pads: ints = [1, 1, 1, 1]> (x, w, b)
    }
    """
    rng = np.random.default_rng(9)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    w[1] *= 1e-9  # a dead channel
    inits = {"w": w, "b": np.array([0.1, 4.0, -0.2], np.float32)}
    data = [{"x": rng.standard_normal((1, 2, 6, 6)).astype(np.float32)} for _ in range(4)]
    x = {"x": rng.standard_normal((1, 2, 6, 6)).astype(np.float32)}
    (ref,) = run_ort(model_from_text(text, inits), x)
    with caplog.at_level("WARNING"):
        q = onnxq.quantize(model_from_text(text, inits), StaticInt8(), data=data)
    assert "saturates int32" not in caplog.text
    (got,) = run_ort(q, x)
    np.testing.assert_allclose(got[:, 1], 4.0, atol=0.05)  # the bias (to the output step), not a clipped one
    assert np.sqrt(((got - ref) ** 2).mean() / (ref ** 2).mean()) < 0.1
