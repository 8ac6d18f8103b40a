"""The int8-static recipe end to end: plan → calibrate → insert QDQ → fold scales."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import weakref
from typing import Any

import onnx_ir as ir

from onnxq import qparams as qp
import numpy as np

from onnxq import irutil
from onnxq.calib.observers import (
    AutoObserver, ChannelMaxObserver, ChannelMeanObserver, ChannelNegMaxObserver, Observer, make_observer,
)
from onnxq.calib.stream import CalibrationStats, calibrate
from onnxq.errors import NothingToQuantizeError, OnnxqError
from onnxq.recipes import StaticInt8
from onnxq.selection import Decision

__all__ = ["quantize_static", "StaticResult", "calibrate_plan", "gptq_weight_values"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StaticResult:
    decisions: tuple[Decision, ...]
    notes: tuple[str, ...]
    stats: CalibrationStats | None
    qparams: dict[str, qp.QParams]
    biases: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    weight_scales: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    weight_values: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Equalization:
    """Tensor ``tensor`` = act(Conv ``producer``) feeds only depthwise convs ``consumers``
    (``linear``: no activation in between, the tensor takes both signs)."""

    tensor: str
    producer: Any  # WeightSpec of the producing Conv
    consumers: tuple  # WeightSpecs of the depthwise Convs
    channels: int
    linear: bool = False


# values this large are masks (finfo(float32).min / max, -1e9-style "minus infinity"), not data
MASK_MAGNITUDE = 1e8
# a tensor that goes into a Softmax (attention scores plus their mask): BERT-era exports add
# (1 - mask) * -10000; scores themselves stay far below this
SOFTMAX_MASK_MAGNITUDE = 5e3
_MASK_RULE = f"|x| >= {MASK_MAGNITUDE:.0e}, or >= {SOFTMAX_MASK_MAGNITUDE:.0e} going into a Softmax"
MASK_VALUES = (
    f"carries mask values ({_MASK_RULE}; e.g. finfo(float32).min or -10000 added to attention scores): "
    "an int8 range spanning them leaves one level for the data; left in float"
)

# a Concat shares one scale over its inputs: one that spans less than this fraction of the
# joint range keeps fewer than 256 / 16 = 16 levels, and the Concat stays float instead
CONCAT_RANGE_RATIO = 16.0


class FloatAfterCalibrationError(OnnxqError):
    """Calibration found nodes that must stay float (``nodes``: node -> reason); data that
    can be read again is calibrated again without them."""

    def __init__(self, nodes: dict, what: str) -> None:
        self.nodes = nodes
        super().__init__(f"{len(nodes)} {what}")


class MismatchedConcatError(FloatAfterCalibrationError):
    """Concat nodes whose inputs' ranges differ too much to share one int8 scale."""

    def __init__(self, nodes: dict) -> None:
        super().__init__(nodes, "Concat node(s) join ranges too different for one int8 scale")


class MaskValuedTensorsError(FloatAfterCalibrationError):
    """Nodes whose tensors carry mask values (see MASK_VALUES, e.g. finfo(float32).min added
    to attention scores): one int8 scale spanning them has no levels left for the rest."""

    def __init__(self, nodes: dict) -> None:
        super().__init__(nodes, f"node(s) carry mask values ({_MASK_RULE}) too large for an int8 range")


class UnobservedTensorsError(OnnxqError):
    """Calibration saw no finite value of these tensors (a branch never taken, or NaN/Inf)."""

    def __init__(self, tensors: list[str]) -> None:
        self.tensors = tuple(tensors)
        super().__init__(
            f"calibration saw no finite values for tensor {tensors[0]!r}"
            + (f" and {len(tensors) - 1} more" if len(tensors) > 1 else "")
            + " (a branch never taken, or NaN/Inf activations); give it a range in tensor_overrides or exclude "
            "its consumers"
        )


def _infer_shapes(model: ir.Model) -> None:
    from onnx_ir.passes.common import ShapeInferencePass

    try:
        ShapeInferencePass(strict_mode=False)(model)
    except Exception as e:  # shapes help (sample sizes, dtypes) but are not required
        logger.info("shape inference failed (%s); continuing without it", str(e)[:200])


def _const_shape(value) -> tuple[int, ...] | None:
    """The shape of a constant without converting it to numpy (that costs ~0.1 ms per
    weight, and calibration looks at every weight several times)."""
    if value is None or not irutil.is_constant(value):
        return None
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape)
    a = irutil.const_array(value)
    return None if a is None else a.shape


def _bias_targets(plan) -> list[tuple[Any, str, int, int, int]]:
    """(weight spec, input tensor, channel axis, rank, channels) of every Conv/Gemm whose
    bias FoldScalesPass can rewrite, for bias correction."""
    out = []
    for spec in plan.weights:
        node = spec.node
        if spec.index != 1 or node.op_type not in ("Conv", "Gemm"):
            continue
        shape = _const_shape(node.inputs[1])
        if node.op_type == "Conv":
            channels = shape[1] * node.attributes.get_int("group", 1)
            out.append((spec, node.inputs[0].name, 1, len(shape), channels))
        else:
            if node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_float("beta", 1.0) != 1.0:
                continue
            c = node.inputs[2] if len(node.inputs) > 2 else None
            if c is None or not irutil.is_constant(c) or len(_const_shape(c)) != 1:
                continue
            channels = shape[1] if node.attributes.get_int("transB", 0) else shape[0]
            out.append((spec, node.inputs[0].name, 1, 2, channels))
    return out


