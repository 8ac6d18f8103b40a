"""int8-static end to end on MobileNetV2 from the corpus, through the CLI (runs in CI)."""

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner

from onnxq.cli import main
from onnxq.preprocess import image_files, load_image


def test_mobilenet_int8_static_cli_calib_images(mobilenet_path, corpus, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in image_files(corpus / "images")[::4][:16]:  # 16 photos, sub-folders included
        (calib / p.name).symlink_to(p)
    out = tmp_path / "m_int8.onnx"
    r = CliRunner().invoke(
        main,
        ["quantize", str(mobilenet_path), "-o", str(out), "--recipe", "int8-static",
         "--calib-images", str(calib), "--preprocess", "imagenet", "--calibration", "percentile"],
    )
    assert r.exit_code == 0, r.output
    assert "calibrated" in r.output
    onnx.checker.check_model(str(out), full_check=True)
    assert out.stat().st_size < 0.3 * mobilenet_path.stat().st_size
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    q = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert fused["QLinearConv"] == 52 and fused["Conv"] == 0, fused
    ref = ort.InferenceSession(str(mobilenet_path), providers=["CPUExecutionProvider"])
    labels = json.loads((corpus / "imagenet_dev" / "labels.json").read_text())[:10]
    agree, cos = 0, []
    for e in labels:
        x = load_image(corpus / "imagenet_dev" / e["file"])
        a, b = ref.run(None, {"input": x})[0][0], q.run(None, {"input": x})[0][0]
        agree += int(a.argmax() == b.argmax())
        cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert agree >= 7, agree
    assert min(cos) > 0.9, cos


def test_static_cli_errors_are_one_line(mobilenet_path, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((2, 3, 224, 224), np.float32))
    for args, message in (
        (["--calib-data", str(bad)], "unknown input name"),
        ([], "needs calibration data"),
        (["--calib-data", str(bad), "--calib-images", str(tmp_path)], "not both"),
    ):
        r = CliRunner().invoke(
            main, ["quantize", str(mobilenet_path), "-o", str(tmp_path / "o.onnx"), "--recipe", "int8-static", *args]
        )
        assert r.exit_code != 0 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_mobilenet_gptq_weight_rounding_cli(mobilenet_path, corpus, tmp_path):
    """``--weight-rounding gptq`` changes only integer weight values (same scales, same graph)
    and keeps the output as close to fp32 as round to nearest on photos it never saw."""
    from onnx import numpy_helper

    calib = tmp_path / "calib"
    calib.mkdir()
    for p in image_files(corpus / "images")[::2][:24]:
        (calib / p.name).symlink_to(p)
    outs = {}
    for mode in ("nearest", "gptq"):
        outs[mode] = tmp_path / f"{mode}.onnx"
        r = CliRunner().invoke(main, ["quantize", str(mobilenet_path), "-o", str(outs[mode]), "--calib-images",
                                      str(calib), "--weight-rounding", mode])
        assert r.exit_code == 0, r.output
    inits = {m: {i.name: numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer} for m, p in outs.items()}
    assert inits["nearest"].keys() == inits["gptq"].keys()
    int8 = [k for k, v in inits["nearest"].items() if v.dtype == np.int8 and v.ndim >= 2]
    changed = [k for k in int8 if not np.array_equal(inits["nearest"][k], inits["gptq"][k])]
    assert len(changed) > len(int8) // 2, (len(changed), len(int8))
    for k in int8:  # same scales: codes move by a few steps at most
        assert np.abs(inits["nearest"][k].astype(int) - inits["gptq"][k].astype(int)).max() <= 8, k
    sqnr = _heldout_sqnr(mobilenet_path, outs, corpus, photos=12)
    assert sqnr["gptq"] > sqnr["nearest"] - 0.5, sqnr


def test_mobilenet_refine_biases_cli(mobilenet_path, corpus, tmp_path):
    """``--refine-biases`` moves only int32 bias codes, says what it did, and brings the int8
    model closer to fp32 on photos it never saw."""
    from onnx import numpy_helper

    calib = tmp_path / "calib"
    calib.mkdir()
    for p in image_files(corpus / "images")[::3][:16]:
        (calib / p.name).symlink_to(p)
    outs = {}
    for mode, flags in (("plain", []), ("refined", ["--refine-biases"])):
        outs[mode] = tmp_path / f"{mode}.onnx"
        r = CliRunner().invoke(main, ["quantize", str(mobilenet_path), "-o", str(outs[mode]), "--calib-images",
                                      str(calib), *flags])
        assert r.exit_code == 0, r.output
        assert ("refined " in r.output) == (mode == "refined"), r.output
    inits = {m: {i.name: numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer} for m, p in outs.items()}
    assert inits["plain"].keys() == inits["refined"].keys()
    changed = [k for k in inits["plain"] if not np.array_equal(inits["plain"][k], inits["refined"][k])]
    assert changed and all(inits["plain"][k].dtype == np.int32 for k in changed), changed
    sqnr = _heldout_sqnr(mobilenet_path, outs, corpus)
    assert sqnr["refined"] > sqnr["plain"] + 0.1, sqnr  # 16 photos: +0.4 dB; 60: +2 dB


def _heldout_sqnr(float_path, quantized: dict, corpus, photos: int = 0) -> dict:
    """Output SQNR (dB) of each quantized model against the float one over the first
    ``photos`` (0: all) evaluation photos, which calibration never sees."""
    ref = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    sess = {m: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for m, p in quantized.items()}
    labels = json.loads((corpus / "imagenet_dev" / "labels.json").read_text())
    sig, err = 0.0, collections.Counter()
    for e in labels[:photos] if photos else labels:
        x = load_image(corpus / "imagenet_dev" / e["file"])
        z = ref.run(None, {"input": x})[0].astype(np.float64)
        sig += float((z**2).sum())
        for m, s in sess.items():
            err[m] += float(((s.run(None, {"input": x})[0] - z) ** 2).sum())
    return {m: 10 * np.log10(sig / e) for m, e in err.items()}
