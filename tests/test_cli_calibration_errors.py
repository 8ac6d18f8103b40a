"""Bad calibration data through the CLI: one-line error, exit != 0, input untouched, no output."""

import hashlib

import numpy as np
import pytest
from click.testing import CliRunner

from onnxq.cli import main
from tests.helpers import model_from_text, to_bytes

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 16] x) => (float[N, 8] y) {
    h = MatMul(x, w)
    y = Relu(h)
}
"""


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.full((4, 16), np.nan, np.float32)}, "NaN or Inf"),
        ({"x": np.full((4, 16), np.inf, np.float32)}, "NaN or Inf"),
        ({"x": np.ones((4, 16), np.int32)}, "is int32 but the model expects float32"),
        ({"x": np.ones((4, 2, 2, 16), np.float32)}, "rank"),
        ({"input": np.ones((4, 16), np.float32)}, "unknown input name"),
        ({"x": np.ones((4, 15), np.float32)}, "16"),
    ],
)
def test_bad_calibration_data(tmp_path, arrays, message):
    src = tmp_path / "m.onnx"
    src.write_bytes(to_bytes(model_from_text(TEXT, {"w": np.ones((16, 8), np.float32)})))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    data = tmp_path / "calib.npz"
    np.savez(data, **arrays)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--recipe", "int8-static", "--calib-data", str(data)])
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert not out.exists()


def test_image_size_mismatch_says_what_the_preprocessing_makes(tmp_path):
    from PIL import Image

    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[N, 3, 32, 32] x) => (float[N, 4, 32, 32] y) {
            y = Conv <pads: ints = [1, 1, 1, 1]> (x, w)
        }
        """,
        {"w": np.ones((4, 3, 3, 3), np.float32)},
    )
    src = tmp_path / "m.onnx"
    src.write_bytes(to_bytes(model))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(imgs / "a.png")
    for pp, expected in (("resize=10x10 crop=0", "makes them 10x10; set resize=32x32 crop=0, or crop=32"),
                         ("resize=40 crop=24", "makes them 24x24; set crop=32")):
        r = CliRunner().invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib-images", str(imgs),
                                      "--preprocess", pp])
        assert r.exit_code != 0 and expected in " ".join(r.output.split()), r.output
        assert len(r.output.strip().splitlines()) <= 2
