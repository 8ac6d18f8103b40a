"""Bias refinement of an int8-static model, verified on the model's outputs.

Rounding and clipping activations shifts the mean of every later layer's output a little,
and the shifts add up through the network. After the QDQ model is written, this step walks
its Conv/ConvTranspose/Gemm nodes with an int32 bias in graph order and, for each, adds to
the bias the per-channel difference between the float model's mean output of that layer
and the quantized model's (both measured on the calibration data, the quantized one with
every earlier refinement in place). A shift is kept only where it lowers the squared error
of the model's float outputs against the float model's on that same data: a mean shift
that compensates sparse errors (clipped outliers at feature-map borders) with a dense
change can make the model worse, and is then left out.

One session over a copy of the QDQ model whose refined biases are graph inputs (so one
session serves every trial) and whose outputs add one per-channel mean per layer: a trial
is one pass over at most :data:`MAX_SAMPLES` samples. Cost: about one pass per layer
(MobileNetV2, 60 photos: ~30 s). The float model's outputs on those samples are held in
memory, up to :data:`MAX_REFERENCE_BYTES`; samples beyond are not used.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from onnxq import irutil

logger = logging.getLogger(__name__)

__all__ = ["RefineResult", "refine_biases", "MAX_SAMPLES"]

MAX_SAMPLES = 64
MAX_REFERENCE_BYTES = 256 << 20
_BATCH = 16  # samples per run where every input has a free batch axis
_OPS = ("Conv", "ConvTranspose", "Gemm")


@dataclasses.dataclass(frozen=True)
class RefineResult:
    layers: int  # Conv/Gemm nodes with an int32 bias that were tried
    refined: int  # of those, whose shift was kept
    samples: int
    runs: int  # passes over the samples
    sqnr_before_db: float
    sqnr_after_db: float
    seconds: float


@dataclasses.dataclass
class _Target:
    node: ir.Node
    key: str  # the node's output name (the same in the float model)
    codes: ir.Value  # int32 bias codes (DequantizeLinear input 0)
    scale: np.ndarray  # float64, per channel
    bias: np.ndarray  # float64: the dequantized bias


def _targets(model: ir.Model, float_names: set[str]) -> list[_Target]:
    """Root-graph Conv/ConvTranspose/Gemm nodes whose bias is DequantizeLinear(int32 constant,
    constant scale, zero point 0) of an int8 layer, in graph order."""
    out = []
    for node in model.graph:
        if node.op_type not in _OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3:
            continue
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            continue
        key = node.outputs[0].name
        if key not in float_names or irutil.producer_of(node.inputs[1], "DequantizeLinear") is None:
            continue
        dq = irutil.producer_of(node.inputs[2], "DequantizeLinear")
        if dq is None or len(dq.inputs) < 2:
            continue
        codes = irutil.const_array(dq.inputs[0])
        scale = irutil.const_array(dq.inputs[1])
        zero = irutil.const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
        if codes is None or scale is None or codes.dtype != np.int32 or codes.ndim != 1:
            continue
        if zero is not None and np.any(zero != 0):
            continue
        if dq.inputs[0].uses() and len(dq.inputs[0].uses()) != 1:
            continue  # codes shared with another node: refining one would move both
        scale = np.broadcast_to(scale.astype(np.float64).reshape(-1), codes.shape).copy()
        out.append(_Target(node, key, dq.inputs[0], scale, codes.astype(np.float64) * scale))
    return out


def _channel_mean(graph: ir.Graph, value: ir.Value, opset: int, names: irutil.FreshNames) -> ir.Value:
    """Mean over every axis but 1 (the channel axis of Conv and Gemm outputs), kept [C]."""
    rank = len(value.shape) if value.shape is not None else None
    if rank is None:
        raise ValueError(f"{value.name}: unknown rank")
    axes = [a for a in range(rank) if a != 1]
    nb = irutil.NodeBuilder(names, f"{value.name}/refine")
    if opset >= 18:
        axes_v = irutil.add_initializer(graph, names(f"{value.name}/refine_axes"), np.array(axes, np.int64))
        out = nb.op("ReduceMean", [value, axes_v], {"keepdims": 0})
    else:
        out = nb.op("ReduceMean", [value], {"axes": axes, "keepdims": 0})
    out.dtype = ir.DataType.FLOAT
    graph.insert_after(value.producer(), nb.nodes)
    return out


def _with_means(model: ir.Model, keys: list[str]) -> tuple[ir.Model, list[str], list[str]]:
    """A copy of ``model`` whose outputs are its float outputs, then the channel means of
    ``keys``. Returns (copy, output names, mean names)."""
    copy = model.clone()  # weights shared; external ones keep their folder
    values = {v.name: v for n in copy.graph for v in n.outputs}
    outputs = [v for v in copy.graph.outputs if v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16,
                                                              ir.DataType.DOUBLE)]
    names = irutil.FreshNames(copy.graph)
    opset = irutil.default_opset(copy) or 13
    means = [_channel_mean(copy.graph, values[k], opset, names) for k in keys]
    del copy.graph.outputs[:]
    copy.graph.outputs.extend(outputs + means)
    return copy, [v.name for v in outputs], [v.name for v in means]


def refine_biases(
    float_model: ir.Model, quantized: ir.Model, data: Any, *, channel_scales: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 1, max_samples: int = 0,
) -> RefineResult | None:
    """Refine, in place, the int32 biases of ``quantized`` (see the module doc). ``float_model``:
    the model before quantization (its node output names are the quantized model's).
    ``channel_scales``: per-channel factors by which channel equalization scaled a layer's
    output relative to the float model (keyed by that layer's output name). None when
    nothing can be refined (no int8 layer with a bias, or no float output to check on)."""
    from onnxq.calib.stream import _session
    from onnxq.data import as_calibration_data, batched, feed_rows, input_specs, ort_feed

    t0 = time.perf_counter()
    float_names = {v.name for n in float_model.graph for v in n.outputs}
    targets = [t for t in _targets(quantized, float_names) if t.node.outputs[0].shape is not None]
    if not targets:
        return None
    keys = [t.key for t in targets]
    ref_model, out_names, ref_mean_names = _with_means(float_model, keys)
    if not out_names:
        return None
    sim_model, _, sim_mean_names = _with_means(quantized, keys)
    nodes = {n.outputs[0].name: n for n in sim_model.graph if n.outputs}
    bias_inputs = []
    for i, t in enumerate(targets):
        v = ir.Value(name=f"onnxq_refine_bias_{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([t.bias.size]))
        sim_model.graph.inputs.append(v)
        nodes[t.key].replace_input_with(2, v)
        bias_inputs.append(v.name)
    ref_session = _session(ref_model, 0)
    sim_session = _session(sim_model, 0)
    del ref_model, sim_model

    specs = input_specs(float_model)
    source = as_calibration_data(data, batch_size=batch_size)
    limit = min(max_samples, MAX_SAMPLES) if max_samples else MAX_SAMPLES

    def reference(batch: int):
        feeds, references, weights = [], [], []
        sums = [np.zeros(t.bias.size) for t in targets]
        held = 0
        for feed in batched(source.feeds(specs, limit=limit), specs, batch):
            feed = ort_feed(feed)
            outs = ref_session.run(out_names + ref_mean_names, feed)
            held += sum(o.nbytes for o in outs[: len(out_names)])
            if held > MAX_REFERENCE_BYTES and feeds:
                break
            rows = feed_rows(feed)
            feeds.append(feed)
            weights.append(rows)
            references.append([o.astype(np.float64) for o in outs[: len(out_names)]])
            for acc, m in zip(sums, outs[len(out_names):]):
                acc += m * rows
        return feeds, references, weights, sums

    try:  # a few samples per run where the inputs allow it: fewer, larger runs
        feeds, references, weights, ref_means = reference(max(batch_size, _BATCH))
    except Exception:  # a model that takes only its own batch size after all
        if max(batch_size, _BATCH) == batch_size:
            raise
        feeds, references, weights, ref_means = reference(batch_size)
    del ref_session
    scales = channel_scales or {}
    rows = sum(weights)
    for t, acc in zip(targets, ref_means):
        acc /= rows
        factor = scales.get(t.key)
        if factor is not None:
            acc *= np.asarray(factor, np.float64).reshape(-1)
    power = [sum(float((r[k] ** 2).sum()) for r in references) or 1.0 for k in range(len(out_names))]

    biases = [t.bias.copy() for t in targets]
    runs = 0

    def evaluate(values: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        nonlocal runs
        runs += 1
        err = [0.0] * len(out_names)
        means = [np.zeros(t.bias.size) for t in targets]
        extra = {name: v.astype(np.float32) for name, v in zip(bias_inputs, values)}
        for feed, ref, w in zip(feeds, references, weights):
            outs = sim_session.run(out_names + sim_mean_names, {**feed, **extra})
            for k, (o, r) in enumerate(zip(outs[: len(out_names)], ref)):
                err[k] += float(((o.astype(np.float64) - r) ** 2).sum())
            for acc, m in zip(means, outs[len(out_names):]):
                acc += m * w
        for acc in means:
            acc /= rows
        return sum(e / p for e, p in zip(err, power)), means

    err, means = evaluate(biases)
    start = err
    refined = 0
    for i, t in enumerate(targets):
        shift = ref_means[i] - means[i]
        if not np.isfinite(shift).all() or not np.any(np.abs(shift) >= t.scale / 2):
            continue  # finer than one bias step: nothing to write
        trial = list(biases)
        trial[i] = biases[i] + shift
        trial_err, trial_means = evaluate(trial)
        if trial_err < err:
            biases, err, means = trial, trial_err, trial_means
            refined += 1
    for t, b in zip(targets, biases):
        codes = np.clip(np.rint(b / t.scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        if not np.array_equal(codes, irutil.const_array(t.codes)):
            t.codes.const_value = ir.tensor(codes, name=t.codes.name)

    def db(e: float) -> float:
        return float(10 * np.log10(len(out_names) / e)) if e > 0 else float("inf")

    result = RefineResult(len(targets), refined, rows, runs, db(start), db(err), time.perf_counter() - t0)
    logger.info("bias refinement: %d of %d layers, output SQNR %.2f -> %.2f dB on %d samples (%d runs, %.1f s)",
                refined, len(targets), result.sqnr_before_db, result.sqnr_after_db, rows, runs, result.seconds)
    return result
