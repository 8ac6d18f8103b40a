import numpy as np
import onnx_ir as ir

from onnxq.passes.dequantize_biases import DequantizeBiasesPass
from tests.deploy.qdq_models import conv_model
from tests.helpers import assert_pass_idempotent, check_full, run_ort, to_bytes


def test_int32_bias_becomes_the_float_it_denotes():
    model = conv_model(act="int8", bias="int32")
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    before = run_ort(to_bytes(model), {"x": x})[0]
    out = assert_pass_idempotent(DequantizeBiasesPass, model)
    check_full(out)
    conv = next(n for n in out.graph if n.op_type == "Conv")
    assert conv.inputs[2].dtype == ir.DataType.FLOAT and conv.inputs[2].const_value is not None
    assert not any(n.inputs[0].dtype == ir.DataType.INT32 for n in out.graph if n.op_type == "DequantizeLinear")
    np.testing.assert_array_equal(run_ort(to_bytes(out), {"x": x})[0], before)


def test_float_bias_is_left_alone():
    assert_pass_idempotent(DequantizeBiasesPass, conv_model(act="int8", bias="float"), expect_modified=False)
