"""The int4-weight-only recipe end to end on a tiny language model: calibration text
(token ids .npy, or text + tokenizer.json), the API, the CLI, accuracy-level choice."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxq
from onnxq.calib_text import TextCalibration, lm_feeds, load_token_ids, token_windows
from onnxq.cli import main
from onnxq.errors import CalibrationDataError, RecipeError
from onnxq.recipes import WeightOnlyInt4
from tests.helpers import model_from_text, run_ort

RNG = np.random.default_rng(0)
VOCAB = 60
WORDS = [f"w{i}" for i in range(VOCAB - 1)]

LM = """
<ir_version: 8, opset_import: ["" : 17]>
lm (int64[B, S] input_ids, int64[B, S] attention_mask) => (float[B, S, 60] logits) {
    e = Gather(emb, input_ids)
    n = Mul(e, g)
    h = MatMul(n, w1)
    u = MatMul(n, w2)
    r = Relu(h)
    m = Mul(r, u)
    o = MatMul(m, w3)
    logits = MatMul(o, head)
}
"""


def _lm():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((VOCAB, 160)).astype(np.float32)
    emb[:, :3] *= 20  # outlier channels, as LLM activations have
    return model_from_text(
        LM,
        {
            "emb": emb,
            "g": (1 + 0.1 * rng.standard_normal(160)).astype(np.float32),
            "w1": (rng.standard_normal((160, 96)) * 0.1).astype(np.float32),
            "w2": (rng.standard_normal((160, 96)) * 0.1).astype(np.float32),
            "w3": (rng.standard_normal((96, 160)) * 0.1).astype(np.float32),
            "head": (rng.standard_normal((160, VOCAB)) * 0.1).astype(np.float32),
        },
    )


@pytest.fixture()
def lm_path(tmp_path):
    path = tmp_path / "lm.onnx"
    onnx.save(onnx.load_from_string(__import__("tests.helpers", fromlist=["to_bytes"]).to_bytes(_lm())), path)
    return path


@pytest.fixture()
def tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def _text(tmp_path, n_words=3000):
    words = RNG.choice(WORDS, size=n_words)
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(words))
    return path


def test_token_ids_from_npy_and_from_text(tmp_path, tokenizer_json):
    ids = RNG.integers(0, VOCAB, 1000)
    np.save(tmp_path / "ids.npy", ids)
    assert np.array_equal(load_token_ids(tmp_path / "ids.npy"), ids)
    text_ids = load_token_ids(_text(tmp_path, 500), tokenizer_json)
    assert text_ids.shape == (500,) and text_ids.min() >= 1
    w = token_windows(ids, 64, 4, offset=10)
    assert w.shape == (4, 64) and np.array_equal(w[0], ids[10:74])
    rows = token_windows(np.stack([ids[:50], ids[50:100]]), 32, 8)
    assert rows.shape == (2, 32)
    feeds = list(lm_feeds(["input_ids", "attention_mask", "position_ids"], w[:2]))
    assert feeds[0]["attention_mask"].shape == (1, 64) and feeds[0]["position_ids"][0, -1] == 63


def test_calibration_text_errors(tmp_path):
    with pytest.raises(CalibrationDataError, match="tokenizer"):
        load_token_ids(_text(tmp_path))
    np.save(tmp_path / "f.npy", np.zeros(3, np.float32))
    with pytest.raises(CalibrationDataError, match="integer token ids"):
        load_token_ids(tmp_path / "f.npy")
    with pytest.raises(CalibrationDataError, match="cannot fill"):
        list(lm_feeds(["input_ids", "pixel_values"], np.zeros((1, 4), np.int64)))


def test_gptq_needs_calibration_data():
    with pytest.raises(CalibrationDataError, match="--calib-text"):
        onnxq.quantize(_lm(), WeightOnlyInt4(algorithm="gptq", block_size=32))


@pytest.mark.parametrize("algorithm", ["gptq", "awq+gptq", "awq"])
def test_text_calibrated_algorithms_end_to_end(tmp_path, tokenizer_json, algorithm):
    data = TextCalibration(_text(tmp_path), tokenizer_json, seq_len=64, n_samples=8)
    ids = RNG.integers(1, VOCAB, (1, 48))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    ref = run_ort(_lm(), feed)[0]
    errs = {}
    for algo in ("rtn", algorithm):
        model, report = onnxq.quantize_with_report(
            _lm(), WeightOnlyInt4(algorithm=algo, block_size=32, format="matmulnbits"), data
        )
        got = run_ort(model, feed)[0]
        errs[algo] = float(np.mean((got - ref) ** 2) / np.mean(ref**2))
        levels = [n.attributes.get_int("accuracy_level") for n in model.graph if n.op_type == "MatMulNBits"]
        assert len(levels) == 4 and set(levels) <= {1, 4}
    assert any("calibrated" in n for n in report.notes)
    assert errs[algorithm] < errs["rtn"], errs


def test_first_token_weight_is_validated():
    with pytest.raises(RecipeError, match="first_token_weight"):
        WeightOnlyInt4(algorithm="gptq", first_token_weight=-1.0)
    assert WeightOnlyInt4(algorithm="gptq", first_token_weight=8.0).first_token_weight == 8.0


def test_gptq_refit_scales_keeps_the_codes_and_changes_the_scales(tmp_path, tokenizer_json):
    data = TextCalibration(_text(tmp_path), tokenizer_json, seq_len=64, n_samples=8)
    ids = RNG.integers(1, VOCAB, (1, 48))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    ref = run_ort(_lm(), feed)[0]
    inits, errs = {}, {}
    for refit in (False, True):
        recipe = WeightOnlyInt4(algorithm="gptq", block_size=32, format="matmulnbits", accuracy_level=0, refit_scales=refit)
        model = onnxq.quantize(_lm(), recipe, data)
        errs[refit] = float(np.mean((run_ort(model, feed)[0] - ref) ** 2) / np.mean(ref**2))
        inits[refit] = {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}
    packed = [n for n in inits[False] if n.endswith("_weight_packed")]
    scales = [n for n in inits[False] if n.endswith("_weight_scales")]
    assert len(packed) == 4 and len(scales) == 4
    assert all(np.array_equal(inits[False][n], inits[True][n]) for n in packed)
    assert any(not np.array_equal(inits[False][n], inits[True][n]) for n in scales)
    assert errs[True] < 1.1 * errs[False], errs


def test_cli_int4_with_npy_calibration(tmp_path, lm_path):
    np.save(tmp_path / "ids.npy", RNG.integers(1, VOCAB, 4096))
    out = tmp_path / "lm_q.onnx"
    args = [
        "quantize", str(lm_path), "-o", str(out), "--algo", "awq+gptq", "--format", "qdq", "--asymmetric",
        "--block-size", "32", "--calib-text", str(tmp_path / "ids.npy"),
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 21
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") == 4 and "MatMulNBits" not in ops
    assert "int4-weight-only" in r.output


def test_cli_rejects_int4_options_for_other_recipes(tmp_path, lm_path):
    r = CliRunner().invoke(main, ["quantize", str(lm_path), "-o", str(tmp_path / "x.onnx"), "--recipe", "int8-dynamic", "--algo", "gptq"])
    assert r.exit_code != 0 and "int4-weight-only recipe only" in r.output


def _one_matmul(seed: int):
    """A 256 -> 64 MatMul with a random constant weight."""
    w = np.random.default_rng(seed).standard_normal((256, 64)).astype(np.float32)
    return model_from_text(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 256] x) => (float[2, 64] y) { y = MatMul(x, w) }
        """,
        {"w": w},
    )


