"""The int4-weight-only recipe end to end: prepare, calibrate, quantize, choose accuracy levels.

Called by ``onnxq.api`` (dispatch on :class:`~onnxq.recipes.WeightOnlyInt4`)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnxq.errors import CalibrationDataError, NothingToQuantizeError
from onnxq.recipes import WeightOnlyInt4

__all__ = ["run_weight_only_int4", "calibration_feeds"]

logger = logging.getLogger(__name__)


def calibration_feeds(model: ir.Model, data: Any, recipe: WeightOnlyInt4) -> Iterable[Mapping[str, np.ndarray]]:
    """Feeds from ``data``: a :class:`~onnxq.calib_text.TextCalibration`, a path to a ``.npy``
    of token ids, or any iterable of ``{input_name: array}``."""
    from pathlib import Path

    from onnxq.calib_text import TextCalibration

    names = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
    if isinstance(data, (str, Path)):
        data = TextCalibration(data, seq_len=recipe.calib_seq_len, n_samples=recipe.calib_samples)
    if isinstance(data, TextCalibration):  # windows of the model's fixed input_ids length, if it has one
        from onnxq.data import input_specs

        return data.as_calibration_data().feeds(input_specs(model))
    if isinstance(data, Mapping):
        data = [data]
    from onnxq.data import CalibrationData, as_calibration_data, input_specs

    if not isinstance(data, CalibrationData):
        try:
            iter(data)
        except TypeError:
            raise CalibrationDataError(
                f"calibration data must be a TextCalibration, a .npy of token ids or an iterable of feeds, "
                f"not {type(data).__name__}"
            ) from None
        data = as_calibration_data(data)
    # feeds checked against the model's inputs (names, dtypes, ranks) as for int8-static
    specs = input_specs(model)
    data.precheck(specs)
    return data.feeds(specs)


def run_weight_only_int4(
    recipe: WeightOnlyInt4,
    model: ir.Model,
    data: Any,
    *,
    progress: Callable[[int, int, str], None] | None = None,
):
    from onnxq.api import QuantizeReport, _nothing_message, _upgrade_opset, _widen_float16, prepare
    from onnxq.int4.accuracy import choose_accuracy_levels
    from onnxq.int4.calibrate import collect_activation_stats
    from onnxq.passes.quantize_matmul_int4 import INT8_REASONS, QuantizeMatMulInt4Pass, plan_int4
    from onnxq.passes.widen_float16 import uses_bfloat16

    notes: list[str] = []
    if uses_bfloat16(model):
        # MatMulNBits and blocked DequantizeLinear take float32/float16 activations, and ORT's CPU
        # runs almost nothing in bfloat16; float16 could overflow where bfloat16 does not
        notes += _widen_float16(model, "int4 MatMul runs on float32/float16 activations, bfloat16 ranges need float32",
                                keep_gather_tables=True)
    prepare(model)
    decisions = tuple(plan_int4(model, recipe))
    selected = [d for d in decisions if d.selected]
    if not selected:
        raise NothingToQuantizeError(_nothing_message(recipe, decisions, model))
    if recipe.format == "qdq" or recipe.keep_8bit:
        qdq = recipe.format == "qdq"
        upgraded = _upgrade_opset(model, 21 if qdq else 13,
                                  "blocked DequantizeLinear needs it" if qdq else "per-channel DequantizeLinear needs it")
        if upgraded:
            notes += upgraded
            decisions = tuple(plan_int4(model, recipe))
    stats = None
    if recipe.needs_calibration:
        if data is None:
            raise CalibrationDataError(
                f"algorithm {recipe.algorithm} needs calibration data: pass --calib-text FILE (token ids .npy, "
                "or text with a tokenizer.json) for a language model, --calib-data/--calib-images for other "
                "models, or use rtn/hqq"
            )
        feeds = calibration_feeds(model, data, recipe)
        values = []
        nested = 0
        for d in decisions:
            if d.selected and d.reason not in INT8_REASONS:
                if d.node.graph is not model.graph:  # inside an If/Loop body: no statistics of its own
                    nested += 1
                    continue
                w = ir.convenience.get_const_tensor(d.node.inputs[1])
                k = w.shape[1] if d.node.op_type == "Gemm" and d.node.attributes.get_int("transB", 0) else w.shape[0]
                values.append((d.node.inputs[0], int(k)))
        if nested:
            notes.append(f"{nested} weight(s) inside If/Loop bodies were calibrated on nothing: rtn for them")
        stats = {}
        if values:
            t0 = time.perf_counter()
            stats = collect_activation_stats(
                model, values, feeds, first_token_weight=recipe.first_token_weight,
                memory_budget_bytes=recipe.calib_memory_mb << 20 if recipe.calib_memory_mb else None,
            )
            on_disk = sum(1 for st in stats.values() if st.on_disk)
            notes.append(
                f"calibrated {len(stats)} MatMul inputs on {next(iter(stats.values())).n_tokens} activation rows (tokens, or positions of an image model) "
                f"in {time.perf_counter() - t0:.1f} s"
                + (f" (Hessians over calib_memory_mb={recipe.calib_memory_mb}: several passes, {on_disk} kept on "
                   "disk until used)" if on_disk else "")
            )
    elif data is not None:
        notes.append(f"algorithm {recipe.algorithm} needs no calibration data; the data given was not used")
    t0 = time.perf_counter()
    QuantizeMatMulInt4Pass(recipe, stats, progress=progress)(model)
    notes.append(f"{recipe.algorithm} on {len(selected)} weights in {time.perf_counter() - t0:.1f} s")
    if recipe.format == "qdq" and recipe.sum_rewrites:
        from onnxq.passes.bias_sum import BiasSumPass

        sums = sum(1 for n in model.graph.all_nodes() if n.op_type == "Sum")
        if BiasSumPass()(model).modified:
            added = sum(1 for n in model.graph.all_nodes() if n.op_type == "Sum") - sums
            notes.append(f"wrote {added} Add(s) after an int4 MatMul as Sum (ORT CPU would fold MatMul + Add into a "
                         "float Gemm and dequantize the weight on every run)")
    if recipe.format == "qdq":
        shared = [n for n in model.graph.all_nodes() if n.op_type == "DequantizeLinear" and len(n.outputs[0].uses()) > 1]
        if shared:
            readers = sum(len(n.outputs[0].uses()) for n in shared)
            notes.append(
                f"{len(shared)} int4 weight(s) are read by {readers} MatMuls (shared weights, e.g. an unrolled RNN): ORT "
                "CPU dequantizes a shared weight on every read in the qdq format (an unrolled LSTM ran 0.17x its fp32 "
                "speed); --format matmulnbits runs them fused (1.3x there)"
            )
    library_missing = None
    if recipe.format == "onnxq" and recipe.accuracy_level is None:
        from onnxq import runtime
        from onnxq.errors import OnnxqError

        try:
            runtime.library_path("cpu")
        except OnnxqError as e:  # the model is still right; only the measured choice needs the op
            library_missing = str(e)
            notes.append(
                "MatMulBlockInt4 accuracy_level left unset (float activations): the parity check runs the op "
                f"and {library_missing}"
            )
    if recipe.format in ("matmulnbits", "onnxq") and recipe.accuracy_level is None and library_missing is None:
        levels = choose_accuracy_levels(model, stats, recipe.accuracy_tolerance)
        fast = sum(1 for v in levels.values() if v == 4)
        op = "MatMulNBits" if recipe.format == "matmulnbits" else "MatMulBlockInt4"
        notes.append(
            f"{op} accuracy_level 4 (int8 activations) on {fast} of {len(levels)} layers, "
            f"level 1 (fp32) where level 4 lost more than {recipe.accuracy_tolerance:.1%} parity"
        )
    return QuantizeReport(recipe, decisions, tuple(notes))
