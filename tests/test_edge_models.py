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


def _if_sharing_a_weight(path):
    f = T.FLOAT
    w = (RNG.standard_normal((128, 128)) * 0.1).astype(np.float32)
    then_g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["o1"])], "t", [], [h.make_tensor_value_info("o1", f, ["N", 128])])
    else_g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["o2"])], "e", [], [h.make_tensor_value_info("o2", f, ["N", 128])])
    graph = h.make_graph(
        [h.make_node("Relu", ["inp"], ["x"]), h.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g),
         h.make_node("MatMul", ["b", "W"], ["y"])], "g",
        [h.make_tensor_value_info("inp", f, ["N", 128]), h.make_tensor_value_info("cond", T.BOOL, [])],
        [h.make_tensor_value_info("y", f, ["N", 128])], [nh.from_array(w, "W")])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("args", [["--recipe", "int8-dynamic"], ["--algo", "rtn", "--format", "matmulnbits"],
                                  ["--algo", "rtn", "--format", "qdq"]])
def test_a_weight_shared_by_both_branches_and_the_main_graph(tmp_path, args):
    """The quantized weight goes where every reader can see it (it was put in the first
    reader's branch: an invalid model), and no float copy is left behind."""
    src = _if_sharing_a_weight(tmp_path / "if.onnx")
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size < 0.5 * src.stat().st_size
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    for cond in (True, False):
        feed = {"inp": RNG.standard_normal((4, 128)).astype(np.float32), "cond": np.array(cond)}
        y, y0 = sess.run(None, feed)[0], ref.run(None, feed)[0]
        assert 10 * np.log10((y0**2).sum() / ((y - y0) ** 2).sum()) > 15


def test_verify_and_compare_external_data_models_from_another_folder(tmp_path, monkeypatch):
    """Relative external-data paths are resolved against the model's folder, not the cwd."""
    folder = tmp_path / "models"
    folder.mkdir()
    src = _mlp(tmp_path / "plain.onnx", 17)
    proto = onnx.load(str(src))
    onnx.save(proto, folder / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    np.savez(tmp_path / "c.npz", x=RNG.standard_normal((8, 4, 64)).astype(np.float32))
    out = folder / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(folder / "m.onnx"), "-o", str(out), "--recipe", "int8-static",
                                  "--calib-data", str(tmp_path / "c.npz")])
    assert r.exit_code == 0, r.output
    assert (folder / "q.onnx.data").exists()  # the input's layout is kept
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for args in (["verify", str(out), "--no-latency"], ["verify", str(out), "--target", "tensorrt"],
                 ["compare", str(folder / "m.onnx"), str(out), "--data", str(tmp_path / "c.npz")]):
        r = CliRunner().invoke(main, args)
        assert "internal error" not in r.output and "No such file" not in r.output, (args, r.output)
        assert r.exit_code == 0 or "tensorrt" in args, (args, r.output)  # an ort-cpu model breaks TensorRT rules


@pytest.mark.parametrize("extra", [[], ["--weight-rounding", "gptq", "--refine-biases"]])
def test_static_calibration_of_external_data_with_small_tensors_from_another_folder(tmp_path, monkeypatch, extra):
    """Tensors under the size onnxq hands to ORT separately (a 256-byte bias) kept their
    relative external-data path in the bytes given to ORT, resolved against the cwd: int8-static
    failed unless run from the model's folder (a PyPI char-transformer, khmersm)."""
    folder = tmp_path / "models"
    folder.mkdir()
    w, b = RNG.standard_normal((64, 64)).astype(np.float32), RNG.standard_normal(64).astype(np.float32)
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"]), h.make_node("Add", ["y", "b"], ["z"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, ["N", 64])],
                         [h.make_tensor_value_info("z", T.FLOAT, ["N", 64])], [nh.from_array(w, "w"), nh.from_array(b, "b")])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), folder / "m.onnx",
              save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    np.savez(tmp_path / "c.npz", x=RNG.standard_normal((16, 64)).astype(np.float32))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = CliRunner().invoke(main, ["quantize", str(folder / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--recipe",
                                  "int8-static", "--calib-data", str(tmp_path / "c.npz"), *extra])
    assert r.exit_code == 0, r.output
    assert "SQNR" in r.output


@pytest.mark.parametrize("args", [["--recipe", "int8-dynamic"], ["--algo", "rtn", "--format", "matmulnbits",
                                                                  "--block-size", "32"]])
def test_weights_listed_as_inputs_are_quantized(tmp_path, args):
    """An IR 3 export lists every initializer as an input: they are weights for every recipe
    (int8-dynamic and int4 said 'second input is not a constant weight')."""
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [4, 64]), h.make_tensor_value_info("w", T.FLOAT, [64, 32])],
                         [h.make_tensor_value_info("y", T.FLOAT, [4, 32])], [nh.from_array(w, "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 9)])
    model.ir_version = 3
    src, out = tmp_path / "ir3.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    assert "no longer inputs" in " ".join(r.output.split())
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert 10 * np.log10(((x @ w) ** 2).sum() / ((y - x @ w) ** 2).sum()) > 15


def test_int4_gemm_keeps_no_unused_float_bias(tmp_path):
    w = RNG.standard_normal((32, 64)).astype(np.float32)
    src = _mlp(tmp_path / "g.onnx", 17, [h.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, beta=0.5)],
               [nh.from_array(w, "w"), nh.from_array(RNG.standard_normal(32).astype(np.float32), "c")])
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--algo", "rtn", "--block-size", "32",
                                  "--format", "matmulnbits"])
    assert r.exit_code == 0, r.output
    m = onnx.load(str(out))
    used = {i for n in m.graph.node for i in n.input}
    assert [i.name for i in m.graph.initializer if i.name not in used] == []


