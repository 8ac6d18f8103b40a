"""FoldBatchNormPass: an inference BatchNormalization right after a Conv goes into the
Conv's weights and bias.

Exporters that do not fold it themselves (Paddle2ONNX, tf2onnx, torch.onnx in training
mode) leave ``Conv -> BatchNormalization``; quantized as is, the Conv output is rounded to
one per-tensor scale and *then* every channel is multiplied by its own BN gain, so a
channel with a small range and a large gain carries its rounding error amplified. Folded,
``W' = W * g`` and ``b' = (b - mean) * g + beta`` per output channel, with
``g = gamma / sqrt(var + eps)``: the same function, one op, one quantized output.

Folded when: the BN is in inference mode with constant gamma/beta/mean/var, its input is
the only use of the output of a Conv (any group count) or a ConvTranspose with one group,
whose weight (and bias, if any) are float32 constants. New initializers are written (a
weight shared with another node is left alone). A second run finds nothing to do.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["FoldBatchNormPass"]

logger = logging.getLogger(__name__)


def _foldable(bn: ir.Node) -> tuple[ir.Node, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray] | None:
    """(conv, weight, bias or None, per-channel gain g, per-channel shift) or None."""
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.inputs) < 5:
        return None
    if bn.attributes.get_int("training_mode", 0):
        return None
    if any(v is not None and (v.uses() or v.is_graph_output()) for v in bn.outputs[1:]):
        return None
    x = bn.inputs[0]
    conv = x.producer() if x is not None else None
    if conv is None or conv.domain not in ("", "ai.onnx") or conv.op_type not in ("Conv", "ConvTranspose"):
        return None
    if len(x.uses()) != 1 or x.is_graph_output() or conv.graph is not bn.graph:
        return None
    if conv.op_type == "ConvTranspose" and conv.attributes.get_int("group", 1) != 1:
        return None
    params = [irutil.const_array(v) for v in bn.inputs[1:5]]
    w = irutil.const_array(conv.inputs[1]) if len(conv.inputs) > 1 else None
    b = None
    if len(conv.inputs) > 2 and conv.inputs[2] is not None:
        b = irutil.const_array(conv.inputs[2])
        if b is None:
            return None
    if w is None or any(p is None for p in params) or w.dtype != np.float32 or w.ndim < 3:
        return None
    if b is not None and b.dtype != np.float32:
        return None
    gamma, beta, mean, var = (p.astype(np.float64).ravel() for p in params)
    channels = w.shape[1] if conv.op_type == "ConvTranspose" else w.shape[0]
    if not all(p.size == channels for p in (gamma, beta, mean, var)):
        return None
    eps = bn.attributes.get_float("epsilon", 1e-5)
    g = gamma / np.sqrt(var + eps)
    if not np.isfinite(g).all():
        return None
    return conv, w, b, g, beta - mean * g


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Fold inference BatchNormalization nodes into the Conv/ConvTranspose before them."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = irutil.FreshNames(model.graph)
        folded = 0
        for bn in list(irutil.iter_nodes(model.graph)):
            found = _foldable(bn)
            if found is None:
                continue
            conv, w, b, g, shift = found
            axis = 1 if conv.op_type == "ConvTranspose" else 0
            shape = [1] * w.ndim
            shape[axis] = -1
            new_w = (w.astype(np.float64) * g.reshape(shape)).astype(np.float32)
            bias = np.zeros(g.shape, np.float64) if b is None else b.astype(np.float64).ravel()
            new_b = (bias * g + shift).astype(np.float32)
            graph = conv.graph
            old_w, old_b = conv.inputs[1], conv.inputs[2] if len(conv.inputs) > 2 else None
            conv.replace_input_with(1, irutil.add_initializer(graph, names(f"{old_w.name or 'weight'}_bn"), new_w))
            bias_value = irutil.add_initializer(graph, names(f"{(old_b.name if old_b else None) or 'bias'}_bn"), new_b)
            if len(conv.inputs) < 3:
                conv.resize_inputs(3)
            conv.replace_input_with(2, bias_value)
            y, out = bn.outputs[0], conv.outputs[0]
            bn_params = list(bn.inputs[1:5])
            y.replace_all_uses_with(out, replace_graph_outputs=True)
            name = y.name
            graph.remove(bn, safe=False)
            if name:  # the folded Conv computes what the BN output was: it takes that name
                y.name = None
                out.name = name
            for v in (old_w, old_b, *bn_params):
                if v is not None:
                    irutil.remove_if_unused(graph, v)
            folded += 1
        if folded:
            logger.debug("folded %d BatchNormalization node(s) into Conv weights", folded)
        return ir.passes.PassResult(model, modified=bool(folded))
