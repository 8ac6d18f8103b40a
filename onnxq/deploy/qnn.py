"""ONNX Runtime's QNN EP on the HTP (NPU) backend: the QDQ rules it needs, checked on
the graph (the EP and the Qualcomm SDK cannot run here).

What each rule relies on (facts, not code):

- ORT QNN EP documentation (onnxruntime.ai/docs/execution-providers/QNN-ExecutionProvider):
  the HTP backend runs quantized models only (float nodes go to the CPU EP); QNN operators
  typically take uint8 and uint16 data; dynamic shapes are not supported; the list of
  supported ONNX operators; HTP MatMul input type pairs (uint8, uint8), (uint8, uint16),
  (uint16, uint8).
- ORT's QNN quantization config (onnxruntime/quantization/execution_providers/qnn/
  quant_config.py): per-channel weights for Conv on axis 0 and ConvTranspose on axis 1;
  QNN does not support per-channel MatMul; 16-bit Q/DQ need opset 21 or the com.microsoft
  Q/DQ ops; 16-bit Sigmoid outputs use scale 1/65536 (uint16, zero point 0) or 1/32768
  (int16, 0), 16-bit Tanh outputs 1/32768 with zero point 32768 (uint16) or 0 (int16).
- ORT's QNN conv op builder (onnxruntime/core/providers/qnn/builder/opbuilder/
  conv_op_builder.cc): Conv inputs of rank 3 or 4 (1-D/2-D); ConvTranspose dilations 1;
  a quantized Conv's bias is a signed 32-bit fixed-point tensor.
- ORT's QDQ node-unit grouping: a node is handled as quantized when every input comes
  from a DequantizeLinear and its output goes to QuantizeLinear nodes; a quantized
  Conv/Gemm with a float bias is not such a unit. The QNN EP also takes
  DQ→Conv→Relu/Clip→Q as one quantized group (qnn_node_group/conv_activation_fusion.cc).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from onnxq import irutil
from onnxq.deploy.graph import QdqView, stores_constant, weight_value
from onnxq.deploy.report import ERROR, FALLBACK, Finding, Rule
from onnxq.targets import weight_output_axis

__all__ = ["RULES", "check", "SUPPORTED_OPS"]

_DOC = "ORT QNN EP docs"
_CONFIG = "ORT quantization/execution_providers/qnn/quant_config.py"
_CONV = "ORT QNN conv_op_builder.cc"

# The QNN EP's supported ONNX operators (docs table) plus the ops it has builders for
# (onnxruntime/core/providers/qnn/builder/opbuilder/).
SUPPORTED_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "Asin", "Atan", "AveragePool", "BatchNormalization", "Cast", "Clip",
    "Concat", "Conv", "ConvTranspose", "Cos", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Einsum", "Elu",
    "Equal", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "HardSigmoid", "HardSwish",
    "InstanceNormalization", "LRN", "LSTM", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "LpNormalization", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod", "Mul", "Neg", "Not", "Or",
    "PRelu", "Pad", "Pow", "QuantizeLinear", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSum", "Relu", "Reshape", "Resize", "Round", "Sigmoid", "Sign", "Sin", "Slice", "Softmax", "SpaceToDepth",
    "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Unsqueeze",
    "Upsample", "Where",
})
_MS_SUPPORTED = frozenset({"DequantizeLinear", "QuantizeLinear", "Gelu"})
# removed by ORT's basic graph optimizations before the EP sees the graph
_ELIMINATED = frozenset({"Identity", "Dropout", "Constant"})
_ACTIVATION_TYPES = ("uint8", "uint16")
_MATMUL_PAIRS = {("uint8", "uint8"), ("uint8", "uint16"), ("uint16", "uint8")}
# (op, output qtype) -> (scale, zero point) the HTP requires
_FIXED_OUTPUT = {
    ("Sigmoid", "uint16"): (1.0 / 65536.0, 0),
    ("Sigmoid", "int16"): (1.0 / 32768.0, 0),
    ("Tanh", "uint16"): (1.0 / 32768.0, 32768),
    ("Tanh", "int16"): (1.0 / 32768.0, 0),
}


def _is_bias(q) -> bool:
    return q.kind == "DQ" and q.qtype == "int32"


def _activation_types(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN001"]
    for q in view.all_qdq():
        if stores_constant(view, q) or _is_bias(q):
            continue
        if q.qtype not in _ACTIVATION_TYPES:
            yield r.finding(q.node, f"{q.qtype} activation {q.kind}: QNN HTP ops take uint8/uint16 activations")


def _wide_opset(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN002"]
    if view.opset >= 21:
        return
    for q in view.all_qdq():
        if q.qtype in ("uint16", "int16") and q.node.domain in ("", "ai.onnx"):
            yield r.finding(q.node, f"16-bit {q.kind} in the ai.onnx domain at opset {view.opset}: needs opset 21 "
                                    "or com.microsoft Q/DQ")


_CONV_ACT = ("Conv", "ConvTranspose")


def _conv_activation_group(view: QdqView, node):
    """The Relu/Clip of a DQ→Conv→Relu/Clip→Q group, which the QNN EP handles as one
    quantized unit (its conv-activation fusion); None when ``node`` does not head one."""
    if node.op_type not in _CONV_ACT or not node.outputs:
        return None
    y = node.outputs[0]
    uses = y.uses()
    if len(uses) != 1 or y.is_graph_output():
        return None
    act = uses[0].node
    if act.op_type not in ("Relu", "Clip") or act.domain not in ("", "ai.onnx"):
        return None
    out = act.outputs[0]
    users = out.uses()
    if not users or out.is_graph_output() or not all(
            view.info(u.node) is not None and view.info(u.node).kind == "Q" for u in users):
        return None
    for i, v in enumerate(node.inputs):
        if v is not None and view.input_dq(node, i) is None:
            return None
    return act


def _float_nodes(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN003"]
    for node in view.compute_nodes:
        if node.op_type in _ELIMINATED:
            continue
        floats_in = [v for v in node.inputs if v is not None and v.dtype in irutil.FLOAT_TYPES
                     and not irutil.is_constant(v)]
        floats_out = [v for v in node.outputs if v.dtype in irutil.FLOAT_TYPES]
        if not floats_in and not floats_out:
            continue  # integer/shape arithmetic
        if node.op_type not in SUPPORTED_OPS:
            continue  # reported by QNN004
        if node.op_type in _CONV_ACT and _conv_activation_group(view, node) is not None:
            continue
        if node.op_type in ("Relu", "Clip") and node.inputs[0] is not None:
            prod = node.inputs[0].producer()
            if prod is not None and _conv_activation_group(view, prod) is node:
                continue
        if not view.is_quantized_unit(node):
            yield r.finding(node, "runs in float (inputs not all from DequantizeLinear or output not quantized): "
                                  "the HTP runs quantized nodes only, this one goes to the CPU EP")


def _supported_ops(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN004"]
    for node in view.nodes:
        if node.op_type in _ELIMINATED and node.domain in ("", "ai.onnx"):
            continue
        ok = (node.domain in ("", "ai.onnx") and node.op_type in SUPPORTED_OPS) or (
            node.domain == "com.microsoft" and node.op_type in _MS_SUPPORTED)
        if not ok:
            dom = f"{node.domain}." if node.domain else ""
            yield r.finding(node, f"{dom}{node.op_type} is not supported by the QNN EP: runs on the CPU EP")


def _static_shapes(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN005"]
    g = view.model.graph
    for v in g.inputs:
        if v.name in g.initializers:
            continue
        if v.shape is None or any(not isinstance(d, int) for d in v.shape):
            yield r.finding(None, f"input {v.name!r} has shape {v.shape}: the QNN EP needs fixed shapes "
                                  "(python -m onnxruntime.tools.make_dynamic_shape_fixed)")


def _matmul_types(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN006"]
    for node in view.compute_nodes:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        a, b = view.input_dq(node, 0), view.input_dq(node, 1)
        if a is None or b is None:
            continue
        if b.axis is not None:
            yield r.finding(node, "per-channel MatMul weight: QNN has no per-channel MatMul")
        elif (a.qtype, b.qtype) not in _MATMUL_PAIRS:
            yield r.finding(node, f"MatMul inputs ({a.qtype}, {b.qtype}): the HTP takes (uint8, uint8), "
                                  "(uint8, uint16) or (uint16, uint8)")


def _per_channel_axis(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN007"]
    for node in view.compute_nodes:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
            continue
        w, dq = weight_value(view, node, 1)
        if dq is None or dq.axis is None:
            continue
        rank = len(w.shape) if w is not None and w.shape is not None else 4
        want = weight_output_axis(node.op_type, rank)
        if dq.axis != want:
            yield r.finding(node, f"per-channel {node.op_type} weight on axis {dq.axis}; QNN takes axis {want}")


def _bias_int32(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN008"]
    for node in view.compute_nodes:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        inputs = list(node.inputs)
        if len(inputs) < 3 or inputs[2] is None or view.input_dq(node, 0) is None:
            continue
        bq = view.input_dq(node, 2)
        if bq is None or bq.qtype != "int32":
            kind = "float" if bq is None else bq.qtype
            yield r.finding(node, f"quantized {node.op_type} with a {kind} bias: the QNN EP needs an int32 bias "
                                  "DequantizeLinear (zero point 0) to treat the node as quantized")
        elif not bq.zero_point_is_zero:
            yield r.finding(node, "int32 bias with a non-zero zero point")


def _conv_shape(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN009"]
    for node in view.compute_nodes:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
            continue
        x = node.inputs[0]
        rank = len(x.shape) if x is not None and x.shape is not None else None
        if rank is not None and rank not in (3, 4):
            yield r.finding(node, f"{node.op_type} on a rank-{rank} input: QNN runs 1-D/2-D convolutions only")
        if node.op_type == "ConvTranspose":
            d = node.attributes.get_ints("dilations", None) if "dilations" in node.attributes else None
            if d is not None and any(int(v) != 1 for v in d):
                yield r.finding(node, "ConvTranspose with dilations != 1: QNN's TransposeConv2d takes dilation 1")


def _fixed_outputs(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["QNN010"]
    for node in view.compute_nodes:
        if node.op_type not in ("Sigmoid", "Tanh") or node.domain not in ("", "ai.onnx"):
            continue
        for q in view.output_qs(node):
            want = _FIXED_OUTPUT.get((node.op_type, q.qtype))
            if want is None or q.scale is None:
                continue
            scale, zp = want
            got_zp = 0 if q.zero_point is None else int(np.asarray(q.zero_point).reshape(-1)[0])
            got_scale = float(np.asarray(q.scale).reshape(-1)[0])
            if not np.isclose(got_scale, scale, rtol=1e-6) or got_zp != zp:
                yield r.finding(node, f"{q.qtype} {node.op_type} output must use scale {scale:.3g} and zero point "
                                      f"{zp} (got {got_scale:.3g}, {got_zp})")


RULES: tuple[Rule, ...] = (
    Rule("QNN001", FALLBACK, "activations quantized to uint8 or uint16", _DOC, _activation_types),
    Rule("QNN002", ERROR, "16-bit Q/DQ: opset 21 or com.microsoft domain", _CONFIG, _wide_opset),
    Rule("QNN003", FALLBACK, "every supported node is a QDQ unit (HTP runs quantized nodes only)", _DOC,
         _float_nodes),
    Rule("QNN004", FALLBACK, "only ops the QNN EP supports", _DOC, _supported_ops),
    Rule("QNN005", ERROR, "fixed input shapes", _DOC, _static_shapes),
    Rule("QNN006", FALLBACK, "MatMul: per-tensor, input types (u8,u8)/(u8,u16)/(u16,u8)", f"{_DOC}; {_CONFIG}",
         _matmul_types),
    Rule("QNN007", ERROR, "per-channel weights: Conv axis 0, ConvTranspose axis 1", _CONFIG, _per_channel_axis),
    Rule("QNN008", FALLBACK, "quantized Conv/ConvTranspose/Gemm bias is an int32 DQ with zero point 0",
         f"{_CONV}; ORT QDQ node units", _bias_int32),
    Rule("QNN009", FALLBACK, "Conv on rank-3/4 inputs; ConvTranspose dilation 1", _CONV, _conv_shape),
    Rule("QNN010", ERROR, "16-bit Sigmoid/Tanh outputs use the fixed scale/zero point", _CONFIG, _fixed_outputs),
)
RULES_BY_ID = {r.id: r for r in RULES}


def check(view: QdqView) -> list[Finding]:
    return [f for r in RULES for f in r.check(view)]