def test_compare_of_unrelated_models_is_a_user_error(tmp_path):
    a = _mlp(tmp_path / "a.onnx", 17)
    b = _mlp(tmp_path / "b.onnx", 17, [h.make_node("MatMul", ["x", "w"], ["z"])])
    b_proto = onnx.load(str(b))
    b_proto.graph.output[0].name = "z"
    onnx.save(b_proto, b)
    np.savez(tmp_path / "c.npz", x=RNG.standard_normal((2, 4, 64)).astype(np.float32))
    r = CliRunner().invoke(main, ["compare", str(a), str(b), "--data", str(tmp_path / "c.npz")])
    assert r.exit_code != 0 and "outputs differ" in r.output and "internal error" not in r.output


@pytest.mark.parametrize("extra, message", [
    (["--preprocess", "scale=1/0"], "bad value for scale"),
    (["--preprocess", "dtype=bogus"], "not a numpy type"),
])
def test_bad_preprocess_values_are_user_errors(tmp_path, extra, message):
    from PIL import Image

    src = _mlp(tmp_path / "m.onnx", 17)
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--recipe", "int8-static",
                                  "--calib-images", str(tmp_path / "img"), *extra])
    assert r.exit_code != 0 and message in r.output and "internal error" not in r.output


def test_object_arrays_and_long_names_are_user_errors(tmp_path):
    src = _mlp(tmp_path / "m.onnx", 17)
    np.savez(tmp_path / "obj.npz", x=np.array([np.zeros(3), np.zeros(4)], dtype=object))
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--recipe", "int8-static",
                                  "--calib-data", str(tmp_path / "obj.npz")])
    assert r.exit_code != 0 and "save numeric arrays" in r.output
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / ("a" * 250 + ".onnx"))])
    assert r.exit_code != 0 and "keep it under 200" in r.output


def test_an_exclude_that_matches_nothing_is_noted(tmp_path):
    src = _mlp(tmp_path / "m.onnx", 17)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--exclude", "/no/such/MatMul"])
    assert r.exit_code == 0, r.output
    assert "matches no node name" in " ".join(r.output.split())


def test_a_written_model_that_fails_the_check_is_removed(tmp_path, monkeypatch):
    from onnxq import verify

    def reject(path, **_):
        raise verify.VerificationError("the written model fails the ONNX checker: (simulated)")

    monkeypatch.setattr(verify, "check_model_file", reject)
    src = _mlp(tmp_path / "m.onnx", 17)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out)])
    assert r.exit_code != 0 and "was removed" in " ".join(r.output.split())
    assert not out.exists()


