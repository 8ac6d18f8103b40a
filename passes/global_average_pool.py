"""GlobalAveragePoolPass: an AveragePool whose single window covers its whole input becomes
GlobalAveragePool.

Exporters write global pooling with a fixed kernel at least as large as the feature map
(Hugging Face EfficientNet: ``AveragePool(kernel=[640, 640], strides=640, ceil_mode=1,
count_include_pad=1)`` over a 2x2 map). ORT computes that in float as the mean of the map, but
its int8 kernel (QLinearAveragePool, fused from DQ -> AveragePool -> Q) divides by the whole
640x640 window and returns ~0. As GlobalAveragePool it means the same, in float and in int8.

Rewritten only when it is exactly the mean of the map: the input's spatial dims are known,
the kernel covers each of them from offset 0 with no padding (pads 0, auto_pad NOTSET or
VALID, dilations 1), so there is one output position per channel. A second run finds nothing.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from onnxq import irutil

__all__ = ["GlobalAveragePoolPass"]

logger = logging.getLogger(__name__)


def _covers_whole_input(node: ir.Node) -> bool:
    x = node.inputs[0] if node.inputs else None
    if x is None or x.shape is None or len(x.shape) < 3:
        return False
    spatial = [d for d in x.shape[2:]]
    if not all(isinstance(d, int) and d > 0 for d in spatial):
        return False
    a = node.attributes
    kernel = list(a.get_ints("kernel_shape", ()))
    if len(kernel) != len(spatial) or any(k < d for k, d in zip(kernel, spatial)):
        return False
    if a.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    if any(p != 0 for p in a.get_ints("pads", ())) or any(d != 1 for d in a.get_ints("dilations", ())):
        return False
    # one output position: floor((d - k) / s) + 1 == 1 needs k == d without ceil_mode
    return bool(a.get_int("ceil_mode", 0)) or all(k == d for k, d in zip(kernel, spatial))


class GlobalAveragePoolPass(ir.passes.InPlacePass):
    """AveragePool over the whole feature map -> GlobalAveragePool."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        def replacement(node: ir.Node) -> ir.Node | None:
            if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
                return None
            if not _covers_whole_input(node):
                return None
            return ir.node("GlobalAveragePool", [node.inputs[0]], name=node.name or None)

        rewritten = irutil.replace_nodes(model, replacement)  # keeps the output's name (a graph output's too)
        if rewritten:
            logger.debug("rewrote %d whole-map AveragePool node(s) as GlobalAveragePool", rewritten)
        return ir.passes.PassResult(model, modified=bool(rewritten))
