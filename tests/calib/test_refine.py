"""Bias refinement of int8-static models (onnxq.calib.refine): only int32 bias codes change,
the model's output error on the calibration data never grows, and it is a no-op where
nothing can be refined."""

import logging

import numpy as np
import onnx_ir as ir

import onnxq
from onnxq import StaticInt8
from onnxq.calib.refine import refine_biases
from tests.calib.test_gptq8 import _cnn, _data
from tests.helpers import run_ort


def _arrays(model):
    return {name: v.const_value.numpy().copy() for name, v in model.graph.initializers.items() if v.const_value is not None}


def _err(model, data, float_model):
    e = s = 0.0
    for feed in data:
        ref = run_ort(float_model, feed)[0].astype(np.float64)
        got = run_ort(model, feed)[0].astype(np.float64)
        e += float(((got - ref) ** 2).sum())
        s += float((ref**2).sum())
    return e / s


def test_refine_changes_only_bias_codes_and_never_raises_the_error():
    data = _data(16)
    plain = onnxq.quantize(_cnn(), StaticInt8(), data=data)
    refined = onnxq.quantize(_cnn(), StaticInt8(refine_biases=True), data=data)
    a, b = _arrays(plain), _arrays(refined)
    assert a.keys() == b.keys()
    changed = [k for k in a if not np.array_equal(a[k], b[k])]
    assert changed
    for k in changed:  # only int32 bias codes move
        assert a[k].dtype == np.int32 and a[k].ndim == 1, k
    assert [n.op_type for n in plain.graph] == [n.op_type for n in refined.graph]
    float_model = _cnn()
    assert _err(refined, data, float_model) <= _err(plain, data, float_model) * (1 + 1e-6)


def test_refine_in_place_reports_what_it_did():
    from onnxq.calib.static import quantize_static

    data = _data(16)
    model = _cnn()
    result = quantize_static(model, StaticInt8(refine_biases=True), data)
    note = next(n for n in result.notes if n.startswith("refined "))
    assert "int32 biases" in note and "dB" in note


def test_refine_leaves_a_model_without_int32_biases_alone():
    data = _data(4)
    quantized = onnxq.quantize(_cnn(), StaticInt8(), data=data)
    for node in quantized.graph:  # strip every int32 bias: nothing left to refine
        if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2:
            node.resize_inputs(2)
    before = _arrays(quantized)
    assert refine_biases(_cnn(), quantized, data) is None
    assert all(np.array_equal(before[k], v) for k, v in _arrays(quantized).items())


def test_refine_needs_data_it_can_read_again(caplog):
    data = _data(8)
    with caplog.at_level(logging.WARNING, logger="onnxq"):
        model = onnxq.quantize(_cnn(), StaticInt8(refine_biases=True), data=iter(data))
    assert "one pass only: biases not refined" in caplog.text
    plain = onnxq.quantize(_cnn(), StaticInt8(), data=data)
    assert all(np.array_equal(x, _arrays(plain)[k]) for k, x in _arrays(model).items())


def test_refine_with_fixed_batch_inputs_runs_one_sample_at_a_time():
    """A model whose input has batch 1 fixed: samples are not stacked."""
    model = _cnn()
    model.graph.inputs[0].shape = ir.Shape([1, 3, 12, 12])
    data = _data(6)
    out = onnxq.quantize(model, StaticInt8(refine_biases=True), data=data)
    assert run_ort(out, data[0])[0].shape == (1, 10)
