"""onnxq.deploy.verify in each runtime that runs here (ORT CPU, ORT mobile's .ort, OpenVINO)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import onnxq
from onnxq.deploy import verify
from onnxq.errors import OnnxqError
from tests.deploy.qdq_models import conv_model


def _rules(report):
    return {f.rule for f in report.findings}


# -- ORT CPU -------------------------------------------------------------------------------


def test_ort_cpu_qdq_model_is_fused_and_close(tiny_ort_qdq, tiny_float, tiny_data):
    r = verify(tiny_ort_qdq, "ort-cpu", data=tiny_data, float_model=tiny_float, latency=False)
    assert r.ok and r.loaded and not r.findings
    assert any("QLinearConv" in k for k in r.metrics["optimized_ops"])
    err = r.metrics["error_vs_float"]["logits"]
    assert err["cosine"] > 0.98


def test_ort_cpu_reports_unfused_node(tmp_path):
    # ORT CPU has no 16-bit QLinearConv: the Conv runs in float between DQ and Q
    p = tmp_path / "uint16.onnx"
    ir.save(conv_model(act="uint16", act_zp=32768, opset=21), p)
    r = verify(p, "ort-cpu", latency=False)
    assert r.loaded
    fallbacks = [f for f in r.fallbacks if f.rule == "ORT-FUSE"]
    assert [f.node for f in fallbacks] == ["conv"]


def test_a_float_op_reading_a_dequantized_value_is_not_a_fallback(tmp_path):
    """A float Concat that reads a quantized Conv's result and hands on a float one (a YOLO
    head's boxes next to float Sigmoid scores) runs in float by design; a Conv next to a
    DequantizeLinear is a fallback whatever follows it."""
    import numpy as np

    import onnxq
    from tests.helpers import model_from_text

    rng = np.random.default_rng(2)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 3, 8, 8] x) => (float[1, 7, 8, 8] y) {
            c = Conv <pads: ints = [1, 1, 1, 1]> (x, w)
            r = Relu(c)
            box = Conv(r, w2)
            score = Sigmoid(x)
            y = Concat <axis: int = 1> (box, score)
        }
        """,
        {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32)},
    )
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    p = tmp_path / "q.onnx"
    onnxq.save(onnxq.quantize(model, onnxq.StaticInt8(), data=feeds), p)
    r = verify(p, "ort-cpu", latency=False)
    assert r.ok and not [f for f in r.fallbacks if f.rule == "ORT-FUSE"], r.fallbacks


