import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxq.cli import main
from tests.helpers import model_from_text, to_bytes

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 64] x) => (float[N, 32] y) {
    y = MatMul(x, w)
}
"""


@pytest.fixture()
def tiny(tmp_path):
    p = tmp_path / "tiny.onnx"
    p.write_bytes(to_bytes(model_from_text(TEXT, {"w": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)})))
    return p


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_quantize_writes_checked_model(tiny, tmp_path):
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(tiny), "-o", str(out), "--recipe", "int8-dynamic"])
    assert r.exit_code == 0, r.output
    assert "MatMul" in r.output and "size" in r.output
    onnx.checker.check_model(str(out), full_check=True)
    ort.InferenceSession(str(out))


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t, tmp: [str(tmp / "missing.onnx"), "-o", str(tmp / "o.onnx")], "does not exist"),
        (lambda t, tmp: [str(t), "-o", str(t)], "refusing to overwrite"),
        (lambda t, tmp: [str(t), "-o", str(tmp / "nodir" / "o.onnx")], "does not exist"),
        (lambda t, tmp: [str(t), "-o", str(tmp / "o.onnx"), "--recipe", "int3"], "unknown recipe"),
        (lambda t, tmp: [str(t), "-o", str(tmp / "o.onnx"), "--op-types", "Softmax"], "cannot quantize"),
    ],
)
def test_bad_input_one_line_error_nonzero_exit_input_untouched(tiny, tmp_path, make_args, message):
    before = _digest(tiny)
    r = CliRunner().invoke(main, ["quantize", *make_args(tiny, tmp_path)])
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert _digest(tiny) == before
    assert not (tmp_path / "o.onnx").exists()


def test_garbage_file_via_real_process(tmp_path):
    g = tmp_path / "garbage.onnx"
    g.write_bytes(os.urandom(300))
    before = _digest(g)
    proc = subprocess.run(
        [sys.executable, "-m", "onnxq.cli", "quantize", str(g), "-o", str(tmp_path / "o.onnx")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "not a readable ONNX model" in proc.stderr or "not an ONNX model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _digest(g) == before
    assert sorted(os.listdir(tmp_path)) == ["garbage.onnx"]


def test_already_quantized_is_left_alone(tiny, tmp_path):
    out = tmp_path / "q.onnx"
    assert CliRunner().invoke(main, ["quantize", str(tiny), "-o", str(out)]).exit_code == 0
    r = CliRunner().invoke(main, ["quantize", str(out), "-o", str(tmp_path / "qq.onnx")])
    assert r.exit_code != 0 and "already quantized" in r.output


def test_inspect_json(tiny):
    r = CliRunner().invoke(main, ["inspect", str(tiny), "--json"])
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["op_histogram"] == {"MatMul": 1}
    assert data["quantizable"] == {"MatMul": 1}
    assert data["quantized"] == {}
    assert [n["op_type"] for n in data["nodes"]] == ["MatMul"]  # the names --exclude matches


def test_config_file_and_exclude(tiny, tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text('recipe = "int8-dynamic"\nmin_weight_elements = 0\nfused = true\n')
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(tiny), "-o", str(out), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert any(n.op_type == "DynamicQuantizeMatMul" for n in onnx.load(str(out)).graph.node)


def test_version():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "0.1.0" in r.output


@pytest.mark.parametrize("opset, message", [(99, "newer than this installation knows"), (5, "below 7")])
def test_unsupported_opset_is_refused(tmp_path, opset, message):
    proto = onnx.parser.parse_model(TEXT.replace('"" : 17', f'"" : {opset}'))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((64, 32), np.float32), "w"))
    src = tmp_path / "old.onnx"
    src.write_bytes(proto.SerializeToString())
    before = _digest(src)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code != 0 and message in r.output and len(r.output.strip().splitlines()) == 1
    assert _digest(src) == before and not (tmp_path / "o.onnx").exists()


def test_truncated_model_file(tiny, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
    r = CliRunner().invoke(main, ["quantize", str(cut), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code != 0 and "ONNX model" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_escaping_folder_via_cli(tmp_path):
    proto = onnx.parser.parse_model(TEXT)
    t = onnx.numpy_helper.from_array(np.zeros((64, 32), np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "8192")):
        e = t.external_data.add()
        e.key, e.value = k, v
    proto.graph.initializer.append(t)
    src = tmp_path / "evil.onnx"
    src.write_bytes(proto.SerializeToString())
    before = _digest(src)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code != 0 and "outside the model's folder" in r.output
    assert _digest(src) == before and not (tmp_path / "o.onnx").exists()


def test_all_zero_weights_quantize_cleanly(tmp_path):
    src = tmp_path / "zeros.onnx"
    src.write_bytes(to_bytes(model_from_text(TEXT, {"w": np.zeros((64, 32), np.float32)})))
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    y = ort.InferenceSession(str(out)).run(None, {"x": np.ones((2, 64), np.float32)})[0]
    np.testing.assert_array_equal(y, np.zeros((2, 32), np.float32))


def _external_model(tmp_path, location, create_file=False):
    proto = onnx.parser.parse_model(TEXT)
    t = onnx.numpy_helper.from_array(np.zeros((64, 32), np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "8192")):
        e = t.external_data.add()
        e.key, e.value = k, v
    proto.graph.initializer.append(t)
    src = tmp_path / "ext.onnx"
    src.write_bytes(proto.SerializeToString())
    return src


@pytest.mark.parametrize(
    "location, message",
    [("/etc/passwd", "only paths relative"), ("weights.bin", "is missing"), ("sub/../../x.bin", "outside the model's folder")],
)
def test_external_data_cases_via_cli(tmp_path, location, message):
    src = _external_model(tmp_path, location)
    before = _digest(src)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code != 0 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert _digest(src) == before and not (tmp_path / "o.onnx").exists()


def test_read_only_output_location_via_cli(tiny):
    before = _digest(tiny)
    r = CliRunner().invoke(main, ["quantize", str(tiny), "-o", "/proc/onnxq_out.onnx"])
    assert r.exit_code != 0 and ("cannot write" in r.output or "not writable" in r.output), r.output
    assert len(r.output.strip().splitlines()) == 1 and _digest(tiny) == before


CONV_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
    y = Conv <pads = [1, 1, 1, 1]> (x, w)
}
"""


