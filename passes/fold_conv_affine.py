"""FoldConvAffinePass: per-channel affine ops right after a Conv go into its weights and
bias: an inference BatchNormalization, and Mul/Div/Add/Sub by a constant that is a scalar
or one value per output channel.

Exporters that do not fold these themselves (Paddle2ONNX, tf2onnx, torch.onnx in training
mode) leave ``Conv -> BatchNormalization`` or ``Conv -> Mul(s) -> Add(b)`` (PP-LCNet's
learnable affine blocks). Quantized as is, the Conv output is rounded to one per-tensor
scale and *then* scaled per channel and rounded again after every op, so rounding errors
pile up (and the int8 chain is broken by float ops). Folded, ``W' = W * g`` and
``b' = b * g + shift`` per output channel (BN: ``g = gamma / sqrt(var + eps)``,
``shift = beta - mean * g``): the same function, one op, one quantized output.

Folded when the op's data input is the only use of the output of a Conv (any group count)
or a ConvTranspose with one group, whose weight (and bias, if any) are float32 constants,
and the op's other inputs are constants. New initializers are written (a weight shared
with another node is left alone); the Conv takes over the folded op's output name. Chains
(Conv -> Mul -> Add) fold in one run; a second run finds nothing to do.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["FoldConvAffinePass"]

logger = logging.getLogger(__name__)

_ELEMENTWISE = ("Mul", "Div", "Add", "Sub")


def _conv_of(v: ir.Value | None, node: ir.Node) -> tuple[ir.Node, np.ndarray, np.ndarray | None] | None:
    """(conv, weight, bias or None) when ``v`` is the single-use output of a foldable Conv."""
    conv = v.producer() if v is not None else None
    if conv is None or conv.domain not in ("", "ai.onnx") or conv.op_type not in ("Conv", "ConvTranspose"):
        return None
    if len(v.uses()) != 1 or v.is_graph_output() or conv.graph is not node.graph:
        return None
    if conv.op_type == "ConvTranspose" and conv.attributes.get_int("group", 1) != 1:
        return None
    w = irutil.const_array(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if w is None or w.dtype != np.float32 or w.ndim < 3:
        return None
    b = None
    if len(conv.inputs) > 2 and conv.inputs[2] is not None:
        b = irutil.const_array(conv.inputs[2])
        if b is None or b.dtype != np.float32:
            return None
    return conv, w, b


def _per_channel(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``c`` as one value per channel (axis 1 of a rank-``rank`` tensor) if it broadcasts
    that way (a scalar, or ``[C, 1, ...]`` / ``[1, C, 1, ...]``), else None."""
    if c.dtype != np.float32 or c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (channels,))


def _foldable(node: ir.Node) -> tuple[ir.Node, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray] | None:
    """(conv, weight, bias or None, per-channel gain g, per-channel shift) or None."""
    if node.domain not in ("", "ai.onnx") or any(v is not None and (v.uses() or v.is_graph_output())
                                                  for v in node.outputs[1:]):
        return None
    if node.op_type == "BatchNormalization":
        if len(node.inputs) < 5 or node.attributes.get_int("training_mode", 0):
            return None
        found = _conv_of(node.inputs[0], node)
        if found is None:
            return None
        conv, w, b = found
        channels = w.shape[1] if conv.op_type == "ConvTranspose" else w.shape[0]
        params = [irutil.const_array(v) for v in node.inputs[1:5]]
        if any(p is None or p.size != channels for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64).ravel() for p in params)
        g = gamma / np.sqrt(var + node.attributes.get_float("epsilon", 1e-5))
        shift = beta - mean * g
    elif node.op_type in _ELEMENTWISE and len(node.inputs) == 2:
        side = next((i for i in (0, 1) if _conv_of(node.inputs[i], node) is not None), None)
        if side is None or (side == 1 and node.op_type in ("Div", "Sub")):
            return None
        conv, w, b = _conv_of(node.inputs[side], node)
        channels = w.shape[1] if conv.op_type == "ConvTranspose" else w.shape[0]
        c = irutil.const_array(node.inputs[1 - side])
        c = _per_channel(c, w.ndim, channels) if c is not None else None
        if c is None:
            return None
        ones, zeros = np.ones(channels), np.zeros(channels)
        if node.op_type == "Mul":
            g, shift = c, zeros
        elif node.op_type == "Div":
            if not np.all(c != 0):
                return None
            g, shift = 1.0 / c, zeros
        elif node.op_type == "Add":
            g, shift = ones, c
        else:
            g, shift = ones, -c
    else:
        return None
    if not (np.isfinite(g).all() and np.isfinite(shift).all()):
        return None
    return conv, w, b, g, shift


class FoldConvAffinePass(ir.passes.InPlacePass):
    """Fold BatchNormalization / Mul / Div / Add / Sub by per-channel constants into the
    Conv/ConvTranspose before them."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = irutil.FreshNames(model.graph)
        folded = 0
        for node in list(irutil.iter_nodes(model.graph)):
            found = _foldable(node)
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
            conv.replace_input_with(1, irutil.add_initializer(graph, names(f"{old_w.name or 'weight'}_folded"), new_w))
            bias_value = irutil.add_initializer(graph, names(f"{(old_b.name if old_b else None) or 'bias'}_folded"), new_b)
            if len(conv.inputs) < 3:
                conv.resize_inputs(3)
            conv.replace_input_with(2, bias_value)
            y, out = node.outputs[0], conv.outputs[0]
            params = [v for v in node.inputs if v is not None and v.producer() is not conv]
            y.replace_all_uses_with(out, replace_graph_outputs=True)
            name = y.name
            graph.remove(node, safe=True)
            if name:  # the folded Conv computes what the folded op's output was: it takes that name
                y.name = None
                out.name = name
            for v in (old_w, old_b, *params):
                if v is not None:
                    irutil.remove_if_unused(graph, v)
            folded += 1
        if folded:
            logger.debug("folded %d affine node(s) into Conv weights", folded)
        return ir.passes.PassResult(model, modified=bool(folded))
