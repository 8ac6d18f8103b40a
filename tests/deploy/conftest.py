"""Small float models (and their QDQ versions from ORT's own quantizer) for the deploy tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _tiny_cnn() -> onnx.ModelProto:
    """x[N,3,16,16] → Conv(8) → Relu → Conv(8, depthwise-ish groups=1) → Add(residual) →
    GlobalAveragePool → Flatten → Gemm(10)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b2"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "wf"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _samples(n: int = 8) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 1, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="session")
def deploy_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="session")
def tiny_float(deploy_dir) -> Path:
    p = deploy_dir / "tiny_cnn.onnx"
    onnx.save(_tiny_cnn(), p)
    return p


@pytest.fixture(scope="session")
def tiny_data(deploy_dir) -> Path:
    """Stacked .npz: one sample per index (rank + 1)."""
    p = deploy_dir / "tiny_data.npz"
    np.savez(p, x=_samples())
    return p


@pytest.fixture(scope="session")
def tiny_ort_qdq(deploy_dir, tiny_float) -> Path:
    """The tiny CNN through ORT's quantize_static: uint8 activations, int8 per-channel weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({"x": s} for s in _samples())

        def get_next(self):
            return next(self.it, None)

    p = deploy_dir / "tiny_cnn.ort_qdq.onnx"
    quantize_static(str(tiny_float), str(p), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return p


@pytest.fixture(scope="session")
def tiny_matmul(deploy_dir) -> Path:
    """x[N,64] → MatMul(64x32) → Relu → MatMul(32x8): a model for int8-dynamic."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], initializer=inits)
    p = deploy_dir / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), p)
    return p
