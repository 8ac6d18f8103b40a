"""Dense layers written as MatMul + bias Add (+ a BatchNormalization's Mul/Add): a Gemm on
2-D inputs, one float bias Add on N-D inputs (FoldMatMulOutputAffinePass, then insert_qdq's
BIAS_ADD rule) -- neither rounds a bias, a gain or the MatMul's result to 8 bits."""

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxq
from onnxq.passes.fold_matmul_output_affine import FoldMatMulOutputAffinePass
from onnxq.passes.infer_shapes import InferShapesPass
from onnxq.passes.insert_qdq import BIAS_ADD
from tests.helpers import assert_pass_idempotent, check_full, run_ort, to_bytes

RNG = np.random.default_rng(31)


def _mlp(rank: int, widths=(64, 256, 256, 8)) -> ir.Model:
    """x -> [MatMul -> Add(bias) -> Relu] x 2 -> MatMul -> Add(bias) -> y (biases of
    shape [N]; the last one [1, N])."""
    nodes, inits, x = [], [], "x"
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        bias = (RNG.standard_normal((1, n) if last else n) * 0.5).astype(np.float32)
        inits += [nh.from_array((RNG.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), f"w{i}"),
                  nh.from_array(bias, f"b{i}")]
        nodes += [h.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"dense{i}"),
                  h.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"], name=f"bias{i}")]
        if not last:
            nodes.append(h.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            x = f"r{i}"
    shape = ["N", widths[0]] if rank == 2 else ["N", 16, widths[0]]
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, shape)],
                         [h.make_tensor_value_info("y", T.FLOAT, shape[:-1] + [widths[-1]])], inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    model = ir.serde.deserialize_model(proto)
    InferShapesPass()(model)
    return model


def _feeds(rank: int, n: int) -> list[dict[str, np.ndarray]]:
    shape = (4, 64) if rank == 2 else (4, 16, 64)
    return [{"x": RNG.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _sqnr(ref, y):
    return 10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - y).astype(np.float64) ** 2).sum())


def test_two_d_dense_layers_become_gemms_that_compute_the_same():
    model = _mlp(2)
    feeds = _feeds(2, 1)[0]
    ref = run_ort(model, feeds)[0]
    fused = assert_pass_idempotent(FoldMatMulOutputAffinePass, model)
    check_full(fused)
    gemms = [n for n in fused.graph if n.op_type == "Gemm"]
    assert [n.name for n in gemms] == ["dense0", "dense1", "dense2"]  # the layers keep their names
    assert not any(n.op_type in ("MatMul", "Add") for n in fused.graph)
    assert [v.name for v in fused.graph.outputs] == ["y"]
    assert all(len(g.inputs[2].shape) == 1 for g in gemms)  # the [1, N] bias became a vector
    np.testing.assert_allclose(run_ort(fused, feeds)[0], ref, rtol=1e-5, atol=1e-5)


def test_what_is_not_a_two_d_dense_layer_is_left_alone():
    model = _mlp(3)  # rank-3 input: Gemm takes 2-D only
    assert_pass_idempotent(FoldMatMulOutputAffinePass, model, expect_modified=False)
    shared = _mlp(2)
    m0 = next(n for n in shared.graph if n.name == "dense0")
    extra = ir.node("Relu", [m0.outputs[0]])  # the MatMul's result is read twice
    shared.graph.append(extra)
    extra.outputs[0].name = "also"
    shared.graph.outputs.append(extra.outputs[0])
    FoldMatMulOutputAffinePass()(shared)
    assert {n.name for n in shared.graph if n.op_type == "MatMul"} == {"dense0"}


@pytest.mark.parametrize("rank", [2, 3])
def test_dense_layers_quantize_without_rounding_their_biases(rank, tmp_path):
    """2-D: one QGemm per layer in ORT (int32 bias). N-D: the bias Adds stay float with the
    BIAS_ADD reason, ORT runs MatMulIntegerToFloat, and the output is closer to float than
    with the Adds quantized. Either way no bias is stored in the 8-bit activation type."""
    model = _mlp(rank)
    calib = _feeds(rank, 32)
    hold = _feeds(rank, 16)
    refs = [run_ort(model, f)[0] for f in hold]
    q, report = onnxq.quantize_with_report(model.clone(), onnxq.StaticInt8(calibration="minmax"), calib)
    check_full(q)
    eight_bit = [v for v in q.graph.initializers.values()
                 if v.const_value is not None and v.const_value.dtype == ir.DataType.UINT8 and v.const_value.size > 1]
    assert not eight_bit, [v.name for v in eight_bit]
    path = tmp_path / "q.onnx"
    path.write_bytes(to_bytes(q))
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    kernels = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    if rank == 2:
        assert kernels["QGemm"] == 3, kernels
        assert any("as Gemm" in n for n in report.notes)
    else:
        assert kernels["MatMulIntegerToFloat"] == 3, kernels
        assert [d.reason for d in report.decisions if d.node.op_type == "Add"] == [BIAS_ADD] * 3
    new_db = _sqnr(np.concatenate(refs), np.concatenate([run_ort(q, f)[0] for f in hold]))
    assert new_db > 35, new_db
    if rank == 3:  # quantize_islands keeps the old rule: the bias Adds quantized
        old, _ = onnxq.quantize_with_report(
            model.clone(), onnxq.StaticInt8(calibration="minmax", quantize_islands=True), calib)
        old_db = _sqnr(np.concatenate(refs), np.concatenate([run_ort(old, f)[0] for f in hold]))
        assert new_db > old_db + 1.0, (new_db, old_db)


