"""FuseHardSwishPass: hard-sigmoid and hard-swish written out elementwise become the ops.

Exporters (Paddle2ONNX, older torch/tf converters) write ``hardsigmoid(x)`` as
``Clip(x + 3, 0, 6) / 6`` and ``hardswish(x)`` as ``x * Clip(x + 3, 0, 6) / 6``. Quantized
as written, every one of those Add/Mul ops gets its own Q/DQ (each a rounding step, and
no int8 kernel gains from them). As one ``HardSigmoid(alpha=1/6, beta=0.5)`` or
``HardSwish`` node they run in float between the quantized Convs, rounded once.

Recognised (intermediate values used once, constants within float32 rounding):
``Add(x, 3) -> Clip(0, 6) -> Div(6) | Mul(1/6)`` -> HardSigmoid;
``Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(6) | Mul(1/6)`` and ``Mul(x, HardSigmoid(x;
1/6, 0.5))`` -> HardSwish (opset >= 14; below it, ``x * HardSigmoid(x)``). Clip bounds as
inputs (opset >= 11) or attributes. A second run finds nothing to do.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["FuseHardSwishPass"]

logger = logging.getLogger(__name__)


def _scalar(v: ir.Value | None, x: ir.Value | None = None, *, any_rank: bool = False) -> float | None:
    """The value of a one-element float constant that broadcasting against ``x`` leaves
    ``x``'s shape alone (rank 0, or a rank no higher than ``x``'s known rank); with
    ``any_rank`` (Clip bounds, which do not broadcast) of any rank."""
    a = irutil.const_array(v) if v is not None else None
    if a is None or a.size != 1 or a.dtype.kind != "f":
        return None
    if a.ndim and not any_rank and (x is None or x.shape is None or a.ndim > len(x.shape)):
        return None
    return float(a.reshape(()))


def _close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _std(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")


def _only_use(v: ir.Value) -> ir.Node | None:
    uses = v.uses()
    if len(uses) != 1 or v.is_graph_output():
        return None
    return uses[0][0]


def _other(node: ir.Node, v: ir.Value) -> ir.Value | None:
    """The other input of a two-input node that reads ``v``."""
    if len(node.inputs) != 2:
        return None
    if node.inputs[0] is v:
        return node.inputs[1]
    if node.inputs[1] is v:
        return node.inputs[0]
    return None


def _clip_0_6(node: ir.Node) -> bool:
    if not _std(node, "Clip"):
        return False
    if len(node.inputs) > 1:
        lo = _scalar(node.inputs[1], any_rank=True)
        hi = _scalar(node.inputs[2], any_rank=True) if len(node.inputs) > 2 else None
    else:
        lo, hi = node.attributes.get_float("min", None), node.attributes.get_float("max", None)
    return _close(lo, 0.0) and _close(hi, 6.0)


def _divides_by_6(node: ir.Node | None, v: ir.Value) -> bool:
    """``node`` is ``v / 6`` or ``v * (1/6)``."""
    if _std(node, "Div") and len(node.inputs) == 2 and node.inputs[0] is v:
        return _close(_scalar(node.inputs[1], v), 6.0)
    if _std(node, "Mul"):
        return _close(_scalar(_other(node, v), v), 1.0 / 6.0)
    return False


def _plus_3_clip(start: ir.Node) -> tuple[ir.Value, ir.Node] | None:
    """``start`` = Add(x, 3) whose only use is Clip(., 0, 6): (x, the Clip)."""
    if not _std(start, "Add") or len(start.inputs) != 2:
        return None
    for x, three in ((start.inputs[0], start.inputs[1]), (start.inputs[1], start.inputs[0])):
        if x is None or irutil.is_constant(x) or not _close(_scalar(three, x), 3.0):
            continue
        clip = _only_use(start.outputs[0])
        if clip is None or not _clip_0_6(clip) or clip.inputs[0] is not start.outputs[0]:
            return None
        return x, clip
    return None


def _written_out(start: ir.Node) -> tuple[str, ir.Value, list[ir.Node], ir.Value] | None:
    """``start`` = Add(x, 3) of a written-out activation: (``HardSwish`` for
    ``x * Clip(x + 3, 0, 6) / 6`` in either order of Mul and Div, or ``HardSigmoid`` for
    ``Clip(x + 3, 0, 6) / 6``; x; its nodes; its output)."""
    found = _plus_3_clip(start)
    if found is None:
        return None
    x, clip = found
    after = _only_use(clip.outputs[0])
    if _std(after, "Mul") and _other(after, clip.outputs[0]) is x:
        div = _only_use(after.outputs[0])
        if div is None or not _divides_by_6(div, after.outputs[0]):
            return None
        return "HardSwish", x, [start, clip, after, div], div.outputs[0]
    if after is None or not _divides_by_6(after, clip.outputs[0]):
        return None
    return "HardSigmoid", x, [start, clip, after], after.outputs[0]


def _replace(graph: ir.Graph, old: list[ir.Node], y: ir.Value, new: list[ir.Node]) -> None:
    """Put ``new`` (whose last node's output stands for ``y``) in place of ``old``."""
    graph.insert_before(old[0], new)
    out = new[-1].outputs[0]
    y.replace_all_uses_with(out, replace_graph_outputs=True)
    name = y.name
    for node in reversed(old):
        consts = [v for v in node.inputs if v is not None and irutil.is_constant(v)]
        graph.remove(node, safe=True)
        for v in consts:
            irutil.remove_if_unused(graph, v)
    if name:
        y.name = None
        out.name = name


class FuseHardSwishPass(ir.passes.InPlacePass):
    """Written-out hard-sigmoid / hard-swish -> HardSigmoid / HardSwish nodes."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = irutil.default_opset(model)
        names = irutil.FreshNames(model.graph)
        fused = 0

        def hard_sigmoid(x: ir.Value, base: str) -> ir.Node:
            return ir.node("HardSigmoid", [x], attributes={"alpha": 1.0 / 6.0, "beta": 0.5},
                           outputs=[ir.Value(name=names(f"{base}_hardsigmoid"))], name=names(f"{base}_HardSigmoid"))

        def hard_swish(x: ir.Value, base: str) -> list[ir.Node]:
            if opset >= 14:
                return [ir.node("HardSwish", [x], outputs=[ir.Value(name=names(f"{base}_hardswish"))],
                                name=names(f"{base}_HardSwish"))]
            hs = hard_sigmoid(x, base)
            return [hs, ir.node("Mul", [x, hs.outputs[0]], outputs=[ir.Value(name=names(f"{base}_hardswish"))],
                                name=names(f"{base}_HardSwish"))]

        for node in list(irutil.iter_nodes(model.graph)):
            if node.graph is None:
                continue  # removed by an earlier match
            found = _written_out(node)
            if found is not None:
                kind, x, old, y = found
                base = node.name or "act"
                _replace(node.graph, old, y, hard_swish(x, base) if kind == "HardSwish" else [hard_sigmoid(x, base)])
                fused += 1
        if opset >= 14:  # x * HardSigmoid(x; 1/6, 0.5) -> HardSwish(x)
            for node in list(irutil.iter_nodes(model.graph)):
                if node.graph is None or not _std(node, "HardSigmoid") or not node.inputs:
                    continue
                if not (_close(node.attributes.get_float("alpha", 0.2), 1.0 / 6.0)
                        and _close(node.attributes.get_float("beta", 0.5), 0.5)):
                    continue
                x, h = node.inputs[0], node.outputs[0]
                mul = _only_use(h)
                if not _std(mul, "Mul") or _other(mul, h) is not x:
                    continue
                _replace(node.graph, [node, mul], mul.outputs[0], hard_swish(x, node.name or "act"))
                fused += 1
        if fused:
            logger.debug("fused %d written-out hard-sigmoid/hard-swish", fused)
        return ir.passes.PassResult(model, modified=bool(fused))
