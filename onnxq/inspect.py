"""What is in a model: opsets, op histogram (subgraphs included), quantizable and
already-quantized nodes, size."""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path

import onnx_ir as ir

from onnxq import irutil

__all__ = ["ModelSummary", "summarize", "QUANTIZED_OP_TYPES", "quantized_nodes"]

QUANTIZED_OP_TYPES = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
        "ConvInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
        "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulNBits", "MatMulIntegerToFloat",
        "QGemm", "QAttention", "MatMulBlockInt4", "QLinearSigmoid", "QLinearLeakyRelu",
        "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax",
        "GatherBlockQuantized",
    }
)
QUANTIZABLE_OP_TYPES = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


def quantized_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in irutil.iter_nodes(model.graph) if n.op_type in QUANTIZED_OP_TYPES]


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    path: str | None
    file_bytes: int | None
    weight_bytes: int
    ir_version: int
    opsets: dict[str, int]
    op_histogram: dict[str, int]
    subgraphs: int
    quantizable: dict[str, int]
    quantized: dict[str, int]
    inputs: list[dict]
    outputs: list[dict]
    # every node's name and op type (what --exclude / --include / --keep-float match), JSON only
    nodes: list[dict] = dataclasses.field(default_factory=list)

    @property
    def is_quantized(self) -> bool:
        return bool(self.quantized)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _io(values) -> list[dict]:
    return [
        {
            "name": v.name,
            "dtype": v.dtype.name if v.dtype is not None else None,
            "shape": [d if isinstance(d, int) else str(d) for d in v.shape] if v.shape is not None else None,
        }
        for v in values
    ]


def summarize(model: ir.Model, path: str | os.PathLike | None = None) -> ModelSummary:
    from onnxq.modelio import model_weight_bytes

    hist: collections.Counter[str] = collections.Counter()
    quantizable: collections.Counter[str] = collections.Counter()
    for node in irutil.iter_nodes(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        hist[key] += 1
        if node.domain in ("", "ai.onnx") and node.op_type in QUANTIZABLE_OP_TYPES:
            if len(node.inputs) > 1 and irutil.is_constant(node.inputs[1]):
                quantizable[node.op_type] += 1
    quantized = collections.Counter(n.op_type for n in quantized_nodes(model))
    file_bytes = None
    if path is not None:
        p = Path(path)
        file_bytes = p.stat().st_size
        data = p.with_name(p.name + ".data")
        if data.exists():
            file_bytes += data.stat().st_size
    return ModelSummary(
        path=str(path) if path is not None else None,
        file_bytes=file_bytes,
        weight_bytes=model_weight_bytes(model),
        ir_version=model.ir_version,
        opsets=dict(model.opset_imports),
        op_histogram=dict(hist.most_common()),
        subgraphs=sum(1 for _ in model.graph.subgraphs()),
        quantizable=dict(quantizable),
        quantized=dict(quantized),
        inputs=_io(model.graph.inputs),
        outputs=_io(model.graph.outputs),
        nodes=[{"name": n.name or "", "op_type": n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"}
               for n in irutil.iter_nodes(model.graph)],
    )
