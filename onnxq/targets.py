"""Deployment targets: what each runtime executes well, as frozen profiles.

A :class:`TargetProfile` says which QDQ formats and placements a runtime turns into integer
kernels; :func:`apply_target` specializes a recipe to it (dispatch on the recipe's type).
``onnxq quantize --target NAME`` and ``onnxq verify MODEL --target NAME`` use the same
profiles; ``onnxq.deploy`` checks a model against them (in the runtime itself where it runs
here, structurally for TensorRT and QNN).

Facts the profiles rely on (from the runtimes' own documentation; see the ``sources`` of
each profile for where):

- ORT CPU fuses DQ→op→Q groups into QLinearConv/QLinearMatMul/QGemm/QLinearAdd/... with
  uint8 or int8 activations, int8 per-channel weights and an int32 bias; 16-bit Q/DQ need
  opset 21 or the ``com.microsoft`` Q/DQ ops. ``convert_onnx_models_to_ort
  --target_platform arm`` sets ``session.qdqisint8allowed=1`` (int8 activations fused on
  ARM); x86 conversion keeps it off, so uint8 activations are the form fused everywhere.
- ORT mobile: the NNAPI EP takes QDQ with constant scales/zero points, 2-D Conv/pools with
  constant weights and bias; the mobile EPs (NNAPI, XNNPACK, CoreML) have no 16-bit QDQ.
- OpenVINO: the ONNX frontend turns Q→DQ pairs into FakeQuantize and a DQ of an int8
  constant into weight dequantization; low-precision transformations run a Convolution
  in int8 only when both its data and weight inputs are quantized, and dequantization on
  activations must be per tensor (a scalar Multiply). Weights: i8, per output channel.
- TensorRT (explicit quantization): Q/DQ are INT8 (INT4/FP8 for weights), zero point 0
  (symmetric only), scales build-time constants; per-channel only on weights, along the
  output-channel axis; weights in [-127, 127]; Conv/ConvTranspose weights must be
  initializers; QLinear*/ConvInteger/MatMulInteger/DynamicQuantizeLinear are not
  supported; block quantization is for INT4 weights only.
- QNN EP (HTP): runs quantized models only; QNN ops typically take uint8/uint16
  activations; 16-bit Q/DQ need opset 21 or com.microsoft; ORT's QNN config defaults to
  uint8 weights per tensor (per-channel only for Conv axis 0 / ConvTranspose axis 1,
  never MatMul); MatMul input pairs (u8,u8), (u8,u16), (u16,u8); Conv bias int32
  (SFIXED_POINT_32); inputs need fixed shapes; 16-bit Sigmoid/Tanh outputs have fixed
  scale and zero point.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import ClassVar

from onnxq.errors import RecipeError
from onnxq.recipes import DynamicInt8, Recipe, StaticInt8, WeightOnlyInt4

__all__ = [
    "TargetProfile",
    "TARGETS",
    "TARGET_NAMES",
    "DEFAULT_TARGET",
    "get_target",
    "apply_target",
    "finalize_for_target",
    "export_for_target",
    "weight_output_axis",
    "targets_table_markdown",
]

logger = logging.getLogger(__name__)

DEFAULT_TARGET = "ort-cpu"

_WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_STATIC_DEFAULT_OPS = StaticInt8.__dataclass_fields__["op_types"].default


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """What one runtime executes well. Every field is a documented property of the runtime.

    activation_type: the activation Q/DQ type the runtime runs fastest;
    activation_types: every activation type it runs quantized (the user may pick another
    one of these, e.g. uint16 on QNN for accuracy); symmetric_activations: zero point must
    be 0 (or the type's mid-point); weight_type/per_channel: weights (always symmetric; axis
    = the output channel, see :func:`weight_output_axis`); per_channel_ops: the weighted
    ops whose weights may be per-channel; qdq_op_types: ops that get Q/DQ (those the
    runtime fuses into integer kernels); weights_quantized: weights stored as int8 + DQ
    (else float + Q→DQ); int32_bias: bias stored as int32 + DQ (else float); min_opset: the
    opset floor of the QDQ form; int16_min_opset: opset needed for 16-bit Q/DQ in the
    standard domain (None: 16-bit not run by this target); int4_formats: WeightOnlyInt4
    formats the runtime executes (first = preferred); int4_symmetric_only: zero points
    must be absent/0; dynamic_int8: ``any`` (both int8-dynamic forms run), ``fused`` (only
    ORT's fused DynamicQuantizeMatMul computes in int8) or ``""`` (not run);
    static_shapes: the runtime needs fixed input shapes; quantized_graph_only: the runtime
    runs quantized graphs only, so Add/Mul/Concat/pools get Q/DQ even where no quantized
    Conv/MatMul/Gemm is next to them (StaticInt8.quantize_islands); sum_rewrites: the
    runtime is ONNX Runtime CPU, which fuses some float Adds into slower kernels (``Add ->
    LayerNormalization`` into SkipLayerNormalization, ``MatMul -> Add`` into a float Gemm),
    so such Adds are written as ``Sum`` (StaticInt8/DynamicInt8.sum_rewrites);
    float_matmul_results: a MatMul/Gemm with int8 inputs may return a float result
    (StaticInt8.float_matmul_results; off where a quantized node unit needs a Q on its
    output: NNAPI/XNNPACK, QNN); float_conv_results: a Conv's result that only float ops read
    is left float (StaticInt8.float_conv_results; on where the runtime runs a Conv int8 from
    its quantized data and weights alone: OpenVINO);
    verification: ``runtime`` (loaded and run here) or ``structural`` (rule checker)."""

    name: str
    runtime: str
    activation_type: str
    activation_types: tuple[str, ...]
    symmetric_activations: bool
    weight_type: str
    per_channel: bool
    per_channel_ops: tuple[str, ...]
    qdq_op_types: tuple[str, ...]
    weights_quantized: bool
    int32_bias: bool
    min_opset: int
    int16_min_opset: int | None
    int4_formats: tuple[str, ...]
    int4_symmetric_only: bool
    dynamic_int8: str
    static_shapes: bool
    verification: str
    sources: tuple[str, ...] = ()
    quantized_graph_only: bool = False
    sum_rewrites: bool = False
    float_matmul_results: bool = True
    float_conv_results: bool = False
    int4_ragged_k: bool = True  # runs a blocked DequantizeLinear whose K is not a multiple of the block
    int4_positive_scales: bool = False  # takes positive DequantizeLinear scales only
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in ("activation_types", "per_channel_ops", "qdq_op_types", "int4_formats", "sources"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.activation_type not in self.activation_types:
            raise ValueError(f"{self.name}: default activation type must be one of activation_types")
        if self.dynamic_int8 not in ("any", "fused", ""):
            raise ValueError(f"{self.name}: dynamic_int8 must be any, fused or empty")
        if self.verification not in ("runtime", "structural"):
            raise ValueError(f"{self.name}: verification must be runtime or structural")
        if not set(self.per_channel_ops) <= set(_WEIGHTED):
            raise ValueError(f"{self.name}: per_channel_ops must be weighted ops")

    def allows_activation_type(self, qtype: str) -> bool:
        return qtype in self.activation_types

    def row(self) -> dict[str, str]:
        """The README table row."""
        others = [t for t in self.activation_types if t != self.activation_type]
        default_ops = set(_STATIC_DEFAULT_OPS)
        missing = [o for o in _STATIC_DEFAULT_OPS if o not in self.qdq_op_types]
        ops = "all int8-static ops" if set(self.qdq_op_types) == default_ops else (
            "all but " + ", ".join(missing) if set(self.qdq_op_types) < default_ops else ", ".join(self.qdq_op_types))
        return {
            "target": f"`{self.name}`",
            "runtime": self.runtime,
            "activations": f"{self.activation_type}{' symmetric' if self.symmetric_activations else ' asymmetric'}"
            + (f" (also {', '.join(others)})" if others else ""),
            "weights": f"{self.weight_type} symmetric, "
            + (("per-channel (output axis)" if set(self.per_channel_ops) == set(_WEIGHTED)
                else f"per-channel ({', '.join(self.per_channel_ops)})") if self.per_channel else "per-tensor"),
            "bias": "int32" if self.int32_bias else "float",
            "QDQ on": ops,
            "opset floor": str(self.min_opset)
            + (f" (16-bit: {self.int16_min_opset})" if self.int16_min_opset else " (no 16-bit)"),
            "int4": "/".join(self.int4_formats) + (" symmetric" if self.int4_symmetric_only else "")
            + ("" if self.int4_ragged_k else " (K not a multiple of the block: int8)"),
            "int8-dynamic": {"any": "yes", "fused": "fused form only", "": "no"}[self.dynamic_int8],
            "verified by": "running it here" if self.verification == "runtime" else "structural rules",
        }


def weight_output_axis(op_type: str, weight_rank: int, *, trans_b: int = 0, group: int = 1) -> int | None:
    """The output-channel axis of a weighted op's weight: the only per-channel axis the
    runtimes accept (TensorRT: "output channel"; QNN config: Conv axis 0, ConvTranspose
    axis 1). None when the op has no such axis (e.g. grouped ConvTranspose, N-D MatMul)."""
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1 if group == 1 else None
    if op_type == "Gemm":
        return 0 if trans_b else 1
    if op_type == "MatMul":
        return weight_rank - 1 if weight_rank == 2 else None
    return None


_ORT_CPU = TargetProfile(
    name="ort-cpu",
    runtime="ONNX Runtime, CPU EP (x86-64/ARM64)",
    activation_type="uint8",
    activation_types=("uint8", "int8", "uint16", "int16"),
    symmetric_activations=False,
    weight_type="int8",
    per_channel=True,
    per_channel_ops=_WEIGHTED,
    qdq_op_types=_STATIC_DEFAULT_OPS,
    weights_quantized=True,
    int32_bias=True,
    min_opset=13,
    int16_min_opset=21,
    int4_formats=("matmulnbits", "qdq", "onnxq"),
    int4_symmetric_only=False,
    dynamic_int8="any",
    static_shapes=False,
    verification="runtime",
    sum_rewrites=True,
    sources=(
        "onnxruntime.ai/docs/performance/model-optimizations/quantization.html (U8S8 QDQ, per-channel weights)",
        "onnxruntime/tools/convert_onnx_models_to_ort.py (qdqisint8allowed only for --target_platform arm)",
    ),
)

# the other profiles say only how they differ from ORT CPU
_ORT_MOBILE = dataclasses.replace(
    _ORT_CPU,
    name="ort-mobile",
    runtime="ONNX Runtime mobile (.ort format; CPU/XNNPACK/NNAPI/CoreML EPs)",
    activation_types=("uint8", "int8"),
    # NNAPI-supported quantized ops (nnapi_supported_ops.md): Conv/Gemm/MatMul, Add, pools,
    # Concat, 2-D Resize; Mul/ConvTranspose are not in its QDQ set
    qdq_op_types=("Conv", "MatMul", "Gemm", "Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize"),
    int16_min_opset=None,
    # not qdq: the .ort conversion's type reduction has no int4 tensors (KeyError 22 in the wheel's tools)
    int4_formats=("matmulnbits",),
    float_matmul_results=False,
    sources=(
        "onnxruntime.ai/docs/performance/model-optimizations/ort-format-models.html (ORT format, reduced op config)",
        "onnxruntime/tools/mobile_helpers/nnapi_supported_ops.md (constant scales/zero points, 2-D Conv/pools)",
    ),
)

_OPENVINO = dataclasses.replace(
    _ORT_CPU,
    name="openvino",
    runtime="OpenVINO CPU plugin (ONNX frontend + low-precision transformations)",
    activation_types=("uint8", "int8"),
    # FakeQuantize on every input of Conv/MatMul/Gemm, on residual Add/Mul and on the
    # inputs of Concat and pools keeps the dataflow int8 between convolutions
    qdq_op_types=("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool", "AveragePool",
                  "GlobalAveragePool", "Resize"),
    int16_min_opset=None,
    int4_formats=("qdq", "matmulnbits"),
    int4_ragged_k=False,  # DequantizeLinear-21 conversion fails on a shorter last block (measured, 2026.4)
    dynamic_int8="fused",
    sum_rewrites=False,
    # its Convolution runs int8 from FakeQuantize on data and weights; a FakeQuantize on a
    # result that goes into a float Concat is requantized there to one scale for all inputs:
    # YOLOv8n's head (box and class logits concatenated) 12.5 dB in OpenVINO against 26.4 in
    # ORT with the result rounded, measured
    float_conv_results=True,
    sources=(
        "docs.openvino.ai .../openvino-ir-format/intermediate-representation-int8-inference.html "
        "(Convolution runs int8 only with FakeQuantize on data and weights)",
        "docs.openvino.ai .../low-precision-transformations/.../convolution.html (activation dequantization per tensor)",
        "docs.openvino.ai OpenVINO Low Precision Transformations (i8 [-128,127]/[-127,127], u8 [0,255])",
    ),
)

_TENSORRT = TargetProfile(
    name="tensorrt",
    runtime="NVIDIA TensorRT (explicit quantization, ONNX parser)",
    activation_type="int8",
    activation_types=("int8",),
    symmetric_activations=True,
    weight_type="int8",
    per_channel=True,
    per_channel_ops=_WEIGHTED,
    # Resize is FP32/FP16 only in the ONNX parser; weighted ops, residual Add, pools, Concat
    qdq_op_types=("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Concat", "MaxPool", "AveragePool",
                  "GlobalAveragePool"),
    weights_quantized=True,
    int32_bias=False,
    min_opset=13,
    int16_min_opset=None,
    int4_formats=("qdq",),
    int4_symmetric_only=True,
    int4_positive_scales=True,  # TRT003: DequantizeLinear scales must be positive
    dynamic_int8="",
    static_shapes=False,
    verification="structural",
    sources=(
        "docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html",
        "docs.nvidia.com/deeplearning/tensorrt/operators/docs/Quantize.html (zero_point zero, scale constant, "
        "per-channel 1-D scale, block quantization INT4 only)",
        "github.com/onnx/onnx-tensorrt docs/operators.md (Q/DQ INT8 with zero point 0; Conv weights initializers; "
        "QLinearConv/ConvInteger/MatMulInteger/DynamicQuantizeLinear unsupported)",
    ),
)

_QNN = TargetProfile(
    name="qnn",
    runtime="ONNX Runtime QNN EP, HTP backend (Qualcomm NPU)",
    activation_type="uint8",
    activation_types=("uint8", "uint16"),
    symmetric_activations=False,
    weight_type="uint8",
    per_channel=False,
    per_channel_ops=("Conv", "ConvTranspose"),
    # not Gather: its int8 tables are dequantized by a float Cast + Mul (quantized graphs only);
    # not LSTM: written as ORT's com.microsoft.DynamicQuantizeLSTM, a CPU contrib op
    qdq_op_types=tuple(o for o in _STATIC_DEFAULT_OPS if o not in ("Gather", "LSTM")),
    weights_quantized=True,
    int32_bias=True,
    min_opset=13,
    int16_min_opset=21,
    int4_formats=("qdq",),
    int4_symmetric_only=True,
    dynamic_int8="",
    static_shapes=True,
    verification="structural",
    quantized_graph_only=True,
    float_matmul_results=False,
    sources=(
        "onnxruntime.ai/docs/execution-providers/QNN-ExecutionProvider.html (HTP runs quantized models only; "
        "uint8/uint16; fixed shapes; supported ops; MatMul type pairs)",
        "onnxruntime/quantization/execution_providers/qnn/quant_config.py (uint8 weights default, per-channel "
        "Conv axis 0 / ConvTranspose axis 1, none for MatMul, 16-bit needs opset 21 or com.microsoft, "
        "16-bit Sigmoid/Tanh fixed qparams)",
        "onnxruntime/core/providers/qnn/builder/opbuilder/conv_op_builder.cc (1-D/2-D Conv, int32 bias)",
    ),
)

TARGETS: dict[str, TargetProfile] = {p.name: p for p in (_ORT_CPU, _ORT_MOBILE, _OPENVINO, _TENSORRT, _QNN)}
TARGET_NAMES = tuple(TARGETS)


def get_target(name: str | TargetProfile) -> TargetProfile:
    if isinstance(name, TargetProfile):
        return name
    try:
        return TARGETS[name]
    except KeyError:
        raise RecipeError(f"unknown target {name!r}; choose one of {', '.join(TARGET_NAMES)}") from None


# -- applying a profile to a recipe -------------------------------------------------------------


def _default(cls: type, field: str):
    f = cls.__dataclass_fields__[field]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


@functools.singledispatch
def _apply(recipe: Recipe, target: TargetProfile) -> tuple[Recipe, list[str]]:
    raise RecipeError(f"--target does not know recipe {type(recipe).__name__}")


@_apply.register
def _apply_static(recipe: StaticInt8, target: TargetProfile) -> tuple[Recipe, list[str]]:
    notes: list[str] = []
    changes: dict = {}
    # activation type: the user's explicit choice stays when the target runs it
    act = recipe.activation_type
    if act == _default(StaticInt8, "activation_type"):
        changes["activation_type"] = target.activation_type
        if target.activation_type != act or target.symmetric_activations:
            notes.append(f"{target.name}: {target.activation_type}"
                         f"{' symmetric' if target.symmetric_activations else ''} activations")
    elif not target.allows_activation_type(act):
        raise RecipeError(
            f"target {target.name} does not run {act} activations; it runs {', '.join(target.activation_types)}"
        )
    if recipe.weight_type != target.weight_type:
        if recipe.weight_type != _default(StaticInt8, "weight_type"):
            raise RecipeError(
                f"target {target.name} needs {target.weight_type} weights; the recipe asks for {recipe.weight_type}"
            )
        changes["weight_type"] = target.weight_type
        notes.append(f"{target.name}: {target.weight_type} weights")
    if recipe.per_channel and not target.per_channel:
        changes["per_channel"] = False
        notes.append(f"{target.name}: weights per tensor (the runtime's per-channel support is limited to "
                     f"{', '.join(target.per_channel_ops)})")
    elif target.per_channel and not recipe.per_channel:
        notes.append(f"{target.name} runs per-channel weights; the recipe asked for per-tensor, kept")
    if target.symmetric_activations and not recipe.symmetric_activations:
        changes["symmetric_activations"] = True  # (a symmetric choice always runs: it stays)
    # which ops get QDQ: the target's set, narrowed by the user's own op list
    if tuple(recipe.op_types) == tuple(_STATIC_DEFAULT_OPS):
        ops = tuple(target.qdq_op_types)
    else:
        ops = tuple(o for o in recipe.op_types if o in target.qdq_op_types)
        dropped = sorted(set(recipe.op_types) - set(ops))
        if dropped:
            notes.append(f"{target.name} does not run {', '.join(dropped)} quantized; left in float")
    if not ops:
        raise RecipeError(f"none of the requested op types are run quantized by {target.name}")
    if ops != tuple(recipe.op_types):
        changes["op_types"] = ops
    if target.quantized_graph_only and not recipe.quantize_islands:
        changes["quantize_islands"] = True
    if recipe.float_matmul_results and not target.float_matmul_results:
        changes["float_matmul_results"] = False
    if target.float_conv_results and not recipe.float_conv_results:
        changes["float_conv_results"] = True
    if recipe.sum_rewrites and not target.sum_rewrites:
        changes["sum_rewrites"] = False
    # per-tensor overrides that ask for a type the target does not run
    for tensor, over in dict(recipe.tensor_overrides).items():
        t = over.get("activation_type") if isinstance(over, dict) else None
        if t is not None and not target.allows_activation_type(t):
            raise RecipeError(f"tensor_overrides[{tensor!r}] asks for {t}, which {target.name} does not run")
    try:
        out = dataclasses.replace(recipe, **changes) if changes else recipe
    except TypeError as e:  # a field this version of the recipe does not have
        raise RecipeError(f"cannot apply target {target.name}: {e}") from None
    return out, notes


@_apply.register
def _apply_dynamic(recipe: DynamicInt8, target: TargetProfile) -> tuple[Recipe, list[str]]:
    if not target.dynamic_int8:
        raise RecipeError(
            f"target {target.name} does not run int8-dynamic (DynamicQuantizeLinear/MatMulInteger/ConvInteger); "
            "use --recipe int8-static"
        )
    changes: dict = {}
    notes: list[str] = []
    if target.dynamic_int8 == "fused" and not recipe.fused:
        # measured: OpenVINO runs DynamicQuantizeLinear+MatMulInteger as an f32 FullyConnected,
        # com.microsoft.DynamicQuantizeMatMul as an i8 one
        changes["fused"] = True
        notes.append(f"{target.name}: int8-dynamic in ORT's fused form (the standard form runs in float there)")
    if recipe.sum_rewrites and not target.sum_rewrites:
        changes["sum_rewrites"] = False
    return (dataclasses.replace(recipe, **changes) if changes else recipe), notes


@_apply.register
def _apply_int4(recipe: WeightOnlyInt4, target: TargetProfile) -> tuple[Recipe, list[str]]:
    notes: list[str] = []
    changes: dict = {}
    if recipe.format not in target.int4_formats:
        if recipe.format != _default(WeightOnlyInt4, "format"):
            raise RecipeError(
                f"target {target.name} does not run int4 format {recipe.format!r}; "
                f"it runs {', '.join(target.int4_formats)}"
            )
        changes["format"] = target.int4_formats[0]
        notes.append(f"{target.name}: int4 format {target.int4_formats[0]}")
    if not target.int4_ragged_k and recipe.ragged_k == "int4" and changes.get("format", recipe.format) == "qdq":
        changes["ragged_k"] = "int8"
        notes.append(f"{target.name}: a weight whose K is not a multiple of block_size, if any, gets int8 per "
                     "channel (it refuses a shorter last block)")
    if target.int4_positive_scales and recipe.symmetric and not recipe.positive_scales:
        changes["positive_scales"] = True
        notes.append(f"{target.name}: int4 scales kept positive (a block's positive extreme maps to +7)")
    if recipe.sum_rewrites and not target.sum_rewrites:
        changes["sum_rewrites"] = False
    if target.int4_symmetric_only and not recipe.symmetric:
        raise RecipeError(f"target {target.name} runs symmetric int4 weights only (zero point 0); drop symmetric=false")
    out = dataclasses.replace(recipe, **changes) if changes else recipe
    return out, notes


def apply_target(recipe: Recipe, target: str | TargetProfile) -> tuple[Recipe, tuple[str, ...]]:
    """The recipe specialized to ``target`` and notes for the user. Fields the user left
    at their defaults take the target's choice; an explicit choice the target cannot run
    is a :class:`RecipeError`."""
    profile = get_target(target)
    out, notes = _apply(recipe, profile)
    if out != recipe:
        logger.info("target %s: %s", profile.name, {
            f.name: getattr(out, f.name) for f in dataclasses.fields(out) if getattr(out, f.name) != getattr(recipe, f.name)
        })
    return out, tuple(notes)


def finalize_for_target(model, target: str | TargetProfile) -> tuple[str, ...]:
    """After quantizing: rewrite what the recipe cannot express for ``target`` (float
    biases for runtimes without int32 DequantizeLinear), then check the model against the
    target's documented rules. Returns notes for the user (rule breaks summarized)."""
    import collections

    profile = get_target(target)
    notes: list[str] = []
    if not profile.int32_bias:
        from onnxq.passes.dequantize_biases import DequantizeBiasesPass

        if DequantizeBiasesPass()(model).modified:
            notes.append(f"{profile.name}: biases stored in float (no int32 DequantizeLinear)")
    if profile.static_shapes:
        g = model.graph
        dynamic = [v.name for v in g.inputs if v.name not in g.initializers
                   and (v.shape is None or any(not isinstance(d, int) for d in v.shape))]
        if dynamic:
            notes.append(f"{profile.name} needs fixed input shapes; fix {', '.join(dynamic)} with "
                         "python -m onnxruntime.tools.make_dynamic_shape_fixed")
    from onnxq.deploy import check_structure

    findings = check_structure(model, profile)
    if findings:
        counts = collections.Counter((f.rule, f.severity) for f in findings)
        summary = ", ".join(f"{rule} {sev} x{n}" for (rule, sev), n in sorted(counts.items()))
        notes.append(f"{profile.name} rule check: {summary}; details: onnxq verify OUTPUT --target {profile.name}")
    return tuple(notes)


def export_for_target(output, target: str | TargetProfile) -> tuple[str, ...]:
    """After saving ``output`` (an .onnx path): write what the target deploys besides it.
    ort-mobile: ``<stem>.ort`` and the reduced-operator build config
    ``<stem>.required_operators_and_types.config`` next to it (ORT's own converter)."""
    from pathlib import Path

    profile = get_target(target)
    if profile.name in ("tensorrt", "qnn"):  # runtimes that cannot run here: their documented rules
        from onnxq.deploy import check_structure
        from onnxq.deploy.report import ERROR

        broken = sorted({f.rule for f in check_structure(output, profile) if f.severity == ERROR})
        if broken:
            return (f"{profile.name}: the written model breaks {len(broken)} of its documented rules "
                    f"({', '.join(broken)}): `onnxq verify {output} --target {profile.name}` names the nodes "
                    "and the fix",)
        return ()
    if profile.name != "ort-mobile":
        return ()
    import os
    import shutil
    import tempfile

    from onnxq.deploy.ort_mobile import convert_to_ort
    from onnxq.modelio import signals_deferred

    out = Path(output)
    # converted in a temp folder beside it, then moved into place: an interrupted conversion
    # leaves no truncated .ort
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.ort.", dir=out.parent))
    try:
        conv = convert_to_ort(out, tmp, save_optimized_onnx=False)
        # the config's header names the model it came from: the .ort's final place, not the temp folder
        final = str(out.parent.resolve() / conv.ort_path.name)
        lines = conv.config_path.read_text().splitlines(keepends=True)
        conv.config_path.write_text("".join(
            f"# - {final}\n" if ln.startswith("# - ") and ln.rstrip().endswith(conv.ort_path.name) else ln
            for ln in lines))
        with signals_deferred():
            for f in (conv.config_path, conv.ort_path):  # the .ort last: it is what gets deployed
                os.replace(f, out.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return (f"ort-mobile: wrote {conv.ort_path.name} and {conv.config_path.name} (reduced-ops build config)",)


def targets_table_markdown() -> str:
    """The README's targets table, generated from the profiles (kept in sync by a test)."""
    rows = [p.row() for p in TARGETS.values()]
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)
