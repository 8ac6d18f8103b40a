"""A read-only view of a QDQ model for the structural checkers: each Q/DQ node's type,
scale, zero point, granularity, and which compute node reads or writes it.

Nothing here modifies the model."""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import numpy as np
import onnx_ir as ir

from onnxq import irutil

__all__ = ["QdqNode", "QdqView", "STANDARD_DOMAINS"]

STANDARD_DOMAINS = ("", "ai.onnx")
_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")

_DTYPE_NAMES = {
    ir.DataType.UINT8: "uint8",
    ir.DataType.INT8: "int8",
    ir.DataType.UINT16: "uint16",
    ir.DataType.INT16: "int16",
    ir.DataType.INT32: "int32",
    ir.DataType.INT4: "int4",
    ir.DataType.UINT4: "uint4",
    ir.DataType.FLOAT8E4M3FN: "float8e4m3fn",
    ir.DataType.FLOAT8E5M2: "float8e5m2",
}


@dataclasses.dataclass(frozen=True)
class QdqNode:
    """One QuantizeLinear or DequantizeLinear node.

    qtype: the integer side's type (``int8``, ``uint8``, ... or ``?`` when unknown);
    scale/zero_point: constant arrays or None when not constant (zero point None and
    ``zp_constant`` True: absent, i.e. 0); axis: the per-axis/blocked axis (normalized to
    be >= 0) or None per tensor; block_size: > 0 when blocked; on_constant: a DQ whose
    input is a constant (a stored weight) or a Q of a constant."""

    node: ir.Node
    kind: str  # "Q" | "DQ"
    qtype: str
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    zp_constant: bool
    axis: int | None
    block_size: int
    on_constant: bool

    @property
    def name(self) -> str:
        return self.node.name or f"<unnamed {self.node.op_type}>"

    @property
    def per_tensor(self) -> bool:
        return self.scale is not None and self.scale.size == 1

    @property
    def blocked(self) -> bool:
        return self.block_size > 0

    @property
    def zero_point_is_zero(self) -> bool:
        return self.zero_point is None or not np.any(self.zero_point.astype(np.int64))


def _dtype_name(dtype: ir.DataType | None) -> str:
    return _DTYPE_NAMES.get(dtype, "?") if dtype is not None else "?"


def _qdq(node: ir.Node) -> QdqNode:
    kind = "Q" if node.op_type == "QuantizeLinear" else "DQ"
    inputs = list(node.inputs) + [None] * 3
    x, scale_v, zp_v = inputs[0], inputs[1], inputs[2]
    scale = irutil.const_array(scale_v)
    zp = irutil.const_array(zp_v) if zp_v is not None else None
    zp_constant = zp_v is None or zp is not None
    if kind == "Q":
        qtype_value = zp_v if zp_v is not None else None
        out_type = node.outputs[0].dtype if node.outputs else None
        if qtype_value is not None and qtype_value.dtype is not None:
            qtype = _dtype_name(qtype_value.dtype)
        elif "output_dtype" in node.attributes:
            qtype = _dtype_name(ir.DataType(node.attributes.get_int("output_dtype", 0)))
        elif out_type is not None:
            qtype = _dtype_name(out_type)
        else:
            qtype = "uint8"  # the ONNX default when neither zero point nor output_dtype is given
    else:
        qtype = _dtype_name(x.dtype if x is not None else None)
        if qtype == "?" and zp_v is not None:
            qtype = _dtype_name(zp_v.dtype)
    rank = len(x.shape) if x is not None and x.shape is not None else None
    block = int(node.attributes.get_int("block_size", 0)) if "block_size" in node.attributes else 0
    axis: int | None = None
    if (scale is not None and scale.size > 1) or block:
        axis = node.attributes.get_int("axis", 1)
        if rank is not None and axis < 0:
            axis += rank
    return QdqNode(
        node=node,
        kind=kind,
        qtype=qtype,
        scale=scale,
        zero_point=zp,
        zp_constant=zp_constant,
        axis=axis,
        block_size=block,
        on_constant=irutil.is_constant(x),
    )


