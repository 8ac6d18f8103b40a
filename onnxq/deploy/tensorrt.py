"""TensorRT explicit quantization: the Q/DQ rules its ONNX parser and builder enforce,
checked on the graph (TensorRT cannot run here).

What each rule relies on (facts from NVIDIA's documentation, not code):

- TensorRT developer guide, "Explicit Quantization"
  (docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html):
  Q/DQ layers mark where INT8 is used; weights may be stored in float (quantized by the
  builder with the Q scale) or pre-quantized with a DequantizeLayer between the weights
  and the linear op; INT8 is symmetric, weights in [-127, 127], activations [-128, 127];
  a weighted layer runs in INT8 only when both its data and weight inputs are quantized
  (INT4 weights of MatMul/Gemm are weight-only: the activations stay in float);
  per-channel quantization is for weights, along the output-channel axis; scales are
  positive.
- TensorRT operator reference for Quantize/Dequantize
  (docs.nvidia.com/deeplearning/tensorrt/operators/docs/Quantize.html): output types
  int4/int8/float8; the scale must be a build-time constant, a scalar (per tensor), a 1-D
  tensor (per channel) or of the input's rank (block quantization, INT4 only); the zero
  point, if given, must be all zeros.
- onnx-tensorrt docs/operators.md: QuantizeLinear/DequantizeLinear INT8 with a zero
  point of 0; Conv/ConvTranspose weights must be initializers; QLinearConv, QLinearMatMul,
  ConvInteger, MatMulInteger and DynamicQuantizeLinear are not supported.
- ONNX: per-axis Q/DQ (``axis``) exist from opset 13, blocked Q/DQ and int4 from 21.
"""

from __future__ import annotations

from typing import Iterator

from onnxq.deploy.graph import WEIGHTED_OPS, QdqView, stores_constant, weight_value
from onnxq.deploy.report import ERROR, FALLBACK, Finding, Rule
from onnxq.targets import weight_output_axis

__all__ = ["RULES", "check"]

_TRT_GUIDE = "TensorRT developer guide: Explicit Quantization"
_TRT_QUANTIZE = "TensorRT operator reference: Quantize/Dequantize"
_ONNX_TRT = "onnx-tensorrt docs/operators.md"

_UNSUPPORTED = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
_FLOAT8 = ("float8e4m3fn", "float8e5m2")


