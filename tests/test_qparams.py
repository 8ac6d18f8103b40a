import numpy as np
import pytest

from onnxq import qparams as qp


def test_per_tensor_roundtrip_error_bounded_by_half_step():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    p = qp.choose_qparams(x, qp.UINT8, qp.per_tensor(x.shape), symmetric=False)
    err = np.abs(qp.fake_quantize(x, p) - x)
    assert err.max() <= p.scale.max() / 2 + 1e-6
    assert p.scale.shape == (1, 1)


def test_per_channel_symmetric_int8_zero_point_zero():
    x = np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32)
    p = qp.choose_qparams(x, qp.INT8, qp.per_channel(x.shape, 1), symmetric=True)
    assert p.scale.shape == (1, 2)
    np.testing.assert_allclose(p.scale.ravel(), [1.0 / 127, 4.0 / 127], rtol=1e-6)
    assert np.all(p.zero_point == 0)
    assert p.axis_and_block() == (1, None)


def test_ragged_blocks_match_onnx_dequantize_linear():
    import onnx
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 70)).astype(np.float32)
    block = qp.per_block(x.shape, 1, 32)
    p = qp.choose_qparams(x, qp.INT8, block, symmetric=True)
    assert p.scale.shape == (5, 3)  # ceil(70 / 32)
    q = qp.quantize(x, p)
    axis, bs = p.axis_and_block()
    node = onnx.helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=axis, block_size=bs)
    graph = onnx.helper.make_graph(
        [node], "g",
        [onnx.helper.make_tensor_value_info("q", onnx.TensorProto.INT8, q.shape),
         onnx.helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, p.scale.shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, q.shape)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    (y,) = ReferenceEvaluator(model).run(None, {"q": q, "s": p.scale})
    np.testing.assert_allclose(y, qp.dequantize(q, p), rtol=0, atol=0)


def test_zero_range_gets_unit_scale():
    x = np.zeros((4, 4), dtype=np.float32)
    p = qp.choose_qparams(x, qp.UINT8, qp.per_tensor(x.shape), symmetric=False)
    assert p.scale.item() == 1.0
    np.testing.assert_array_equal(qp.fake_quantize(x, p), x)


def test_nan_range_is_refused():
    with pytest.raises(ValueError, match="NaN or Inf"):
        qp.qparams_from_range(np.array(np.nan), np.array(1.0), qp.UINT8, symmetric=False)


def test_full_range_symmetric_int4_maps_extreme_to_minus_eight():
    x = np.array([[-3.0], [1.0], [2.9]], dtype=np.float32)
    p = qp.choose_qparams(x, qp.INT4, (3, 1), symmetric=True, full_range_symmetric=True)
    q = qp.quantize(x, p)
    assert q[0, 0] == -8
    assert q.max() <= 7
    assert np.abs(qp.dequantize(q, p) - x).max() <= abs(p.scale.item())


def test_unknown_qtype_message():
    with pytest.raises(ValueError, match="choose one of"):
        qp.qtype_named("int3")
