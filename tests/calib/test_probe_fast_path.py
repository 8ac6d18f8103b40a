"""The calibration probe's fast path (NCHWc-friendly reductions, packed outputs, strided
Conv replicas) against numpy on the tensors themselves."""

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.calib import calibrate
from onnxq.calib.observers import ChannelMaxObserver, ChannelMeanObserver, MinMaxObserver, PercentileObserver
from onnxq.calib.probe import build_probe_model
from onnxq.calib.static import _infer_shapes
from onnxq.calib.stream import _session
from tests.helpers import model_from_text

RNG = np.random.default_rng(5)

# c: Conv output read by an Add (two-sided), r: Relu output (non-negative), a: the Add
TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[N, 8, S, S] x) => (float[N, 8, S, S] y) {
    c = Conv <pads: ints = [1, 1, 1, 1]> (x, w, b)
    h = Conv (x, w0)
    r = Relu(h)
    a = Add(c, r)
    y = Relu(a)
}
"""


def _model(side: int) -> ir.Model:
    text = TEXT.replace("S, S", f"{side}, {side}")
    w = RNG.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3
    b = RNG.standard_normal(8).astype(np.float32)
    w0 = RNG.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3
    model = model_from_text(text, {"w": w, "b": b, "w0": w0})
    _infer_shapes(model)  # as calibrate_plan does: the fast path needs the channel count
    return model


def _reference(model: ir.Model, feeds, names):
    proto = ir.serde.serialize_model(model)
    for n in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [sess.run(names, f) for f in feeds]
    return {n: np.stack([o[i] for o in outs]) for i, n in enumerate(names)}


def test_exact_extremes_and_channel_statistics_match_numpy():
    model = _model(10)
    feeds = [{"x": RNG.standard_normal((2, 8, 10, 10)).astype(np.float32)} for _ in range(3)]
    obs = {t: MinMaxObserver() for t in ("c", "r", "a")}
    mean, mx = ChannelMeanObserver(1, 4, 8), ChannelMaxObserver(1, 4, 8)
    stats = calibrate(model, obs, feeds, batch_size=2, channel_stats={"r": [mean, mx]}, nonnegative=frozenset({"r"}))
    assert stats.rows == 6
    ref = _reference(model, feeds, ["c", "r", "a"])
    for t in ("c", "a"):
        assert (obs[t].min, obs[t].max) == pytest.approx((ref[t].min(), ref[t].max()), rel=1e-6)
    assert obs["r"].min == 0.0 and obs["r"].max == pytest.approx(ref["r"].max(), rel=1e-6)
    np.testing.assert_allclose(mean.mean, ref["r"].mean(axis=(0, 1, 3, 4)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mx.max, ref["r"].max(axis=(0, 1, 3, 4)), rtol=1e-6)


def test_large_conv_into_add_is_observed_through_a_strided_copy_that_keeps_ort_fusing():
    model = _model(32)
    probe, probes, _, packed = build_probe_model(model, {"c": False, "y": False}, nonnegative=frozenset({"y"}))
    convs = [n for n in probe.graph if n.op_type == "Conv"]
    # the model's two Convs, the stride-4 copy of c's, and a negating 1x1 depthwise (c is two-sided)
    assert len(convs) == 4 and sum(n.attributes.get_int("group", 1) == 8 for n in convs) == 1
    copy = next(n for n in convs if list(n.attributes.get_ints("strides", [1, 1])) == [4, 4])
    assert copy.inputs[1].name == "w" and copy.inputs[0].name == "x"
    assert probes["c"].packed and ("c", "negmin") in packed.segments
    # ORT fuses as much as in the model itself: observing c directly would add an Add
    assert _optimized_ops(model)["Add"] == 0  # Conv + Add + Relu fused
    assert _optimized_ops(probe)["Add"] == 0
    direct, *_ = build_probe_model(_model(16), {"c": False, "y": False}, nonnegative=frozenset({"y"}))
    assert _optimized_ops(direct)["Add"] == 1  # (a small map is observed directly: fusion lost)
    # and the extremes it reports are those of every 16th position (a subset: within range)
    feeds = [{"x": RNG.standard_normal((1, 8, 32, 32)).astype(np.float32)} for _ in range(2)]
    obs = {"c": MinMaxObserver()}
    calibrate(model, obs, feeds)
    ref = _reference(model, feeds, ["c"])["c"]
    sub = ref[..., ::4, ::4]
    assert (obs["c"].min, obs["c"].max) == pytest.approx((sub.min(), sub.max()), rel=1e-5)


def test_histogram_observer_gets_a_subsample_and_its_extremes():
    model = _model(64)  # 8 x 64 x 64 = 32768 values per sample: thinned to ~4096
    feeds = [{"x": RNG.standard_normal((1, 8, 64, 64)).astype(np.float32)} for _ in range(2)]
    obs = {"a": PercentileObserver(100.0), "r": PercentileObserver(99.0)}
    calibrate(model, obs, feeds)
    ref = _reference(model, feeds, ["a", "r"])
    assert obs["r"].exact_extremes is False and obs["a"].exact_extremes is True
    assert (obs["a"].min, obs["a"].max) == pytest.approx((ref["a"].min(), ref["a"].max()), rel=1e-6)
    n = obs["r"].hist.sum()
    assert 2 * 2048 <= n <= 2 * 8192  # about sample_size values per run
    sub = ref["r"][..., 1::3, 1::3]  # ceil(sqrt(32768 / 4096)) = 3, the grid starting at 3 // 2
    assert obs["r"].max == pytest.approx(sub.max(), rel=1e-6) and obs["r"].max <= ref["r"].max()


def test_probe_session_shares_weights_instead_of_serializing_them():
    model = _model(10)
    probe, *_ = build_probe_model(model, {"a": False})
    sess = _session(probe, 1)
    assert "w" in sess._onnxq_arrays  # handed to ORT as an OrtValue
    # the model itself is left untouched
    assert model.graph.initializers["w"].const_value.nbytes == 8 * 8 * 9 * 4


def test_centered_subsample_is_exact_and_starts_inside_the_map():
    from onnxq import irutil
    from onnxq.calib.probe import _Builder

    m = model_from_text(
        """<ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 16, 37, 30] x) => (float[1, 16, 37, 30] y) { y = Relu(x) }"""
    )
    _infer_shapes(m)
    b = _Builder(irutil.FreshNames(m.graph), 4096)
    steps = (2, 3, 5, 6)
    for step in steps:
        m.graph.outputs.append(b.centered_subsample(m.graph, m.graph.inputs[0], step))
    sess = ort.InferenceSession(ir.serde.serialize_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((1, 16, 37, 30)).astype(np.float32)
    for step, got in zip(steps, sess.run(None, {"x": x})[1:]):
        np.testing.assert_array_equal(got, x[:, :, step // 2 :: step, step // 2 :: step])


def _optimized_ops(m: ir.Model) -> collections.Counter:
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(ir.serde.serialize_model(m).SerializeToString(), so, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def test_block_aligned_maps_are_packed_apart_with_one_layout_reorder_per_output():
    # x has 3 channels (not a multiple of ORT's NCHWc block): packed apart from the 16-channel
    # maps, whose per-channel results ORT concatenates in its blocked layout
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1, 3, 12, 12] x) => (float[1, 16, 12, 12] y) {
        h = Conv <pads: ints = [1, 1, 1, 1]> (x, w0, b0)
        r = Relu(h)
        c = Conv (r, w1, b1)
        a = Add(c, r)
        y = Relu(a)
    }
    """
    w0 = RNG.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3
    w1 = RNG.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.3
    b0, b1 = RNG.standard_normal(16).astype(np.float32), RNG.standard_normal(16).astype(np.float32)
    model = model_from_text(text, {"w0": w0, "b0": b0, "w1": w1, "b1": b1})
    _infer_shapes(model)
    watched = ("x", "r", "c", "y")
    probe, probes, _, packed = build_probe_model(
        model, {t: False for t in watched}, nonnegative=frozenset({"r", "y"}),
        channel_stats={("r", "mean"): (1, 4, 16), ("x", "mean"): (1, 4, 3)},
    )
    outputs = {packed.segments[(t, "max")][0] for t in watched}
    assert len(outputs) == 2 and packed.segments[("x", "max")][0] != packed.segments[("c", "max")][0]
    # five 16-channel reductions (maxima of r, c, y, c's negated minima, r's means) reach the
    # outputs through one reorder per packed output (extremes, means), not one each
    extra = _optimized_ops(probe)["ReorderOutput"] - _optimized_ops(model)["ReorderOutput"]
    assert extra <= 2
    feeds = [{"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(2)]
    obs = {t: MinMaxObserver() for t in watched}
    means = {t: ChannelMeanObserver(1, 4, ch) for t, ch in (("r", 16), ("x", 3))}
    calibrate(model, obs, feeds, channel_stats=means, nonnegative=frozenset({"r", "y"}))
    ref = _reference(model, feeds, list(watched))
    for t in ("x", "c"):
        assert (obs[t].min, obs[t].max) == pytest.approx((ref[t].min(), ref[t].max()), rel=1e-6)
    for t in ("r", "y"):
        assert obs[t].min == 0.0 and obs[t].max == pytest.approx(ref[t].max(), rel=1e-6)
    for t, obs_mean in means.items():
        np.testing.assert_allclose(obs_mean.mean, ref[t].mean(axis=(0, 1, 3, 4)), rtol=1e-4, atol=1e-6)