KERAS_DENSE_BN = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[{batch}, 32] x) => (float[{batch}, 10] y) {{
    h = MatMul(x, w1)
    hb = Add(h, b1)
    s = Mul(hb, gamma)
    t = Add(s, beta)
    r = Relu(t)
    z = Gemm <transB: int = 1> (r, w2t, c2)
    zs = Div(z, two)
    y = Sub(zs, shift)
}}
"""


def _keras_dense_bn(batch="N"):
    """Keras Dense -> BatchNormalization (per-feature gains 0.03 .. 30, written as Mul/Add)
    -> ReLU -> Dense (a transB Gemm) -> Div/Sub by constants."""
    from tests.helpers import model_from_text

    rng = np.random.default_rng(4)
    gamma = np.exp(rng.uniform(np.log(0.03), np.log(30), 64)).astype(np.float32)
    model = model_from_text(KERAS_DENSE_BN.format(batch=batch), {
        "w1": (rng.standard_normal((32, 64)) * 0.3).astype(np.float32), "b1": rng.standard_normal(64).astype(np.float32),
        "gamma": gamma, "beta": rng.standard_normal(64).astype(np.float32),
        "w2t": (rng.standard_normal((10, 64)) * 0.2).astype(np.float32), "c2": rng.standard_normal(10).astype(np.float32),
        "two": np.array(2.0, np.float32), "shift": rng.standard_normal(10).astype(np.float32),
    })
    InferShapesPass()(model)
    return model


def test_a_batch_norm_after_a_dense_layer_folds_exactly_into_its_weights():
    model = _keras_dense_bn()
    feeds = {"x": RNG.standard_normal((5, 32)).astype(np.float32)}
    ref = run_ort(model, feeds)[0]
    folded = assert_pass_idempotent(FoldMatMulOutputAffinePass, model)
    check_full(folded)
    assert [n.op_type for n in folded.graph] == ["Gemm", "Relu", "Gemm"]
    assert folded.graph.node(2).attributes.get_int("transB", 0) == 1
    np.testing.assert_allclose(run_ort(folded, feeds)[0], ref, rtol=1e-4, atol=1e-4)


def test_an_n_d_dense_layer_keeps_a_matmul_and_one_bias_add_under_a_new_name():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 7, 16] x) => (float[N, 7, 8] y) {
        h = MatMul(x, w)
        s = Mul(h, gamma)
        y = Add(s, beta)
    }
    """
    from tests.helpers import model_from_text

    model = model_from_text(text, {"w": RNG.standard_normal((16, 8)).astype(np.float32),
                                   "gamma": RNG.uniform(0.1, 10, 8).astype(np.float32),
                                   "beta": RNG.standard_normal(8).astype(np.float32)})
    InferShapesPass()(model)
    feeds = {"x": RNG.standard_normal((2, 7, 16)).astype(np.float32)}
    ref = run_ort(model, feeds)[0]
    folded = assert_pass_idempotent(FoldMatMulOutputAffinePass, model)
    matmul, add = list(folded.graph)
    assert (matmul.op_type, add.op_type) == ("MatMul", "Add") and matmul.outputs[0].name != "h"
    np.testing.assert_allclose(run_ort(folded, feeds)[0], ref, rtol=1e-4, atol=1e-4)


def test_the_folded_batch_norm_quantizes_far_better(monkeypatch):
    """Without the fold the BatchNormalization's gains (1000x apart) are one uint8 constant
    with one scale: most features' gains round to a few steps."""
    import onnx_ir as ir_mod

    model = _keras_dense_bn()
    calib = [{"x": RNG.standard_normal((8, 32)).astype(np.float32)} for _ in range(16)]
    hold = [{"x": RNG.standard_normal((8, 32)).astype(np.float32)} for _ in range(8)]
    ref = np.concatenate([run_ort(model, f)[0] for f in hold])

    def sqnr(recipe):
        q = onnxq.quantize(model.clone(), recipe, calib)
        return _sqnr(ref, np.concatenate([run_ort(q, f)[0] for f in hold]))

    folded = sqnr(onnxq.StaticInt8(calibration="minmax"))
    monkeypatch.setattr(FoldMatMulOutputAffinePass, "call", lambda self, m: ir_mod.passes.PassResult(m, False))
    unfolded = sqnr(onnxq.StaticInt8(calibration="minmax"))
    assert folded > 35 and folded > unfolded + 4, (folded, unfolded)  # 38.2 vs 31.8 dB


def test_a_bias_fold_keeps_a_shared_weight_shared():
    """Only shifts (a bias Add): the weight is unchanged, so two layers that share it still
    read one initializer (a copy each would double its bytes)."""
    from tests.helpers import model_from_text

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 16] x) => (float[N, 8] y, float[N, 8] z) {
        a = MatMul(x, w)
        y = Add(a, b1)
        c = MatMul(x, w)
        z = Add(c, b2)
    }
    """
    model = model_from_text(text, {"w": RNG.standard_normal((16, 8)).astype(np.float32),
                                   "b1": RNG.standard_normal(8).astype(np.float32),
                                   "b2": RNG.standard_normal(8).astype(np.float32)})
    InferShapesPass()(model)
    folded = assert_pass_idempotent(FoldMatMulOutputAffinePass, model)
    gemms = [n for n in folded.graph if n.op_type == "Gemm"]
    assert len(gemms) == 2 and gemms[0].inputs[1] is gemms[1].inputs[1]
    assert sum(v.const_value.size for v in folded.graph.initializers.values()) == 16 * 8 + 8 + 8
