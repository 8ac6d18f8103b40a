"""int4-weight-only end to end on real models.

CI (fast): magika (tf2onnx, opset 15 → upgraded to 21 for the QDQ format; MatMul weights
[257, 64] — a ragged K for every block size — and [512, 214]) in all three formats, and
MobileNetV2's classifier Gemm (transB). Slow: SmolLM2-135M with GPTQ on calibration text,
perplexity against fp32 (needs torch to build the model)."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxq
from onnxq.cli import main
from onnxq.recipes import WeightOnlyInt4
from tests.helpers import to_bytes


def _magika(corpus):
    p = corpus / "models" / "magika_standard_v3_3.onnx"
    if not p.exists():
        pytest.skip("magika is not in the corpus")
    return p


def _magika_inputs(corpus, n=8):
    files = sorted((corpus / "text").glob("*"))[:2] + sorted((corpus / "images").rglob("*"))[: n - 2]
    rows = []
    for f in files[:n]:
        data = np.frombuffer(f.read_bytes()[:2048], dtype=np.uint8).astype(np.int32)
        rows.append(np.pad(data, (0, 2048 - data.size), constant_values=256))
    return np.stack(rows)


def _run(model_or_path, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    src = to_bytes(model_or_path) if not isinstance(model_or_path, (str, bytes)) and hasattr(model_or_path, "graph") else str(model_or_path)
    uses_onnxq = hasattr(model_or_path, "graph") and any(n.domain == "com.onnxq" for n in model_or_path.graph)
    if uses_onnxq:
        from onnxq import runtime

        return runtime.session(src, threads=1).run(None, feeds)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("fmt", ["qdq", "matmulnbits", "onnxq"])
def test_magika_int4_all_formats(corpus, fmt):
    path = _magika(corpus)
    if fmt == "onnxq":
        from onnxq import runtime

        try:
            runtime.library_path()
        except Exception:
            pytest.skip("com.onnxq library not built")
    x = _magika_inputs(corpus)
    ref = _run(str(path), {"bytes": x})
    model, report = onnxq.quantize_with_report(path, WeightOnlyInt4(block_size=32, symmetric=False, format=fmt, algorithm="hqq"))
    assert len(report.quantized) == 2
    proto = onnx.load_from_string(to_bytes(model))
    if fmt != "onnxq":
        onnx.checker.check_model(proto, full_check=True)
    if fmt == "qdq":
        assert model.opset_imports[""] == 21
    got = _run(model, {"bytes": x})
    for r, g in zip(ref, got):
        if r.dtype.kind == "f" and r.ndim == 2:
            assert (r.argmax(1) == g.argmax(1)).mean() >= 0.85
            assert np.abs(r - g).max() < 0.1


def test_magika_cli_matmulnbits(corpus, tmp_path):
    path = _magika(corpus)
    out = tmp_path / "magika_int4.onnx"
    r = CliRunner().invoke(main, ["quantize", str(path), "-o", str(out), "--recipe", "int4-weight-only", "--format", "matmulnbits", "--block-size", "128"])
    assert r.exit_code == 0, r.output
    proto = onnx.load(str(out))
    nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2
    assert all(any(a.name == "accuracy_level" for a in n.attribute) for n in nbits)  # chosen by measured parity


def test_mobilenet_classifier_gemm_int4(mobilenet_path):
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    ref = _run(str(mobilenet_path), {"input": x})[0]
    model = onnxq.quantize(mobilenet_path, WeightOnlyInt4(block_size=128, format="qdq"))
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph) == 1
    got = _run(model, {"input": x})[0]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.99 and (ref.argmax(1) == got.argmax(1)).all()


@pytest.mark.slow
def test_smollm2_gptq_perplexity(corpus, tmp_path):
    smollm2 = pytest.importorskip("models.smollm2")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models import perplexity

    fp32 = smollm2.build()
    text = corpus / "text" / "bible_web_dev.txt"
    ids = smollm2.token_ids(text, 1024 + 8 * 256)
    np.save(tmp_path / "calib.npy", ids[1024:].reshape(8, 256))
    out = tmp_path / "smollm2_gptq.onnx"
    r = CliRunner().invoke(main, [
        "quantize", str(fp32), "-o", str(out), "--algo", "gptq", "--format", "matmulnbits",
        "--calib-text", str(tmp_path / "calib.npy"), "--keep-8bit", "/lm_head/MatMul", "--accuracy-level", "0",
    ])
    assert r.exit_code == 0, r.output
    p32 = perplexity.perplexity(str(fp32), ids[:1024], n_tokens=1024)
    p4 = perplexity.perplexity(str(out), ids[:1024], n_tokens=1024)
    assert p4 < 1.4 * p32, (p4, p32)


def _bfloat16_logits_as_float32(path, out):
    """A copy of an int4 model whose bfloat16 logits are cast to float32 (ORT's Python API
    returns no bfloat16 arrays)."""
    from onnx import TensorProto
    from onnx import helper as h

    m = onnx.load(str(path))
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.BFLOAT16
    m.graph.node.append(h.make_node("Cast", [m.graph.output[0].name], ["logits_f32"], to=TensorProto.FLOAT))
    del m.graph.output[:]
    m.graph.output.append(h.make_tensor_value_info("logits_f32", TensorProto.FLOAT, None))
    onnx.save(m, str(out), save_as_external_data=True, location=out.name + ".data")
    return out


@pytest.mark.slow
def test_smollm2_bfloat16_export_int4(corpus, tmp_path):
    """SmolLM2 exported from torch in bfloat16 (which ORT CPU cannot run: no bfloat16 Where/MatMul)
    -> int4 RTN MatMulNBits: runs in ORT CPU, bfloat16 logits kept, the embedding table stays
    bfloat16 (not widened to 113 MB), and its perplexity is that of the float32 export's int4."""
    smollm2 = pytest.importorskip("models.smollm2")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models import perplexity

    ids = smollm2.token_ids(corpus / "text" / "bible_web_dev.txt", 1024)
    ppl = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"smollm2_{dtype}_rtn.onnx"
        r = CliRunner().invoke(main, ["quantize", str(smollm2.build(dtype=dtype)), "-o", str(out),
                                      "--algo", "rtn", "--format", "matmulnbits"])
        assert r.exit_code == 0, r.output
        if dtype == "bfloat16":
            assert "bfloat16" in r.output
            table = next(i for i in onnx.load(str(out), load_external_data=False).graph.initializer
                         if i.name == "model.embed_tokens.weight")
            assert table.data_type == onnx.TensorProto.BFLOAT16
            out = _bfloat16_logits_as_float32(out, tmp_path / "bf16_f32_logits.onnx")
        ppl[dtype] = perplexity.perplexity(str(out), ids, n_tokens=1024)
    assert abs(ppl["bfloat16"] - ppl["float32"]) < 0.05 * ppl["float32"], ppl


@pytest.mark.slow
def test_smollm2_int8_dynamic_token_scales(corpus, tmp_path):
    """int8-dynamic on a gated-MLP LM: per-token scales on the down projections keep the
    perplexity near fp32 (one scale per tensor, as ORT's quantize_dynamic: ~1.9-2x fp32)."""
    smollm2 = pytest.importorskip("models.smollm2")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models import perplexity

    fp32 = smollm2.build()
    ids = smollm2.token_ids(corpus / "text" / "bible_web_dev.txt", 1024)
    out = tmp_path / "smollm2_d8.onnx"
    r = CliRunner().invoke(main, ["quantize", str(fp32), "-o", str(out), "--recipe", "int8-dynamic"])
    assert r.exit_code == 0, r.output
    assert sum(n.op_type == "ReduceMax" for n in onnx.load(str(out), load_external_data=False).graph.node) == 30
    p32 = perplexity.perplexity(str(fp32), ids, n_tokens=1024)
    p8 = perplexity.perplexity(str(out), ids, n_tokens=1024)
    assert p8 < 1.15 * p32, (p8, p32)
