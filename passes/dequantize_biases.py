"""DequantizeBiasesPass: store Conv/ConvTranspose/Gemm biases in float again.

For runtimes that take the bias of a quantized layer in float and have no int32
DequantizeLinear (TensorRT: Q/DQ are INT8 only), a bias written as
``DequantizeLinear(int32 constant, scale, zero point)`` is replaced by the float32
constant it denotes, ``(q - zero_point) * scale``. The values are exactly what the QDQ
graph computed before; nothing else changes. A second run finds nothing to do.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["DequantizeBiasesPass"]

logger = logging.getLogger(__name__)

_BIASED = ("Conv", "ConvTranspose", "Gemm")


class DequantizeBiasesPass(ir.passes.InPlacePass):
    """Replace int32 bias DequantizeLinear nodes by float32 initializers."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        names = irutil.FreshNames(model.graph)
        for node in list(irutil.iter_nodes(model.graph)):
            if node.op_type not in _BIASED or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3:
                continue
            b = node.inputs[2]
            dq = b.producer() if b is not None else None
            if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
                continue
            q, scale = irutil.const_array(dq.inputs[0]), irutil.const_array(dq.inputs[1])
            zp = irutil.const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
            if q is None or scale is None or q.dtype != np.int32 or q.ndim != 1:
                continue
            if len(dq.inputs) > 2 and dq.inputs[2] is not None and zp is None:
                continue
            zp = np.zeros((), np.int64) if zp is None else zp.astype(np.int64)
            value = ((q.astype(np.int64) - zp).astype(np.float32) * scale.astype(np.float32)).astype(np.float32)
            graph = node.graph
            fb = irutil.add_initializer(graph, names(f"{b.name or 'bias'}_float"), value.reshape(q.shape))
            inputs_of_dq = [v for v in dq.inputs if v is not None]
            node.replace_input_with(2, fb)
            if not b.uses() and not b.is_graph_output():
                graph.remove(dq, safe=True)
                for v in inputs_of_dq:
                    irutil.remove_if_unused(graph, v)
            modified = True
        if modified:
            logger.debug("biases stored in float again")
        return ir.passes.PassResult(model, modified=modified)
