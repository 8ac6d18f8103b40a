"""FoldMatMulInputAffinePass: a per-feature affine map right before a MatMul/Gemm goes into
that MatMul's weight and bias.

Keras/TF exports write a BatchNormalization after ``Dense -> ReLU`` as ``Mul(x, s)`` then
``Add(., b)`` (one value per feature, last axis), read by the next Dense's MatMul. Quantized
as is, the Mul's result is rounded to one scale per tensor although its features were
multiplied by factors 276x apart (a VGG16 classifier: 3.5 dB output SQNR, top-1 agreement
69 %). Since ``(x * s + b) @ W = x @ (s[:, None] * W) + b @ W`` exactly, the pass moves
``s`` into the rows of the weight (per-channel int8 absorbs any spread) and ``b @ W`` into
the bias: the MatMul then reads the ReLU's output directly.

Matched: ``Mul``/``Div`` by, and/or ``Add``/``Sub`` of, float32 constants that are scalars
or one value per feature of the last axis (a Mul alone, an Add alone, or a Mul then an
Add), whose result only MatMuls with a constant 2-D float32 weight (as input A) or Gemms
with ``transA = 0``, ``alpha = beta = 1`` and constant B/C read. Each consumer gets its own
folded weight (new initializers); the bias goes into a following ``Add`` of a constant
``[N]`` vector (a Keras BiasAdd) or a Gemm's C, otherwise into a new ``Add`` that takes over
the MatMul's output name (the MatMul's own result is a new value; so it is with a BiasAdd:
a value that changed meaning never keeps its name). A second run finds nothing to do.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["FoldMatMulInputAffinePass", "per_feature_constant"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Affine:
    x: ir.Value  # the value the affine map is applied to
    nodes: list[ir.Node]  # Mul/Div and/or Add/Sub, in order
    gain: np.ndarray  # float64 [K]
    shift: np.ndarray  # float64 [K]


def per_feature_constant(node: ir.Node, features: int) -> tuple[int, np.ndarray] | None:
    """(index of the data input, the constant as one value per feature) for a binary op by a
    float32 constant that is a scalar or varies along the last axis only."""
    if node.domain not in ("", "ai.onnx") or len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    side = next((i for i in (0, 1) if irutil.is_constant(node.inputs[1 - i])
                 and not irutil.is_constant(node.inputs[i])), None)
    if side is None or (side == 1 and node.op_type in ("Div", "Sub")):
        return None
    c = irutil.const_array(node.inputs[1 - side])
    if c is None or c.dtype != np.float32 or any(d != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, features)):
        return None
    x = node.inputs[side]
    if c.ndim > 1 and (x.shape is None or len(x.shape) < c.ndim):
        return None  # a constant of higher rank would broadcast x to a new shape
    if c.size > 1 and _last_dim(x) != features:
        return None  # x's last axis must be the K features itself, not a 1 the constant widens
    return side, np.broadcast_to(c.astype(np.float64).reshape(-1), (features,))


_SAME_SHAPE_OPS = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid",
                             "HardSwish", "Gelu", "Identity", "Add", "Sub", "Mul", "Div"})


def _last_dim(v: ir.Value | None, depth: int = 8) -> int | None:
    """The size of ``v``'s last axis: from its shape, else from the MatMul/Gemm that computes it
    (through activations and bias ops: exporters' Reshapes often leave shapes unknown)."""
    if v is None:
        return None
    if v.shape is not None and len(v.shape) and isinstance(v.shape[-1], int):
        return v.shape[-1]
    p = v.producer()
    if p is None or depth == 0 or p.domain not in ("", "ai.onnx"):
        return None
    if p.op_type in ("MatMul", "Gemm") and len(p.inputs) > 1:
        w = irutil.const_array(p.inputs[1])
        if w is None or w.ndim != 2:
            return None
        return w.shape[0] if p.op_type == "Gemm" and p.attributes.get_int("transB", 0) else w.shape[1]
    if p.op_type in _SAME_SHAPE_OPS:
        found = {_last_dim(i, depth - 1) for i in p.inputs if i is not None and not irutil.is_constant(i)}
        consts = [irutil.const_array(i) for i in p.inputs if i is not None and irutil.is_constant(i)]
        if len(found) == 1 and None not in found:
            n = found.pop()
            if all(c is not None and (c.ndim == 0 or c.shape[-1] in (1, n)) for c in consts):
                return n
    return None


def _affine_before(v: ir.Value, features: int) -> _Affine | None:
    """The Mul/Div, Add/Sub or Mul/Div -> Add/Sub chain that computes ``v``, if any."""
    nodes, gain, shift = [], np.ones(features), np.zeros(features)
    cur = v
    for ops in (("Add", "Sub"), ("Mul", "Div")):
        p = cur.producer()
        if p is None or p.op_type not in ops or (nodes and (len(cur.uses()) != 1 or cur.is_graph_output())):
            continue
        found = per_feature_constant(p, features)
        if found is None:
            continue
        side, c = found
        if p.op_type == "Add":
            shift = shift + c
        elif p.op_type == "Sub":
            shift = shift - c
        elif p.op_type == "Mul":
            gain, shift = c, shift  # Mul comes first: x * c + shift
        else:
            if not np.all(c != 0):
                return None
            gain = 1.0 / c
        nodes.insert(0, p)
        cur = p.inputs[side]
    if not nodes or not (np.isfinite(gain).all() and np.isfinite(shift).all()):
        return None
    return _Affine(cur, nodes, gain, shift)


def _consumer_ok(node: ir.Node, index: int) -> bool:
    if index != 0 or node.domain not in ("", "ai.onnx"):
        return False
    w = irutil.const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.dtype != np.float32 or w.ndim != 2:
        return False
    if node.op_type == "MatMul":
        return True
    if node.op_type != "Gemm":
        return False
    a = node.attributes
    if a.get_int("transA", 0) or a.get_float("alpha", 1.0) != 1.0 or a.get_float("beta", 1.0) != 1.0:
        return False
    c = node.inputs[2] if len(node.inputs) > 2 else None
    return c is None or irutil.const_array(c) is not None


def _features(v: ir.Value) -> int | None:
    """K: the weight rows of every MatMul/Gemm that reads ``v`` (all must agree)."""
    ks = set()
    for user, _ in v.uses():
        w = irutil.const_array(user.inputs[1]) if len(user.inputs) > 1 else None
        if w is None or w.ndim != 2:
            return None
        ks.add(w.shape[1] if user.op_type == "Gemm" and user.attributes.get_int("transB", 0) else w.shape[0])
    return ks.pop() if len(ks) == 1 else None


class FoldMatMulInputAffinePass(ir.passes.InPlacePass):
    """Fold per-feature Mul/Div/Add/Sub by constants into the MatMul/Gemm that reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.removed = 0  # Mul/Div/Add/Sub nodes folded away by the last call (for a summary)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = irutil.FreshNames(model.graph)
        self.removed = 0
        for node in list(irutil.iter_nodes(model.graph)):
            if node.op_type not in ("Mul", "Div", "Add", "Sub") or node.graph is None:
                continue
            v = node.outputs[0]
            uses = v.uses()
            if not uses or v.is_graph_output() or not all(_consumer_ok(u, i) for u, i in uses):
                continue
            k = _features(v)
            affine = _affine_before(v, k) if k else None
            if affine is None or affine.nodes[-1] is not node:
                continue
            for user, _ in list(uses):
                self._fold_into(user, affine, names)
            graph = node.graph
            params = [p for n in affine.nodes for p in n.inputs if p is not None and irutil.is_constant(p)]
            graph.remove(affine.nodes, safe=True)
            self.removed += len(affine.nodes)
            for p in params:
                irutil.remove_if_unused(graph, p)
        if self.removed:
            logger.debug("folded %d per-feature Mul/Div/Add/Sub node(s) into the MatMul/Gemm after them", self.removed)
        return ir.passes.PassResult(model, modified=bool(self.removed))

    def _fold_into(self, user: ir.Node, affine: _Affine, names: irutil.FreshNames) -> None:
        graph = user.graph
        w_value = user.inputs[1]
        w = irutil.const_array(w_value).astype(np.float64)
        trans_b = user.op_type == "Gemm" and bool(user.attributes.get_int("transB", 0))
        w_kn = w.T if trans_b else w
        bias = affine.shift @ w_kn  # [N]
        new_w = w_kn * affine.gain[:, None]
        user.replace_input_with(0, affine.x)
        user.replace_input_with(1, irutil.add_initializer(
            graph, names(f"{w_value.name or 'weight'}_folded"), (new_w.T if trans_b else new_w).astype(np.float32)))
        irutil.remove_if_unused(graph, w_value)
        if not np.any(bias):
            return
        if user.op_type == "Gemm":
            c_value = user.inputs[2] if len(user.inputs) > 2 else None
            c = irutil.const_array(c_value) if c_value is not None else np.zeros(bias.shape, np.float32)
            new_c = (c.astype(np.float64) + bias).astype(np.float32)
            if len(user.inputs) < 3:
                user.resize_inputs(3)
            user.replace_input_with(2, irutil.add_initializer(graph, names(f"{(c_value.name if c_value else None) or 'bias'}_folded"), new_c))
            if c_value is not None:
                irutil.remove_if_unused(graph, c_value)
            return
        out = user.outputs[0]
        bias_add = _bias_add_after(out, bias.size)
        if bias_add is not None:
            node, i = bias_add
            old = node.inputs[i]
            new_b = (irutil.const_array(old).astype(np.float64).reshape(-1) + bias).astype(np.float32)
            node.replace_input_with(i, irutil.add_initializer(graph, names(f"{old.name or 'bias'}_folded"), new_b.reshape(irutil.const_array(old).shape)))
            irutil.remove_if_unused(graph, old)
            # the MatMul's result is now short of b @ W (the BiasAdd adds it): a new name, so that
            # nothing (onnxq compare) takes it for the float model's tensor of the old name
            out.name = names(f"{out.name or 'matmul'}_unbiased")
            return
        # no bias to extend: an Add of b @ W takes over the MatMul's output (its name, its uses)
        add = ir.node("Add", [None, irutil.add_initializer(graph, names(f"{user.name or 'matmul'}_folded_bias"), bias.astype(np.float32))],
                      name=names(f"{user.name or 'matmul'}/folded_bias"))
        graph.insert_after(user, add)
        result = add.outputs[0]
        result.type, result.shape = out.type, out.shape
        out.replace_all_uses_with(result, replace_graph_outputs=True)
        add.replace_input_with(0, out)
        name = out.name
        out.name = names(f"{name or 'matmul'}_unbiased")
        result.name = name


def _bias_add_after(out: ir.Value, n: int) -> tuple[ir.Node, int] | None:
    """(the Add, the index of its constant) when ``out``'s only use is an Add of a float32
    constant of exactly ``n`` values along the last axis (a BiasAdd)."""
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return None
    node, index = uses[0]
    if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    other = node.inputs[1 - index]
    c = irutil.const_array(other) if other is not None else None
    if c is None or c.dtype != np.float32 or c.size != n or c.shape[-1:] != (n,) or len(other.uses()) != 1:
        return None
    return node, 1 - index
