"""int8-dynamic end to end on a real model from the corpus (runs in CI)."""

import numpy as np
import pytest
import onnx
import onnxruntime as ort
from click.testing import CliRunner

from onnxq.cli import main


def test_mobilenet_int8_dynamic_cli(mobilenet_path, tmp_path):
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(
        main, ["quantize", str(mobilenet_path), "-o", str(out), "--recipe", "int8-dynamic", "--op-types", "MatMul,Gemm,Conv"]
    )
    assert r.exit_code == 0, r.output
    onnx.checker.check_model(str(out), full_check=True)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("ConvInteger") >= 40 and ops.count("MatMulInteger") == 1
    assert out.stat().st_size < 0.3 * mobilenet_path.stat().st_size
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    ref = ort.InferenceSession(str(mobilenet_path), so).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(out), so).run(None, {"input": x})[0]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.98


@pytest.mark.slow
def test_minilm_int8_dynamic_embeddings_match(corpus, tmp_path):
    minilm = pytest.importorskip("models.minilm")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import onnxq

    fp32 = minilm.build()
    out = tmp_path / "minilm_int8.onnx"
    onnxq.save(onnxq.quantize(fp32, onnxq.DynamicInt8()), out)
    onnx.checker.check_model(str(out), full_check=True)
    sentences = minilm.bible_sentences(64)
    ref = minilm.embed(fp32, sentences)
    got = minilm.embed(out, sentences)
    cos = (ref * got).sum(axis=1)
    assert cos.mean() >= 0.99, cos.mean()
    assert out.stat().st_size < 0.3 * fp32.stat().st_size


def test_mobilenet_int8_dynamic_default_says_conv_stays_float(mobilenet_path, tmp_path):
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(main, ["quantize", str(mobilenet_path), "-o", str(out), "--recipe", "int8-dynamic"])
    assert r.exit_code == 0, r.output
    assert "52 Conv node(s) left in float" in " ".join(r.output.split())
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("Conv") == 52


@pytest.mark.slow
def test_minilm_int8_static_embeddings_match(corpus, tmp_path):
    """int8-static on a BERT-style encoder: the residual Adds before each LayerNorm stay
    float (one scale for the residual stream, set by its outlier channels, cost ORT's
    quantize_static and our old placement a mean cosine of ~0.62); quantizing them
    again (``quantize_islands``) shows the difference on the same sentences."""
    minilm = pytest.importorskip("models.minilm")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import onnxq

    fp32 = minilm.build(pooled=True)
    calib = [minilm.encode([s]) for s in minilm.bible_sentences(32)]
    sentences = minilm.bible_sentences(48, offset=32)
    ref = minilm.embed(fp32, sentences)
    cosines = {}
    for label, recipe in (("placed", onnxq.StaticInt8()), ("everything", onnxq.StaticInt8(quantize_islands=True))):
        out = tmp_path / f"minilm_{label}.onnx"
        onnxq.save(onnxq.quantize(fp32, recipe, data=calib), out)
        onnx.checker.check_model(str(out), full_check=True)
        cosines[label] = float((ref * minilm.embed(out, sentences)).sum(axis=1).mean())
    assert cosines["placed"] >= 0.93, cosines
    assert cosines["everything"] < cosines["placed"] - 0.1, cosines


@pytest.mark.slow
def test_minilm_int8_static_from_calibration_text(corpus, tmp_path):
    """`--calib-text FILE --tokenizer tokenizer.json` on a sentence encoder: each line a sample,
    [CLS] ... [SEP] framed, the tokenizer's truncation/padding to 128 off; as good as feeds
    built by hand (MiniLM: mean cosine 0.992 either way, on held-out lines)."""
    minilm = pytest.importorskip("models.minilm")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    fp32 = minilm.build(pooled=True)
    out = tmp_path / "minilm_text.onnx"
    r = CliRunner().invoke(main, ["quantize", str(fp32), "-o", str(out), "--recipe", "int8-static", "--calib-text",
                                  str(corpus / "text" / "bible_web_dev.txt"), "--tokenizer", str(minilm.model_dir() / "tokenizer.json")])
    assert r.exit_code == 0, r.output
    assert "on 64 samples" in r.output
    sentences = minilm.bible_sentences(128, offset=128)
    cos = (minilm.embed(fp32, sentences) * minilm.embed(out, sentences)).sum(axis=1)
    assert cos.mean() > 0.98, cos.mean()
