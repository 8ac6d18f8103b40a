"""Choose ``accuracy_level`` per layer by measured parity with the reference.

Applies to ORT's ``com.microsoft.MatMulNBits`` and to onnxq's ``com.onnxq.MatMulBlockInt4``
(run through the custom-op library), which share the attribute's meaning:
``accuracy_level=4`` quantizes the activations to int8 per block (fastest on CPU);
with activation outliers that costs accuracy. For each ``MatMulNBits`` node we run the
layer alone in ORT on real activations (the rows calibration kept; random normal rows when
there was no calibration), at level 4 and at level 1 (fp32), and compare with
``X @ dequantize(weights)`` (numpy, float64, from :meth:`PackedBlockInt4.dequantize`). Level
4 is kept where its relative error is within ``tolerance``; else level 1. The choice is
logged per layer (debug) and summarised (info).
"""

from __future__ import annotations

import collections
import logging
from typing import Mapping

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq.formats import BlockInt4Format, PackedBlockInt4

__all__ = ["choose_accuracy_levels", "layer_parity"]

logger = logging.getLogger(__name__)

FAST_LEVEL = 4
EXACT_LEVEL = 1
ONNXQ_DOMAIN = "com.onnxq"
_BLOCK_INT4_OPS = {("MatMulNBits", "com.microsoft"), ("MatMulBlockInt4", ONNXQ_DOMAIN)}


def _reference_weight(node: ir.Node) -> np.ndarray:
    k = node.attributes.get_int("K")
    n = node.attributes.get_int("N")
    bs = node.attributes.get_int("block_size")
    packed = irutil.const_array(node.inputs[1])
    scales = irutil.const_array(node.inputs[2]).astype(np.float32).reshape(n, -1)
    zp = irutil.const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    fmt = BlockInt4Format(block_size=bs, symmetric=zp is None)
    if zp is not None and zp.dtype == np.uint8:
        zp = zp.reshape(n, -1)
    p = PackedBlockInt4(fmt, k, n, packed.reshape(fmt.packed_shape(k, n)), scales, zp)
    # PackedBlockInt4.dequantize() is the spec; this is the same arithmetic, vectorised over
    # the packed [N, n_blocks, bytes] layout (the unit tests check the two agree exactly)
    codes = np.stack([p.packed & 0x0F, p.packed >> 4], axis=-1).reshape(n, -1, bs).astype(np.float32)
    w = (codes - p.zero_point_values()[:, :, None]) * p.scales.astype(np.float32)[:, :, None]
    return np.ascontiguousarray(w.reshape(n, -1)[:, :k].T)


def _samples_for(x: ir.Value, stats: Mapping[str, object] | None, k: int) -> tuple[np.ndarray, bool]:
    """Activation rows feeding ``x``: calibration rows (also through an AWQ ``Mul`` by a
    constant), else deterministic random normal rows."""
    if stats:
        st = stats.get(x.name or "")
        if st is not None and getattr(st, "samples", None) is not None:
            return st.samples.astype(np.float32), True
        p = x.producer()
        if p is not None and p.op_type == "Mul" and len(p.inputs) == 2:
            for i in (0, 1):
                st = stats.get(p.inputs[i].name or "")
                c = irutil.const_array(p.inputs[1 - i])
                if st is not None and st.samples is not None and c is not None:
                    return (st.samples * c.reshape(1, -1)).astype(np.float32), True
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, k)).astype(np.float32), False


def layer_parity(node: ir.Node, x: np.ndarray, levels=(FAST_LEVEL, EXACT_LEVEL)) -> dict[int, float]:
    """Relative error ``||Y_ort - X W_ref|| / ||X W_ref||`` of one block-int4 node (MatMulNBits
    or MatMulBlockInt4) run alone in ORT at each level."""
    import onnxruntime as ort

    dtype = irutil.const_array(node.inputs[2]).dtype
    x = x.astype(dtype)
    ref = x.astype(np.float32) @ _reference_weight(node)  # float32 products: ~1e-6 relative, far below any tolerance
    ref_norm = max(float(np.sqrt(np.sum(ref * ref, dtype=np.float64))), 1e-30)
    k = node.attributes.get_int("K")
    n = node.attributes.get_int("N")
    out = {}
    for level in levels:
        graph_inputs = [ir.Value(name="A", shape=ir.Shape([x.shape[0], k]), type=ir.TensorType(ir.DataType(_onnx_type(dtype))))]
        inits = []
        node_inputs: list[ir.Value | None] = [graph_inputs[0]]
        for i, v in enumerate(node.inputs[1:], start=1):
            if v is None:
                node_inputs.append(None)
                continue
            arr = irutil.const_array(v)
            c = ir.Value(name=f"in{i}", shape=ir.Shape(arr.shape), type=ir.TensorType(ir.tensor(arr).dtype), const_value=ir.tensor(arr, name=f"in{i}"))
            inits.append(c)
            node_inputs.append(c)
        attrs = {a.name: a.value for a in node.attributes.values() if a.name != "accuracy_level"}
        attrs["accuracy_level"] = level
        y = ir.Value(name="Y")
        one = ir.node(node.op_type, node_inputs, attrs, domain=node.domain, outputs=[y])
        y.type = ir.TensorType(ir.DataType(_onnx_type(dtype)))
        y.shape = ir.Shape([x.shape[0], n])
        g = ir.Graph(graph_inputs, [y], nodes=[one], initializers=inits, opset_imports={"": 21, node.domain: 1})
        m = ir.Model(g, ir_version=10)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        if node.domain == ONNXQ_DOMAIN:
            from onnxq import runtime

            so.register_custom_ops_library(str(runtime.library_path("cpu")))
        sess = ort.InferenceSession(ir.serde.serialize_model(m).SerializeToString(), so, providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"A": x})
        d = got.astype(np.float32) - ref
        out[level] = float(np.sqrt(np.sum(d * d, dtype=np.float64))) / ref_norm
    return out


def _onnx_type(dtype) -> int:
    return 10 if np.dtype(dtype) == np.float16 else 1


def choose_accuracy_levels(
    model: ir.Model, stats: Mapping[str, object] | None, tolerance: float
) -> dict[str, int]:
    """Set ``accuracy_level`` on every MatMulNBits / MatMulBlockInt4 node by measured parity;
    return the choice."""
    chosen: dict[str, int] = {}
    counts: collections.Counter[int] = collections.Counter()
    real = 0
    for node in list(irutil.iter_nodes(model.graph)):
        if (node.op_type, node.domain) not in _BLOCK_INT4_OPS:
            continue
        k = node.attributes.get_int("K")
        x, is_real = _samples_for(node.inputs[0], stats, k)
        real += is_real
        errs = layer_parity(node, x)
        level = FAST_LEVEL if errs[FAST_LEVEL] <= tolerance else EXACT_LEVEL
        node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", level)
        chosen[node.name or ""] = level
        counts[level] += 1
        logger.debug(
            "%s: accuracy_level %d (rel. error vs reference: level 4 %.2e, level 1 %.2e)",
            node.name, level, errs[FAST_LEVEL], errs[EXACT_LEVEL],
        )
    if chosen:
        logger.info(
            "accuracy_level by measured parity (tolerance %.3g, %s activations): %s",
            tolerance,
            "calibration" if real == len(chosen) else f"calibration for {real} of {len(chosen)} layers, random for the rest",
            ", ".join(f"level {lvl} on {c} layer(s)" for lvl, c in sorted(counts.items())),
        )
    return chosen
