"""com.onnxq MatMulBlockInt4 inside an ONNX Runtime CUDA session (onnxruntime-gpu).

Skipped unless onnxruntime offers CUDAExecutionProvider and libonnxq_ops_cuda.so is found
($ONNXQ_OPS_CUDA_LIB, else onnxq.runtime.library_path("cuda")). Same tolerances as
test_cuda_int4.py; also checks agreement with com.microsoft.MatMulNBits on the same bytes and
that bad shapes come back as an ORT error, not a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("onnxruntime has no CUDAExecutionProvider", allow_module_level=True)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnxq import formats  # noqa: E402


def _lib() -> str:
    env = os.environ.get("ONNXQ_OPS_CUDA_LIB")
    if env and Path(env).exists():
        return env
    try:
        from onnxq import runtime

        return str(runtime.library_path("cuda"))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"CUDA op library not found: {e}")


def _model(op: str, p: formats.PackedBlockInt4, f16: bool, bias=None, b_shape=None) -> bytes:
    ft = TensorProto.FLOAT16 if f16 else TensorProto.FLOAT
    dt = np.float16 if f16 else np.float32
    k, n, bs = p.k, p.n, p.fmt.block_size
    packed = p.packed if b_shape is None else p.packed.reshape(b_shape)
    inits = [numpy_helper.from_array(packed, "B")]
    if op == "MatMulNBits":
        inits.append(numpy_helper.from_array(p.scales.astype(dt).reshape(-1), "S"))
        domain, attrs = "com.microsoft", dict(K=k, N=n, bits=4, block_size=bs)
    else:
        inits.append(numpy_helper.from_array(p.scales.astype(dt), "S"))
        domain, attrs = "com.onnxq", dict(K=k, N=n, bits=4, block_size=bs)
    inputs = ["A", "B", "S"]
    if p.zero_points is not None:
        inits.append(numpy_helper.from_array(p.zero_points.reshape(-1) if op == "MatMulNBits" else p.zero_points, "Z"))
        inputs.append("Z")
    elif bias is not None:
        inputs.append("")
    if bias is not None and op == "MatMulNBits":
        inputs.append("")  # MatMulNBits: input 4 is g_idx, bias is input 5
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(dt), "bias"))
        inputs.append("bias")
    node = helper.make_node(op, inputs, ["Y"], domain=domain, **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", ft, [None, k])],
                          [helper.make_tensor_value_info("Y", ft, [None, n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    m.ir_version = 9
    return m.SerializeToString()


def _session(model: bytes) -> "ort.InferenceSession":
    so = ort.SessionOptions()
    so.register_custom_ops_library(_lib())
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(model, so, providers=["CUDAExecutionProvider"])


@pytest.fixture(scope="module", autouse=True)
def _preload():
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def _ref(p, a, f16, bias):
    scales = p.scales.astype(np.float16).astype(np.float32) if f16 else p.scales
    q = formats.PackedBlockInt4(p.fmt, p.k, p.n, p.packed, scales, p.zero_points)
    y = a.astype(np.float64) @ q.dequantize().astype(np.float64)
    return y if bias is None else y + bias.astype(np.float64)


@pytest.mark.parametrize("f16", [True, False])
@pytest.mark.parametrize("m", [1, 3, 16, 129])
@pytest.mark.parametrize("k,n,bs,sym", [(4200, 333, 128, False), (1001, 257, 32, True)])
def test_ort_cuda_matches_reference(f16, m, k, n, bs, sym):
    rng = np.random.default_rng(k + m)
    p = formats.BlockInt4Format(block_size=bs, symmetric=sym).quantize(rng.standard_normal((k, n)).astype(np.float32) * 0.05)
    dt = np.float16 if f16 else np.float32
    a = rng.standard_normal((m, k)).astype(dt)
    bias = rng.standard_normal(n).astype(dt)
    y = _session(_model("MatMulBlockInt4", p, f16, bias)).run(None, {"A": a})[0]
    ref = _ref(p, a, f16, bias)
    rel = np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert rel <= (2e-3 if f16 else 1e-5), rel
    if f16:  # the same bytes through ORT's own op
        y_ms = _session(_model("MatMulNBits", p, f16, bias)).run(None, {"A": a})[0]
        rel_ms = np.linalg.norm(y.astype(np.float64) - y_ms.astype(np.float64)) / np.linalg.norm(ref)
        assert rel_ms <= 4e-3, rel_ms


def test_ort_bad_shape_is_an_error():
    rng = np.random.default_rng(0)
    p = formats.BlockInt4Format(block_size=32, symmetric=True).quantize(rng.standard_normal((256, 64)).astype(np.float32))
    model = _model("MatMulBlockInt4", p, True, b_shape=(64, 4, 32))  # wrong blocks / bytes per block
    with pytest.raises(Exception, match="MatMulBlockInt4"):
        _session(model).run(None, {"A": rng.standard_normal((2, 256)).astype(np.float16)})
