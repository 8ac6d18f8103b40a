"""int4 GPTQ/AWQ calibrated on non-text data (``--calib-images`` / ``--calib-data``).

MobileNetV2's classifier Gemm (1280 -> 1000) quantized to block-int4 from the command line,
calibrated on the corpus' ``images/``; judged on ``imagenet_dev/`` photos it never saw:
GPTQ's logits must be closer to fp32 than RTN's at the same block size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxq.cli import main


def _logits(path, xs):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x})[0] for x in xs]).astype(np.float64)


def _sqnr_db(z, ref):
    return float(10 * np.log10((ref**2).sum() / ((z - ref) ** 2).sum()))


def test_gptq_calibrated_on_images_beats_rtn(corpus, mobilenet_path, tmp_path):
    from onnxq.preprocess import load_image

    labels = json.loads((corpus / "imagenet_dev" / "labels.json").read_text())
    xs = [load_image(corpus / "imagenet_dev" / e["file"]) for e in labels[:16]]
    ref = _logits(mobilenet_path, xs)
    sqnr = {}
    for algo in ("rtn", "gptq"):
        out = tmp_path / f"{algo}.onnx"
        args = ["quantize", str(mobilenet_path), "-o", str(out), "--algo", algo, "--block-size", "32"]
        if algo == "gptq":
            args += ["--calib-images", str(corpus / "images")]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        sqnr[algo] = _sqnr_db(_logits(out, xs), ref)
    assert sqnr["gptq"] > sqnr["rtn"] + 1.0, sqnr


def test_calib_data_npz_feeds_awq(mobilenet_path, tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    out = tmp_path / "awq.onnx"
    r = CliRunner().invoke(main, ["quantize", str(mobilenet_path), "-o", str(out), "--algo", "awq",
                                  "--calib-data", str(tmp_path / "calib.npz")])
    assert r.exit_code == 0, r.output
    assert out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--algo", "rtn", "--calib-data", "CALIB"], "uses no calibration data"),
        (["--algo", "gptq", "--calib-data", "CALIB", "--calib-text", "TEXT"], "not both"),
        (["--algo", "gptq", "--calib-data", "BAD"], "unknown input name"),
    ],
)
def test_int4_calibration_flag_errors(mobilenet_path, tmp_path, extra, message):
    np.savez(tmp_path / "calib.npz", input=np.zeros((1, 3, 224, 224), np.float32))
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((1, 3, 224, 224), np.float32))
    np.save(tmp_path / "ids.npy", np.arange(64, dtype=np.int64))
    subst = {"CALIB": str(tmp_path / "calib.npz"), "BAD": str(tmp_path / "bad.npz"), "TEXT": str(tmp_path / "ids.npy")}
    out = tmp_path / "out.onnx"
    r = CliRunner().invoke(main, ["quantize", str(mobilenet_path), "-o", str(out), *[subst.get(a, a) for a in extra]])
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert not out.exists()