@pytest.mark.parametrize("recipe, hint", [
    ("int8-dynamic", "it has 1 Conv: use --recipe int8-static with --calib-data/--calib-images, or add --op-types Conv"),
    ("int4-weight-only", "it has 1 Conv: use --recipe int8-static with --calib-data/--calib-images)"),
])
def test_conv_only_model_names_the_recipe_that_fits(tmp_path, recipe, hint):
    src = tmp_path / "conv.onnx"
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    src.write_bytes(to_bytes(model_from_text(CONV_TEXT, {"w": w})))
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", recipe])
    assert r.exit_code != 0
    assert hint in " ".join(r.output.split()), r.output
    assert not out.exists()


def test_static_quantize_checks_outputs_against_the_float_model(tiny, tmp_path, capsys):
    """With calibration data the CLI runs both models on a few samples and prints each
    output's agreement; a far-off output gets a warning that names what to run next."""
    from onnxq.compare import Comparison, TensorError
    from onnxq.verify import AGREEMENT_SAMPLES

    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((20, 64)).astype(np.float32))
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(tiny), "-o", str(out), "--recipe", "int8-static",
                                  "--calib-data", str(data)])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("check:"))
    assert f"'y' vs the float model, {min(AGREEMENT_SAMPLES, 20)} calibration samples" in line  # all 20 when fewer
    assert float(line.split("SQNR ")[1].split(" dB")[0]) > 30
    assert "warning" not in r.output
    r = CliRunner().invoke(main, ["quantize", str(tiny), "-o", str(tmp_path / "q2.onnx"), "--recipe", "int8-static",
                                  "--calib-data", str(data), "--no-verify"])
    assert r.exit_code == 0 and "check:" not in r.output

    from onnxq.cli import _print_agreement

    far = Comparison(samples=8, outputs=(TensorError("y", 4.2, 0.8, 3.0),), layers=())
    capsys.readouterr()
    _print_agreement(far, "m.onnx", "q.onnx")
    text = capsys.readouterr().out
    assert "warning: output 'y' is far from the float model (4.2 dB)" in text
    assert "onnxq compare m.onnx q.onnx --data DATA" in text