def _rounding_error_sums(w: np.ndarray, spec, codes: np.ndarray | None = None) -> np.ndarray:
    """sum over the kernel (axes >= 2, Conv) of W_q - W for the weight quantization
    InsertQdqPass will apply: [O, C/g] for a Conv, the full [K, N] / [N, K] for Gemm.
    ``codes``: the weight's integer values when they are not round to nearest (GPTQ; same
    symmetric per-channel scale). The symmetric per-channel round-to-nearest case (every
    weight of a default recipe) avoids building W_q:
    W_q - W = scale * (rint(W / scale) - W / scale), summed in float32 scratch buffers, a
    block of output channels at a time (about ``_BLOCK_ELEMENTS`` weights: the block stays
    in cache across the passes over it)."""
    from onnxq.passes.insert_qdq import quantize_weight

    if (
        codes is not None or spec.axis is None or not spec.symmetric or not spec.qtype.signed or w.ndim < 3
        or spec.axis % w.ndim != 0
    ):
        _, scale, _, wq = quantize_weight(w, spec.axis, spec.qtype, spec.symmetric)
        if codes is None:
            dw = wq.astype(np.float64) - w
        else:
            shape = [1] * w.ndim
            shape[spec.axis % w.ndim] = -1
            dw = codes.astype(np.float64) * scale.astype(np.float64).reshape(shape) - w
        return dw.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) if w.ndim >= 3 else dw
    o, c = w.shape[0], w.shape[1]
    flat = w.reshape(o, -1)
    kk = flat.shape[1] // c
    ones = np.ones(kk, np.float32)
    out = np.empty((o, c), np.float64)
    rows = max(1, _BLOCK_ELEMENTS // flat.shape[1])
    for a in range(0, o, rows):
        z = min(o, a + rows)
        block = flat[a:z]
        absmax = np.maximum(-block.min(axis=1), block.max(axis=1)).astype(np.float64)
        scale = qp.qparams_from_range(-absmax, absmax, spec.qtype, symmetric=True).scale.astype(np.float32)
        # |w / scale| <= qmax by construction (scale = absmax / qmax): no clipping needed.
        # In units of the scale, the rounding error is rint(q) - q, in [-0.5, 0.5]: its
        # float32 sums over the kernel are exact enough, and W itself is never summed
        q = _scratch(block.shape, 0)
        np.divide(block, scale[:, None], out=q)
        err = _scratch(block.shape, 1)
        np.rint(q, out=err)
        err -= q
        # a matrix-vector product sums the small kernel axis far faster than .sum(axis=2)
        esum = err if kk == 1 else (err.reshape((z - a) * c, kk) @ ones).reshape(z - a, c)
        np.multiply(esum, scale.astype(np.float64)[:, None], out=out[a:z])
    return out


_BLOCK_ELEMENTS = 1 << 14


_SCRATCH: dict[int, np.ndarray] = {}


def _scratch(shape: tuple[int, ...], slot: int = 0) -> np.ndarray:
    """A reused float32 buffer per ``slot`` (fresh multi-MB arrays for every weight cost
    page faults)."""
    n = int(np.prod(shape))
    if slot not in _SCRATCH or _SCRATCH[slot].size < n:
        _SCRATCH[slot] = np.empty(n, np.float32)
    return _SCRATCH[slot][:n].reshape(shape)


def _corrected_bias(spec, mean: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
    """The bias minus the mean output error that weight rounding causes: E[x] . (W_q - W)
    (``codes``: the weight's integer values when they are not round to nearest)."""
    node = spec.node
    w = irutil.const_array(node.inputs[1]).astype(np.float32, copy=False)
    dsum = _rounding_error_sums(w, spec, codes)
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        o, cpg = w.shape[0], w.shape[1]
        shift = np.einsum("goc,gc->go", dsum.reshape(groups, o // groups, cpg), mean.reshape(groups, cpg)).reshape(o)
    else:
        dw_kn = dsum.T if node.attributes.get_int("transB", 0) else dsum
        shift = mean @ dw_kn.astype(np.float64)
    b_value = node.inputs[2] if len(node.inputs) > 2 else None
    b = irutil.const_array(b_value) if b_value is not None else np.zeros(shift.shape, np.float32)
    return (b.astype(np.float64) - shift).astype(np.float32)


def _equalization_targets(plan, values) -> list[_Equalization]:
    from onnxq.passes.insert_qdq import _activation_bounds

    specs = {id(sp.node): sp for sp in plan.weights if sp.index == 1}
    out = []
    for g in plan.groups:
        if len(g.members) != 1:
            continue
        t = values.get(g.key)
        act = t.producer() if t is not None else None
        if act is None or t.is_graph_output():
            continue
        linear = act.op_type == "Conv"
        if linear:  # a Conv output straight into depthwise convs: scaling a channel is exact
            conv = act
        else:
            if act.op_type not in ("Relu", "Clip"):
                continue
            bounds = _activation_bounds(act)
            if bounds is None or bounds[0] != 0.0:
                continue
            conv = act.inputs[0].producer() if act.inputs[0] is not None else None
        spec_a = specs.get(id(conv)) if conv is not None else None
        if spec_a is None or conv.op_type != "Conv" or spec_a.axis != 0 or len(conv.outputs[0].uses()) != (
            len(t.uses()) if linear else 1
        ):
            continue
        if len(conv.inputs[1].uses()) != 1:
            continue
        channels = _const_shape(conv.inputs[1])[0]
        consumers = []
        for user, index in t.uses():
            sp = specs.get(id(user))
            w_shape = _const_shape(user.inputs[1]) if sp is not None else None
            if (
                sp is None or index != 0 or user.op_type != "Conv" or sp.axis != 0 or w_shape is None
                or user.attributes.get_int("group", 1) != channels or w_shape[:2] != (channels, 1)
                or len(user.inputs[1].uses()) != 1
            ):
                consumers = []
                break
            consumers.append(sp)
        if consumers and g.fixed_range is not None:  # a range the recipe fixed: its channels stay as they are
            logger.warning(
                "tensor_overrides fixes the range of %s, so channel equalization leaves it alone: its channels "
                "are not scaled to the whole 8-bit range (MobileNetV2's first ReLU6 pinned to [0, 6]: held-out "
                "SQNR 17.9 -> 12.2 dB); drop the range to let it", g.key)
        elif consumers:
            out.append(_Equalization(g.key, spec_a, tuple(consumers), channels, linear))
    # a depthwise conv that consumes one equalized tensor and produces another would need both
    # factors in its weight scale: keep only the first of such a chain
    consumed = {id(sp.node) for eq in out for sp in eq.consumers}
    return [eq for eq in out if id(eq.producer.node) not in consumed]


# ops whose output is bounded by construction: their range is taken whole, never clipped. A
# clipping search sees a sigmoid's few values near 1 as a tail, but those are the gates that
# are open (x * sigmoid(x) at its largest): entropy cut one at 0.5 and cost a CNN+LSTM OCR
# model 16 dB at that layer
_BOUNDED_OPS = frozenset({"Sigmoid", "HardSigmoid", "Tanh"})


def _bounded(values, tensors) -> bool:
    """Whether every one of ``tensors`` comes out of a Sigmoid/HardSigmoid/Tanh."""
    for name in tensors:
        v = values.get(name)
        p = v.producer() if v is not None else None
        if p is None or p.op_type not in _BOUNDED_OPS or p.domain not in ("", "ai.onnx"):
            return False
    return bool(tensors)


def _nonnegative(values, tensors) -> frozenset[str]:
    """Observed tensors that come out of a Relu or a Clip with a lower bound >= 0."""
    from onnxq.passes.insert_qdq import _activation_bounds

    out = set()
    for name in tensors:
        v = values.get(name)
        p = v.producer() if v is not None else None
        if p is not None and p.op_type in ("Relu", "Clip") and p.domain in ("", "ai.onnx"):
            b = _activation_bounds(p)
            if b is not None and b[0] >= 0:
                out.add(name)
    return frozenset(out)


def _plan_values(plan) -> dict[str, Any]:
    """Name -> value for every input/output of a candidate node of the plan."""
    values: dict[str, Any] = {}
    for d in plan.decisions:
        for v in (*d.node.inputs, *d.node.outputs):
            if v is not None and v.name:
                values.setdefault(v.name, v)
    return values


def _weight_scale(spec) -> np.ndarray:
    from onnxq.passes.insert_qdq import quantize_weight

    w = irutil.const_array(spec.node.inputs[1]).astype(np.float32)
    return quantize_weight(w, spec.axis, spec.qtype, spec.symmetric)[1]


def _span(obs: Observer) -> float:
    lo, hi = obs.range(qp.qtype_named("uint8"), symmetric=False)
    return float(max(hi, 0.0) - min(lo, 0.0))


def _mismatched_concats(plan, observers: dict[str, Observer]) -> dict:
    """Concat node -> reason, where one input spans less than 1/CONCAT_RANGE_RATIO of the
    largest input's span (the inputs' exact extremes)."""
    out = {}
    for node, names in plan.concats:
        spans = {t: _span(observers[t]) for t in names if t in observers and observers[t].seen}
        if len(spans) < 2:
            continue
        top = max(spans.values())
        small = min(spans, key=spans.get)
        if top > 0 and spans[small] * CONCAT_RANGE_RATIO < top:
            out[node] = (
                f"its inputs' ranges differ {top / max(spans[small], 1e-30):.0f}x: one int8 scale would leave "
                f"{small!r} fewer than {256 / CONCAT_RANGE_RATIO:.0f} levels; left in float"
            )
    return out


def _feeds_softmax(value) -> bool:
    """Whether ``value`` reaches a Softmax directly or through reshapes/transposes."""
    from onnxq.passes.insert_qdq import PASS_THROUGH_OPS

    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        for user, _ in v.uses():
            if user.op_type in ("Softmax", "LogSoftmax"):
                return True
            if user.op_type in PASS_THROUGH_OPS and id(user) not in seen:
                seen.add(id(user))
                stack.extend(user.outputs)
    return False


def _mask_valued(plan, per_group: dict[str, Observer]) -> dict:
    """Selected node -> MASK_VALUES, for the nodes touching a group whose observed extremes
    reach MASK_MAGNITUDE (SOFTMAX_MASK_MAGNITUDE for a group that goes into a Softmax)."""
    tensors: set[str] = set()
    values = _plan_values(plan)
    for g in plan.groups:
        obs = per_group.get(g.key)
        if obs is None or not (obs.seen or getattr(obs, "infinite", 0)):
            continue
        # an infinite value is a mask value too (Where(mask, -inf, 0) in torch's exports)
        top = math.inf if getattr(obs, "infinite", 0) else max(abs(obs.min), abs(obs.max))
        if top >= MASK_MAGNITUDE or (
            top >= SOFTMAX_MASK_MAGNITUDE and any(t in values and _feeds_softmax(values[t]) for t in g.members)
        ):
            tensors.update(g.members)
    return {node: MASK_VALUES for node in _nodes_touching(plan, tensors)} if tensors else {}


def _nodes_touching(plan, tensors: set[str]) -> list[ir.Node]:
    """Selected nodes of ``plan`` that read or write one of ``tensors`` (also through the
    Relu/Clip folded into them)."""
    out = []
    for d in plan.decisions:
        if not d.selected:
            continue
        names = {v.name for v in d.node.inputs if v is not None} | {v.name for v in d.node.outputs}
        for v in d.node.outputs:
            names.update(u.outputs[0].name for u, _ in v.uses() if u.op_type in ("Relu", "Clip") and u.outputs)
        if names & tensors:
            out.append(d.node)
    return out


def calibrate_plan(
    model: ir.Model, plan, recipe: StaticInt8, data: Any, *, weight_values: dict[str, np.ndarray] | None = None,
    check_concats: bool = False, alternatives: dict[str, dict[str, qp.QParams]] | None = None,
) -> tuple[
    dict[str, qp.QParams], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], CalibrationStats | None
]:
    """Observe every scale group of ``plan`` on ``data``. Returns qparams for every member
    tensor, float biases (bias correction, equalization) and weight scales (equalization)
    keyed by node output name, the per-channel factors (axis 1) by which equalization
    scales tensors relative to the float model, and the run statistics.
    ``weight_values``: integer weights that replace round to nearest (from
    :func:`gptq_weight_values`, keyed by node output name); bias correction uses them.
    With ``calibration="auto"`` the ranges returned are mse's, and ``alternatives`` (a dict
    to fill) gets the qparams of every method in :data:`AUTO_METHODS`, all from the same
    histograms (one calibration pass)."""
    from onnxq.passes.insert_qdq import group_qparams

    codes = dict(weight_values or {})

    observers: dict[str, Observer] = {}
    per_group: dict[str, Observer] = {}
    values = _plan_values(plan)
    # squashed outputs keep their exact [min, max] whatever the method: a histogram observer's
    # extremes come from a sample of the tensor (a YOLO detector's SiLU gates: 0.87 for 0.97,
    # 2.6 dB of output SQNR)
    bounded = {g.key for g in plan.groups if g.fixed_range is None and g.calibration is None
               and _bounded(values, g.members)}
    for g in plan.groups:
        if g.fixed_range is not None:
            continue
        method = g.calibration or recipe.calibration
        if g.key in bounded:
            obs = make_observer("minmax")
        elif method == "auto":
            obs = AutoObserver()
        else:
            obs = make_observer(method, percentile=float(g.override.get("percentile", recipe.percentile)))
        per_group[g.key] = obs
        for t in g.observe:
            observers[t] = obs
    # each input of a shared-scale Concat on its own (exact extremes, cheap)
    for node, names in plan.concats if check_concats else ():
        group = plan.group_of(node.outputs[0].name)
        if group is None or group.fixed_range is not None or len(names) < 2:
            continue
        for t in names:
            if t not in observers:
                observers[t] = make_observer("minmax")
    channel_stats: dict[str, list] = {}
    means: dict[str, ChannelMeanObserver] = {}
    targets = _bias_targets(plan) if recipe.bias_correction else []
    for _, tensor, axis, rank, channels in targets:
        if tensor not in means:
            means[tensor] = ChannelMeanObserver(axis, rank, channels)
            channel_stats.setdefault(tensor, []).append(means[tensor])
    equalize = _equalization_targets(plan, values) if recipe.channel_equalization else []
    maxima: dict[str, ChannelMaxObserver] = {}
    minima: dict[str, ChannelNegMaxObserver] = {}  # of linear tensors: -min per channel
    for eq in equalize:
        rank = len(_const_shape(eq.producer.node.inputs[1]))
        maxima[eq.tensor] = ChannelMaxObserver(1, rank, eq.channels)
        channel_stats.setdefault(eq.tensor, []).append(maxima[eq.tensor])
        if eq.linear:
            minima[eq.tensor] = ChannelNegMaxObserver(1, rank, eq.channels)
            channel_stats[eq.tensor].append(minima[eq.tensor])
    stats = None
    if observers or channel_stats:
        stats = calibrate(
            model, observers, data, batch_size=recipe.batch_size, max_samples=recipe.max_samples,
            channel_stats=channel_stats, nonnegative=_nonnegative(values, observers),
        )
    unseen = [t for g in plan.groups if g.fixed_range is None and not per_group[g.key].seen for t in g.members]
    if unseen:
        raise UnobservedTensorsError(unseen)
    masked = _mask_valued(plan, per_group)
    if masked and check_concats:
        raise MaskValuedTensorsError(masked)
    if masked:
        logger.warning(
            "%d node(s) carry mask values (%s) but the calibration data can be read only once, so they "
            "cannot be left in float and calibrated again: their int8 ranges span the mask (pass a list, a "
            "function returning a fresh iterator, or files)", len(masked), _MASK_RULE,
        )
    mismatched = _mismatched_concats(plan, observers) if check_concats else {}
    if mismatched:
        raise MismatchedConcatError(mismatched)
    out: dict[str, qp.QParams] = {}
    auto = recipe.calibration == "auto"
    options = {m: {} for m in AUTO_METHODS} if auto and alternatives is not None else {}
    for g in plan.groups:
        searched = g.fixed_range is None and g.key not in bounded
        if g.fixed_range is not None:
            lo, hi = g.fixed_range
        elif not searched:
            obs = per_group[g.key]  # a squashed output: its extremes are where the information is
            lo, hi = float(obs.min), float(obs.max)
        else:
            lo, hi = per_group[g.key].range(g.qtype, symmetric=g.symmetric)
        p = group_qparams(g, lo, hi)
        for t in g.members:
            out[t] = p
        for method, table in options.items():
            q = p
            if searched and g.calibration in (None, "auto") and method != "mse":
                view = _as_method(per_group[g.key], method, float(g.override.get("percentile", recipe.percentile)))
                q = group_qparams(g, *view.range(g.qtype, symmetric=g.symmetric))
            for t in g.members:
                table[t] = q
    biases: dict[str, np.ndarray] = {}
    for spec, tensor, *_ in targets:
        mean = means[tensor].mean
        if mean is not None:
            key = spec.node.outputs[0].name
            biases[key] = _corrected_bias(spec, mean, codes.get(key))
    weight_scales: dict[str, np.ndarray] = {}
    channel_scales: dict[str, np.ndarray] = {}
    for eq in equalize:
        hi = maxima[eq.tensor].max
        lo = -minima[eq.tensor].max if eq.linear else np.zeros_like(hi)
        m = np.maximum(hi, -lo)  # per-channel magnitude
        top = float(np.max(m)) if np.isfinite(m).all() and np.isfinite(lo).all() else 0.0
        if top <= 0:
            continue
        # every channel stretched to the tensor's largest magnitude: s >= 1, so a Clip(0, hi)
        # after the producer clips nothing new within the calibrated range
        s = np.where(m > top * 1e-4, top / np.maximum(m, 1e-30), 1.0)
        # the scaled tensor's exact range ([0, top] after a Relu/Clip)
        group = plan.group_of(eq.tensor)
        out[eq.tensor] = group_qparams(group, float(min(0.0, np.min(lo * s))), float(np.max(hi * s)))
        a = eq.producer.node
        key_a = a.outputs[0].name
        channel_scales[key_a] = channel_scales[eq.tensor] = s.astype(np.float32)  # one array: stored once
        weight_scales[key_a] = (_weight_scale(eq.producer) * s).astype(np.float32)
        bias_a = biases.get(key_a)
        if bias_a is None and len(a.inputs) > 2 and a.inputs[2] is not None:
            bias_a = irutil.const_array(a.inputs[2])
        if bias_a is not None:
            biases[key_a] = (bias_a.astype(np.float64) * s).astype(np.float32)
        for sp in eq.consumers:
            weight_scales[sp.node.outputs[0].name] = (_weight_scale(sp) / s).astype(np.float32)
    for table in options.values():  # equalized tensors' exact ranges hold for every method
        table.update({eq.tensor: out[eq.tensor] for eq in equalize if eq.tensor in out})
    if alternatives is not None:
        alternatives.update(options)
    return out, biases, weight_scales, channel_scales, stats


# calibration="auto": each method's ranges from the same histograms, the one whose model
# follows the float model's outputs best on the calibration data is kept. No method wins
# everywhere (held-out output SQNR, mse / percentile / minmax: MobileNetV2 18.1 / 18.3 / 13.5,
# openWakeWord embedding 17.8 / 18.1 / 26.8, a CNN+LSTM OCR 20.0 / 24.6 / 20.9)
AUTO_METHODS = ("mse", "percentile", "minmax")


def _as_method(obs: AutoObserver, method: str, percentile: float) -> Observer:
    """An observer of ``method`` holding ``obs``'s statistics (its histogram serves every
    histogram method; minmax reads the exact extremes kept beside it)."""
    if method == "minmax":
        return obs.exact
    view = make_observer(method, percentile=percentile, bins=obs.bins)
    own = {"percentile", "exact_extremes", "exact"}
    view.__dict__.update({k: v for k, v in obs.__dict__.items() if k not in own})
    return view


def gptq_weight_values(model: ir.Model, plan, recipe: StaticInt8, data: Any) -> dict[str, np.ndarray]:
    """GPTQ int8 codes (same per-channel scales as round to nearest) for every Conv/Gemm
    weight of ``plan`` it applies to, from layer-input Hessians of the float model."""
    import time

    from onnxq.calib import gptq8
    from onnxq.passes.insert_qdq import quantize_weight

    # layers inside If/Loop bodies have no Hessian of their own run (left to round to nearest)
    targets = [t for t in gptq8.gptq_targets(plan) if t.spec.node.graph is model.graph]
    if not targets:
        return {}
    cache = _gptq_cache(data)
    model_digest = _model_digest(model)
    keys = {t.key: (model_digest, *_gptq_key(t, recipe)) for t in targets}
    todo = [t for t in targets if keys[t.key] not in cache]
    if not todo:
        logger.info("GPTQ int8 rounding of %d weights: all from this data's earlier rounding", len(targets))
        return {t.key: cache[keys[t.key]] for t in targets}
    accs, seconds = gptq8.collect_hessians(
        model, todo, data, batch_size=recipe.batch_size, max_samples=recipe.max_samples
    )
    t0 = time.perf_counter()
    for t in todo:
        spec = t.spec
        w = irutil.const_array(spec.node.inputs[1]).astype(np.float32)
        q_rtn, scale, _, _ = quantize_weight(w, spec.axis, spec.qtype, spec.symmetric)
        wg = gptq8.weight_groups(w, t)
        q = gptq8.gptq_quantize(
            wg, accs[t.key].hessian(gptq8.CENTERED), scale.reshape(wg.shape[0], wg.shape[1]), spec.qtype.qmax,
            damp=gptq8.DAMP, act_order=gptq8.ACT_ORDER,
        )
        if t.op_type == "Conv":
            q = q.reshape(w.shape)
        else:
            q = q[0] if spec.node.attributes.get_int("transB", 0) else q[0].T
        cache[keys[t.key]] = q.astype(q_rtn.dtype)
    logger.info("GPTQ int8 rounding of %d weights (%d from this data's earlier rounding): Hessians %.2f s, "
                "rounding %.2f s", len(targets), len(targets) - len(todo), seconds, time.perf_counter() - t0)
    return {t.key: cache[keys[t.key]] for t in targets}


# GPTQ codes by calibration-data object: the --target-sqnr search quantizes the same model
# with the same data once per round, only with more nodes excluded; a layer's codes depend
# on its weight and on the float model's inputs to it, not on what else is excluded
_GPTQ_CODES: dict[int, tuple[weakref.ref, dict]] = {}


def _gptq_cache(data) -> dict:
    for k in [k for k, (ref, _) in _GPTQ_CODES.items() if ref() is None]:
        del _GPTQ_CODES[k]
    entry = _GPTQ_CODES.get(id(data))
    if entry is None or entry[0]() is not data:
        try:
            entry = (weakref.ref(data), {})
        except TypeError:  # a plain list: read once here, nothing to remember it by
            return {}
        _GPTQ_CODES[id(data)] = entry
    return entry[1]


def _model_digest(model: ir.Model) -> str:
    """The float graph a layer's Hessian comes from: every node and constant of the model
    (a changed upstream layer gives other layer inputs, hence other codes)."""
    h = hashlib.sha1()
    for node in irutil.iter_nodes(model.graph):
        h.update(f"{node.domain}:{node.op_type}:{[v.name if v is not None else '' for v in node.inputs]}->"
                 f"{[v.name for v in node.outputs]}:{sorted(node.attributes)}".encode())
    for g in irutil.iter_graphs(model.graph):
        for name, v in sorted(g.initializers.items()):
            a = irutil.const_array(v)
            h.update(name.encode())
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _gptq_key(target, recipe: StaticInt8) -> tuple:
    spec = target.spec
    w = irutil.const_array(spec.node.inputs[1])
    digest = hashlib.sha1(np.ascontiguousarray(w).tobytes()).hexdigest()
    return (target.key, digest, w.shape, spec.axis, spec.qtype.name, spec.symmetric, recipe.max_samples,
            recipe.batch_size, spec.node.op_type, spec.node.attributes.get_int("transB", 0))


AUTO_SAMPLES = 32  # calibration samples the candidates of calibration="auto" are scored on
AUTO_MAX_WEIGHT_BYTES = 512 << 20  # each candidate is a copy of the model


def _choose_calibration(model, recipe, float_nodes, alternatives, biases, weight_scales, codes,
                        data) -> tuple[str, dict[str, float]]:
    """The method of ``alternatives`` whose QDQ model's float outputs come closest to
    ``model``'s (summed per-output noise-to-signal ratio) on up to :data:`AUTO_SAMPLES`
    calibration samples, and each method's output SQNR in dB."""
    from onnxq.calib.stream import _session
    from onnxq.data import input_specs, ort_feed
    from onnxq.passes.fold_scales import FoldScalesPass
    from onnxq.passes.insert_qdq import InsertQdqPass

    floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)
    names = [v.name for v in model.graph.outputs if v.dtype in floats]
    limit = min(AUTO_SAMPLES, recipe.max_samples) if recipe.max_samples else AUTO_SAMPLES  # never past --max-samples
    feeds = [ort_feed(f) for f in data.feeds(input_specs(model), limit=limit)]
    if not names or not feeds:
        return "mse", {}
    ref_session = _session(model.clone(), 0)  # weights shared; _session retypes bfloat16 inputs
    refs = [[o.astype(np.float64) for o in ref_session.run(names, f)] for f in feeds]
    del ref_session
    # outputs the float model itself leaves NaN/Inf (masked positions) are not scored
    power = [sum(float((r[k][np.isfinite(r[k])] ** 2).sum()) for r in refs) or 1.0 for k in range(len(names))]
    noise: dict[str, float] = {}
    for method, table in alternatives.items():
        trial = model.clone()  # the float weights shared; the passes replace (not modify) initializers
        InsertQdqPass(recipe, float_nodes)(trial)
        FoldScalesPass(table, biases, weight_scales, weight_values=codes)(trial)
        session = _session(trial, 0)
        err = [0.0] * len(names)
        for f, ref in zip(feeds, refs):
            for k, (o, r) in enumerate(zip(session.run(names, f), ref)):
                kept = np.isfinite(r)
                d = (o.astype(np.float64)[kept] - r[kept]) ** 2  # a NaN where the float model has a number: no fit
                err[k] += float(np.nan_to_num(d, nan=np.inf).sum())
        noise[method] = sum(e / p for e, p in zip(err, power)) / len(names)
        del trial, session
    best = min(noise, key=lambda m: (noise[m], AUTO_METHODS.index(m)))
    scores = {m: float(10 * np.log10(1 / n)) if n > 0 else float("inf") for m, n in noise.items()}
    logger.info("calibration auto: %s", scores)
    return best, scores


def quantize_static(model: ir.Model, recipe: StaticInt8, data: Any) -> StaticResult:
    from onnxq.passes.fold_scales import FoldScalesPass
    from onnxq.passes.insert_qdq import InsertQdqPass, plan_static

    InsertQdqPass(recipe).requires(model)
    _infer_shapes(model)
    from onnxq.passes.global_average_pool import GlobalAveragePoolPass

    pools_rewritten = GlobalAveragePoolPass()(model).modified  # needs the feature maps' sizes just inferred
    plan = plan_static(model, recipe)
    if not any(d.selected for d in plan.decisions):
        from onnxq.api import _nothing_message

        raise NothingToQuantizeError(_nothing_message(recipe, plan.decisions))
    from onnxq.data import as_calibration_data

    data = as_calibration_data(data, batch_size=recipe.batch_size)  # one source, maybe read again
    codes: dict[str, np.ndarray] = {}
    if recipe.weight_rounding == "gptq":
        if data.reiterable:
            codes = gptq_weight_values(model, plan, recipe, data)
        else:
            logger.warning(
                "weight_rounding='gptq' needs calibration data that can be read twice (a list, a function "
                "returning a fresh iterator, files); %s is one pass only: rounding weights to nearest",
                data.description,
            )
    from onnxq.passes.insert_qdq import NEVER_RAN

    float_nodes: dict[str, str] = {}  # node name -> why calibration left it in float
    while True:
        try:
            # a second pass needs data that can be read again: one-pass data keeps shared scales
            alternatives: dict[str, dict[str, qp.QParams]] = {}
            qparams, biases, weight_scales, channel_scales, stats = calibrate_plan(
                model, plan, recipe, data, weight_values=codes, check_concats=data.reiterable,
                alternatives=alternatives,
            )
            break
        except (UnobservedTensorsError, FloatAfterCalibrationError) as e:
            if not data.reiterable:
                raise
            if isinstance(e, UnobservedTensorsError):
                reasons = {node: NEVER_RAN for node in _nodes_touching(plan, set(e.tensors))}
                if not reasons:
                    raise
                logger.warning(
                    "%d quantizable node(s) saw no finite values during calibration (in a branch the data never "
                    "takes, or NaN/Inf): leaving them in float and calibrating again: %s", len(reasons),
                    ", ".join(sorted(n.name or n.op_type for n in reasons)[:5]) + (" ..." if len(reasons) > 5 else ""),
                )
            else:
                reasons = e.nodes
                logger.info("%s: left in float, calibrating again", e)
            names = irutil.FreshNames(model.graph)
            taken = collections.Counter(n.name for n in model.graph.all_nodes() if n.name)
            for node, why in reasons.items():
                if not node.name or taken[node.name] > 1:  # names are how the plan finds it again
                    node.name = names(f"{node.name or node.op_type}_float")
                float_nodes[node.name] = why
            plan = plan_static(model, recipe, float_nodes)
            if not any(d.selected for d in plan.decisions):
                from onnxq.api import _nothing_message

                raise NothingToQuantizeError(_nothing_message(recipe, plan.decisions)) from None
    kept = {sp.node.outputs[0].name for sp in plan.weights}
    codes = {k: v for k, v in codes.items() if k in kept}  # GPTQ codes of weights still quantized
    never_ran = [n for n, why in float_nodes.items() if why == NEVER_RAN]
    masked = [n for n, why in float_nodes.items() if why == MASK_VALUES]
    concats = [n for n, why in float_nodes.items() if why not in (NEVER_RAN, MASK_VALUES)]
    float_copy = None
    if recipe.refine_biases and data.reiterable:
        float_copy = model.clone()  # weights shared (the passes replace initializers, never modify them)
    elif recipe.refine_biases:
        logger.warning(
            "refine_biases needs calibration data that can be read again (a list, a function returning a fresh "
            "iterator, files); %s is one pass only: biases not refined", data.description,
        )
    auto_note = None
    if recipe.calibration == "auto":
        from onnxq import modelio

        weight_bytes = modelio.model_weight_bytes(model)
        if weight_bytes > AUTO_MAX_WEIGHT_BYTES:
            auto_note = (f"calibration auto: mse (the model's {weight_bytes >> 20} MB of weights are over the "
                         f"{AUTO_MAX_WEIGHT_BYTES >> 20} MB up to which the methods are tried side by side)")
        elif alternatives and data.reiterable:
            chosen, scores = _choose_calibration(model, recipe, float_nodes, alternatives, biases, weight_scales,
                                                 codes, data)
            qparams = alternatives[chosen]
            auto_note = (f"calibration auto: {chosen} (output SQNR on the calibration data: "
                         + ", ".join(f"{m} {db:.1f} dB" for m, db in scores.items()) + ")")
        else:
            auto_note = ("calibration auto: mse (choosing needs calibration data that can be read again: a list, "
                         "a function returning a fresh iterator, files)")
    InsertQdqPass(recipe, float_nodes)(model)
    FoldScalesPass(qparams, biases, weight_scales, weight_values=codes)(model)
    refined = None
    if float_copy is not None:
        from onnxq.calib.refine import refine_biases

        refined = refine_biases(
            float_copy, model, data, channel_scales=channel_scales, batch_size=recipe.batch_size,
            max_samples=recipe.max_samples,
        )
        del float_copy
    if channel_scales:
        from onnxq.compare import record_channel_scales

        record_channel_scales(model, channel_scales)
    notes = list(plan.notes)
    if auto_note:
        notes.append(auto_note)
    if pools_rewritten:
        notes.append("wrote AveragePool over the whole feature map as GlobalAveragePool (ORT's int8 AveragePool "
                     "averages such windows differently)")
    if concats:
        notes.append(
            f"left {len(concats)} Concat node(s) in float whose inputs' ranges differ more than "
            f"{CONCAT_RANGE_RATIO:.0f}x (one shared int8 scale would erase the smaller ones)"
        )
    if masked:
        notes.append(
            f"left {len(masked)} node(s) in float whose tensors carry mask values ({_MASK_RULE}, "
            "e.g. an attention mask of finfo(float32).min): an int8 range spanning them would erase the data"
        )
    if never_ran:
        notes.append(
            f"left {len(never_ran)} node(s) in float that never ran on the calibration data (a branch it never "
            "takes); calibrate with data that reaches them to quantize them"
        )
    if refined is not None:
        notes.append(
            f"refined {refined.refined} of {refined.layers} int32 biases by the mean error of their layer, each kept "
            f"only where the outputs' error dropped: output SQNR {refined.sqnr_before_db:.1f} -> "
            f"{refined.sqnr_after_db:.1f} dB on {refined.samples} calibration samples ({refined.runs} runs, "
            f"{refined.seconds:.1f} s)"
        )
    elif recipe.refine_biases and data.reiterable:
        notes.append("refine_biases: no int8 Conv/Gemm with an int32 bias (or no float output to check on): nothing refined")
    if not codes and recipe.weight_rounding == "gptq" and data.reiterable:
        notes.append("weight_rounding=gptq: no int8 Conv/Gemm weight to round (GPTQ int8 rounding covers Conv and "
                     "Gemm in the main graph); every weight is rounded to nearest")
    if codes:
        notes.append(f"rounded {len(codes)} int8 weights with GPTQ (layer-input Hessians of the calibration data)")
    if stats is not None:
        # rows along the first axis are samples only where it is a batch axis (not a graph net's
        # atoms or a time-major sequence): both counts, named for what they are
        counted = (f"{stats.feeds} samples" if stats.rows == stats.feeds
                   else f"{stats.feeds} runs of {stats.rows} rows in all along the inputs' first axis")
        notes.append(f"calibrated {len(plan.groups)} scale groups with {recipe.calibration} on {counted} "
                     f"({stats.seconds:.1f} s)")
    return StaticResult(plan.decisions, tuple(notes), stats, qparams, biases, weight_scales, codes)
