"""A real CNN + bidirectional-LSTM OCR model (ddddocr 1.6.1 from PyPI, fetched by
models.packaged) through int8-dynamic and int8-static: the LSTM is written as ORT's
DynamicQuantizeLSTM and the CTC logits stay close to the float model's on real photos
(the corpus images, grey, 64 pixels high)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxq
from tests.helpers import packaged_model


@pytest.fixture(scope="module")
def ocr_model():
    return packaged_model("ddddocr_ocr")


def _lines(corpus, count, skip=0, width=160):
    """Photos as the model reads text lines: grey, 64 x ``width``, (x / 255 - 0.5) / 0.5."""
    from PIL import Image

    from onnxq.preprocess import image_files

    out = []
    for path in image_files(corpus / "images")[skip:skip + count]:
        grey = Image.open(path).convert("L").resize((width, 64))
        out.append({"input1": ((np.asarray(grey, np.float32) / 255 - 0.5) / 0.5)[None, None]})
    return out


def _sqnr_and_agreement(src, out, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    signal = noise = 0.0
    agree = []
    for f in feeds:
        r = ref.run(None, f)[0].astype(np.float64)
        g = got.run(None, f)[0].astype(np.float64)
        signal += (r**2).sum()
        noise += ((r - g) ** 2).sum()
        agree.append(r.argmax(-1) == g.argmax(-1))
    return 10 * np.log10(signal / noise), float(np.concatenate([a.ravel() for a in agree]).mean())


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_int8_dynamic_quantizes_the_lstm(ocr_model, corpus, tmp_path):
    before = ocr_model.read_bytes()
    out = tmp_path / "ocr_dynamic.onnx"
    model, report = onnxq.quantize_with_report(ocr_model, onnxq.DynamicInt8())
    onnxq.save(model, out)
    assert ocr_model.read_bytes() == before
    onnx.checker.check_model(str(out), full_check=True)
    ops = _ops(out)
    assert ops.count("DynamicQuantizeLSTM") == 1 and "LSTM" not in ops
    assert not [n for n in report.notes if "recurrent" in n]
    # the LSTM's weights were 31 % of the file: stored int8 the model is 30 % of its size
    # (54.1 -> 16.4 MB; Conv stays float in int8-dynamic), where the float LSTM alone kept 52 %
    assert out.stat().st_size < 0.35 * len(before)
    sqnr, agreement = _sqnr_and_agreement(ocr_model, out, _lines(corpus, 12))
    assert sqnr > 30, sqnr  # measured 41.5 dB
    assert agreement > 0.99, agreement


def test_int8_static_writes_the_lstm_as_dynamic_quantize_lstm(ocr_model, corpus, tmp_path):
    out = tmp_path / "ocr_static.onnx"
    model, report = onnxq.quantize_with_report(ocr_model, onnxq.StaticInt8(), data=_lines(corpus, 16, skip=12))
    onnxq.save(model, out)
    onnx.checker.check_model(str(out), full_check=True)
    ops = _ops(out)
    assert ops.count("DynamicQuantizeLSTM") == 1 and "LSTM" not in ops and ops.count("QuantizeLinear") > 10
    assert any("DynamicQuantizeLSTM" in n for n in report.notes)
    assert out.stat().st_size < 0.3 * ocr_model.stat().st_size  # measured 25.5 %
    sqnr, agreement = _sqnr_and_agreement(ocr_model, out, _lines(corpus, 12))
    assert sqnr > 15, sqnr  # held-out photos; the Conv QDQ, not the LSTM, sets it (22.6 dB with 40 photos)
    assert agreement > 0.9, agreement