def test_onnxq_format_without_library_keeps_exact_level(monkeypatch):
    """--format onnxq still quantizes when the custom-op library is missing: the per-layer
    accuracy choice (which runs the op) is skipped and the report says why."""
    from onnxq import runtime
    from onnxq.errors import OnnxqError

    def missing(device="cpu"):
        raise OnnxqError("the custom-op library was not built: test")

    monkeypatch.setattr(runtime, "library_path", missing)
    model, report = onnxq.quantize_with_report(_one_matmul(0), WeightOnlyInt4(format="onnxq"))
    (node,) = [n for n in model.graph if n.op_type == "MatMulBlockInt4"]
    assert "accuracy_level" not in node.attributes
    assert any("accuracy_level left unset" in n for n in report.notes)


def test_onnxq_format_chooses_accuracy_level_by_parity():
    """With the library built, every MatMulBlockInt4 gets accuracy_level 4 or 1 from the
    measured parity check (as MatMulNBits does), and the report says how many got 4."""
    from onnxq import runtime
    from onnxq.errors import OnnxqError

    try:
        runtime.library_path("cpu")
    except OnnxqError as e:
        pytest.skip(str(e))
    model, report = onnxq.quantize_with_report(_one_matmul(1), WeightOnlyInt4(format="onnxq"))
    (node,) = [n for n in model.graph if n.op_type == "MatMulBlockInt4"]
    assert node.attributes.get_int("accuracy_level") in (1, 4)
    assert any("MatMulBlockInt4 accuracy_level 4" in n for n in report.notes)