def test_agreement_check_skips_data_read_once(tiny, tmp_path, monkeypatch):
    from onnxq.data import as_calibration_data
    from onnxq.verify import agreement_with_float

    feeds = [{"x": np.ones((1, 64), np.float32)}] * 3
    once = as_calibration_data(iter(feeds))
    assert agreement_with_float(tiny, tiny, once) is None
    from onnxq.calib_text import TextCalibration

    from onnxq import verify

    # token text for a language model-sized model: judged by perplexity, not here
    monkeypatch.setattr(verify, "TEXT_AGREEMENT_MAX_BYTES", 0)
    np.save(tmp_path / "ids.npy", np.arange(64, dtype=np.int64))
    assert agreement_with_float(tiny, tiny, TextCalibration(tmp_path / "ids.npy", seq_len=8, n_samples=2)) is None
    same = agreement_with_float(tiny, tiny, feeds)
    assert same.samples == 3 and same.outputs[0].sqnr_db > 100
    from onnxq.verify import AgreementSkipped

    with pytest.raises(AgreementSkipped, match="two more ORT sessions"):
        agreement_with_float(tiny, tiny, feeds, max_weight_bytes=1024)


def test_agreement_check_reports_float_outputs_only(tmp_path):
    """Class ids (ArgMax) next to logits: only the logits get an SQNR line."""
    from onnxq.verify import agreement_with_float

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 64] x) => (float[N, 32] y, int64[N, 1] k) {
        y = MatMul(x, w)
        k = ArgMax <axis: int = 1> (y)
    }
    """
    p = tmp_path / "m.onnx"
    p.write_bytes(to_bytes(model_from_text(text, {"w": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)})))
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32)} for i in range(3)]
    got = agreement_with_float(p, p, feeds)
    assert [o.name for o in got.outputs] == ["y"]


def test_node_names_with_rich_markup_are_printed_as_they_are(tmp_path):
    """'[/x]' in a node name is a name, not console markup: summary, notes, compare and
    verify print it (rich raised MarkupError after the output was written)."""
    from onnx import helper

    w = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="[/x] mm [bold]")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 32])],
                              [onnx.numpy_helper.from_array(w, "w")])
    src, out = tmp_path / "[m].onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32))
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", "int8-static",
                                  "--calib-data", str(tmp_path / "c.npz"), "--exclude", "[/x] mm [bold]"])
    assert r.exit_code != 0 and "nothing to quantize" in r.output  # the excluded name, printed as given
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", "int8-static",
                                  "--calib-data", str(tmp_path / "c.npz")])
    assert r.exit_code == 0, r.output
    for args in (["compare", str(src), str(out), "--data", str(tmp_path / "c.npz")], ["inspect", str(src)],
                 ["verify", str(out)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, (args, r.output)
    assert "[m].onnx" in CliRunner().invoke(main, ["inspect", str(src)]).output


def _float16_conv_model():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float16[N, 64, 4, 4] x) => (float16[N, 64] y) {
            c = Conv <pads: ints = [1, 1, 1, 1]> (x, w)
            f = Flatten(c)
            y = MatMul(f, wm)
        }
        """,
        {"w": np.random.default_rng(0).standard_normal((64, 64, 3, 3)).astype(np.float16),
         "wm": np.random.default_rng(1).standard_normal((1024, 64)).astype(np.float16)},
    )
    return model


def test_float16_weights_left_float_keep_their_size(tmp_path):
    """int8-dynamic leaves Conv float; in a float16 model that weight is computed with in
    float32 but stored float16 again, so the output does not outgrow the input."""
    src = tmp_path / "fp16.onnx"
    src.write_bytes(to_bytes(_float16_conv_model()))
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", "int8-dynamic"])
    assert r.exit_code == 0, r.output
    assert "as float16 again" in " ".join(r.output.split()) and "warning: the output is" not in r.output
    assert out.stat().st_size < src.stat().st_size


