"""`onnxq quantize --target-sqnr/--max-drop`: int8-static keeps the nodes adding the most
error in float until the target holds on the calibration data, and says what it kept."""

import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxq.cli import TARGET_MISSED_EXIT, main
from onnxq.recipes import StaticInt8
from tests.helpers import model_from_text, to_bytes

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 32] x) => (float[N, 10] y) {
    a = MatMul(x, w1)
    b = Relu(a)
    c = MatMul(b, w2)
    d = Relu(c)
    y = MatMul(d, w3)
}
"""


@pytest.fixture()
def setup(tmp_path):
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((32, 32)).astype(np.float32)
    w1[:, 0] *= 200  # one huge channel: per-tensor quantization of b then hurts the next MatMul
    model = model_from_text(
        TEXT,
        {"w1": w1, "w2": rng.standard_normal((32, 32)).astype(np.float32) * 0.2,
         "w3": rng.standard_normal((32, 10)).astype(np.float32)},
    )
    proto = onnx.load_from_string(to_bytes(model))
    for i, node in enumerate(proto.graph.node):
        node.name = f"n{i}"
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.standard_normal((64, 32)).astype(np.float32))
    return path, data


def _quantize(path, data, tmp_path, *extra):
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(
        main, ["quantize", str(path), "-o", str(out), "--recipe", "int8-static", "--calib-data", str(data),
               "--calibration", "minmax", *extra],
    )
    return r, out


def test_target_sqnr_keeps_the_worst_nodes_in_float_and_reports_them(setup, tmp_path):
    path, data = setup
    plain, _ = _quantize(path, data, tmp_path, "--target-sqnr", "1")  # met at once
    assert plain.exit_code == 0, plain.output
    assert "kept 0 node(s) in float" in " ".join(plain.output.split())
    r, out = _quantize(path, data, tmp_path, "--target-sqnr", "45", "--float-budget", "100")
    text = " ".join(r.output.split())
    assert r.exit_code == (TARGET_MISSED_EXIT if "NOT met" in text else 0), r.output
    assert "sensitivity: target output SQNR >= 45 dB" in text
    assert re.search(r"kept [1-9]\d* node\(s\) in float \(\d+% of the multiply-adds, budget 100%; [\d.]+% of the weights, budget 100%\): n\d", text)
    kept = [n.name for n in onnx.load(str(out)).graph.node if n.op_type == "MatMul"]
    assert kept  # float MatMuls remain
    assert "kept in float by the --target-sqnr" in text and "excluded by name" not in text  # not the user's --exclude
    # the rounds only ever add nodes, and the last round is at least as good as the first
    rounds = text.split("sensitivity rounds")[1].split(" check: ")[0].split(" error: ")[0]
    dbs = [float(part.split(" dB")[0].split()[-1]) for part in rounds.split(";")]
    assert dbs[-1] > dbs[0]


def test_max_drop_measures_top1_agreement(setup, tmp_path):
    path, data = setup
    r, _ = _quantize(path, data, tmp_path, "--max-drop", "0")
    text = " ".join(r.output.split())
    assert r.exit_code == (TARGET_MISSED_EXIT if "NOT met" in text else 0), r.output
    assert "top-1 disagreement <= 0.0%" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "int8-dynamic", "--target-sqnr", "30"], "int8-static recipe only"),
        (["--recipe", "int8-static", "--max-drop", "150"], "percentage"),
        (["--recipe", "int8-static", "--float-budget", "10"], "applies with --target-sqnr"),
    ],
)
def test_target_flag_errors_are_one_line(setup, tmp_path, args, message):
    path, data = setup
    extra = [] if "int8-dynamic" in args else ["--calib-data", str(data)]
    r = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "o.onnx"), *args, *extra])
    assert r.exit_code != 0 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_default_static_calibration_is_the_measured_best():
    r = StaticInt8()
    assert (r.calibration, r.percentile) == ("auto", 99.999)


def test_float_budget_limits_what_is_kept_in_float(setup, tmp_path):
    path, data = setup
    r, out = _quantize(path, data, tmp_path, "--target-sqnr", "45", "--float-budget", "20")
    # the closest model is written, but the exit status says the target was missed
    assert r.exit_code == TARGET_MISSED_EXIT, r.output
    assert out.exists()
    onnx.checker.check_model(str(out), full_check=True)
    text = " ".join(r.output.split())
    assert "NOT met" in text and "kept 0 node(s) in float" in text  # each unit is > 20 % of the work
    assert "not met on the calibration data" in text and "--float-budget" in text
