"""FuseMatMulBiasPass: ``MatMul(x, W) + b`` on a 2-D ``x`` becomes ``Gemm(x, W, b)``.

Exporters that have no Gemm (skl2onnx's MLPs, Keras' Dense via tf2onnx) write a dense
layer as a MatMul and an Add of a bias vector. Quantized as two ops, the MatMul's result is
rounded to 8 bits, then the bias itself (per tensor, in the activation type), then the sum
again -- a PyPI regressor MLP lost 3.7 dB to it. As a Gemm the bias is an int32 vector at
the scale of x times W's scale, and ONNX Runtime runs the layer as one QGemm (ONNX
Runtime's own graph optimizer makes the same Gemm from a float MatMul + Add).

Matched: a standard ``MatMul`` whose input A is known to be 2-D (shape inference) and whose
input B is a constant 2-D float32 weight, whose result is read only by one ``Add`` of a
float32 constant of shape ``[N]`` or ``[1, N]`` (N = W's columns) and is not a model output.
The Gemm takes the Add's output value (name and readers), so the layer computes the same
sums. A second run finds no MatMul + Add left.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["FuseMatMulBiasPass"]

logger = logging.getLogger(__name__)


def _standard(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _bias_of(matmul: ir.Node) -> tuple[ir.Node, ir.Value] | None:
    """(the Add, its bias value) when ``matmul`` is a 2-D dense layer followed by a bias Add."""
    if matmul.op_type != "MatMul" or not _standard(matmul) or len(matmul.inputs) != 2:
        return None
    x, w_value = matmul.inputs
    if x is None or x.shape is None or len(x.shape) != 2 or x.dtype != ir.DataType.FLOAT:
        return None
    w = irutil.const_array(w_value)
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    y = matmul.outputs[0]
    uses = list(y.uses())
    if y.is_graph_output() or len(uses) != 1:
        return None
    add, index = uses[0]
    if add.op_type != "Add" or not _standard(add) or len(add.inputs) != 2:
        return None
    bias_value = add.inputs[1 - index]
    b = irutil.const_array(bias_value)
    if b is None or b.dtype != np.float32 or b.shape not in ((w.shape[1],), (1, w.shape[1])):
        return None
    return add, bias_value


class FuseMatMulBiasPass(ir.passes.InPlacePass):
    """MatMul on a 2-D input + Add of a bias vector -> Gemm (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = irutil.FreshNames(model.graph)
        fused = 0
        for graph in irutil.iter_graphs(model.graph):
            for matmul in list(graph):
                found = _bias_of(matmul)
                if found is None:
                    continue
                add, bias_value = found
                bias = irutil.const_array(bias_value)
                c = bias_value if bias.ndim == 1 else irutil.add_initializer(
                    graph, names(f"{bias_value.name or 'bias'}_vector"), bias.reshape(-1))
                # the Gemm is the MatMul's layer: it keeps the node name (--exclude, compare)
                gemm = ir.node("Gemm", [matmul.inputs[0], matmul.inputs[1], c], name=matmul.name)
                graph.insert_before(add, gemm)
                irutil.replace_node_output(graph, add, gemm.outputs[0])
                graph.remove(matmul, safe=True)
                irutil.remove_if_unused(graph, bias_value)
                fused += 1
        if fused:
            logger.debug("fused %d MatMul + bias Add pair(s) into Gemm", fused)
        self.fused = fused
        return ir.passes.PassResult(model, modified=bool(fused))
