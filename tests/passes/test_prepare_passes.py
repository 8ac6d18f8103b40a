import numpy as np

from onnxq import modelio
from onnxq.passes.infer_shapes import InferShapesPass
from onnxq.passes.lift_constants import LiftConstantsPass
from tests.helpers import assert_pass_idempotent, model_from_text, run_ort

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[2, 4] x) => (float[2, 3] y) {
    w = Constant <value: tensor = float[4, 3] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> ()
    h = MatMul(x, w)
    y = Relu(h)
}
"""


def test_lift_constants_moves_weights_to_initializers():
    model = model_from_text(TEXT)
    x = np.ones((2, 4), np.float32)
    (expected,) = run_ort(model, {"x": x})
    out = assert_pass_idempotent(LiftConstantsPass, model)
    assert [n.op_type for n in out.graph] == ["MatMul", "Relu"]
    assert len(out.graph.initializers) == 1
    (got,) = run_ort(out, {"x": x})
    np.testing.assert_array_equal(got, expected)


def test_infer_shapes_fills_intermediate_types():
    model = model_from_text(TEXT)
    out = assert_pass_idempotent(InferShapesPass, model)
    h = out.graph.node(1).outputs[0]
    assert h.dtype is not None and list(h.shape) == [2, 3]


def test_infer_shapes_idempotent_on_real_model(mobilenet_path):
    model = modelio.load(mobilenet_path)
    for node in model.graph:  # forget what the exporter recorded
        for v in node.outputs:
            if not v.is_graph_output():
                v.shape, v.type = None, None
    out = assert_pass_idempotent(InferShapesPass, model, expect_modified=True)
    assert all(v.shape is not None for n in out.graph for v in n.outputs)


def test_readme_pass_api_sequence():
    """The README's pass-API example on a tiny MatMul model: tidy, dynamic int8, second run a no-op."""
    import onnx_ir as ir

    import onnxq
    from onnxq.passes.dynamic_quantize import DynamicQuantizePass
    from onnxq.passes.fold_constants import FoldConstantsPass
    from onnxq.passes.infer_shapes import InferShapesPass
    from onnxq.passes.quantize_matmul_int4 import QuantizeMatMulInt4Pass
    from tests.helpers import model_from_text, run_ort

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 64] x) => (float[N, 64] y) {
        wt = Transpose(w)
        y = MatMul(x, wt)
    }
    """
    w = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    x = np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)
    for make in (lambda: DynamicQuantizePass(onnxq.DynamicInt8()),
                 lambda: QuantizeMatMulInt4Pass(onnxq.WeightOnlyInt4(block_size=32, format="matmulnbits"))):
        model = model_from_text(text, {"w": w})
        ref = run_ort(model, {"x": x})[0]
        ir.passes.PassManager([FoldConstantsPass(), InferShapesPass()])(model)
        assert make()(model).modified
        assert not make()(model).modified
        y = run_ort(model, {"x": x})[0]
        assert 10 * np.log10((ref**2).sum() / ((y - ref) ** 2).sum()) > 18
