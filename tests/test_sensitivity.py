import numpy as np

import onnxq
from onnxq.sensitivity import AccuracyTarget, auto_exclude
from tests.helpers import model_from_text, to_bytes

RNG = np.random.default_rng(11)

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 64] x) => (float[N, 16] y) {
    a = MatMul(x, w1)
    b = Relu(a)
    y = MatMul(b, w2)
}
"""


def test_worst_layer_is_kept_in_float_until_target_holds(tmp_path):
    w1 = RNG.standard_normal((64, 64)).astype(np.float32)
    w1[:, 0] *= 1000  # one huge column: per-tensor activation quantization after it hurts w2
    model = model_from_text(TEXT, {"w1": w1, "w2": RNG.standard_normal((64, 16)).astype(np.float32)})
    proto = to_bytes(model)
    import onnx

    onnx_model = onnx.load_from_string(proto)
    for i, node in enumerate(onnx_model.graph.node):
        node.name = f"n{i}"
    f = tmp_path / "f.onnx"
    f.write_bytes(onnx_model.SerializeToString())
    data = lambda: ({"x": RNG.standard_normal((8, 64)).astype(np.float32)} for _ in range(4))  # noqa: E731

    def quantize(excluded):
        return onnxq.quantize_with_report(f, onnxq.DynamicInt8(min_weight_elements=0, exclude=excluded))

    baseline = onnxq.compare.compare_models(f, _save(quantize(())[0], tmp_path / "q0.onnx"), data())
    only_n2 = onnxq.compare.compare_models(f, _save(quantize(("n2",))[0], tmp_path / "q1.onnx"), data())
    assert only_n2.outputs[0].sqnr_db > baseline.outputs[0].sqnr_db + 1
    target = AccuracyTarget(min_sqnr_db=only_n2.outputs[0].sqnr_db - 0.5)
    model, result = auto_exclude(f, quantize, data, target)
    assert result.target_met
    assert result.excluded == ("n2",)  # the MatMul fed by the wide-range activation
    assert result.comparison.outputs[0].sqnr_db >= target.min_sqnr_db


def _save(model, path):
    onnxq.save(model, path)
    return path


def test_a_search_that_nothing_fits_says_how_much_budget_would(tmp_path):
    """Three equal layers are a third of the multiply-adds each, over the default 15 %: the search
    tries nothing, and the note says so and which --float-budget lets it try (the search
    used to stop after one round with only "kept 0 node(s) in float")."""
    import onnx

    from onnxq.sensitivity import quantize_static_to_target

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N, 64] x) => (float[N, 64] y) {
        a = MatMul(x, w1)
        b = Relu(a)
        c = MatMul(b, w2)
        d = Relu(c)
        y = MatMul(d, w3)
    }
    """
    model = model_from_text(text, {f"w{i}": RNG.standard_normal((64, 64)).astype(np.float32) for i in (1, 2, 3)})
    proto = onnx.load_from_string(to_bytes(model))
    for i, node in enumerate(proto.graph.node):
        node.name = f"n{i}"
    f = tmp_path / "f.onnx"
    f.write_bytes(proto.SerializeToString())
    data = [{"x": RNG.standard_normal((8, 64)).astype(np.float32)} for _ in range(4)]
    _, report, result = quantize_static_to_target(f, onnxq.StaticInt8(calibration="minmax"), data,
                                                  AccuracyTarget(min_sqnr_db=99.0))
    assert not result.target_met and result.excluded == () and result.over_budget
    note = next(n for n in report.notes if n.startswith("sensitivity: target"))
    assert "every candidate is over the float budget" in note and "raise --float-budget to 67 or more" in note, note


def test_a_float_op_s_loss_is_charged_to_the_quantized_nodes_that_read_it():
    """The HardSwish between two int8 convs stays float; its result loses accuracy where it is
    quantized for the next conv, so that conv is the node to keep in float (PP-LCNet: the
    search tried only SE-block pools and stopped at 11.4 dB; now 17.4 dB)."""
    from onnxq.compare import Comparison, TensorError
    from onnxq.sensitivity import rank_nodes_by_lost_db

    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
            c = Conv <pads: ints = [1, 1, 1, 1]> (x, w0)
            h = HardSwish(c)
            r = Reshape(h, shape)
            y = Conv <pads: ints = [1, 1, 1, 1]> (r, w1)
        }
        """,
        {"w0": np.zeros((4, 3, 3, 3), np.float32), "w1": np.zeros((4, 4, 3, 3), np.float32),
         "shape": np.array([1, 4, 8, 8], np.int64)},
    )
    names = iter(["conv0", "hs", "reshape", "conv1"])
    for node in model.graph:
        node.name = next(names)
    layers = (TensorError("c", 47.0, 1.0, 0.0, op_type="Conv", node="conv0", added_db=13.0),
              TensorError("h", 35.8, 1.0, 0.0, op_type="HardSwish", node="hs", added_db=11.2))
    comparison = Comparison(4, (TensorError("y", 30.0, 1.0, 0.0),), layers)
    ranked = dict(rank_nodes_by_lost_db(model, comparison, {"conv0", "conv1"}))
    assert ranked["conv0"] == 13.0 and ranked["conv1"] >= 11.2
    assert "hs" not in ranked
