"""BiasSumPass: the float ``Add`` right after an int8 MatMul with a float result becomes ``Sum``.

int8-static leaves the result of a MatMul float when only float ops read it (a transformer's
attention-output and FFN-down projections feed the float residual stream): ONNX Runtime runs
``DQ(x), DQ(W) -> MatMul`` as ``MatMulIntegerToFloat`` (int8 inputs, float result). But ORT's
basic-level MatMul + Add fusion runs first and turns ``MatMul -> Add`` -- a bias Add with
static shapes, and an Add of another activation (a residual, no bias) for 2-D inputs -- into
a float ``Gemm`` on the dequantized weight. ``Sum`` of the two computes the same values (same
broadcasting) and is not matched by that fusion, so the MatMul stays int8.

Rewritten: a standard two-input ``Add`` one of whose inputs is the single-use float result of
a standard ``MatMul`` whose weight (input 1) is a ``DequantizeLinear`` of a constant. A second
run finds nothing.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from onnxq import irutil

__all__ = ["BiasSumPass"]

logger = logging.getLogger(__name__)


def _int8_matmul_with_float_result(value: ir.Value) -> bool:
    mm = value.producer()
    if mm is None or mm.op_type != "MatMul" or mm.domain not in ("", "ai.onnx") or len(value.uses()) != 1:
        return False
    if value.is_graph_output() or len(mm.inputs) < 2 or mm.inputs[1] is None:
        return False
    w = mm.inputs[1].producer()
    return (w is not None and w.op_type == "DequantizeLinear" and bool(w.inputs)
            and irutil.is_constant(w.inputs[0]))


def _add_after_float_result_matmul(node: ir.Node) -> bool:
    if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return False
    a, b = node.inputs
    if a is None or b is None:
        return False
    return _int8_matmul_with_float_result(a) or _int8_matmul_with_float_result(b)


class BiasSumPass(ir.passes.InPlacePass):
    """Float Add right after an int8 MatMul with a float result: the Add becomes Sum."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rewritten = irutil.rewrite_adds_as_sum(model, _add_after_float_result_matmul)
        if rewritten:
            logger.debug("wrote %d Add(s) after an int8 MatMul with a float result as Sum", rewritten)
        return ir.passes.PassResult(model, modified=bool(rewritten))
