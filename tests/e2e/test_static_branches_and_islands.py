"""int8-static on graphs found in exported speech models (silero-vad style):

- an ``If`` whose other branch the calibration data never takes: its nodes stay float
  (decision reason says why) instead of the whole run failing;
- an unused initializer in the root graph (ORT drops it before calibration);
- an STFT magnitude (|re|^2 + |im|^2 -> Sqrt) and unrolled LSTM-cell gates
  (Sigmoid/Tanh -> Mul -> Add): Add/Mul nodes with no quantized Conv/MatMul/Gemm next
  to them stay float by default (alone they run no faster in int8 and only add error);
  ``quantize_islands=True`` and the qnn target (quantized graphs only) quantize them.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxq
from onnxq.errors import OnnxqError
from onnxq.passes.insert_qdq import ISLAND, NEVER_RAN, plan_static
from onnxq.targets import apply_target

RNG = np.random.default_rng(11)
C, L, HID = 8, 64, 16


def _w(name, shape, scale=0.3):
    return nh.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _speech_branch(tag: str) -> onnx.GraphProto:
    """x [1, 1, L] -> conv 'STFT' (2C channels) -> re^2 + im^2 -> Sqrt -> Conv -> Relu ->
    GlobalAveragePool -> gates of one LSTM cell (Gemm, Sigmoid/Tanh, Mul, Add) -> Gemm."""
    nodes = [
        h.make_node("Conv", ["x", f"{tag}_basis"], [f"{tag}_spec"], kernel_shape=[8], strides=[4], name=f"{tag}_stft"),
        h.make_node("Split", [f"{tag}_spec"], [f"{tag}_re", f"{tag}_im"], axis=1, num_outputs=2, name=f"{tag}_split"),
        h.make_node("Mul", [f"{tag}_re", f"{tag}_re"], [f"{tag}_re2"], name=f"{tag}_re2"),
        h.make_node("Mul", [f"{tag}_im", f"{tag}_im"], [f"{tag}_im2"], name=f"{tag}_im2"),
        h.make_node("Add", [f"{tag}_re2", f"{tag}_im2"], [f"{tag}_pow"], name=f"{tag}_power"),
        h.make_node("Sqrt", [f"{tag}_pow"], [f"{tag}_mag"], name=f"{tag}_sqrt"),
        h.make_node("Conv", [f"{tag}_mag", f"{tag}_w_enc", f"{tag}_b_enc"], [f"{tag}_enc"], kernel_shape=[3], pads=[1, 1], name=f"{tag}_enc"),
        h.make_node("Relu", [f"{tag}_enc"], [f"{tag}_act"], name=f"{tag}_relu"),
        h.make_node("GlobalAveragePool", [f"{tag}_act"], [f"{tag}_gap"], name=f"{tag}_gap"),
        h.make_node("Flatten", [f"{tag}_gap"], [f"{tag}_feat"], name=f"{tag}_flat"),
        h.make_node("Gemm", [f"{tag}_feat", f"{tag}_w_gates"], [f"{tag}_gates"], transB=1, name=f"{tag}_gates"),
        h.make_node("Split", [f"{tag}_gates"], [f"{tag}_gi", f"{tag}_gf", f"{tag}_gg"], axis=1, num_outputs=3, name=f"{tag}_gsplit"),
        h.make_node("Sigmoid", [f"{tag}_gi"], [f"{tag}_i"], name=f"{tag}_sig_i"),
        h.make_node("Sigmoid", [f"{tag}_gf"], [f"{tag}_f"], name=f"{tag}_sig_f"),
        h.make_node("Tanh", [f"{tag}_gg"], [f"{tag}_g"], name=f"{tag}_tanh_g"),
        h.make_node("Mul", [f"{tag}_f", "state"], [f"{tag}_fc"], name=f"{tag}_forget"),
        h.make_node("Mul", [f"{tag}_i", f"{tag}_g"], [f"{tag}_ig"], name=f"{tag}_input_gate"),
        h.make_node("Add", [f"{tag}_fc", f"{tag}_ig"], [f"{tag}_c"], name=f"{tag}_cell"),
        h.make_node("Tanh", [f"{tag}_c"], [f"{tag}_tc"], name=f"{tag}_tanh_c"),
        h.make_node("Gemm", [f"{tag}_tc", f"{tag}_w_out"], [f"{tag}_y"], transB=1, name=f"{tag}_head"),
    ]
    inits = [
        _w(f"{tag}_basis", (2 * C, 1, 8)), _w(f"{tag}_w_enc", (C, C, 3)), _w(f"{tag}_b_enc", (C,), 0.1),
        _w(f"{tag}_w_gates", (3 * HID, C)), _w(f"{tag}_w_out", (4, HID)),
    ]
    return h.make_graph(nodes, f"{tag}_branch", [], [h.make_tensor_value_info(f"{tag}_y", T.FLOAT, [1, 4])], inits)


def _model(unused_initializer: bool = True) -> onnx.ModelProto:
    inits = [nh.from_array(np.array(8000, np.int64), "threshold")]
    if unused_initializer:  # large enough to be handed to ORT as an external initializer
        inits.append(_w("unused_table", (512, 64)))
    graph = h.make_graph(
        [
            h.make_node("Greater", ["sr", "threshold"], ["wide"], name="is_16k"),
            h.make_node("If", ["wide"], ["y"], then_branch=_speech_branch("k16"), else_branch=_speech_branch("k8"),
                        name="by_rate"),
        ],
        "speech_like",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 1, L]), h.make_tensor_value_info("sr", T.INT64, []),
         h.make_tensor_value_info("state", T.FLOAT, [1, HID])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 4])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(n: int, sr: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng([seed, sr])
    return [{
        # loud and quiet frames (speech spans decades of energy)
        "x": (rng.standard_normal((1, 1, L)) * 10 ** rng.uniform(-2, 0)).astype(np.float32),
        "sr": np.array(sr, np.int64),
        "state": np.tanh(rng.standard_normal((1, HID))).astype(np.float32),
    } for _ in range(n)]


def _sqnr(src, quantized, feeds) -> float:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(onnxq.api.ir.serde.serialize_model(quantized).SerializeToString(), so,
                             providers=["CPUExecutionProvider"])
    ref = np.concatenate([a.run(None, f)[0].ravel() for f in feeds])
    out = np.concatenate([b.run(None, f)[0].ravel() for f in feeds])
    return float(10 * np.log10((ref ** 2).sum() / max(((out - ref) ** 2).sum(), 1e-30)))


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "speech.onnx"
    onnx.save(_model(), str(path))
    return path


def test_branch_never_taken_stays_float(model_path):
    before = model_path.read_bytes()
    calib = _feeds(16, 16000)  # never reaches the 8 kHz branch
    model, report = onnxq.quantize_with_report(model_path, onnxq.StaticInt8(), data=calib)
    assert model_path.read_bytes() == before
    reasons = {d.name: d.reason for d in report.decisions}
    assert reasons["k8_stft"] == NEVER_RAN and reasons["k8_head"] == NEVER_RAN
    assert {d.name for d in report.decisions if d.selected} >= {"k16_stft", "k16_enc", "k16_gates", "k16_head"}
    assert any("never ran on the calibration data" in n for n in report.notes)
    onnx.checker.check_model(onnxq.api.ir.serde.serialize_model(model), full_check=True)
    # both rates run; the quantized 16 kHz branch stays close, the float 8 kHz one is exact
    assert _sqnr(model_path, model, _feeds(16, 16000, seed=1)) > 12
    assert _sqnr(model_path, model, _feeds(8, 8000, seed=1)) > 100


def test_branch_never_taken_with_one_pass_data_is_a_clear_error(model_path):
    calib = iter(_feeds(8, 16000))  # a generator cannot be read a second time
    with pytest.raises(OnnxqError, match="saw no finite values for tensor .* branch never taken"):
        onnxq.quantize(model_path, onnxq.StaticInt8(), data=calib)


def test_isolated_add_mul_stay_float_by_default(model_path):
    model = onnxq.api.ir.load(str(model_path))
    plan = plan_static(model, onnxq.StaticInt8())
    reason = {d.name: d.reason for d in plan.decisions}
    for name in ("k16_re2", "k16_im2", "k16_power", "k16_forget", "k16_input_gate", "k16_cell"):
        assert reason[name] == ISLAND, name
    assert reason["k16_gap"] == ""  # GlobalAveragePool after the quantized Conv stays int8
    islands = plan_static(model, onnxq.StaticInt8(quantize_islands=True))
    assert all(d.selected for d in islands.decisions if d.name in ("k16_power", "k16_cell"))
    qnn, _ = apply_target(onnxq.StaticInt8(), "qnn")
    assert qnn.quantize_islands


def test_islands_in_int8_cost_accuracy(model_path):
    """What keeping them float buys, measured: the same data, both settings, three draws
    of calibration and held-out data (the gain varies with the draw: +0.7 to +13.7 dB)."""
    gains = []
    for seed in range(3):
        calib = _feeds(24, 16000, seed) + _feeds(24, 8000, seed)
        held_out = _feeds(16, 16000, seed + 100)
        default = onnxq.quantize(model_path, onnxq.StaticInt8(), data=calib)
        everything = onnxq.quantize(model_path, onnxq.StaticInt8(quantize_islands=True), data=calib)
        gains.append(_sqnr(model_path, default, held_out) - _sqnr(model_path, everything, held_out))
    assert np.mean(gains) > 1, gains


def test_unused_initializer_does_not_break_calibration(tmp_path):
    path = tmp_path / "unused.onnx"
    onnx.save(_model(unused_initializer=True), str(path))
    model = onnxq.quantize(path, onnxq.StaticInt8(), data=_feeds(8, 16000) + _feeds(8, 8000))
    assert any(n.op_type == "If" for n in model.graph)


def test_concat_of_very_different_ranges_stays_float(tmp_path):
    """A detector head's Concat of box regressions (large) and class logits (small) into
    one tensor that float ops read: one shared int8 scale would erase the small part."""
    from onnxq.calib.static import CONCAT_RANGE_RATIO

    graph = h.make_graph(
        [
            h.make_node("Conv", ["x", "wa", "ba"], ["a"], kernel_shape=[1, 1], name="box"),
            h.make_node("Conv", ["x", "wb", "bb"], ["b"], kernel_shape=[1, 1], name="cls"),
            h.make_node("Concat", ["a", "b"], ["ab"], axis=1, name="head"),
            h.make_node("Sigmoid", ["ab"], ["y"], name="sigmoid"),
            # an int8 consumer of the Concat too (one that only float ops read stays float anyway)
            h.make_node("Conv", ["ab", "wp", "bp"], ["z"], kernel_shape=[1, 1], name="post"),
        ],
        "head",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 6, 6])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 6, 6, 6]), h.make_tensor_value_info("z", T.FLOAT, [1, 2, 6, 6])],
        [nh.from_array((wr.standard_normal(shape) * k).astype(np.float32), name) for wr in [np.random.default_rng(8)]
         for name, shape, k in (("wa", (3, 4, 1, 1), 30.0), ("ba", (3,), 10.0), ("wb", (3, 4, 1, 1), 0.2),
                                ("bb", (3,), 0.1), ("wp", (2, 6, 1, 1), 0.5), ("bp", (2,), 0.1))],
    )
    path = tmp_path / "head.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)} for _ in range(8)]
    held = [{"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)} for _ in range(8)]
    model, report = onnxq.quantize_with_report(path, onnxq.StaticInt8(), data=calib)
    reason = {d.name: d.reason for d in report.decisions}
    assert "ranges differ" in reason["head"] and reason["box"] == reason["cls"] == ""
    assert any(f"more than {CONCAT_RANGE_RATIO:.0f}x" in n for n in report.notes)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(onnxq.api.ir.serde.serialize_model(model).SerializeToString(), so,
                             providers=["CPUExecutionProvider"])
    small_ref = np.concatenate([ref.run(None, f)[0][:, 3:] for f in held])
    small_q = np.concatenate([q.run(None, f)[0][:, 3:] for f in held])
    # the class half keeps its own scale: close to float (a shared one: steps of ~0.5 in its logits)
    assert np.abs(small_q - small_ref).max() < 0.02
    # one-pass data cannot be calibrated twice: the Concat keeps the shared scale
    shared = onnxq.quantize(path, onnxq.StaticInt8(), data=iter(calib))
    assert any(n.op_type == "Concat" and n.inputs[0].producer().op_type == "DequantizeLinear" for n in shared.graph)
    s = ort.InferenceSession(onnxq.api.ir.serde.serialize_model(shared).SerializeToString(), so,
                             providers=["CPUExecutionProvider"])
    small_shared = np.concatenate([s.run(None, f)[0][:, 3:] for f in held])
    assert np.abs(small_shared - small_ref).max() > 5 * np.abs(small_q - small_ref).max()


def test_gptq_rounding_with_layers_inside_if_branches(model_path):
    """GPTQ gathers layer-input Hessians in the root graph only: layers inside the If
    branches round to nearest instead of failing the run."""
    calib = _feeds(12, 16000) + _feeds(12, 8000)
    model = onnxq.quantize(model_path, onnxq.StaticInt8(weight_rounding="gptq"), data=calib)
    assert _sqnr(model_path, model, _feeds(8, 16000, seed=3)) > 10


def test_sensitivity_search_says_when_the_layers_sit_inside_if_bodies(model_path):
    from onnxq.sensitivity import AccuracyTarget, quantize_static_to_target

    calib = _feeds(8, 16000) + _feeds(8, 8000)
    _, report, result = quantize_static_to_target(
        model_path, onnxq.StaticInt8(), calib, AccuracyTarget(min_sqnr_db=200), max_rounds=1
    )
    assert not result.target_met
    assert any("inside If/Loop bodies" in n and "--exclude" in n for n in report.notes)


def test_sensitivity_note_on_a_model_without_bodies_does_not_mention_them(tmp_path):
    from onnxq.sensitivity import AccuracyTarget, quantize_static_to_target

    graph = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="c1"),
         h.make_node("Relu", ["c"], ["r"], name="relu"),
         h.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1], name="c2")],
        "plain", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8])],
        [nh.from_array(np.random.default_rng(1).standard_normal(s).astype(np.float32), n)
         for n, s in (("w", (4, 4, 3, 3)), ("w2", (4, 4, 1, 1)))],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 4, 8, 8)).astype(np.float32)} for i in range(6)]
    _, report, result = quantize_static_to_target(path, onnxq.StaticInt8(), calib, AccuracyTarget(min_sqnr_db=200),
                                                  max_rounds=1)
    assert not result.target_met
    assert not any("If/Loop" in n for n in report.notes)
