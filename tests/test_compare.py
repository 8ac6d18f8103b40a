import math

import numpy as np
import pytest

import onnxq
from onnxq.compare import ErrorAccumulator, compare_models
from tests.helpers import model_from_text, to_bytes

RNG = np.random.default_rng(7)

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 32] x) => (float[N, 10] y) {
    h = MatMul(x, w1)
    r = Relu(h)
    y = MatMul(r, w2)
}
"""


def test_accumulator_matches_direct_formulas():
    ref = RNG.standard_normal((6, 10))
    got = ref + 0.01 * RNG.standard_normal((6, 10))
    acc = ErrorAccumulator("t")
    acc.update(ref[:3], got[:3])
    acc.update(ref[3:], got[3:])
    r = acc.result()
    expected_sqnr = 10 * math.log10((ref**2).sum() / ((got - ref) ** 2).sum())
    assert abs(r.sqnr_db - expected_sqnr) < 1e-9
    cos = (ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)
    assert abs(r.cosine - cos) < 1e-12
    assert r.max_abs_error == np.abs(got - ref).max()
    assert r.top1_agreement == np.mean(ref.argmax(1) == got.argmax(1))


def test_identical_models_have_infinite_sqnr(tmp_path):
    model = model_from_text(TEXT, {"w1": RNG.standard_normal((32, 64)).astype(np.float32), "w2": RNG.standard_normal((64, 10)).astype(np.float32)})
    p = tmp_path / "f.onnx"
    p.write_bytes(to_bytes(model))
    data = [{"x": RNG.standard_normal((2, 32)).astype(np.float32)} for _ in range(3)]
    c = compare_models(p, p, data)
    assert c.samples == 3 and math.isinf(c.outputs[0].sqnr_db) and c.outputs[0].top1_agreement == 1.0


def _float_and_quantized(tmp_path):
    model = model_from_text(TEXT, {"w1": RNG.standard_normal((32, 64)).astype(np.float32), "w2": RNG.standard_normal((64, 10)).astype(np.float32)})
    f = tmp_path / "f.onnx"
    f.write_bytes(to_bytes(model))
    q = tmp_path / "q.onnx"
    onnxq.save(onnxq.quantize(f, onnxq.DynamicInt8(min_weight_elements=0)), q)
    data = [{"x": RNG.standard_normal((4, 32)).astype(np.float32)} for _ in range(4)]
    return f, q, data


def test_quantized_layers_are_matched_by_name(tmp_path):
    f, q, data = _float_and_quantized(tmp_path)
    c = compare_models(f, q, data)
    assert [layer.name for layer in c.layers] == ["h", "r"]
    assert 20 < c.outputs[0].sqnr_db < 60
    assert all(20 < layer.sqnr_db < 60 for layer in c.layers)
    assert c.worst_layers(1)[0].name in ("h", "r")


def test_cli_compare_json_and_html(tmp_path):
    from html.parser import HTMLParser
    import json

    from click.testing import CliRunner

    from onnxq.cli import main

    model = model_from_text(TEXT, {"w1": RNG.standard_normal((32, 64)).astype(np.float32), "w2": RNG.standard_normal((64, 10)).astype(np.float32)})
    f = tmp_path / "f.onnx"
    f.write_bytes(to_bytes(model))
    q = tmp_path / "q.onnx"
    onnxq.save(onnxq.quantize(f, onnxq.DynamicInt8(min_weight_elements=0)), q)
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((6, 32)).astype(np.float32))
    r = CliRunner().invoke(main, ["compare", str(f), str(q), "--data", str(tmp_path / "d.npz"), "--json", "--html", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["samples"] == 6 and data["outputs"][0]["name"] == "y"
    assert len(data["worst_layers"]) == 2

    class Collect(HTMLParser):
        tags: list = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

    parser = Collect()
    parser.feed((tmp_path / "r.html").read_text())
    assert any(t == "svg" and a.get("class") == "sqnr-chart" for t, a in parser.tags)
    assert sum(t == "rect" for t, _ in parser.tags) == 2  # one bar per layer
    assert any(t == "table" and a.get("id") == "summary" for t, a in parser.tags)


def test_cli_compare_needs_data(tmp_path):
    from click.testing import CliRunner

    from onnxq.cli import main

    f = tmp_path / "f.onnx"
    f.write_bytes(to_bytes(model_from_text(TEXT, {"w1": np.ones((32, 64), np.float32), "w2": np.ones((64, 10), np.float32)})))
    r = CliRunner().invoke(main, ["compare", str(f), str(f)])
    assert r.exit_code != 0 and "--data" in r.output
    r = CliRunner().invoke(main, ["compare", str(f), str(f), "--data", str(tmp_path), "--images", str(tmp_path)])
    assert r.exit_code != 0 and "give one of --data, --images and --text" in r.output


def test_channel_rescaled_tensors_are_divided_out(tmp_path):
    from onnxq.compare import record_channel_scales

    model = model_from_text(TEXT, {"w1": RNG.standard_normal((32, 64)).astype(np.float32), "w2": RNG.standard_normal((64, 10)).astype(np.float32)})
    f = tmp_path / "f.onnx"
    f.write_bytes(to_bytes(model))
    # the "quantized" model: w1's columns scaled by s, w2's rows by 1/s (same outputs)
    s = np.linspace(1, 4, 64).astype(np.float32)
    scaled = model_from_text(TEXT, {"w1": (model.graph.initializers["w1"].const_value.numpy() * s), "w2": (model.graph.initializers["w2"].const_value.numpy() / s[:, None])})
    record_channel_scales(scaled, {"h": s, "r": s})
    q = tmp_path / "q.onnx"
    onnxq.save(scaled, q)
    data = [{"x": RNG.standard_normal((4, 32)).astype(np.float32)} for _ in range(2)]
    c = compare_models(f, q, data)
    assert all(layer.sqnr_db > 100 for layer in c.layers), c.layers


def test_non_finite_float_values_are_not_an_error_measure():
    """-inf in the float model itself (Log(0) in T5's relative-position buckets, masks) made
    the layer's SQNR NaN and put it at the top of the worst-layer list, with a numpy warning."""
    import warnings

    from onnxq.compare import ErrorAccumulator

    ref = np.array([[1.0, -np.inf, 2.0], [0.5, 3.0, np.nan]])
    got = np.array([[1.1, -np.inf, 2.0], [0.5, 2.9, 0.0]])
    acc = ErrorAccumulator("t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc.update(ref, got)
        r = acc.result()
    expected = 10 * np.log10((1 + 4 + 0.25 + 9) / (0.01 + 0.01))
    assert r.sqnr_db == pytest.approx(expected) and np.isfinite(r.cosine)


def test_non_finite_quantized_values_give_minus_infinite_sqnr():
    """Inf/NaN in the quantized output where the float one is finite (a near-zero divisor
    rounded to 0) is the worst error, not a crash (math domain error)."""
    from onnxq.compare import ErrorAccumulator

    acc = ErrorAccumulator("y")
    ref = np.ones((2, 4), np.float32)
    got = ref.copy()
    got[0, 1] = np.inf
    got[1, 2] = np.nan
    acc.update(ref, got)
    r = acc.result()
    assert r.sqnr_db == -np.inf and r.cosine == 0.0


def test_layers_are_skipped_when_ort_cannot_build_the_instrumented_models(tmp_path, caplog):
    import logging

    import onnxruntime as ort

    f, q, data = _float_and_quantized(tmp_path)

    def factory(model):
        if isinstance(model, bytes):  # the models with their layer outputs exposed
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Target shape may not have multiple -1 dimensions.")
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    with caplog.at_level(logging.WARNING, logger="onnxq"):
        c = compare_models(f, q, data, session_factory=factory)
    assert c.layers == () and c.outputs and math.isfinite(c.outputs[0].sqnr_db)
    assert "per-layer comparison skipped" in caplog.text


def test_a_folded_batchnorm_is_blamed_on_its_conv():
    """FoldConvAffinePass folds a BatchNormalization into the Conv before it, which takes over
    its output name: the layer to --exclude is that Conv, not the BatchNormalization."""
    from onnxq.compare import shared_float_tensors

    c = 4
    float_model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            b = BatchNormalization (c, g, beta, mu, var)
            y = Relu(b)
        }
        """,
        {"w": RNG.standard_normal((c, 3, 3, 3)).astype(np.float32), "g": np.ones(c, np.float32),
         "beta": np.zeros(c, np.float32), "mu": np.zeros(c, np.float32), "var": np.ones(c, np.float32)},
    )
    float_model.graph.node(0).name, float_model.graph.node(1).name = "conv0", "bn0"
    data = [{"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    quant = onnxq.quantize(_copy(float_model), onnxq.StaticInt8(), data)  # quantize() works in place
    from onnxq.passes.infer_shapes import InferShapesPass

    InferShapesPass()(float_model)  # as compare_models does: the float model's tensors get their types
    blamed = {name: (op, node) for name, op, node in shared_float_tensors(float_model, quant)}
    assert blamed["b"] == ("Conv", "conv0"), blamed


def _copy(model):
    import onnx_ir as ir

    return ir.from_proto(ir.to_proto(model))


def test_layers_are_charged_to_float_model_nodes_not_to_nodes_the_quantizer_made(tmp_path):
    """int8-dynamic reads an embedding table as int8 rows times their scales: the Mul that
    computes 'emb' is onnxq's ("embed/Mul"), which --exclude cannot name; compare charges
    the float model's Gather."""
    import onnx

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (int64[N, 6] ids) => (float[N, 6, 8] y) {
        emb = Gather(table, ids)
        y = MatMul(emb, w)
    }
    """
    model = model_from_text(text, {"table": RNG.standard_normal((100, 64)).astype(np.float32),
                                   "w": RNG.standard_normal((64, 8)).astype(np.float32)})
    proto = onnx.load_from_string(to_bytes(model))
    proto.graph.node[0].name, proto.graph.node[1].name = "embed", "proj"
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    src.write_bytes(proto.SerializeToString())
    q, report = onnxq.quantize_with_report(src, onnxq.DynamicInt8(min_weight_elements=0))
    assert any(n.name.startswith("embed/") for n in q.graph)  # the rewrite made its own nodes
    onnxq.save(q, out)
    feeds = [{"ids": RNG.integers(0, 100, (2, 6))} for _ in range(3)]
    layers = {t.name: t for t in compare_models(src, out, feeds).layers}
    assert layers["emb"].node == "embed" and layers["emb"].op_type == "Gather", layers["emb"]
