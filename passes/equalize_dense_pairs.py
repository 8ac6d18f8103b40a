"""EqualizeDensePairsPass: data-free cross-layer equalization of ``Dense -> ReLU -> Dense``.

For two MatMul/Gemm layers with a ReLU between them, scaling feature ``k`` of the first
layer's output by ``a_k > 0`` (its weight column and bias) and dividing row ``k`` of the
second layer's weight by ``a_k`` computes the same function, because
``relu(a * x) = a * relu(x)`` for ``a > 0``. With ``a_k = sqrt(r2_k / r1_k)`` (``r1_k``: the
largest |weight| of the first layer's column ``k``, ``r2_k``: of the second layer's row
``k``; Nagel et al., "Data-Free Quantization Through Weight Equalization", 2019) both
layers' ranges per feature meet in the middle, and so do the ReLU output's features, which
int8-static rounds to one scale per tensor. A VGG16 classifier exported from Keras whose
BatchNormalization after ``Dense -> ReLU`` left features scaled 276x apart (the Mul folded
into the next MatMul by FoldMatMulInputAffinePass): 3.5 dB -> 17.3 dB output SQNR, top-1
agreement with fp32 69 % -> 95 % on held-out images (three chained pairs, swept to the fixed
point; one sweep gave 19.6 dB but is not a fixed point: a second run would change it again).

Matched: ``MatMul(x, W1)`` (W1 a constant 2-D float32) then ``Add`` of a constant ``[N]``
bias (optional), or a ``Gemm`` (transA = 0, alpha = beta = 1, constant B and C), then
``Relu``, read only by one MatMul (as input A) or Gemm (transA = 0) with a constant 2-D
weight; every intermediate value has that single use and no weight is shared. New
initializers replace the weights; a second run changes nothing (the factors are then 1).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["EqualizeDensePairsPass"]

logger = logging.getLogger(__name__)

# factors within this of 1 are not applied (the second run; float32 round-off)
_TOLERANCE = 1e-3
_MAX_SWEEPS = 64


def _single_use(v: ir.Value | None) -> ir.Node | None:
    if v is None or v.is_graph_output() or len(v.uses()) != 1:
        return None
    return v.uses()[0][0]


def _dense(node: ir.Node | None) -> tuple[ir.Value, bool] | None:
    """(weight value, transB) of a MatMul/Gemm with a constant 2-D float32 weight, unshared,
    reading its activation as input A."""
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
        return None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    a = irutil.const_array(w)
    if a is None or a.dtype != np.float32 or a.ndim != 2 or len(w.uses()) != 1:
        return None
    if node.op_type == "Gemm":
        at = node.attributes
        if at.get_int("transA", 0) or at.get_float("alpha", 1.0) != 1.0 or at.get_float("beta", 1.0) != 1.0:
            return None
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None and (irutil.const_array(c) is None or len(c.uses()) != 1):
            return None
        return w, bool(at.get_int("transB", 0))
    return w, False



_EQUALIZED = re.compile(r"_equalized(_\d+)?$")


def _equalized_name(name: str | None, default: str) -> str:
    """``name`` + ``_equalized``, once: a chain swept to its fixed point rescales the same
    weight several times (a PyPI MLP's weights came out as ``..._equalized`` x 9)."""
    return f"{_EQUALIZED.sub('', name or default)}_equalized"

class EqualizeDensePairsPass(ir.passes.InPlacePass):
    """Equalize the per-feature ranges of ``Dense -> ReLU -> Dense`` pairs (data-free)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = irutil.FreshNames(model.graph)
        renamed: set[int] = set()
        done = 0
        # in a chain (Dense -> ReLU -> Dense -> ReLU -> Dense) balancing one pair unbalances the
        # next: sweep until every factor is 1 (DFQ's iteration), so a second run finds nothing
        for _ in range(_MAX_SWEEPS):
            changed = 0
            for relu in list(irutil.iter_nodes(model.graph)):
                if relu.op_type != "Relu" or relu.domain not in ("", "ai.onnx"):
                    continue
                pair = self._match(relu)
                if pair is not None and self._equalize(*pair, names, renamed):
                    changed += 1
            done += changed
            if not changed:
                break
        if done:
            logger.debug("equalized Dense -> ReLU -> Dense pairs (%d updates)", done)
        return ir.passes.PassResult(model, modified=bool(done))

    @staticmethod
    def _match(relu: ir.Node):
        second = _single_use(relu.outputs[0])
        second_dense = _dense(second) if second is not None and relu.outputs[0].uses()[0][1] == 0 else None
        if second_dense is None:
            return None
        p = relu.inputs[0].producer() if relu.inputs[0] is not None else None
        bias_node = None
        if p is not None and p.op_type == "Add" and p.domain in ("", "ai.onnx") and _single_use(p.outputs[0]) is relu:
            constant = [irutil.is_constant(v) for v in p.inputs]
            if len(p.inputs) != 2 or sorted(constant) != [False, True]:
                return None  # a residual Add (two activations) is not a bias: no scaling across it
            bias_node = p
            p = p.inputs[constant.index(False)].producer()
            if p is None or _single_use(p.outputs[0]) is not bias_node:
                return None
        elif p is not None and _single_use(p.outputs[0]) is not relu:
            return None
        first = _dense(p)
        if first is None:
            return None
        return p, first, bias_node, second, second_dense

    @staticmethod
    def _equalize(node1, first, bias_node, node2, second, names, renamed: set[int]) -> bool:
        (w1_value, t1), (w2_value, t2) = first, second
        w1 = irutil.const_array(w1_value).astype(np.float64)
        w1 = w1.T if t1 else w1  # [K1, N]
        w2 = irutil.const_array(w2_value).astype(np.float64)
        w2 = w2.T if t2 else w2  # [N, N2]
        n = w1.shape[1]
        if w2.shape[0] != n:
            return False
        biases = []  # (node, input index, array) of the first layer's bias
        if node1.op_type == "Gemm" and len(node1.inputs) > 2 and node1.inputs[2] is not None:
            biases.append((node1, 2, irutil.const_array(node1.inputs[2])))
        if bias_node is not None:
            i = next(i for i in (0, 1) if irutil.is_constant(bias_node.inputs[i]))
            b = irutil.const_array(bias_node.inputs[i])
            if b is None or len(bias_node.inputs[i].uses()) != 1:
                return False
            biases.append((bias_node, i, b))
        for _, _, b in biases:
            if b.dtype != np.float32 or b.size != n or b.shape[-1:] != (n,):
                return False  # a scalar or broadcast bias cannot be scaled per feature
        r1, r2 = np.abs(w1).max(axis=0), np.abs(w2).max(axis=1)
        a = np.where((r1 > 0) & (r2 > 0), np.sqrt(r2 / np.maximum(r1, 1e-30)), 1.0)
        if not np.isfinite(a).all() or np.all(np.abs(a - 1.0) <= _TOLERANCE):
            return False
        graph = node1.graph
        # the first layer's result and the ReLU's are now a * the float model's per feature: new
        # names, so that nothing (onnxq compare) takes them for the float tensors of the old ones
        relu = node2.inputs[0].producer()
        for value in (node1.outputs[0], *((bias_node.outputs[0],) if bias_node is not None else ()), relu.outputs[0]):
            if id(value) not in renamed and not value.is_graph_output():
                value.name = names(_equalized_name(value.name, "dense"))
                renamed.add(id(value))
        new_w1, new_w2 = w1 * a, w2 / a[:, None]
        for node, index, array, value in (
            (node1, 1, new_w1.T if t1 else new_w1, w1_value),
            (node2, 1, new_w2.T if t2 else new_w2, w2_value),
            *((node, i, b.astype(np.float64) * a.reshape(b.shape), node.inputs[i]) for node, i, b in biases),
        ):
            node.replace_input_with(index, irutil.add_initializer(
                graph, names(_equalized_name(value.name, "weight")), np.asarray(array, np.float32)))
            irutil.remove_if_unused(graph, value)
        return True
