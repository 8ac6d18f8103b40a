"""WidenFloat16Pass: a float16 model computes in float32, its float16 inputs and outputs kept.

"float16" below stands for both 16-bit float types, float16 and bfloat16: a bfloat16 input
or output stays bfloat16.

int8 QDQ and dynamic int8 need float32 activations (ORT's QuantizeLinear,
DynamicQuantizeLinear, QLinearConv and MatMulInteger paths take float32 only), so a model
exported in float16 -- or converted with float16 weights and ``keep_io_types`` -- is
rewritten to compute in float32 before it is quantized:

- float16 initializers and ``Constant`` / ``ConstantOfShape`` tensors become float32;
- dtype attributes that name float16 (``Cast.to``, ``dtype`` of EyeLike and the Random*
  ops) name float32;
- every float16 value (subgraphs included) is typed float32;
- a float16 input of the model gets a ``Cast`` to float32 after it and a float16 output a
  ``Cast`` back before it, so callers feed and read the same types as before;
- a ``Cast`` that no longer changes the type (``keep_io_types`` conversions put one at each
  boundary) is removed.

Only the standard domain's dtype attributes are rewritten; a custom-domain node that is
typed float16 by an attribute, or a non-tensor value (sequence, optional) of float16, is
refused (``OnnxqError``): widening it could change what the node computes. An initializer
that is also a model input (``keep_initializers_as_inputs`` exports) is a weight: it is
widened with its declared type (feeding it means feeding float32). A model with no float16
value is left alone, so a second run changes nothing.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq.errors import OnnxqError
from onnxq.passes.infer_shapes import InferShapesPass

__all__ = ["WidenFloat16Pass", "computes_in_float16", "uses_bfloat16"]

logger = logging.getLogger(__name__)

# the 16-bit float types this pass widens (bfloat16 too: torch exports it, ORT CPU runs few ops in it)
_HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_HALF_CODES = {t.value for t in _HALF}
_F32 = ir.DataType.FLOAT
_DTYPE_ATTRIBUTES = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
                     "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Bernoulli": "dtype",
                     "Multinomial": "dtype"}
_TENSOR_ATTRIBUTES = {"Constant": "value", "ConstantOfShape": "value"}


def _standard(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _values(graph: ir.Graph):
    """Every value of ``graph`` and its subgraphs: inputs, initializers, node outputs."""
    for g in irutil.iter_graphs(graph):
        yield from g.inputs
        yield from g.initializers.values()
        for node in g:
            yield from node.outputs


def _is_half_tensor(value: ir.Value) -> bool:
    return isinstance(value.type, ir.TensorType) and value.dtype in _HALF


def _boundary_cast(node: ir.Node, root: ir.Graph) -> bool:
    """A Cast this pass puts at the model boundary: float16 model input -> float32, or
    float32 -> float16 model output."""
    if node.op_type != "Cast" or not _standard(node) or node.graph is not root or node.inputs[0] is None:
        return False
    to = node.attributes.get("to")
    x, y = node.inputs[0], node.outputs[0]
    if to is None:
        return False
    if to.value == _F32.value and x.is_graph_input() and _is_half_tensor(x):
        return True
    return to.value in _HALF_CODES and y.is_graph_output() and x.dtype == _F32


def _boundary_input(v: ir.Value, root: ir.Graph) -> bool:
    return v.is_graph_input() and v.graph is root and all(_boundary_cast(n, root) for n, _ in v.uses())


def _boundary_output(v: ir.Value, root: ir.Graph) -> bool:
    p = v.producer()
    return v.is_graph_output() and p is not None and _boundary_cast(p, root)


def _gathers_rows(node: ir.Node, root: ir.Graph) -> bool:
    """A root-graph Gather whose rows (not a model output) only go to Casts to float32: how
    a kept 16-bit table is read (``keep_gather_tables``)."""
    if node.op_type != "Gather" or not _standard(node) or node.graph is not root:
        return False
    y = node.outputs[0]
    return not y.is_graph_output() and all(
        c.op_type == "Cast" and _standard(c) and (to := c.attributes.get("to")) is not None and to.value == _F32.value
        for c, _ in y.uses()
    )


def _is_kept_table(v: ir.Value, root: ir.Graph) -> bool:
    """A 16-bit initializer read only as the table of Gathers whose rows are cast to float32
    (left 16-bit by ``keep_gather_tables``), or one such Gather's rows."""
    p = v.producer()
    if p is not None:
        return p.op_type == "Gather" and p.inputs[0] is not None and _is_kept_table(p.inputs[0], root)
    uses = list(v.uses())
    return (
        v.const_value is not None and v.name in root.initializers and not v.is_graph_input() and bool(uses)
        and all(i == 0 and _gathers_rows(n, root) for n, i in uses)
    )


