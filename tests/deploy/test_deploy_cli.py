"""`onnxq verify` and `onnxq quantize --target` on the command line."""

from __future__ import annotations

import json

import onnx_ir as ir
from click.testing import CliRunner

from onnxq.cli import main
from tests.deploy.qdq_models import conv_model


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_verify_ok_and_json(tiny_ort_qdq, tiny_float, tiny_data):
    res = _run("verify", tiny_ort_qdq, "--target", "ort-cpu", "--data", tiny_data, "--float", tiny_float, "--no-latency")
    assert res.exit_code == 0, res.output
    assert "OK" in res.output and "vs float" in res.output
    res = _run("verify", tiny_ort_qdq, "--json", "--no-latency")
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert d["target"] == "ort-cpu" and d["ok"] and d["loaded"]


def test_verify_rule_break_exits_1_and_names_the_rule(tiny_ort_qdq):
    res = _run("verify", tiny_ort_qdq, "--target", "tensorrt", "--no-latency")
    assert res.exit_code == 1
    assert "TRT001" in res.output and "FAILED" in res.output
    # a structural check runs nothing: no "loaded", no advice to pass real inputs
    assert "rules checked, not run" in res.output and "loaded" not in res.output and "--data" not in res.output


def test_verify_strict_fails_on_fallbacks(tmp_path):
    p = tmp_path / "u16.onnx"
    ir.save(conv_model(act="uint16", act_zp=32768, opset=21), p)
    assert _run("verify", p, "--no-latency").exit_code == 0
    res = _run("verify", p, "--no-latency", "--strict")
    assert res.exit_code == 1 and "ORT-FUSE" in res.output


def test_verify_bad_input_is_one_line(tmp_path, tiny_float):
    for args, msg in (
        (("verify", tmp_path / "nope.onnx"), "does not exist"),
        (("verify", tiny_float, "--target", "coreml"), "unknown target 'coreml'"),
        (("verify", tiny_float, "--data", tmp_path / "nothing.npz"), "does not exist"),
        (("verify", tiny_float, "--max-samples", "0"), "--max-samples"),
    ):
        res = _run(*args)
        assert res.exit_code != 0, args
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and msg in lines[0], res.output
        assert "Traceback" not in res.output


def test_verify_ort_mobile_keeps_the_ort_file(tiny_ort_qdq, tmp_path):
    out = tmp_path / "mobile"
    res = _run("verify", tiny_ort_qdq, "--target", "ort-mobile", "--keep", out, "--no-latency")
    assert res.exit_code == 0, res.output
    assert (out / "tiny_cnn.ort_qdq.ort").is_file()
    assert (out / "tiny_cnn.ort_qdq.required_operators_and_types.config").is_file()


def test_quantize_with_target_tensorrt_passes_its_rules(tiny_float, tiny_data, tmp_path):
    out = tmp_path / "trt.onnx"
    res = _run("quantize", tiny_float, "-o", out, "--recipe", "int8-static", "--calib-data", tiny_data,
               "--target", "tensorrt")
    assert res.exit_code == 0, res.output
    assert "biases stored in float" in res.output
    res = _run("verify", out, "--target", "tensorrt", "--json", "--no-latency")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["findings"] == []


def test_quantize_with_target_openvino_runs_int8_there(tiny_float, tiny_data, tmp_path):
    import pytest

    pytest.importorskip("openvino")
    out = tmp_path / "ov.onnx"
    res = _run("quantize", tiny_float, "-o", out, "--recipe", "int8-static", "--calib-data", tiny_data,
               "--target", "openvino")
    assert res.exit_code == 0, res.output
    res = _run("verify", out, "--target", "openvino", "--json", "--no-latency", "--data", tiny_data, "--float", tiny_float)
    d = json.loads(res.output)
    assert res.exit_code == 0 and d["ok"] and not d["findings"]
    n8, total = map(int, d["metrics"]["int8_compute_layers"].split("/"))
    assert n8 == total == 3


