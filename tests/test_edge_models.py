"""Models and command lines a first-time user met (adversarial review, session 7): each
used to write an invalid model, fail at run time, or crash with an internal error."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxq.cli import main

RNG = np.random.default_rng(11)


def _mlp(path, opset, nodes=None, inits=None, ir_version=None):
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    graph = h.make_graph(nodes or [h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [4, 64])], [h.make_tensor_value_info("y", T.FLOAT, [4, 32])],
                         inits or [nh.from_array(w, "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    if ir_version:
        model.ir_version = ir_version
    onnx.save(model, path)
    return path


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_int8_dynamic_on_an_opset_9_model_upgrades_it(tmp_path):
    src = _mlp(tmp_path / "m.onnx", 9, ir_version=4)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", "int8-dynamic"])
    assert r.exit_code == 0, r.output
    assert "upgraded the model from opset 9 to 13" in r.output
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=0.1, atol=0.15)


def test_fused_gemm_with_a_one_element_bias_runs(tmp_path):
    w = RNG.standard_normal((32, 64)).astype(np.float32)
    src = _mlp(tmp_path / "g.onnx", 17, [h.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1)],
               [nh.from_array(w, "w"), nh.from_array(np.array([0.5], np.float32), "c")])
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", "int8-dynamic", "--fused"])
    assert r.exit_code == 0, r.output
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=0.1, atol=0.3)


def test_int4_qdq_on_an_opset_22_model(tmp_path):
    src = _mlp(tmp_path / "m.onnx", 22)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--algo", "rtn", "--format", "qdq",
                                  "--block-size", "32"])
    assert r.exit_code == 0, r.output
    assert onnx.load(str(out)).opset_import[0].version == 22


def test_int4_refuses_non_finite_weights(tmp_path):
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    w[3, 4] = np.nan
    src = _mlp(tmp_path / "m.onnx", 17, inits=[nh.from_array(w, "w")])
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--algo", "rtn"])
    assert r.exit_code != 0 and "NaN or Inf" in r.output


def test_output_named_ort_is_refused(tmp_path):
    src = _mlp(tmp_path / "m.onnx", 17)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "m.ort")])
    assert r.exit_code != 0 and "name it .onnx" in r.output
    assert not (tmp_path / "m.ort").exists()


def test_verify_loads_the_onnxq_format(tmp_path):
    from onnxq import runtime

    try:
        runtime.library_path("cpu")
    except Exception:
        pytest.skip("the onnxq CPU op library is not built")
    src = _mlp(tmp_path / "m.onnx", 17)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--algo", "rtn", "--format", "onnxq",
                                  "--block-size", "32"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code == 0 and "loaded: yes" in r.output, r.output
