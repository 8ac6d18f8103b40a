"""FoldMatMulOutputAffinePass: per-feature Mul/Div/Add/Sub right after a MatMul/Gemm go into
its weight columns and bias; a 2-D MatMul with a bias becomes a Gemm.

Exporters without Gemm write a dense layer as ``MatMul`` then ``Add`` of a bias vector
(skl2onnx, Keras via tf2onnx), and Keras' ``Dense -> BatchNormalization`` as that plus a
``Mul`` and an ``Add`` of one value per feature. Quantized as they are, the MatMul's result
is rounded to 8 bits, then each constant is stored in the 8-bit activation type with one
scale for all features (a BatchNormalization's gains can be 100x apart), then each result
is rounded again -- a PyPI regressor MLP lost 3.7 dB to its bias Adds alone. Since
``(x @ W) * s + t = x @ (W * s) + t`` exactly, ``s`` goes into W's columns (per-channel int8
absorbs any spread) and the shifts into one bias:

- a MatMul whose input A is known to be 2-D becomes ``Gemm(x, W', b')``: an int32 bias at
  the input scale times the weight scale, and one QGemm in ONNX Runtime (whose own graph
  optimizer makes the same Gemm from a float MatMul + Add);
- a MatMul on an N-D input becomes ``MatMul(x, W')`` and one ``Add(b')`` (insert_qdq leaves
  that bias Add float after the MatMul's float result);
- a Gemm (``transA = 0``, ``alpha = beta = 1``) gets ``W'`` and ``C' = C * s + t``.

Matched: a standard MatMul/Gemm with a constant 2-D float32 weight, followed by a chain of
single-use Mul/Div/Add/Sub of float32 constants that are scalars or one value per feature
of the last axis (not a model output in between). The last op's output value, with its
name and readers, becomes the layer's output; a MatMul result whose value changed gets a
new name. A second run finds nothing left to fold.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq.passes.fold_matmul_input_affine import per_feature_constant

__all__ = ["FoldMatMulOutputAffinePass"]

logger = logging.getLogger(__name__)

_AFFINE_OPS = ("Mul", "Div", "Add", "Sub")


def _standard(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _dense(node: ir.Node) -> tuple[np.ndarray, bool] | None:
    """(weight, transB) of a MatMul/Gemm whose weight is a constant 2-D float32 and whose
    result is ``A @ W (+ C)``."""
    if not _standard(node) or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    if node.inputs[0] is None or irutil.is_constant(node.inputs[0]):
        return None
    w = irutil.const_array(node.inputs[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    if node.op_type == "MatMul":
        return w, False
    a = node.attributes
    if a.get_int("transA", 0) or a.get_float("alpha", 1.0) != 1.0 or a.get_float("beta", 1.0) != 1.0:
        return None
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is not None:
        cv = irutil.const_array(c)
        n = w.shape[0] if a.get_int("transB", 0) else w.shape[1]
        if cv is None or cv.dtype != np.float32 or cv.size not in (1, n) or (cv.ndim and cv.shape[-1] not in (1, n)):
            return None
    return w, bool(a.get_int("transB", 0))


def _affine_after(y: ir.Value, features: int) -> tuple[list[ir.Node], np.ndarray, np.ndarray]:
    """The chain of single-use per-feature Mul/Div/Add/Sub after ``y``: (nodes, gain, shift)
    with chain(v) = v * gain + shift."""
    nodes: list[ir.Node] = []
    gain, shift = np.ones(features), np.zeros(features)
    cur = y
    while not cur.is_graph_output() and len(cur.uses()) == 1:
        node, index = cur.uses()[0]
        if node.op_type not in _AFFINE_OPS or not _standard(node):
            break
        found = per_feature_constant(node, features)
        if found is None or found[0] != index:
            break
        c = found[1]
        if node.op_type == "Mul":
            gain, shift = gain * c, shift * c
        elif node.op_type == "Div":
            if not np.all(c != 0):
                break
            gain, shift = gain / c, shift / c
        elif node.op_type == "Add":
            shift = shift + c
        else:
            shift = shift - c
        nodes.append(node)
        cur = node.outputs[0]
    return nodes, gain, shift


class FoldMatMulOutputAffinePass(ir.passes.InPlacePass):
    """Fold per-feature Mul/Div/Add/Sub after a MatMul/Gemm into it (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.removed = 0  # Mul/Div/Add/Sub nodes folded away by the last call
        self.gemms = 0  # 2-D MatMuls written as Gemm by the last call

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = irutil.FreshNames(model.graph)
        self.removed = self.gemms = 0
        for node in list(irutil.iter_nodes(model.graph)):
            if node.graph is None:  # removed by an earlier fold
                continue
            found = _dense(node)
            if found is None:
                continue
            w, trans_b = found
            features = w.shape[0] if trans_b else w.shape[1]
            chain, gain, shift = _affine_after(node.outputs[0], features)
            if not chain or not (np.isfinite(gain).all() and np.isfinite(shift).all()):
                continue
            x = node.inputs[0]
            two_d = x.shape is not None and len(x.shape) == 2
            scaled = not np.all(gain == 1.0)
            if node.op_type == "MatMul" and not two_d and not scaled and len(chain) == 1 and chain[0].op_type == "Add":
                continue  # an N-D dense layer with its bias Add: already the form the plan wants
            self._fold(node, w, trans_b, chain, gain, shift, two_d, names)
        if self.removed or self.gemms:
            logger.debug("folded %d Mul/Div/Add/Sub node(s) after MatMul/Gemm; %d MatMul(s) written as Gemm",
                         self.removed, self.gemms)
        return ir.passes.PassResult(model, modified=bool(self.removed or self.gemms))

    def _fold(self, node, w, trans_b, chain, gain, shift, two_d, names) -> None:
        graph = node.graph
        w_value = node.inputs[1]
        w_kn = w.astype(np.float64).T if trans_b else w.astype(np.float64)
        new_w = (w_kn * gain[None, :]).astype(np.float32)
        bias = shift.copy()
        c_value = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        if c_value is not None:
            bias = bias + np.broadcast_to(irutil.const_array(c_value).astype(np.float64).reshape(-1), bias.shape) * gain
        if np.all(gain == 1.0):  # only shifts: the weight itself is unchanged (and may be shared)
            w_out = w_value
        else:
            w_out = irutil.add_initializer(graph, names(f"{w_value.name or 'weight'}_folded"),
                                           new_w.T.copy() if trans_b else new_w)
        b_out = irutil.add_initializer(graph, names(f"{node.name or 'dense'}_bias"), bias.astype(np.float32))
        last = chain[-1]
        params = [p for n in (node, *chain) for p in n.inputs if p is not None and irutil.is_constant(p)]
        if node.op_type == "Gemm" or two_d:
            attributes = {"transB": 1} if trans_b else {}
            layer = ir.node("Gemm", [node.inputs[0], w_out, b_out], attributes=attributes, name=node.name)
            graph.insert_before(last, layer)
            irutil.replace_node_output(graph, last, layer.outputs[0])
            self.gemms += node.op_type == "MatMul"
        else:  # N-D MatMul: x @ W' then one bias Add, which takes the chain's output
            matmul = ir.node("MatMul", [node.inputs[0], w_out], name=node.name)
            add = ir.node("Add", [matmul.outputs[0], b_out], name=names(f"{node.name or 'dense'}/bias"))
            graph.insert_before(last, [matmul, add])
            # x @ W' is not the float model's x @ W: a new name (onnxq compare matches by name)
            matmul.outputs[0].name = names(f"{node.outputs[0].name or 'matmul'}_scaled")
            irutil.replace_node_output(graph, last, add.outputs[0])
        graph.remove([n for n in reversed(chain[:-1])], safe=True)
        graph.remove(node, safe=True)
        self.removed += len(chain)
        for p in params:
            irutil.remove_if_unused(graph, p)