def _int8_only(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT001"]
    for q in view.all_qdq():
        if q.qtype == "int8" or q.qtype in _FLOAT8:
            continue
        if q.qtype == "int4" and stores_constant(view, q):
            continue  # INT4 weights (checked by TRT006)
        bias = q.kind == "DQ" and any(u.node.op_type in ("Conv", "ConvTranspose", "Gemm") and u.idx == 2
                                      for u in q.node.outputs[0].uses())
        if bias:
            msg = f"{q.qtype} bias DequantizeLinear: TensorRT takes the bias in float"
        else:
            msg = f"{q.qtype} {q.kind}: TensorRT Q/DQ are int8 (int4/float8 for weights only)"
        yield r.finding(q.node, msg)


def _zero_point_zero(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT002"]
    for q in view.all_qdq():
        if q.zero_point is not None and not q.zero_point_is_zero:
            yield r.finding(q.node, "non-zero zero point: TensorRT quantization is symmetric (zero point 0)")


def _constant_qparams(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT003"]
    for q in view.all_qdq():
        if q.scale is None or not q.zp_constant:
            yield r.finding(q.node, "scale/zero point are not constants: TensorRT needs build-time constants")
        elif not (q.scale > 0).all():
            yield r.finding(q.node, "scale has values <= 0")


def _per_channel_weights_only(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT004"]
    for q in view.all_qdq():
        if q.axis is not None and not stores_constant(view, q):
            yield r.finding(q.node, f"per-axis {q.kind} (axis {q.axis}) on an activation: TensorRT quantizes "
                                    "activations per tensor only")


def _per_channel_axis(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT005"]
    for node in view.compute_nodes:
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        w, dq = weight_value(view, node, 1)
        if w is None or dq is None or dq.axis is None or dq.blocked:
            continue
        rank = len(w.shape) if w.shape is not None else 2
        want = weight_output_axis(node.op_type, rank, trans_b=node.attributes.get_int("transB", 0),
                                  group=node.attributes.get_int("group", 1))
        if want is None or dq.axis != want:
            yield r.finding(node, f"weight quantized along axis {dq.axis}; TensorRT takes per-channel scales only "
                                  f"along the output-channel axis ({want if want is not None else 'none for this op'})")


def _block_int4_weights_only(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT006"]
    for q in view.all_qdq():
        if q.blocked and (q.qtype != "int4" or not stores_constant(view, q)):
            yield r.finding(q.node, f"blocked {q.qtype} {q.kind}: block quantization is for INT4 weights only")


def _weighted_both_inputs(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT007"]
    for node in view.compute_nodes:
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        a = view.input_dq(node, 0)
        b = view.input_dq(node, 1)
        if a is None and b is not None and b.qtype == "int4" and node.op_type in ("MatMul", "Gemm"):
            continue  # INT4 weight-only quantization: activations stay in float by design
        if a is None and b is not None and b.qtype == "uint4" and node.op_type in ("MatMul", "Gemm"):
            yield r.finding(node, "weight-only uint4 (asymmetric, with zero points): TensorRT's INT4 weight-only "
                                  "layers take symmetric int4; quantize with --target tensorrt (symmetric int4)")
            continue
        if (a is None) != (b is None):
            which = "data" if a is None else "weight"
            yield r.finding(node, f"only one input is quantized (the {which} input is float): the layer runs in "
                                  "float; quantize both inputs or neither")


def _weights_initializers(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT008"]
    for node in view.compute_nodes:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
            continue
        w, _ = weight_value(view, node, 1)
        if w is None:
            yield r.finding(node, "weight is computed at run time: TensorRT needs Conv/ConvTranspose weights as "
                                  "initializers (directly or behind DequantizeLinear)")


def _unsupported_ops(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT009"]
    for node in view.nodes:
        if node.domain not in ("", "ai.onnx"):
            yield r.finding(node, f"{node.domain}.{node.op_type} is not an ONNX op TensorRT's parser knows "
                                  "(write standard QuantizeLinear/DequantizeLinear)")
        elif node.op_type in _UNSUPPORTED:
            yield r.finding(node, f"{node.op_type} is not supported by TensorRT; use Q/DQ (int8-static)")


def _opset(view: QdqView) -> Iterator[Finding]:
    r = RULES_BY_ID["TRT010"]
    opset = view.opset
    for q in view.all_qdq():
        if q.blocked and opset < 21:
            yield r.finding(q.node, f"blocked {q.kind} needs opset 21; the model imports {opset}")
        elif q.axis is not None and opset < 13:
            yield r.finding(q.node, f"per-axis {q.kind} needs opset 13; the model imports {opset}")


RULES: tuple[Rule, ...] = (
    Rule("TRT001", ERROR, "Q/DQ are int8 (int4/float8 only for weights); no uint8, 16-bit or int32 bias DQ",
         f"{_ONNX_TRT}; {_TRT_QUANTIZE}", _int8_only),
    Rule("TRT002", ERROR, "zero points are 0 (symmetric quantization only)", f"{_ONNX_TRT}; {_TRT_QUANTIZE}",
         _zero_point_zero),
    Rule("TRT003", ERROR, "scales and zero points are build-time constants; scales > 0", _TRT_QUANTIZE,
         _constant_qparams),
    Rule("TRT004", ERROR, "per-channel scales only on weights; activations per tensor", _TRT_GUIDE,
         _per_channel_weights_only),
    Rule("TRT005", ERROR, "per-channel weight scales along the output-channel axis", _TRT_GUIDE, _per_channel_axis),
    Rule("TRT006", ERROR, "block quantization only for INT4 weights", _TRT_QUANTIZE, _block_int4_weights_only),
    Rule("TRT007", FALLBACK, "weighted ops (Conv/ConvTranspose/Gemm/MatMul) have both inputs quantized, else float",
         _TRT_GUIDE, _weighted_both_inputs),
    Rule("TRT008", ERROR, "Conv/ConvTranspose weights are initializers (directly or behind DQ)", _ONNX_TRT,
         _weights_initializers),
    Rule("TRT009", ERROR, "no QLinear*/ConvInteger/MatMulInteger/DynamicQuantizeLinear or non-ONNX-domain ops",
         _ONNX_TRT, _unsupported_ops),
    Rule("TRT010", ERROR, "per-axis Q/DQ need opset 13, blocked Q/DQ opset 21", "ONNX operator versions",
         _opset),
)
RULES_BY_ID = {r.id: r for r in RULES}


def check(view: QdqView) -> list[Finding]:
    return [f for r in RULES for f in r.check(view)]
