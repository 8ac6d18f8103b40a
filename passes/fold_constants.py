"""FoldConstantsPass: reshapes and small arithmetic whose inputs are all constants become
initializers.

Exporters leave weights behind ``Reshape``/``Unsqueeze``/``Transpose``/``Cast`` of a
constant (Paddle2ONNX writes a conv bias as ``Add(conv, Reshape(b, [1, C, 1, 1]))``).
Quantization rules look for constants among initializers, so without folding such a bias
is an activation: its Add gets Q/DQ of its own and cannot go into the Conv. Folded here:

- shape ops (``Reshape``, ``Unsqueeze``, ``Squeeze``, ``Flatten``, ``Transpose``,
  ``Identity``, ``Cast``) of a constant;
- ``Add``/``Sub``/``Mul``/``Div``/``Neg``/``Sqrt``/``Reciprocal`` of constants whose result
  is no larger than their largest input (nothing that would blow up the file).

Only float and integer tensors; nodes in subgraphs too. A second run finds nothing.

A ``Transpose`` of a large constant (a weight behind ``Transpose`` in exports without constant
folding, a tied lm_head) becomes a lazy initializer: the transposed array is only made when a
pass reads it (one layer at a time), so memory-mapped external weights are not all loaded at once.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["FoldConstantsPass"]

logger = logging.getLogger(__name__)

# Transposes of constants at least this large are folded lazily (see the module docstring)
LAZY_ELEMENTS = 1 << 20

_ARITH = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": None,
    "Neg": np.negative, "Sqrt": np.sqrt, "Reciprocal": None,
}
_CASTS = {
    ir.DataType.FLOAT: np.float32, ir.DataType.DOUBLE: np.float64, ir.DataType.FLOAT16: np.float16,
    ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32, ir.DataType.INT8: np.int8, ir.DataType.UINT8: np.uint8,
}


def _axes(node: ir.Node, arrays: list[np.ndarray], rank: int) -> list[int] | None:
    if len(arrays) > 1:
        return [int(a) % rank for a in arrays[1].reshape(-1)]
    attr = node.attributes.get("axes")
    return [int(a) % rank for a in attr.as_ints()] if attr is not None else None


def _evaluate(node: ir.Node, arrays: list[np.ndarray]) -> np.ndarray | None:
    op, x = node.op_type, arrays[0]
    if op == "Identity":
        return x
    if op == "Reshape":
        shape = [int(d) for d in arrays[1].reshape(-1)]
        if not node.attributes.get_int("allowzero", 0):
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return x.reshape(shape)
    if op == "Flatten":
        axis = node.attributes.get_int("axis", 1) % max(x.ndim, 1)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op == "Transpose":
        perm = node.attributes.get("perm")
        return np.transpose(x, [int(p) for p in perm.as_ints()] if perm is not None else None)
    if op == "Unsqueeze":
        given = arrays[1].reshape(-1) if len(arrays) > 1 else node.attributes.get("axes").as_ints()
        axes = _axes(node, arrays, x.ndim + len(given))
        out = x
        for a in sorted(axes):
            out = np.expand_dims(out, a)
        return out
    if op == "Squeeze":
        axes = _axes(node, arrays, x.ndim)
        return np.squeeze(x, axis=tuple(axes)) if axes is not None else np.squeeze(x)
    if op == "Cast":
        to = _CASTS.get(ir.DataType(node.attributes.get_int("to", 0)))
        return x.astype(to) if to is not None else None
    if op in _ARITH:
        if any(a.dtype.kind not in "fi" for a in arrays):
            return None
        if op in ("Neg", "Sqrt", "Reciprocal"):
            if op == "Reciprocal":
                return (1 / x).astype(x.dtype) if x.dtype.kind == "f" else None
            return _ARITH[op](x)
        a, b = arrays
        if a.dtype != b.dtype:
            return None
        if np.broadcast_shapes(a.shape, b.shape) != max((a.shape, b.shape), key=lambda s: int(np.prod(s))):
            return None  # the result would be larger than either input
        if op == "Div":
            return (a / b).astype(a.dtype) if a.dtype.kind == "f" else None
        return _ARITH[op](a, b).astype(a.dtype)
    return None


class FoldConstantsPass(ir.passes.InPlacePass):
    """Shape ops and small arithmetic on constants -> initializers."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = irutil.FreshNames(model.graph)
        folded = 0
        for node in list(irutil.iter_nodes(model.graph)):
            if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1 or node.graph is None:
                continue
            if node.op_type not in _ARITH and node.op_type not in (
                "Identity", "Reshape", "Flatten", "Transpose", "Unsqueeze", "Squeeze", "Cast"
            ):
                continue
            if node.outputs[0].is_graph_output():
                continue
            inputs = [v for v in node.inputs if v is not None]
            if not inputs or not all(irutil.is_constant(v) for v in inputs):
                continue
            if node.op_type == "Transpose" and self._fold_lazily(node, names):
                folded += 1
                continue
            arrays = [irutil.const_array(v) for v in inputs]
            if any(a is None or a.dtype.kind not in "fiub" for a in arrays):
                continue
            try:
                with np.errstate(all="ignore"):
                    result = _evaluate(node, arrays)
            except (ValueError, TypeError, IndexError, AttributeError):
                result = None
            if result is None or (result.dtype.kind == "f" and not np.isfinite(result).all()):
                continue
            y = node.outputs[0]
            graph = node.graph
            const = irutil.add_initializer(graph, names(f"{y.name or node.op_type}_folded"),
                                           np.ascontiguousarray(result))
            y.replace_all_uses_with(const, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            for v in inputs:
                irutil.remove_if_unused(graph, v)
            folded += 1
        if folded:
            logger.debug("folded %d constant expression node(s)", folded)
        return ir.passes.PassResult(model, modified=bool(folded))

    @staticmethod
    def _fold_lazily(node: ir.Node, names) -> bool:
        """Transpose of one large initializer -> a lazy initializer (the array is made on read)."""
        src = node.inputs[0]
        tensor = src.const_value if src is not None else None
        if tensor is None or len(node.inputs) != 1 or tensor.size < LAZY_ELEMENTS:
            return False
        rank = len(tensor.shape)
        perm = list(node.attributes.get_ints("perm", list(range(rank - 1, -1, -1))))
        if sorted(perm) != list(range(rank)):
            return False
        y = node.outputs[0]
        graph = node.graph
        name = names(f"{y.name or 'weight'}_folded")

        def transposed() -> ir.TensorProtocol:
            array = np.ascontiguousarray(np.transpose(tensor.numpy(), perm))
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()  # unmap the source: its pages would stay resident for every layer read
            return ir.tensor(array, name=name)

        shape = ir.Shape([tensor.shape[p] for p in perm])
        lazy = ir.LazyTensor(transposed, dtype=tensor.dtype, shape=shape, name=name)
        const = ir.Value(name=name, shape=shape, type=ir.TensorType(tensor.dtype), const_value=lazy)
        graph.register_initializer(const)
        y.replace_all_uses_with(const, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        irutil.remove_if_unused(graph, src)
        return True