def test_a_hard_swish_that_ort_expands_is_not_a_fallback(tmp_path):
    """ORT CPU runs a HardSwish as the HardSigmoid and Mul of its function body: that
    unnamed Mul, between the int8 convs' dequantize and quantize, is the model's float
    HardSwish, not an int8 Mul ORT failed to fuse (PP-LCNet: 28 "<unnamed Mul>" fallbacks
    for a model with 3 Muls). An int8 Mul of the model that stays unfused is still one."""
    import numpy as np

    from tests.helpers import model_from_text

    rng = np.random.default_rng(3)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
            c = Conv <pads: ints = [1, 1, 1, 1]> (x, w)
            h = HardSwish(c)
            y = Conv <pads: ints = [1, 1, 1, 1]> (h, w2)
        }
        """,
        {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
         "w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32)},
    )
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    p = tmp_path / "q.onnx"
    onnxq.save(onnxq.quantize(model, onnxq.StaticInt8(), data=feeds), p)
    r = verify(p, "ort-cpu", latency=False)
    assert r.loaded and any("QLinearConv" in k for k in r.metrics["optimized_ops"])
    assert not [f for f in r.fallbacks if f.rule == "ORT-FUSE"], r.fallbacks


def test_ort_cpu_latency_against_float(tiny_ort_qdq, tiny_float):
    r = verify(tiny_ort_qdq, "ort-cpu", float_model=tiny_float)
    assert set(r.metrics["latency_ms"]) == {"float", "model"} and r.metrics["speedup_vs_float"] > 0


# -- ORT mobile ----------------------------------------------------------------------------


def test_ort_mobile_dynamic_int8_converts_and_matches(tiny_matmul, tmp_path):
    q = tmp_path / "mlp.int8.onnx"
    onnxq.save(onnxq.quantize(tiny_matmul, onnxq.DynamicInt8(min_weight_elements=0)), q)
    out = tmp_path / "mobile"
    r = verify(q, "ort-mobile", float_model=tiny_matmul, workdir=out, latency=False)
    assert r.ok, r.findings
    ort_file = out / "mlp.int8.ort"
    config = out / "mlp.int8.required_operators_and_types.config"
    assert ort_file.is_file() and config.is_file()
    assert r.metrics["ort_file"] == str(ort_file)
    ops = {op for table in r.metrics["required_ops"].values() for op in table}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops or "MatMulIntegerToFloat" in ops
    match = r.metrics["ort_vs_onnx"]["y"]
    assert match["max_abs_error"] < 1e-4 and match["cosine"] > 0.99999
    # the .ort file runs by itself in a fresh ORT session
    import onnxruntime as ort

    sess = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.ones((2, 64), np.float32)})[0].shape == (2, 8)


def test_ort_mobile_static_qdq(tiny_ort_qdq, tmp_path, tiny_data):
    r = verify(tiny_ort_qdq, "ort-mobile", data=tiny_data, workdir=tmp_path, latency=False)
    assert r.ok and not r.fallbacks
    table = r.metrics["required_ops"]
    assert any("QLinearConv" in ops for ops in table.values())
    assert r.metrics["ort_vs_onnx"]["logits"]["cosine"] > 0.9999


def test_ort_mobile_conversion_failure_is_an_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    m = conv_model(act="uint8", act_zp=128)
    conv = next(n for n in m.graph if n.op_type == "Conv")
    conv.attributes["pads"] = ir.AttrInt64s("pads", [1, 1])  # wrong length: ORT refuses the model
    ir.save(m, bad)
    r = verify(bad, "ort-mobile", workdir=tmp_path / "o", latency=False)
    assert not r.ok and "MOBILE-CONVERT" in _rules(r)


# -- OpenVINO ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openvino():
    return pytest.importorskip("openvino")


def test_openvino_float_model_runs_in_f32(openvino, tiny_float, tiny_data):
    r = verify(tiny_float, "openvino", data=tiny_data, latency=False)
    assert r.ok and not r.findings
    assert all(k.endswith(":f32") for k in r.metrics["compute_layers"])
    assert r.metrics["int8_compute_layers"].startswith("0/")


def test_openvino_runs_ort_qdq_model_in_int8(openvino, tiny_ort_qdq, tiny_float, tiny_data):
    r = verify(tiny_ort_qdq, "openvino", data=tiny_data, float_model=tiny_float)
    assert r.ok and not r.findings, r.findings
    int8, total = map(int, r.metrics["int8_compute_layers"].split("/"))
    assert int8 == total == 3
    assert r.metrics["error_vs_float"]["logits"]["cosine"] > 0.98
    assert r.metrics["latency_ms"]["model"] > 0
    # ORT CPU on the same file and data, beside it: a note only where OpenVINO is far behind
    ov, ort_cpu = r.metrics["error_vs_float"]["logits"], r.metrics["ort_cpu_error_vs_float"]["logits"]
    assert ort_cpu["cosine"] > 0.98
    behind = ov["sqnr_db"] is not None and ort_cpu["sqnr_db"] is not None and ov["sqnr_db"] < ort_cpu["sqnr_db"] - 3
    assert behind == any("further from the float model than ORT CPU" in n for n in r.notes), r.notes


def test_openvino_reports_layers_left_in_float(openvino, tmp_path):
    # an asymmetric int8 weight (zero point 3): OpenVINO's CPU plugin runs the Conv in f32
    p = tmp_path / "asym_weight.onnx"
    ir.save(conv_model(act="uint8", act_zp=128, weight_zp=3, bias="int32"), p)
    r = verify(p, "openvino", latency=False)
    assert r.loaded and [(f.rule, f.node) for f in r.fallbacks] == [("OV-PRECISION", "conv")]


def test_openvino_int8_dynamic_standard_form_is_a_fallback(openvino, tiny_matmul, tmp_path):
    std = tmp_path / "std.onnx"
    fused = tmp_path / "fused.onnx"
    onnxq.save(onnxq.quantize(tiny_matmul, onnxq.DynamicInt8(min_weight_elements=0)), std)
    onnxq.save(onnxq.quantize(tiny_matmul, onnxq.DynamicInt8(min_weight_elements=0, fused=True)), fused)
    assert {f.rule for f in verify(std, "openvino", latency=False).fallbacks} == {"OV-PRECISION"}
    assert not verify(fused, "openvino", latency=False).findings


# -- structural targets and bad input -------------------------------------------------------


def test_structural_target_reports_rule_breaks_and_emulated_error(tiny_ort_qdq, tiny_float, tiny_data):
    r = verify(tiny_ort_qdq, "tensorrt", data=tiny_data, float_model=tiny_float)
    assert not r.ok and {"TRT001", "TRT002"} <= _rules(r)  # uint8, zero points 128
    assert r.metrics["error_vs_float"]["logits"]["cosine"] > 0.98
    assert any("cannot run here" in n for n in r.notes)


def test_bad_input_is_a_one_line_error(tmp_path, tiny_float):
    with pytest.raises(OnnxqError, match="does not exist"):
        verify(tmp_path / "missing.onnx", "ort-cpu")
    with pytest.raises(OnnxqError, match="unknown target"):
        verify(tiny_float, "coreml")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(OnnxqError, match="not a readable ONNX model|not an ONNX model"):
        verify(junk, "ort-cpu")
    with pytest.raises(OnnxqError, match="inputs"):
        verify(tiny_float, "ort-cpu", float_model=_other_input_model(tmp_path))


def _other_input_model(tmp_path):
    from onnx import TensorProto, helper

    import onnx

    g = helper.make_graph([helper.make_node("Identity", ["z"], ["logits"])], "g",
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 10])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])])
    p = tmp_path / "other.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    return p


def test_an_openvino_result_far_behind_ort_cpu_gets_a_note(tiny_ort_qdq, tiny_float, tiny_data):
    """The comparison behind the note: OpenVINO's error (here set far below what ORT CPU
    reaches on the same file) against ORT CPU's, measured on the same feeds."""
    from onnxq.deploy import DeployReport
    from onnxq.deploy.common import input_feeds
    from onnxq.deploy.openvino import _against_ort_cpu
    from onnxq import modelio

    feeds, _ = input_feeds(modelio.load(tiny_float), str(tiny_data), max_samples=8)
    report = DeployReport(target="openvino", runtime="OpenVINO", model=str(tiny_ort_qdq))
    report.metrics["error_vs_float"] = {"logits": {"sqnr_db": 1.0, "cosine": 0.5}}
    _against_ort_cpu(tiny_ort_qdq, tiny_float, report, feeds, ["logits"], 1)
    assert report.metrics["ort_cpu_error_vs_float"]["logits"]["sqnr_db"] > 10
    assert any("OpenVINO runs it" in n and "ORT CPU" in n for n in report.notes), report.notes
    report.notes.clear()
    report.metrics["error_vs_float"]["logits"]["sqnr_db"] = report.metrics["ort_cpu_error_vs_float"]["logits"]["sqnr_db"]
    _against_ort_cpu(tiny_ort_qdq, tiny_float, report, feeds, ["logits"], 1)
    assert not report.notes


def test_a_run_failure_on_random_inputs_is_inconclusive_not_an_error(tmp_path):
    """Random index inputs can point out of range: without --data a failed run is a warning
    that asks for real inputs (the model is not called broken); with data it is an error."""
    import numpy as np

    import onnx_ir as ir

    from tests.helpers import model_from_text

    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[N, 4] x, int64[K] idx) => (float[K, 4] y) {
            y = Gather(x, idx)
        }
        """
    )
    p = tmp_path / "g.onnx"
    ir.save(model, p)
    r = verify(p, "ort-cpu", latency=False)
    runs = [f for f in r.findings if f.rule == "ORT-RUN"]
    # the made-up index (seed 0, from 0..7) is out of range for the made-up one-row table
    assert r.ok and [f.severity for f in runs] == ["warning"] and "--data" in runs[0].message
    bad = [{"x": np.ones((2, 4), np.float32), "idx": np.array([5], np.int64)}]
    r = verify(p, "ort-cpu", data=bad, latency=False)
    assert not r.ok and [f.severity for f in r.findings if f.rule == "ORT-RUN"] == ["error"]
