"""A shape the exporter declared that the graph contradicts once the opset is raised."""

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxq.cli import main


def test_an_output_shape_the_upgraded_graph_contradicts_is_dropped(tmp_path):
    """x [T, 32] reshaped to [T, 1, 32] through Shape/Gather/Concat, declared [1, s]: ONNX's
    inference cannot follow the shape at opset 12 (the checker passes) and can at 21 (it
    would fail the written model). The declared shapes go; the output is inferred again."""
    nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Gather", ["s", "i0"], ["t"], axis=0),
             h.make_node("Concat", ["t", "c"], ["ns"], axis=0), h.make_node("Reshape", ["x", "ns"], ["r"]),
             h.make_node("MatMul", ["r", "w"], ["y"])]
    inits = [nh.from_array(np.array([0], np.int64), "i0"), nh.from_array(np.array([1, 32], np.int64), "c"),
             nh.from_array(np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32), "w")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["T", 32])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, "s"])], inits)
    src = tmp_path / "m.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 12)]), src)
    onnx.checker.check_model(str(src), full_check=True)  # valid as exported
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", "int4-weight-only",
                                  "--block-size", "32", "--format", "qdq"])
    assert r.exit_code == 0, r.output
    assert "dropped the shapes the exporter declared" in " ".join(r.output.split())
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    assert len(q.graph.output[0].type.tensor_type.shape.dim) in (0, 3)
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape == (5, 1, 16)