def test_quantize_target_refuses_what_it_cannot_run(tiny_float, tmp_path):
    res = _run("quantize", tiny_float, "-o", tmp_path / "x.onnx", "--recipe", "int8-dynamic", "--target", "tensorrt")
    assert res.exit_code != 0 and "does not run int8-dynamic" in res.output
    res = _run("quantize", tiny_float, "-o", tmp_path / "x.onnx", "--recipe", "int8-static", "--target", "nope")
    assert res.exit_code != 0 and "unknown target" in res.output
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_for_ort_mobile_writes_the_ort_file(tiny_float, tiny_data, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    res = _run("quantize", tiny_float, "-o", out, "--recipe", "int8-static", "--calib-data", tiny_data,
               "--target", "ort-mobile")
    assert res.exit_code == 0, res.output
    ort_file = tmp_path / "m.ort"
    assert ort_file.is_file() and (tmp_path / "m.required_operators_and_types.config").is_file()
    header = (tmp_path / "m.required_operators_and_types.config").read_text().splitlines()[:2]
    assert header[1] == f"# - {ort_file.resolve()}", header  # the .ort where it is, not the temp folder
    assert not (tmp_path / "m.optimized.onnx").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # converted in a temp folder, moved into place, folder removed
    import numpy as np

    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    a = ort.InferenceSession(str(ort_file), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_random_feeds_respect_masks_token_types_and_table_sizes():
    """Without --data: masks all ones, token types zeros, ids below the embedding tables'
    sizes (ids 0..7 against a 2-row token-type table made ORT fail on valid models)."""
    import numpy as np

    from onnxq.deploy.common import input_feeds
    from tests.helpers import model_from_text

    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (int64[N, S] input_ids, int64[N, S] attention_mask, int64[N, S] token_type_ids) => (float[N, S, 4] y) {
            ids = Cast <to: int = 7> (input_ids)
            e = Gather(words, ids)
            t = Gather(types, token_type_ids)
            s = Add(e, t)
            mf = Cast <to: int = 1> (attention_mask)
            mu = Unsqueeze(mf, axes)
            y = Mul(s, mu)
        }
        """,
        {"words": np.ones((5, 4), np.float32), "types": np.ones((2, 4), np.float32), "axes": np.array([-1], np.int64)},
    )
    feeds, where = input_feeds(model)
    assert "random" in where
    for f in feeds:
        assert (f["attention_mask"] == 1).all() and (f["token_type_ids"] == 0).all()
        assert f["input_ids"].max() < 5


def test_an_explicit_int4_format_a_target_does_not_run_is_refused(tiny_float, tmp_path):
    res = _run("quantize", tiny_float, "-o", tmp_path / "m.onnx", "--recipe", "int4-weight-only", "--format", "qdq",
               "--target", "ort-mobile")
    assert res.exit_code != 0 and "does not run int4 --format qdq; it runs matmulnbits" in res.output, res.output


def test_target_sqnr_must_be_a_positive_number(tiny_float, tiny_data, tmp_path):
    for bad in ("nan", "-5"):
        res = _run("quantize", tiny_float, "-o", tmp_path / "m.onnx", "--calib-data", tiny_data, "--target-sqnr", bad)
        assert res.exit_code != 0 and "--target-sqnr is an output SQNR in dB above 0" in res.output, res.output


def test_accuracy_level_with_the_qdq_format_is_refused(tiny_float, tmp_path):
    res = _run("quantize", tiny_float, "-o", tmp_path / "m.onnx", "--recipe", "int4-weight-only", "--accuracy-level", "4")
    assert res.exit_code != 0 and "--accuracy-level applies to --format matmulnbits or onnxq" in res.output, res.output
    res = _run("quantize", tiny_float, "-o", tmp_path / "m.onnx", "--recipe", "int4-weight-only", "--accuracy-level", "4",
               "--target", "ort-mobile")  # the target picks matmulnbits: the level applies
    assert "--accuracy-level applies" not in res.output, res.output


def test_random_feeds_pick_symbolic_sizes_the_model_runs_with():
    """Symbolic sizes: the first of 64, 16, 512, 1 that the model runs with (a 1-sample input
    fails reflect padding and strided detectors); a named batch dimension is 1 wherever it
    appears (an RNN state [layers, batch, hidden] must match its input)."""
    import numpy as np

    from onnxq.deploy.common import input_feeds
    from tests.helpers import model_from_text

    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[batch, seq] x, float[2, batch, 3] state) => (float[batch, 16] y, float[2, batch, 3] s2) {
            y = Reshape(x, shape)
            s2 = Relu(state)
        }
        """,
        {"shape": np.array([1, 16], np.int64)},
    )
    feeds, where = input_feeds(model)
    assert feeds[0]["x"].shape == (1, 16) and feeds[0]["state"].shape == (2, 1, 3)
    assert "symbolic sizes: x [1, 16], state [2, 1, 3]" in where


def test_quantize_for_qnn_says_which_of_its_rules_the_output_breaks(tmp_path):
    """A dynamic batch axis breaks QNN005 (static shapes): the quantize summary says so and
    where to read the fix, instead of exiting 0 with a model the runtime refuses."""
    import numpy as np

    from tests.helpers import model_from_text, to_bytes

    rng = np.random.default_rng(0)
    src = tmp_path / "m.onnx"
    src.write_bytes(to_bytes(model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[N, 64] x) => (float[N, 32] y) {
            y = MatMul(x, w)
        }
        """,
        {"w": rng.standard_normal((64, 32)).astype(np.float32)})))
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 4, 64)).astype(np.float32))
    res = _run("quantize", src, "-o", tmp_path / "q.onnx", "--recipe", "int8-static", "--calib-data",
               tmp_path / "c.npz", "--target", "qnn")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "qnn: the written model breaks 1 of its documented rules (QNN005)" in text, text