def test_small_output_heads_stay_float_by_default(tmp_path):
    """An encoder (8 layers of 256x256 MatMuls) then a pooler Gemm and a classifier Gemm on
    the first token: the pooler and classifier (~1 % of the weights) stay float -- the layers
    before them are quantized; float_heads=False quantizes them too."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    from onnxq.passes.quantize_matmul_int4 import HEAD_REASON

    rng = np.random.default_rng(9)
    d, layers = 256, 8
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        nodes += [h.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"layer{i}"), h.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        inits.append(nh.from_array((rng.standard_normal((d, d)) / np.sqrt(d) * 1.4).astype(np.float32), f"w{i}"))
        x = f"r{i}"
    nodes += [
        h.make_node("Gather", [x, "zero"], ["cls"], axis=1),
        h.make_node("Gemm", ["cls", "wp", "bp"], ["pooled"], transB=1, name="pooler"),
        h.make_node("Tanh", ["pooled"], ["t"]),
        h.make_node("Gemm", ["t", "wc"], ["logits"], transB=1, name="classifier"),
    ]
    inits += [nh.from_array(np.array(0, np.int64), "zero"),
              nh.from_array((rng.standard_normal((16, d)) * 0.2).astype(np.float32), "wp"),
              nh.from_array(np.zeros(16, np.float32), "bp"),
              nh.from_array((rng.standard_normal((3, 16)) * 0.5).astype(np.float32), "wc")]
    graph = h.make_graph(nodes, "enc", [h.make_tensor_value_info("x", T.FLOAT, [2, 5, d])],
                         [h.make_tensor_value_info("logits", T.FLOAT, [2, 3])], inits)
    path = tmp_path / "enc.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    feed = {"x": rng.standard_normal((2, 5, d)).astype(np.float32)}
    ref = ort.InferenceSession(str(path)).run(None, feed)[0]

    def err(model):
        data = onnxq.api.ir.serde.serialize_model(model).SerializeToString()
        return float(np.abs(ort.InferenceSession(data).run(None, feed)[0] - ref).max())

    model, report = onnxq.quantize_with_report(path, onnxq.WeightOnlyInt4(block_size=32))
    reason = {dec.name: dec.reason for dec in report.decisions}
    assert reason["pooler"].startswith(HEAD_REASON) and reason["classifier"].startswith(HEAD_REASON)
    assert all(reason[f"layer{i}"] == "" for i in range(layers))
    assert {"wp", "wc"} <= set(model.graph.initializers)  # float weights kept as they were
    assert err(model) < 0.5 * float(np.abs(ref).max())  # runs: 8 random int4 layers, no data
    everything, report = onnxq.quantize_with_report(path, onnxq.WeightOnlyInt4(block_size=32, float_heads=False))
    assert all(dec.selected for dec in report.decisions)
    assert not {"wp", "wc"} & set(everything.graph.initializers)


def test_token_rows_are_not_pooled_heads_and_keep_8bit_wins():
    """A Gemm on [batch * tokens, hidden] (flattened decoder layer, MoE expert) is not a head,
    however small; a head named in keep_8bit stays int8."""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    from onnxq.passes.quantize_matmul_int4 import HEAD_REASON, INT8_REASON, plan_int4

    rng = np.random.default_rng(2)
    d = 256
    nodes = [
        h.make_node("MatMul", ["x", "w_big"], ["a"], name="big"),
        h.make_node("Reshape", ["a", "rows"], ["flat"]),
        h.make_node("Gemm", ["flat", "w_expert"], ["e"], transB=1, name="expert"),
        h.make_node("Reshape", ["e", "back"], ["y"]),
        h.make_node("Gather", ["a", "zero"], ["cls"], axis=1),
        h.make_node("Gemm", ["cls", "w_cls"], ["logits"], transB=1, name="classifier"),
    ]
    inits = [nh.from_array((rng.standard_normal((d, d)) * 0.1).astype(np.float32), "w_big"),
             nh.from_array(np.array([-1, d], np.int64), "rows"), nh.from_array(np.array([2, -1, 8], np.int64), "back"),
             nh.from_array((rng.standard_normal((8, d)) * 0.1).astype(np.float32), "w_expert"),
             nh.from_array(np.array(0, np.int64), "zero"),
             nh.from_array((rng.standard_normal((3, d)) * 0.1).astype(np.float32), "w_cls")]
    graph = h.make_graph(nodes, "m", [h.make_tensor_value_info("x", T.FLOAT, [2, 5, d])],
                         [h.make_tensor_value_info("y", T.FLOAT, None), h.make_tensor_value_info("logits", T.FLOAT, [2, 3])],
                         inits)
    model = onnxq.api.ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    onnxq.api.prepare(model)
    reason = {dec.name: dec.reason for dec in plan_int4(model, WeightOnlyInt4(block_size=32))}
    assert reason["expert"] == "" and reason["big"] == "" and reason["classifier"].startswith(HEAD_REASON), reason
    reason = {dec.name: dec.reason for dec in plan_int4(model, WeightOnlyInt4(block_size=32, keep_8bit=("classifier",)))}
    assert reason["classifier"] == INT8_REASON


def test_qdq_bias_add_is_a_sum_so_ort_fuses_matmulnbits(tmp_path):
    """MatMul -> Add -> Relu with a blocked DequantizeLinear weight: ORT CPU folds MatMul + Add
    (+ Relu) into a float FusedGemm before it makes MatMulNBits, and then dequantizes the
    weight on every run (10x slower than float). Written as Sum, the int4 MatMul stays."""
    import collections

    import onnxruntime as ort

    rng = np.random.default_rng(5)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 256] x) => (float[1, 64] y) {
            a = MatMul(x, w1)
            b = Add(a, b1)
            r = Relu(b)
            c = MatMul(r, w2)
            y = Add(c, b2)
        }
        """,
        {"w1": rng.standard_normal((256, 128)).astype(np.float32), "b1": rng.standard_normal(128).astype(np.float32),
         "w2": rng.standard_normal((128, 64)).astype(np.float32), "b2": rng.standard_normal(64).astype(np.float32)},
    )
    x = rng.standard_normal((1, 256)).astype(np.float32)
    q, report = onnxq.quantize_with_report(model, WeightOnlyInt4(block_size=32, float_heads=False))
    assert any("as Sum" in n for n in report.notes), report.notes
    path = tmp_path / "q.onnx"
    onnxq.save(q, path)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    y = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["MatMulNBits"] == 2 and not ops["FusedGemm"] and not ops["Gemm"], ops
    ref = run_ort(model, {"x": x})[0]
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.1
    # a runtime other than ORT keeps the Add
    from onnxq.targets import apply_target

    ov, _ = apply_target(WeightOnlyInt4(block_size=32, float_heads=False), "openvino")
    assert not ov.sum_rewrites


def test_a_weight_read_by_several_matmuls_gets_one_dequantize_and_a_note():
    """An unrolled RNN reads one weight at every step: the qdq format writes one
    DequantizeLinear for all its readers and says that ORT runs such weights unfused."""
    rng = np.random.default_rng(4)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[2, 64] x) => (float[2, 64] y) {
            a = MatMul(x, w)
            b = MatMul(a, w)
            y = MatMul(b, w)
        }
        """,
        {"w": (rng.standard_normal((64, 64)) * 0.1).astype(np.float32)},
    )
    x = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    ref = run_ort(model, x)[0]
    q, report = onnxq.quantize_with_report(model, WeightOnlyInt4(block_size=32))
    ops = [n.op_type for n in q.graph]
    assert ops.count("DequantizeLinear") == 1 and ops.count("MatMul") == 3 and ops[0] == "DequantizeLinear"
    assert any("read by 3 MatMuls" in n and "--format matmulnbits" in n for n in report.notes), report.notes
    got = run_ort(q, x)[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.2  # three int4 layers in a row
