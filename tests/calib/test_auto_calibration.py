"""calibration="auto": mse, percentile and minmax from one pass, the best on the outputs kept."""

import re

import numpy as np
import onnx_ir as ir
from onnx import numpy_helper as nh

import onnxq
from onnxq.recipes import StaticInt8
from tests.helpers import model_from_text, run_ort, to_bytes

RNG = np.random.default_rng(21)

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 16] x) => (float[N, 8] y) {
    h = MatMul(x, w1)
    r = Relu(h)
    y = MatMul(r, w2)
}
"""


def _model():
    rng = np.random.default_rng(3)  # the same weights on every call
    w1 = np.abs(rng.standard_normal((16, 32))).astype(np.float32)
    return model_from_text(MLP, {"w1": w1, "w2": rng.standard_normal((32, 8)).astype(np.float32)})


def _range_of(model, tensor):
    # (a Dense -> ReLU -> Dense pair is equalized first: its ReLU output is renamed "<name>_equalized")
    q = next(n for n in model.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name in (tensor, f"{tensor}_equalized"))
    scale = float(nh.to_array(ir.to_proto(q.inputs[1].const_value)))
    zero = int(nh.to_array(ir.to_proto(q.inputs[2].const_value)))
    return (0 - zero) * scale, (255 - zero) * scale


def test_auto_is_the_default_and_keeps_the_method_whose_outputs_are_best():
    """Heavy-tailed inputs, so that the three methods' ranges differ: the scores auto reports
    are the output SQNRs of the models each method writes alone, and it keeps the best."""
    assert StaticInt8().calibration == "auto"
    data = [{"x": np.abs(RNG.standard_t(1.5, (64, 16))).astype(np.float32)} for _ in range(32)]
    _, report = onnxq.quantize_with_report(ir.from_proto(ir.to_proto(_model())), StaticInt8(), data)
    note = next(n for n in report.notes if n.startswith("calibration auto:"))
    scores = {m: float(db) for m, db in re.findall(r"(mse|percentile|minmax) (-?[\d.]+) dB", note)}
    assert set(scores) == {"mse", "percentile", "minmax"} and len(set(scores.values())) > 1, note
    ref = np.concatenate([run_ort(_model(), d)[0] for d in data]).astype(np.float64)
    measured = {}
    for method in scores:
        q = onnxq.quantize(ir.from_proto(ir.to_proto(_model())), StaticInt8(calibration=method), data)
        y = np.concatenate([run_ort(q, d)[0] for d in data]).astype(np.float64)
        measured[method] = 10 * np.log10((ref**2).sum() / ((y - ref) ** 2).sum())
        assert abs(measured[method] - scores[method]) < 0.06, (method, measured, note)
    assert note.split()[2] == max(measured, key=measured.get), (measured, note)


def test_auto_equals_its_choice():
    """The model auto writes is the one the chosen method alone writes (same histograms)."""
    data = [{"x": RNG.uniform(0, 1, (1, 16)).astype(np.float32)} for _ in range(16)]
    model = _model()
    a, report = onnxq.quantize_with_report(ir.from_proto(ir.to_proto(model)), StaticInt8(), data)
    chosen = next(n for n in report.notes if n.startswith("calibration auto:")).split()[2]
    b = onnxq.quantize(ir.from_proto(ir.to_proto(model)), StaticInt8(calibration=chosen), data)
    if chosen != "minmax":  # minmax alone reads exact extremes the same way: compare ranges instead
        assert to_bytes(a) == to_bytes(b)
    for t in ("x", "r"):
        np.testing.assert_allclose(_range_of(a, t), _range_of(b, t), rtol=1e-6, atol=1e-7)


def test_outputs_the_float_model_leaves_nan_are_not_scored():
    """A model that masks some outputs with NaN (a graph net's padded atoms): auto scores the
    finite positions only, instead of reporting inf dB for every method."""
    import numpy as np

    import onnxq
    from tests.helpers import model_from_text

    rng = np.random.default_rng(12)
    mask = np.ones((1, 4, 6, 6), np.float32)
    mask[0, 3] = np.nan  # one channel masked out
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] y) {
            c = Conv <pads: ints = [1, 1, 1, 1]> (x, w)
            r = Relu(c)
            d = Conv(r, w2)
            y = Mul(d, mask)
        }
        """,
        {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
         "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "mask": mask},
    )
    data = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(8)]
    _, report = onnxq.quantize_with_report(model, onnxq.StaticInt8(), data=data)
    note = next(n for n in report.notes if n.startswith("calibration auto"))
    assert "inf dB" not in note and "nan dB" not in note, note


def test_auto_scores_no_sample_past_max_samples():
    """--max-samples bounds what is read: auto scored its candidates on up to 32 samples even
    with max_samples=4 (the note then mixed calibrated and unseen samples)."""
    data = [{"x": np.abs(RNG.standard_t(1.5, (4, 16))).astype(np.float32)} for _ in range(12)]
    reads = []

    def source():
        count = 0
        for d in data:
            count += 1
            reads[-1] = count
            yield d

    def fresh():
        reads.append(0)
        return source()

    onnxq.quantize(ir.from_proto(ir.to_proto(_model())), StaticInt8(max_samples=4), fresh)
    assert reads and max(reads) <= 5, reads  # 4 samples, and one look past the limit