class QdqView:
    """Q/DQ nodes of a model and their neighbours (the main graph and subgraphs)."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.qdq: dict[int, QdqNode] = {}
        self.nodes: list[ir.Node] = list(irutil.iter_nodes(model.graph))
        for node in self.nodes:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in _QDQ_DOMAINS:
                self.qdq[id(node)] = _qdq(node)

    @property
    def opset(self) -> int:
        return irutil.default_opset(self.model)

    def all_qdq(self) -> Iterator[QdqNode]:
        return iter(self.qdq.values())

    def info(self, node: ir.Node | None) -> QdqNode | None:
        return self.qdq.get(id(node)) if node is not None else None

    def input_dq(self, node: ir.Node, index: int) -> QdqNode | None:
        """The DequantizeLinear feeding input ``index`` of ``node``, if any."""
        inputs = list(node.inputs)
        if index >= len(inputs) or inputs[index] is None:
            return None
        info = self.info(inputs[index].producer())
        return info if info is not None and info.kind == "DQ" else None

    def output_qs(self, node: ir.Node, index: int = 0) -> list[QdqNode]:
        """The QuantizeLinear nodes reading output ``index`` of ``node``."""
        if index >= len(node.outputs):
            return []
        out = []
        for user, _ in node.outputs[index].uses():
            info = self.info(user)
            if info is not None and info.kind == "Q":
                out.append(info)
        return out

    def consumers(self, node: ir.Node) -> list[tuple[ir.Node, int]]:
        return [u for v in node.outputs for u in v.uses()]

    @functools.cached_property
    def compute_nodes(self) -> list[ir.Node]:
        return [n for n in self.nodes if id(n) not in self.qdq]

    def is_quantized_unit(self, node: ir.Node) -> bool:
        """A QDQ node unit as ORT's EPs group them: every float tensor input comes from a
        DQ (or is a float constant only where noted by the caller) and every output is read
        by Q nodes only."""
        for v in node.inputs:
            if v is None or v.dtype not in (None, *irutil.FLOAT_TYPES):
                continue
            if self.input_dq_of_value(v) is None:
                return False
        for v in node.outputs:
            if v.dtype not in (None, *irutil.FLOAT_TYPES):
                continue
            uses = v.uses()
            if not uses or v.is_graph_output():
                return False
            if not all(self.info(u.node) is not None and self.info(u.node).kind == "Q" for u in uses):
                return False
        return True

    def input_dq_of_value(self, v: ir.Value) -> QdqNode | None:
        info = self.info(v.producer())
        return info if info is not None and info.kind == "DQ" else None


WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def stores_constant(view: QdqView, q: QdqNode) -> bool:
    """A Q/DQ on a stored constant: a DQ of a constant, a Q of a constant, or the DQ of
    such a Q (float weight → Q → DQ)."""
    if q.on_constant:
        return True
    if q.kind == "DQ":
        x = q.node.inputs[0]
        producer = x.producer() if x is not None else None
        prev = view.info(producer)
        return prev is not None and prev.kind == "Q" and prev.on_constant
    return False


def weight_value(view: QdqView, node: ir.Node, index: int) -> tuple[ir.Value | None, QdqNode | None]:
    """The stored weight behind input ``index`` (through a DQ or Q→DQ) and that DQ."""
    inputs = list(node.inputs)
    if index >= len(inputs) or inputs[index] is None:
        return None, None
    v = inputs[index]
    dq = view.input_dq(node, index)
    if dq is None:
        return (v if irutil.is_constant(v) else None), None
    x = dq.node.inputs[0]
    if irutil.is_constant(x):
        return x, dq
    q = view.info(x.producer()) if x is not None else None
    if q is not None and q.kind == "Q" and q.on_constant:
        return q.node.inputs[0], dq
    return None, dq


def node_label(node: ir.Node | None) -> str:
    if node is None:
        return ""
    return node.name or f"<unnamed {node.op_type}>"
