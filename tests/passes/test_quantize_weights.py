import numpy as np

from onnxq.passes.quantize_weights import QuantizeWeightsPass, WeightQuantConfig
from tests.helpers import assert_pass_idempotent, check_full, model_from_text, run_ort

RNG = np.random.default_rng(3)

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[1, 4, 8, 8] x) => (float[1, 10] y) {
    c = Conv <pads: ints = [1, 1, 1, 1]> (x, wc, bc)
    r = Relu(c)
    p = GlobalAveragePool(r)
    f = Flatten(p)
    g = Gemm <transB: int = 1> (f, wg, bg)
    y = MatMul(g, wm)
}
"""


def test_weights_become_int8_dequantize_linear_per_channel():
    model = model_from_text(
        TEXT,
        {
            "wc": RNG.standard_normal((6, 4, 3, 3)).astype(np.float32),
            "bc": RNG.standard_normal(6).astype(np.float32),
            "wg": RNG.standard_normal((12, 6)).astype(np.float32),
            "bg": RNG.standard_normal(12).astype(np.float32),
            "wm": RNG.standard_normal((12, 10)).astype(np.float32),
        },
    )
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    (expected,) = run_ort(model, {"x": x})
    out = assert_pass_idempotent(lambda: QuantizeWeightsPass(WeightQuantConfig()), model)
    check_full(out)
    dqs = [n for n in out.graph if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 3
    assert sorted(n.attributes.get_int("axis") for n in dqs) == [0, 0, 1]  # Conv, Gemm transB, MatMul
    assert not {"wc", "wg", "wm"} & set(out.graph.initializers)
    (got,) = run_ort(out, {"x": x})
    assert np.abs(got - expected).max() / np.abs(expected).max() < 0.02
