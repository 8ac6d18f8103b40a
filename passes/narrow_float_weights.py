"""NarrowFloatWeightsPass: float32 weights that hold 16-bit values are stored 16-bit again.

int8 recipes quantize a float16 (or bfloat16) model as its float32 equivalent
(``WidenFloat16Pass``). The weights they quantize become int8; the weights they leave in
float -- Convs that int8-dynamic does not touch, LayerNorm scales, excluded or skipped
layers -- would stay float32, twice their size in the input (a float16 CNN whose Convs
int8-dynamic leaves alone came out at 193 % of its size). This pass stores each such
float32 initializer as the 16-bit tensor it came from, read through one ``Cast`` to
float32: the values the graph computes with are bit for bit the same, and runtimes fold a
Cast of a constant when the session is created (ONNX Runtime's constant folding,
OpenVINO's), so the weight is prepacked as before.

An initializer is narrowed only when every value of it is exactly representable in the
16-bit type (what a widened float16 weight is; a bias changed by bias correction is not),
it has at least ``min_elements`` values, it is not a model input or output, and every
reader is a standard-domain node other than QuantizeLinear/DequantizeLinear (whose scales
runtimes match as initializers). Narrowed initializers are 16-bit, so a second run finds
nothing to do.
"""

from __future__ import annotations

import logging

import ml_dtypes
import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["NarrowFloatWeightsPass"]

logger = logging.getLogger(__name__)

_NUMPY_TYPES = {ir.DataType.FLOAT16: np.float16, ir.DataType.BFLOAT16: ml_dtypes.bfloat16}
# readers whose constant inputs runtimes match as initializers
_KEEP_FOR = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _narrowable(value: ir.Value, min_elements: int) -> bool:
    tensor = value.const_value
    if tensor is None or tensor.dtype != ir.DataType.FLOAT or value.is_graph_input() or value.is_graph_output():
        return False
    if tensor.size < min_elements:
        return False
    uses = list(value.uses())
    return bool(uses) and all(n.domain in ("", "ai.onnx") and n.op_type not in _KEEP_FOR for n, _ in uses)


class NarrowFloatWeightsPass(ir.passes.InPlacePass):
    """Store float32 initializers whose values are all exact in ``dtype`` (float16 or
    bfloat16) as ``dtype``, read through a Cast to float32 (see the module doc)."""

    def __init__(self, dtype: ir.DataType = ir.DataType.FLOAT16, min_elements: int = 64) -> None:
        super().__init__()
        if dtype not in _NUMPY_TYPES:
            raise ValueError(f"NarrowFloatWeightsPass narrows to float16 or bfloat16, not {dtype}")
        self.dtype = dtype
        self.min_elements = min_elements
        self.saved_bytes = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        narrow = _NUMPY_TYPES[self.dtype]
        names = irutil.FreshNames(model.graph)
        self.saved_bytes = 0
        for graph in irutil.iter_graphs(model.graph):
            casts = []
            for value in list(graph.initializers.values()):
                if not _narrowable(value, self.min_elements):
                    continue
                array = value.const_value.numpy()
                small = array.astype(narrow)
                if not np.array_equal(small.astype(np.float32), array, equal_nan=True):
                    continue
                readers = list(value.uses())
                stored = irutil.add_initializer(graph, names(f"{value.name}/{self.dtype.name.lower()}"), small)
                cast = ir.node("Cast", [stored], attributes={"to": ir.DataType.FLOAT},
                               name=names(f"{value.name}/to_float32"))
                out = cast.outputs[0]
                out.name, out.dtype, out.shape = names(f"{value.name}/float32"), ir.DataType.FLOAT, value.shape
                for node, index in readers:
                    node.replace_input_with(index, out)
                graph.initializers.pop(value.name)
                casts.append(cast)
                self.saved_bytes += array.nbytes - small.nbytes
            if casts:
                first = next(iter(graph), None)
                if first is None:
                    graph.extend(casts)
                else:
                    graph.insert_before(first, casts)
        if self.saved_bytes:
            logger.debug("stored float32 weights as %s: %d bytes saved", self.dtype.name, self.saved_bytes)
        return ir.passes.PassResult(model, modified=bool(self.saved_bytes))