def test_an_output_larger_than_its_input_gets_a_warning(tmp_path, monkeypatch):
    """An output that outgrows its input (here: the float16 Conv weight left float32, as
    before the weights were narrowed again) is said, not written quietly."""
    import onnxq.api

    monkeypatch.setattr(onnxq.api, "_narrow_float_weights", lambda model, dtype: [])
    src = tmp_path / "fp16.onnx"
    src.write_bytes(to_bytes(_float16_conv_model()))
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--recipe", "int8-dynamic"])
    assert r.exit_code == 0, r.output
    assert "warning: the output is" in r.output and "of the input's size" in r.output


def test_one_outsized_calibration_sample_is_named_by_the_check(tmp_path):
    """One calibration sample 10^4 times larger than the others sets every range; the pooled
    SQNR is that sample's alone (a PyPI attention head: 47 dB pooled at 5 % top-1
    agreement). The check names the sample, gives the median sample's SQNR and warns."""
    rng = np.random.default_rng(3)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[N, 32] x) => (float[N, 16] y) {
            h = MatMul(x, w1)
            r = Relu(h)
            y = MatMul(r, w2)
        }
        """,
        {"w1": rng.standard_normal((32, 64)).astype(np.float32), "w2": rng.standard_normal((64, 16)).astype(np.float32)},
    )
    src = tmp_path / "m.onnx"
    src.write_bytes(to_bytes(model))
    x = rng.standard_normal((16, 4, 32)).astype(np.float32)
    x[5] *= 1e4
    np.savez(tmp_path / "cal.npz", x=x)
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--recipe", "int8-static",
                                  "--calib-data", str(tmp_path / "cal.npz"), "--calibration", "minmax"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "per-sample median SQNR" in text
    assert "calibration sample 5 holds" in text and "leave it out of the calibration data" in text
    assert "is far from the float model" in text
    r = CliRunner().invoke(main, ["compare", str(src), str(tmp_path / "q.onnx"), "--data", str(tmp_path / "cal.npz"),
                                  "--no-layers"])
    assert r.exit_code == 0 and "sample 5 holds" in " ".join(r.output.split()), r.output


def test_a_float_op_in_the_worst_layers_names_the_node_to_exclude(tmp_path):
    """A HardSwish/Softmax cannot be --excluded (it is float); its result loses accuracy where
    it is quantized for the next conv/MatMul, which compare names instead."""
    from onnxq.cli import _weighted_readers

    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
            c = Conv <pads: ints = [1, 1, 1, 1]> (x, w0)
            h = HardSwish(c)
            r = Relu(h)
            y = Conv <pads: ints = [1, 1, 1, 1]> (r, w1)
        }
        """,
        {"w0": np.zeros((4, 3, 3, 3), np.float32), "w1": np.zeros((4, 4, 3, 3), np.float32)},
    )
    proto = onnx.load_from_string(to_bytes(model))
    for node, name in zip(proto.graph.node, ["stem", "hs", "act", "conv1"]):
        node.name = name
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    assert _weighted_readers(str(path), {"h", "c"}) == {"h": ["conv1"], "c": []}


def test_shape_arithmetic_is_not_listed_as_skipped_nodes(tmp_path):
    """An exporter's int64 shape math (Shape -> Gather -> Concat -> Reshape) is not a
    quantization candidate worth a row: it is counted in one line instead."""
    rng = np.random.default_rng(8)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[N, 64] x) => (float[N, 32] y) {
            s = Shape(x)
            n = Gather <axis: int = 0> (s, zero)
            shape = Concat <axis: int = 0> (n, thirtytwo)
            h = MatMul(x, w)
            y = Reshape(h, shape)
        }
        """,
        {"w": rng.standard_normal((64, 32)).astype(np.float32), "zero": np.array([0], np.int64),
         "thirtytwo": np.array([32], np.int64)},
    )
    src = tmp_path / "m.onnx"
    src.write_bytes(to_bytes(model))
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 2, 64)).astype(np.float32))
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--recipe", "int8-static",
                                  "--calib-data", str(tmp_path / "c.npz")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "on integer tensors, shape arithmetic, not listed" in text and "INT64" not in text, r.output
