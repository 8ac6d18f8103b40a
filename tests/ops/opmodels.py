"""Tiny ONNX models with com.onnxq.MatMulBlockInt4 and the numpy references they are checked against."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxq.formats import BlockInt4Format, PackedBlockInt4


def packed_weight(k: int, n: int, block_size: int, symmetric: bool, seed: int = 0) -> PackedBlockInt4:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    return BlockInt4Format(block_size, symmetric).quantize(w)


def op_model(
    p: PackedBlockInt4,
    *,
    m_dims=("M",),
    bias: np.ndarray | None = None,
    dtype=np.float32,
    accuracy_level: int | None = None,
    op: str = "MatMulBlockInt4",
    attrs: dict | None = None,
    zero_points: np.ndarray | None | str = "auto",
    scales: np.ndarray | None = None,
    packed: np.ndarray | None = None,
    a_last_dim: int | None = None,
) -> bytes:
    """One-node model Y = op(A, B, scales, zero_points?, bias?) with the weights as initializers."""
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    inits = [
        numpy_helper.from_array(p.packed if packed is None else packed, "B"),
        numpy_helper.from_array((p.scales if scales is None else scales).astype(dtype), "S"),
    ]
    inputs = ["A", "B", "S"]
    zp = p.zero_points if isinstance(zero_points, str) else zero_points
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "Z"))
        inputs.append("Z")
    if bias is not None:
        if zp is None:
            inputs.append("")
        inits.append(numpy_helper.from_array(bias.astype(dtype), "bias"))
        inputs.append("bias")
    a = dict(K=p.k, N=p.n, bits=4, block_size=p.fmt.block_size)
    if accuracy_level is not None:
        a["accuracy_level"] = accuracy_level
    a.update(attrs or {})
    domain = "com.microsoft" if op == "MatMulNBits" else "com.onnxq"
    node = helper.make_node(op, inputs, ["Y"], domain=domain, **a)
    k_dim = p.k if a_last_dim is None else a_last_dim
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", elem, [*m_dims, k_dim])],
        [helper.make_tensor_value_info("Y", elem, None)],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(domain, 1)], ir_version=10
    )
    return model.SerializeToString()


def session(model: bytes, lib: str | None, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if lib:
        so.register_custom_ops_library(lib)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def reference(a: np.ndarray, p: PackedBlockInt4, bias: np.ndarray | None = None) -> np.ndarray:
    """A @ dequant(B) (+ bias) in float64 from the float32 dequantized weight."""
    y = a.astype(np.float64) @ p.dequantize().astype(np.float64)
    return y if bias is None else y + bias


def int8_reference(a: np.ndarray, p: PackedBlockInt4) -> np.ndarray:
    """accuracy_level 4: A quantized per block as the kernels specify (ops/src/kernel.h):
    amax = max|a|, inv = 127/amax (float32), q = rint(a * inv), scale = amax / 127."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, p.k)
    bs, k = p.fmt.block_size, p.k
    nb = p.fmt.n_blocks(k)
    codes = p.codes().astype(np.int64)  # [K, N]
    zp = p.zero_point_values().astype(np.float64)  # [N, nb]
    s = p.scales.astype(np.float64)  # [N, nb]
    y = np.zeros((a.shape[0], p.n), dtype=np.float64)
    for b in range(nb):
        blk = a[:, b * bs : min(k, (b + 1) * bs)]
        amax = np.max(np.abs(blk), axis=1).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0)).astype(np.float32)
        q = np.rint(blk * inv[:, None]).astype(np.int64)
        sa = (amax / np.float32(127.0)).astype(np.float64)
        dot = q @ codes[b * bs : min(k, (b + 1) * bs)]
        qsum = q.sum(axis=1)
        y += sa[:, None] * s[None, :, b] * (dot - zp[None, :, b] * qsum[:, None])
    return y


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))