def _half_attributes(node: ir.Node) -> list[ir.Attr]:
    """The attributes of a standard node that make 16-bit floats: a dtype attribute naming
    one, or a Constant/ConstantOfShape tensor of one."""
    if not _standard(node):
        return []
    out = []
    name = _DTYPE_ATTRIBUTES.get(node.op_type)
    attr = node.attributes.get(name) if name is not None else None
    if attr is not None and attr.value in _HALF_CODES:
        out.append(attr)
    name = _TENSOR_ATTRIBUTES.get(node.op_type)
    attr = node.attributes.get(name) if name is not None else None
    if attr is not None and attr.type == ir.AttributeType.TENSOR and attr.value.dtype in _HALF:
        out.append(attr)
    return out


def _half_node(node: ir.Node, root: ir.Graph) -> bool:
    """A node that makes 16-bit floats whatever the value types say (models without
    value_info), the boundary Casts of a widened model excepted."""
    return bool(_half_attributes(node)) and not _boundary_cast(node, root)


def computes_in_float16(model: ir.Model, kept_tables: bool = False) -> bool:
    """Whether the model (subgraphs included) computes in float16/bfloat16: a tensor of
    that type other than model inputs and outputs that only pass through a Cast from/to
    float32, a 16-bit initializer, or a node that makes 16-bit floats. ``kept_tables``: a
    16-bit table whose Gathers' rows are only cast to float32 does not count (what
    ``keep_gather_tables`` leaves)."""
    root = model.graph
    if any(v.const_value is not None and v.const_value.dtype in _HALF and not _boundary_input(v, root)
           and not (kept_tables and _is_kept_table(v, root))
           for g in irutil.iter_graphs(root) for v in g.initializers.values()):
        return True
    if any(_half_node(n, root) for n in irutil.iter_nodes(root)):
        return True
    return any(
        _is_half_tensor(v) and not _boundary_input(v, root) and not _boundary_output(v, root)
        and not (kept_tables and _is_kept_table(v, root))
        for v in _values(root)
    )


def uses_bfloat16(model: ir.Model) -> bool:
    """Whether any tensor of the model (subgraphs included) is bfloat16: a typed value, an
    initializer, a Constant's tensor or a dtype attribute that names it."""
    bf16 = ir.DataType.BFLOAT16
    for v in _values(model.graph):
        if (isinstance(v.type, ir.TensorType) and v.dtype == bf16) or (
            v.const_value is not None and v.const_value.dtype == bf16
        ):
            return True
    return any(
        (a.value.dtype == bf16) if a.type == ir.AttributeType.TENSOR else a.value == bf16.value
        for n in irutil.iter_nodes(model.graph) for a in _half_attributes(n)
    )


def _cast_to_float32(v: ir.Value, names: irutil.FreshNames) -> ir.Node:
    """A Cast of ``v`` to float32 that takes over every present reader of ``v`` (the caller
    puts it in the graph)."""
    readers = list(v.uses())
    cast = ir.node("Cast", [v], attributes={"to": _F32}, name=names(f"{v.name}/to_float32"))
    out = cast.outputs[0]
    out.name, out.dtype, out.shape = names(f"{v.name}/float32"), _F32, v.shape
    for node, index in readers:
        node.replace_input_with(index, out)
    return cast


def _widened_tensor(tensor: ir.TensorProtocol) -> ir.Tensor:
    return ir.tensor(np.asarray(tensor.numpy(), dtype=np.float32), name=tensor.name)


