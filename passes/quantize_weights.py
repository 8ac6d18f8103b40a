"""QuantizeWeightsPass: constant weights stored as int8 + ``DequantizeLinear``.

For each selected MatMul/Gemm/Conv/ConvTranspose with a constant float weight, the weight
initializer is replaced by an int8 initializer (per output channel, symmetric, zero point
0) feeding a ``DequantizeLinear`` whose output takes the weight's place. The file shrinks
~4×; runtimes that read QDQ fuse the pair back into integer kernels when the activation is
quantized too (int8-static), and otherwise compute in float on the dequantized weight.

Per-channel ``DequantizeLinear`` needs opset ≥ 13; older models get per-tensor scales
(the plan says so for each node).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq import qparams as qp
from onnxq.recipes import NodeSelection
from onnxq.selection import Decision, select

__all__ = ["QuantizeWeightsPass", "WeightQuantConfig", "weight_channel_axis", "plan_weights"]

logger = logging.getLogger(__name__)

WEIGHT_OP_TYPES = ("MatMul", "Gemm", "Conv", "ConvTranspose")


@dataclasses.dataclass(frozen=True)
class WeightQuantConfig:
    selection: NodeSelection = NodeSelection(op_types=WEIGHT_OP_TYPES)
    qtype: str = "int8"  # int8 | uint8 | int16
    per_channel: bool = True
    min_weight_elements: int = 0

    def __post_init__(self) -> None:
        qp.qtype_named(self.qtype)
        unsupported = set(self.selection.op_types) - set(WEIGHT_OP_TYPES)
        if unsupported:
            raise ValueError(f"cannot quantize weights of {sorted(unsupported)}; choose from {WEIGHT_OP_TYPES}")


def weight_channel_axis(node: ir.Node, weight_rank: int) -> int | None:
    """The weight axis that indexes output channels, or None when there is none."""
    if node.op_type == "MatMul":
        return weight_rank - 1 if weight_rank >= 2 else None
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    return None


def _check(node: ir.Node, config: WeightQuantConfig) -> str | None:
    if len(node.inputs) < 2:
        return "no weight input"
    w = irutil.const_array(node.inputs[1])
    if w is None:
        return "second input is not a constant weight"
    if w.dtype != np.float32:
        return f"weight is {w.dtype}, not float32"
    if w.size < config.min_weight_elements:
        return f"weight has {w.size} elements (< {config.min_weight_elements})"
    if not np.all(np.isfinite(w)):
        return "weight contains NaN or Inf"
    if node.op_type == "MatMul" and w.ndim < 2:
        return "1-D MatMul weight"
    return None


def plan_weights(model: ir.Model, config: WeightQuantConfig) -> list[Decision]:
    return select(irutil.iter_nodes(model.graph), config.selection, lambda n: _check(n, config))


class QuantizeWeightsPass(ir.passes.InPlacePass):
    """Replace constant float weights with int8 initializers + DequantizeLinear."""

    def __init__(self, config: WeightQuantConfig = WeightQuantConfig()) -> None:
        super().__init__()
        self.config = config

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        decisions = [d for d in plan_weights(model, self.config) if d.selected]
        if not decisions:
            return ir.passes.PassResult(model, modified=False)
        names = irutil.FreshNames(model.graph)
        per_channel_ok = irutil.default_opset(model) >= 13
        qtype = qp.qtype_named(self.config.qtype)
        done: dict[int, ir.Value] = {}
        for decision in decisions:
            node = decision.node
            graph = node.graph
            w_value = node.inputs[1]
            if id(w_value) not in done:
                w = irutil.const_array(w_value)
                axis = weight_channel_axis(node, w.ndim) if self.config.per_channel and per_channel_ok else None
                block = qp.per_tensor(w.shape) if axis is None else qp.per_channel(w.shape, axis)
                params = qp.choose_qparams(w, qtype, block, symmetric=True)
                q = qp.quantize(w, params)
                base = w_value.name or (node.name + "_weight")
                q_value = irutil.add_initializer(graph, names(f"{base}_quantized"), q)
                scale = params.scale.reshape(-1) if axis is not None else params.scale.reshape(())
                zp = params.zero_point.reshape(-1) if axis is not None else params.zero_point.reshape(())
                s_value = irutil.add_initializer(graph, names(f"{base}_scale"), scale.astype(np.float32))
                z_value = irutil.add_initializer(graph, names(f"{base}_zero_point"), zp)
                b = irutil.NodeBuilder(names, base)
                attrs = {"axis": axis} if axis is not None else {}
                dq = b.op("DequantizeLinear", [q_value, s_value, z_value], attrs)
                dq.dtype = ir.DataType.FLOAT
                dq.shape = ir.Shape(w.shape)
                first_user = min((u.node for u in w_value.uses()), key=_position(graph))
                b.insert_before(graph, first_user)
                done[id(w_value)] = dq
            users = [u for u in w_value.uses()]
            for use in users:
                if use.node.op_type in self.config.selection.op_types and use.idx == 1:
                    use.node.replace_input_with(1, done[id(w_value)])
            irutil.remove_if_unused(graph, w_value)
        return ir.passes.PassResult(model, modified=True)


def _position(graph: ir.Graph):
    order = {id(n): i for i, n in enumerate(graph)}
    return lambda node: order.get(id(node), len(order))
