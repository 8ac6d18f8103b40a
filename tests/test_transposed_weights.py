"""Weights written as ``Transpose(initializer)`` (exports without constant folding; tied
embeddings in torch.export graphs: ``MatMul(x, Transpose(embedding.weight))``) are constant
weights: int8-dynamic and int4 fold the Transpose and quantize the MatMul."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxq

RNG = np.random.default_rng(3)


def _model(path):
    emb = (RNG.standard_normal((64, 128)) * 0.1).astype(np.float32)  # [vocab, hidden], also read by Gather
    graph = h.make_graph(
        [
            h.make_node("Gather", ["emb", "ids"], ["x"], name="embed"),
            h.make_node("Transpose", ["emb"], ["emb_t"], perm=[1, 0], name="tie"),
            h.make_node("MatMul", ["x", "emb_t"], ["logits"], name="lm_head"),
        ],
        "tied", [h.make_tensor_value_info("ids", T.INT64, [1, 6])], [h.make_tensor_value_info("logits", T.FLOAT, [1, 6, 64])],
        [nh.from_array(emb, "emb")],
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return path


def _run(model_or_path, feed):
    data = model_or_path if isinstance(model_or_path, str) else onnxq.api.ir.serde.serialize_model(model_or_path).SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_tied_lm_head_is_quantized_by_int4_and_int8_dynamic(tmp_path):
    path = _model(tmp_path / "tied.onnx")
    feed = {"ids": RNG.integers(0, 64, (1, 6))}
    ref = _run(str(path), feed)
    for recipe, op in ((onnxq.WeightOnlyInt4(block_size=32, op_types=("MatMul",)), "DequantizeLinear"),
                       (onnxq.DynamicInt8(op_types=("MatMul",)), "MatMulInteger")):
        model, report = onnxq.quantize_with_report(path, recipe)
        assert [d.name for d in report.decisions if d.selected] == ["lm_head"], report.decisions
        ops = [n.op_type for n in model.graph]
        assert op in ops and "Transpose" not in ops
        got = _run(model, feed)
        assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_large_transposed_weight_is_folded_lazily(tmp_path):
    """A Transpose of a large (memory-mapped) weight becomes a lazy initializer: the
    transposed array is made when a pass reads that layer, not for every layer at once
    (int4 on 12 transposed 2048^2 layers: peak RSS 407 -> 224 MiB, as for pre-transposed)."""
    import onnx_ir as ir

    from onnxq.passes.fold_constants import LAZY_ELEMENTS, FoldConstantsPass
    from tests.helpers import assert_pass_idempotent

    n = int(np.sqrt(LAZY_ELEMENTS))
    w = RNG.standard_normal((n, n)).astype(np.float32)
    graph = h.make_graph(
        [h.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), h.make_node("MatMul", ["x", "wt"], ["y"], name="mm")],
        "t", [h.make_tensor_value_info("x", T.FLOAT, [2, n])], [h.make_tensor_value_info("y", T.FLOAT, [2, n])],
        [nh.from_array(w, "w")])
    path = tmp_path / "t.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path), save_as_external_data=True)
    model = onnxq.load(path)
    folded = assert_pass_idempotent(FoldConstantsPass, model)
    (weight,) = folded.graph.initializers.values()
    assert isinstance(weight.const_value, ir.LazyTensor) and tuple(weight.shape) == (n, n)
    np.testing.assert_array_equal(weight.const_value.numpy(), w.T)
    x = {"x": RNG.standard_normal((2, n)).astype(np.float32)}
    q = onnxq.quantize(path, onnxq.WeightOnlyInt4(block_size=128))
    assert "Transpose" not in [node.op_type for node in q.graph]
    ref = _run(str(path), x)
    assert np.abs(_run(q, x) - ref).max() < 0.2 * np.abs(ref).max()