class WidenFloat16Pass(ir.passes.InPlacePass):
    """float16 compute -> float32 compute, float16 model inputs/outputs kept (see module doc).

    ``keep_gather_tables``: a 16-bit initializer read by Gather (an embedding table) stays
    16-bit for those Gathers, whose rows get a Cast to float32; other readers of the same
    table get a widened copy. For recipes that leave Gather in float (int4): the table keeps
    its size instead of doubling."""

    def __init__(self, keep_gather_tables: bool = False) -> None:
        super().__init__()
        self.keep_gather_tables = keep_gather_tables

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not computes_in_float16(model, self.keep_gather_tables):
            return ir.passes.PassResult(model, modified=False)
        self._refuse_unsupported(model)
        root = model.graph
        InferShapesPass()(model)  # types for values the model did not annotate (no value_info)
        keep = {id(v) for v in _values(root) if _boundary_input(v, root) or _boundary_output(v, root)}
        names = irutil.FreshNames(root)
        tables = 0
        if self.keep_gather_tables:
            tables = self._keep_tables(root, names)
            keep |= {id(v) for v in _values(root) if _is_kept_table(v, root)}
        boundary_inputs = [v for v in root.inputs
                           if _is_half_tensor(v) and v.name not in root.initializers and id(v) not in keep]
        boundary_outputs = [(i, v) for i, v in enumerate(root.outputs) if _is_half_tensor(v) and id(v) not in keep]
        original = {id(v): v.dtype for v in boundary_inputs + [v for _, v in boundary_outputs]}
        for g in irutil.iter_graphs(root):
            for node in g:
                if not _boundary_cast(node, root):
                    self._widen_attributes(node)
        for v in list(_values(root)):
            if id(v) in keep:
                continue
            if v.const_value is not None and v.const_value.dtype in _HALF:
                v.const_value = _widened_tensor(v.const_value)
            if _is_half_tensor(v):
                v.dtype = _F32
        for v in boundary_inputs:
            half = original[id(v)]
            cast = _cast_to_float32(v, names)
            first = next(iter(root), None)
            if first is not None:
                root.insert_before(first, cast)
            else:
                root.append(cast)
            v.dtype = half
        casts: dict[int, ir.Value] = {}  # a value listed twice as an output gets one Cast
        for i, v in boundary_outputs:
            half = original[id(v)]
            if id(v) in casts:
                root.outputs[i] = casts[id(v)]
                continue
            if v.is_graph_input():
                v.dtype = half  # passed straight through: still 16-bit
                continue
            name = v.name
            v.name = names(f"{name}/float32")
            cast = ir.node("Cast", [v], attributes={"to": half}, name=names(f"{name}/to_{half.name.lower()}"))
            out = cast.outputs[0]
            out.dtype = half
            out.shape = v.shape
            producer = v.producer()
            if producer is not None and producer.graph is root:
                root.insert_after(producer, cast)
            else:
                root.append(cast)
            root.outputs[i] = out
            out.name = name
            casts[id(v)] = out
        InferShapesPass()(model)  # the widened types, for the no-op Cast check below
        removed = self._remove_identity_casts(root)
        logger.info(
            "the model computes in 16-bit floats: quantizing its float32 equivalent (%d float16 input(s) and %d output(s) "
            "kept through Cast nodes; %d no-op Cast(s) removed; %d Gather table(s) kept 16-bit)",
            len(boundary_inputs), len(boundary_outputs), removed, tables,
        )
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _keep_tables(root: ir.Graph, names: irutil.FreshNames) -> int:
        """Cast the rows of root Gathers on 16-bit initializers to float32 (the tables stay
        16-bit, see the class doc). Returns how many tables were kept."""
        kept = 0
        for v in list(root.initializers.values()):
            if v.const_value is None or v.const_value.dtype not in _HALF or v.is_graph_input():
                continue
            uses = list(v.uses())
            gathers = [n for n, i in uses if i == 0 and n.op_type == "Gather" and _standard(n)
                       and n.graph is root and not n.outputs[0].is_graph_output()]
            if not gathers:
                continue
            others = [(n, i) for n, i in uses if n not in gathers]
            if others:  # also read elsewhere: those readers get a copy of their own, widened below
                copy = ir.Value(name=names(f"{v.name}/float32"), type=ir.TensorType(v.const_value.dtype),
                                shape=ir.Shape(v.const_value.shape), const_value=v.const_value)
                root.register_initializer(copy)
                for n, i in others:
                    n.replace_input_with(i, copy)
            for n in gathers:
                rows = n.outputs[0]
                root.insert_after(n, _cast_to_float32(rows, names))
                rows.dtype = v.const_value.dtype
            kept += 1
        return kept

    @staticmethod
    def _refuse_unsupported(model: ir.Model) -> None:
        for v in _values(model.graph):
            t = v.type
            if t is not None and not isinstance(t, ir.TensorType) and getattr(t, "dtype", None) in _HALF:
                raise OnnxqError(
                    f"tensor {v.name!r} is a {type(t).__name__} of float16: onnxq widens float16 models to float32 "
                    "for int8 only through plain tensors; convert the model to float32 first"
                )
        for node in irutil.iter_nodes(model.graph):
            if _standard(node):
                continue
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.INT and attr.name in ("to", "dtype") and attr.value in _HALF_CODES:
                    raise OnnxqError(
                        f"node {irutil.node_label(node)} ({node.domain}.{node.op_type}) is set to float16 by its "
                        f"{attr.name!r} attribute: onnxq cannot widen it to float32 for int8; convert the model to "
                        "float32 first"
                    )

    @staticmethod
    def _widen_attributes(node: ir.Node) -> None:
        for attr in _half_attributes(node):
            if attr.type == ir.AttributeType.TENSOR:
                node.attributes[attr.name] = ir.AttrTensor(attr.name, _widened_tensor(attr.value))
            else:
                node.attributes[attr.name] = ir.AttrInt64(attr.name, _F32.value)

    @staticmethod
    def _remove_identity_casts(root: ir.Graph) -> int:
        removed = 0
        for node in list(irutil.iter_nodes(root)):
            if node.op_type != "Cast" or not _standard(node) or node.inputs[0] is None:
                continue
            x, y = node.inputs[0], node.outputs[0]
            if x.type is None or not isinstance(x.type, ir.TensorType) or x.dtype != y.dtype:
                continue
            to = node.attributes.get("to")
            if to is None or to.value != x.dtype.value:
                continue
            if y.is_graph_output():
                p = x.producer()
                if x.is_graph_input() or x.is_graph_output() or p is None or p.graph is not node.graph:
                    continue  # keep: the output needs a node of its own in this graph
                irutil.replace_node_output(node.graph, node, x)  # its input takes the name and the place
            else:
                y.replace_all_uses_with(x)
                node.graph.remove(node, safe=True)
            removed += 1
        return removed