def test_verify_reports_a_model_that_loads_but_cannot_run(tmp_path):
    graph = h.make_graph([h.make_node("Reshape", ["x", "shape"], ["r"]), h.make_node("MatMul", ["r", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, ["N", "K"])], [h.make_tensor_value_info("y", T.FLOAT, None)],
                         [nh.from_array(np.array([7, 64], np.int64), "shape"), nh.from_array(np.ones((64, 32), np.float32), "w")])
    src = tmp_path / "m.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), src)  # random inputs are not 7 x 64
    r = CliRunner().invoke(main, ["verify", str(src), "--no-latency"])
    # on made-up inputs a failed run is inconclusive: a warning that asks for real inputs
    assert r.exit_code == 0 and "internal error" not in r.output
    assert "ORT-RUN" in r.output and "--data" in " ".join(r.output.split())
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((2, 5, 64), np.float32))  # two real samples of [5, 64]: still not 7 x 64
    r = CliRunner().invoke(main, ["verify", str(src), "--no-latency", "--data", str(data)])
    assert r.exit_code != 0 and "internal error" not in r.output
    assert "ORT-RUN" in r.output and "FAILED" in r.output


def test_openvino_int4_qdq_gives_ragged_k_weights_int8(tmp_path):
    """OpenVINO refuses a blocked DequantizeLinear with a shorter last block (K = 576 at block
    128, SmolLM2's hidden size): those weights get int8 per channel, the others int4."""
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "w1"], ["a"], name="ragged"), h.make_node("MatMul", ["a", "w2"], ["y"], name="even")],
        "g", [h.make_tensor_value_info("x", T.FLOAT, [4, 576])], [h.make_tensor_value_info("y", T.FLOAT, [4, 64])],
        [nh.from_array(RNG.standard_normal((576, 512)).astype(np.float32), "w1"),
         nh.from_array(RNG.standard_normal((512, 64)).astype(np.float32), "w2")])
    src, out = tmp_path / "k576.onnx", tmp_path / "q.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), src)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--algo", "rtn", "--target", "openvino"])
    assert r.exit_code == 0, r.output
    dq = {n.output[0]: [a.i for a in n.attribute if a.name == "block_size"] for n in onnx.load(str(out)).graph.node
          if n.op_type == "DequantizeLinear"}
    assert sorted(len(b) for b in dq.values()) == [0, 1]  # one per-channel int8, one blocked int4
    pytest.importorskip("openvino")
    r = CliRunner().invoke(main, ["verify", str(out), "--target", "openvino", "--no-latency"])
    assert r.exit_code == 0, r.output


def test_int8_static_says_why_a_lone_gather_is_skipped(tmp_path):
    graph = h.make_graph([h.make_node("Gather", ["table", "ids"], ["y"], axis=1)], "g",
                         [h.make_tensor_value_info("ids", T.INT64, [3])], [h.make_tensor_value_info("y", T.FLOAT, [64, 3])],
                         [nh.from_array(RNG.standard_normal((64, 100)).astype(np.float32), "table")])
    src = tmp_path / "g.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), src)
    np.savez(tmp_path / "c.npz", ids=np.array([[1, 2, 3]] * 4, np.int64))
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--recipe", "int8-static",
                                  "--calib-data", str(tmp_path / "c.npz")])
    assert r.exit_code != 0 and "axis other than 0" in " ".join(r.output.split())


def test_tensorrt_int4_scales_pass_its_rules(tmp_path):
    """TensorRT takes positive DequantizeLinear scales only (TRT003): --target tensorrt keeps
    every int4 block scale positive, and onnxq verify --target tensorrt passes."""
    src = _mlp(tmp_path / "m.onnx", 17)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--algo", "rtn", "--block-size", "32",
                                  "--target", "tensorrt"])
    assert r.exit_code == 0, r.output
    scales = [nh.to_array(i) for i in onnx.load(str(out)).graph.initializer if i.name.endswith("_scale")]
    assert scales and all((s > 0).all() for s in scales)
    r = CliRunner().invoke(main, ["verify", str(out), "--target", "tensorrt"])
    assert r.exit_code == 0, r.output


def test_a_keep_float_that_matches_nothing_is_noted(tmp_path):
    src = _mlp(tmp_path / "m.onnx", 17)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--recipe", "int4-weight-only",
                                  "--keep-float", "/no/such/MatMul", "--keep-8bit", "nope.*"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "keep_float '/no/such/MatMul' matches no node name" in out and "keep_8bit 'nope.*' matches no node" in out


def test_an_interrupted_check_removes_the_unchecked_model(tmp_path, monkeypatch):
    """SIGTERM (SystemExit through the CLI's handler) or Ctrl-C while the written model is
    being checked: no unchecked model is left at the output path."""
    from onnxq import verify

    def interrupted(path, **_):
        raise SystemExit(143)

    monkeypatch.setattr(verify, "check_model_file", interrupted)
    src = _mlp(tmp_path / "m.onnx", 17)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out)])
    assert r.exit_code == 143
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
