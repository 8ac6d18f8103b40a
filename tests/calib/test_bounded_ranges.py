"""Outputs bounded by construction (Sigmoid, HardSigmoid, Tanh) keep their whole observed range."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import numpy_helper as nh

import onnxq
from tests.helpers import model_from_text

RNG = np.random.default_rng(11)

SWISH = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[1, 3, 16, 16] x) => (float[1, 4, 16, 16] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    g = Sigmoid(c)
    s = Mul(c, g)
    y = Conv(s, w2)
}
"""


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"])
def test_a_sigmoid_gate_is_not_clipped(method):
    """A swish gate's few values near 1 are the open gates (x * sigmoid(x) at its largest): a
    clipping search would cut them (entropy put one at 0.5 and cost an OCR model 16 dB)."""
    w = np.zeros((8, 3, 3, 3), np.float32)
    w[:3, :, 1, 1] = np.eye(3, dtype=np.float32)  # the centre tap copies x: c = x on 3 channels
    model = model_from_text(SWISH, {"w": w, "w2": RNG.standard_normal((4, 8, 1, 1)).astype(np.float32)})
    data = []
    for _ in range(8):  # gates mostly near 0.12, a few in a thousand wide open (x = 8)
        x = RNG.normal(-2.0, 0.5, (1, 3, 16, 16)).astype(np.float32)
        x.reshape(-1)[RNG.choice(x.size, 1, replace=False)] = 8.0
        data.append({"x": x})
    q = onnxq.quantize(ir.from_proto(ir.to_proto(model)), onnxq.StaticInt8(calibration=method), data)
    gate = next(n for n in q.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == "g")
    scale = float(nh.to_array(ir.to_proto(gate.inputs[1].const_value)))
    zero = int(nh.to_array(ir.to_proto(gate.inputs[2].const_value)))
    top = (255 - zero) * scale
    assert top > 0.99, (method, top)  # sigmoid(8) = 0.9997


@pytest.mark.parametrize("method", ["auto", "mse", "entropy"])
def test_a_gate_keeps_its_exact_maximum_where_histograms_see_a_sample(method):
    """Histogram observers see a strided sample of a large map (about 4096 values); the range
    of a squashed output comes from the exact extremes, which a sample can miss (a YOLO
    detector's SiLU gates: 0.87 for 0.97, and auto's minmax candidate differed from minmax)."""
    text = SWISH.replace("16, 16", "64, 64")
    w = np.zeros((8, 3, 3, 3), np.float32)
    w[:3, :, 1, 1] = np.eye(3, dtype=np.float32)
    model = model_from_text(text, {"w": w, "w2": RNG.standard_normal((4, 8, 1, 1)).astype(np.float32)})
    data = []
    for _ in range(4):
        x = RNG.normal(-2.0, 0.5, (1, 3, 64, 64)).astype(np.float32)
        x[0, 0, 0, 1] = 8.0  # flat index 1 of the gate map: off the sample's stride
        data.append({"x": x})
    q = onnxq.quantize(ir.from_proto(ir.to_proto(model)), onnxq.StaticInt8(calibration=method), data)
    gate = next(n for n in q.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == "g")
    scale = float(nh.to_array(ir.to_proto(gate.inputs[1].const_value)))
    zero = int(nh.to_array(ir.to_proto(gate.inputs[2].const_value)))
    assert (255 - zero) * scale > 0.99, (method, (255 - zero) * scale)
