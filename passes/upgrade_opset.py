"""UpgradeOpsetPass: raise the model's default-domain (ai.onnx) opset, converting the nodes
whose meaning changed on the way — not just bumping the number.

Blocked ``DequantizeLinear`` (int4 weights with ``block_size``) needs opset 21. From opset
13 on, the operators whose semantics changed up to 21 are rewritten here, in the IR, so
models over 2 GB never pass through protobuf:

- ``Reduce{L1,L2,LogSum,LogSumExp,Max,Mean,Min,Prod,SumSquare}`` (18): the ``axes``
  attribute becomes the second input;
- ``Split`` (18): without a ``split`` input the number of outputs must be given as
  ``num_outputs``;
- ``RoiAlign`` (16): the old behaviour is ``coordinate_transformation_mode="output_half_pixel"``;
- ``GridSample`` (20): modes ``bilinear``/``bicubic`` are now ``linear``/``cubic``;
- ``DFT`` (20): the ``axis`` attribute (default 1) becomes the third input;
- ``GroupNormalization`` (21): scale and bias go from one value per group to one per
  channel (constant scale/bias with a known channel count are repeated);
- ``BatchNormalization`` (14): only the inference form (one output) is converted.

Every other change from 13 to 21 only widens type sets or adds attributes whose defaults
keep the old behaviour (Resize, Pad, Reshape, Shape, Cast, ...), so those nodes are valid
as they are. Subgraphs (If/Loop/Scan bodies) and model-local functions are converted too.
Models older than opset 13 go through ``onnx.version_converter`` on a copy whose large
tensors are stubbed out (so no data is copied and no 2 GB protobuf is built), then the
original tensors are put back.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["UpgradeOpsetPass"]

logger = logging.getLogger(__name__)

_REDUCE_18 = frozenset(
    {
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSumSquare",
    }
)
NATIVE_MIN_OPSET = 13
# the IR version each opset needs (onnx.helper.VERSION_TABLE); int4 tensors need IR 10
_MIN_IR_VERSION = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11}


class UpgradeOpsetPass(ir.passes.InPlacePass):
    """Convert the model to ai.onnx opset ``target`` (default 21); no-op when already there."""

    def __init__(self, target: int = 21) -> None:
        super().__init__()
        if not 13 <= target <= 23:
            raise ValueError(f"target opset {target} is not supported (13..23)")
        self.target = target

    def requires(self, model: ir.Model) -> None:
        current = irutil.default_opset(model, None)
        if current is None:
            return
        if current > self.target:
            raise ir.passes.PreconditionError(
                f"the model is at opset {current}, above the target {self.target}; onnxq does not downgrade"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = irutil.default_opset(model, None)
        if current is None or current >= self.target:
            return ir.passes.PassResult(model, modified=False)
        if current < NATIVE_MIN_OPSET:
            _convert_with_onnx(model, self.target)
            logger.info("upgraded opset %d -> %d with onnx.version_converter", current, self.target)
            return ir.passes.PassResult(model, modified=True)
        names = irutil.FreshNames(model.graph)
        graphs_and_nodes = [(node.graph, node) for node in list(model.graph.all_nodes())]
        for function in model.functions.values():
            f_version = function.opset_imports.get("", current)
            if f_version < NATIVE_MIN_OPSET:
                raise ir.passes.PreconditionError(
                    f"model function {function.name} uses opset {f_version}; upgrade it separately"
                )
            graphs_and_nodes.extend((function, node) for node in list(function.all_nodes()))
        changed = 0
        for owner, node in graphs_and_nodes:
            if node.domain not in ("", "ai.onnx"):
                continue
            changed += _convert_node(node, current, self.target, names)
        model.opset_imports[""] = self.target
        model.opset_imports.pop("ai.onnx", None)
        model.ir_version = max(model.ir_version or 0, _MIN_IR_VERSION.get(self.target, 10))
        for function in model.functions.values():
            function.opset_imports[""] = self.target
        logger.info("upgraded opset %d -> %d (%d nodes rewritten)", current, self.target, changed)
        return ir.passes.PassResult(model, modified=True)


def _owner_insert(node: ir.Node, new: ir.Node) -> None:
    owner = node.graph
    if owner is None:  # pragma: no cover - nodes always belong to a graph or function
        raise RuntimeError(f"node {node.name} is not in a graph")
    owner.insert_before(node, new)


def _convert_node(node: ir.Node, current: int, target: int, names: irutil.FreshNames) -> int:
    op = node.op_type
    label = node.name or op
    if op in _REDUCE_18 and current < 18 <= target:
        axes = node.attributes.pop("axes", None)
        if axes is None:
            return 0
        value = _make_const(node, names, f"{label}_axes", axes.as_ints())
        _set_input(node, 1, value)
        return 1
    if op == "Split" and current < 18 <= target:
        has_split = len(node.inputs) > 1 and node.inputs[1] is not None
        if not has_split and "num_outputs" not in node.attributes:
            node.attributes["num_outputs"] = ir.AttrInt64("num_outputs", len(node.outputs))
            return 1
        return 0
    if op == "RoiAlign" and current < 16 <= target:
        if "coordinate_transformation_mode" not in node.attributes:
            node.attributes["coordinate_transformation_mode"] = ir.AttrString(
                "coordinate_transformation_mode", "output_half_pixel"
            )
            return 1
        return 0
    if op == "GridSample" and current < 20 <= target:
        mode = node.attributes.get_string("mode", "bilinear")
        renamed = {"bilinear": "linear", "bicubic": "cubic"}.get(mode)
        if renamed is None and "mode" in node.attributes:
            return 0
        node.attributes["mode"] = ir.AttrString("mode", renamed or "linear")
        return 1
    if op == "DFT" and current < 20 <= target:
        axis = node.attributes.pop("axis", None)
        axis_value = axis.as_int() if axis is not None else 1
        value = _make_const(node, names, f"{label}_axis", np.int64(axis_value))
        _set_input(node, 2, value)
        return 1
    if op == "GroupNormalization" and current < 21 <= target:
        return _convert_group_norm(node, names)
    if op == "BatchNormalization" and current < 14 <= target:
        if len([o for o in node.outputs if o.name and o.uses()]) > 1 or any(
            o.is_graph_output() for o in node.outputs[1:]
        ):
            raise ir.passes.PreconditionError(
                f"BatchNormalization {label} uses its training outputs; onnxq converts only the inference form"
            )
        return 0
    return 0


def _make_const(node: ir.Node, names: irutil.FreshNames, base: str, values) -> ir.Value:
    array = np.asarray(values, dtype=np.int64)
    out = ir.Value(name=names(base), shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.INT64))
    const = ir.node("Constant", [], {"value": ir.tensor(array, name=out.name)}, outputs=[out], name=names(base + "_const"))
    _owner_insert(node, const)
    return out


def _set_input(node: ir.Node, index: int, value: ir.Value) -> None:
    """Set ``node.inputs[index]``, padding the missing optional inputs with None."""
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def _convert_group_norm(node: ir.Node, names: irutil.FreshNames) -> int:
    label = node.name or "GroupNormalization"
    groups = node.attributes.get_int("num_groups")
    x = node.inputs[0]
    channels = None
    if x is not None and x.shape is not None and len(x.shape) > 1 and isinstance(x.shape[1], int):
        channels = x.shape[1]
    if groups is None or channels is None:
        raise ir.passes.PreconditionError(
            f"GroupNormalization {label}: opset 21 needs per-channel scale/bias and the channel count is unknown; "
            "run shape inference first"
        )
    for i in (1, 2):
        v = node.inputs[i]
        array = irutil.const_array(v)
        if array is None:
            raise ir.passes.PreconditionError(
                f"GroupNormalization {label}: input {i} is not constant, cannot convert it to per-channel"
            )
        if array.shape == (channels,):
            continue
        per_channel = np.repeat(array, channels // groups)
        new = ir.Value(
            name=names(f"{v.name or label}_per_channel"),
            shape=ir.Shape(per_channel.shape),
            type=ir.TensorType(v.dtype),
        )
        const = ir.node("Constant", [], {"value": ir.tensor(per_channel, name=new.name)}, outputs=[new], name=names(f"{label}_c{i}"))
        _owner_insert(node, const)
        node.replace_input_with(i, new)
    return 1


# -- opset < 13: onnx.version_converter over a stub copy -----------------------------------

_STUB_LOCATION = "__onnxq_stub__"


def _convert_with_onnx(model: ir.Model, target: int) -> None:
    import onnx
    import onnx.version_converter

    saved: dict[str, ir.TensorProtocol] = {}
    for graph in (model.graph, *model.graph.subgraphs()):
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if tensor is not None and tensor.nbytes > 1024:
                saved[name] = tensor
                value.const_value = ir.ExternalTensor(
                    _STUB_LOCATION, offset=0, length=tensor.nbytes, dtype=tensor.dtype, shape=tensor.shape, name=name
                )
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for graph in (model.graph, *model.graph.subgraphs()):
            for name, value in graph.initializers.items():
                if name in saved:
                    value.const_value = saved[name]
    # the converter only resolves initializers that are also graph inputs (the IR < 4 rule):
    # list them as inputs for the conversion, and drop those entries again afterwards
    listed = {v.name for v in proto.graph.input}
    added = []
    for init in proto.graph.initializer:
        if init.name not in listed:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            added.append(init.name)
    try:
        converted = onnx.version_converter.convert_version(proto, target)
        if added:
            keep = [v for v in converted.graph.input if v.name not in set(added)]
            del converted.graph.input[:]
            converted.graph.input.extend(keep)
    except Exception as e:
        raise ir.passes.PassError(f"onnx.version_converter could not convert the model to opset {target}: {e}") from None
    new = ir.serde.deserialize_model(converted)
    for graph in (new.graph, *new.graph.subgraphs()):
        for name, value in graph.initializers.items():
            if name in saved:
                value.const_value = saved[name]
    model.graph = new.graph  # the model's opset imports are its graph's
    model.ir_version = max(model.ir_version or 0, new.ir_version, _MIN_IR_VERSION.get(target, 10))
