"""The probe model: a copy of the model whose outputs are the statistics observers need.

For every watched tensor the copy computes, inside the graph, its extremes and, for
histogram observers, a strided sample of about ``sample_size`` values. Only these small
tensors become outputs, so memory and copying stay small whatever the activation sizes.

Feature maps (rank >= 3, float32, static channel count, in the main graph) take the fast
path, built only from ops that ONNX Runtime runs on its blocked NCHWc layout, so the big
tensor is never reordered or copied: ``GlobalMaxPool`` gives the per-channel maxima (the
tensor's maximum, and the channel maxima of channel equalization, from one pass); the
minimum is ``-GlobalMaxPool(Conv(x, -1, group=C))`` (a depthwise 1x1 convolution negates
in the blocked layout, where ``Neg`` would force a reorder) and is skipped for Relu/Clip
outputs; per-channel means (bias correction) are ``GlobalAveragePool`` over every 4th row
and column (or over the sample); a Conv output (28x28 or larger) that an Add consumes is observed through a copy of the Conv
with 4x its strides (an exact subsample, every 16th position, at a sixteenth of the cost: a
second consumer of the Conv output would stop ORT fusing Conv+Add+Relu); the sample of a
4-D map is a 1x1 ``MaxPool`` with a spatial stride (a plain subsample of about
``sample_size`` values per sample).
Histogram observers' feature maps get only the sample (their extremes come from it).
Per-channel results are packed into a few Concat outputs and reduced in numpy; 4-D maps
whose channel count is a multiple of 16 are packed apart from the others, so that ORT
keeps their Concat in the blocked layout and reorders one packed result instead of every
per-channel result (on ResNet-50 that removes ~140 reorder nodes per run). Other
tensors use ReduceMin/ReduceMax and a flattened, strided sample.

Tensors inside ``If`` branches and ``Loop`` bodies are lifted out level by level: a Loop
gets new scan outputs (one row per iteration), an If gets new outputs in both branches (the
branch that does not hold the tensor yields neutral placeholders: +inf, -inf and NaNs, which
the observers skip). Other subgraph holders (Scan, custom ops) are refused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq.errors import OnnxqError

__all__ = ["Probe", "MeanProbe", "Packed", "build_probe_model", "DEFAULT_SAMPLE_SIZE", "subgraph_owners", "value_map"]

DEFAULT_SAMPLE_SIZE = 4096
_REPLICA_MIN_SIDE = 28  # observe Conv-into-Add outputs through a strided copy from this size on
# ORT keeps a Concat of per-channel results in its blocked (NCHWc) layout, with one reorder
# for the whole output instead of one per input, only when every input is 4-D with a channel
# count that is a multiple of the block size (8 or 16): such tensors are packed apart
_NCHWC_ALIGN = 16

_FLOAT = ir.DataType.FLOAT


@dataclasses.dataclass(frozen=True)
class Probe:
    """Names of the probe model outputs that carry one tensor's statistics."""

    tensor: str
    min_output: str | None  # None: a Relu/Clip(0, .) output (minimum 0), or a packed tensor
    max_output: str | None  # None: a packed tensor (its extremes are in ``Packed``)
    sample_output: str | None
    packed: bool = False


@dataclasses.dataclass(frozen=True)
class Packed:
    """Per-channel statistics of the fast-path tensors, side by side in a few outputs (one
    Concat per group of tensors of one rank, batch dimension and NCHWc alignment; each output is
    ``[N, total, 1, ...]``): the extremes outputs hold channel maxima and negated channel
    minima (both reduce with max over samples), the means outputs channel means.
    ``segments``: (tensor, kind) -> (output, start, stop), kind one of ``max``, ``negmin``
    (absent for Relu/Clip outputs: minimum 0), ``mean`` and ``chmax`` (exact channel
    maxima for channel equalization)."""

    outputs: tuple[str, ...] = ()
    segments: Mapping[tuple[str, str], tuple[str, int, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MeanProbe:
    """The probe output holding a per-channel statistic of a tensor (channel ``axis``):
    one row per sample (``per_row``: [N, C, 1, ...]) or one row per run ([C])."""

    tensor: str
    axis: int
    output: str


def subgraph_owners(model: ir.Model) -> dict[int, ir.Node]:
    """id(subgraph) -> the node whose attribute holds it."""
    owners: dict[int, ir.Node] = {}
    for node in irutil.iter_nodes(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                owners[id(attr.value)] = node
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    owners[id(g)] = node
    return owners


def value_map(model: ir.Model) -> dict[str, ir.Value]:
    """Name -> value for every graph input and node output, subgraphs included (the first
    one wins)."""
    out: dict[str, ir.Value] = {}
    for g in irutil.iter_graphs(model.graph):
        for v in g.inputs:
            out.setdefault(v.name, v)
        for node in g:
            for v in node.outputs:
                if v.name:
                    out.setdefault(v.name, v)
    return out


def _static_size(v: ir.Value) -> int | None:
    if v.shape is None:
        return None
    n = 1
    for d in v.shape:
        if not isinstance(d, int):
            return None
        n *= d
    return n


def _thinned_size(n: int, h: int, w: int, step: int) -> int:
    """Elements left after a stride-``step`` 1x1 MaxPool over an [N, C, h, w] tensor."""
    return (n // (h * w)) * len(range(0, h, step)) * len(range(0, w, step))


class _Builder:
    """Adds probe nodes right after the observed tensor's producer: executed early, the
    big activation is released early (appended at the end of the graph, every observed
    activation would stay alive to the end of the run)."""

    def __init__(self, names: irutil.FreshNames, sample_size: int) -> None:
        self.names = names
        self.sample_size = sample_size
        self.anchor: ir.Node | None = None

    def place_after(self, v: ir.Value | None) -> None:
        self.anchor = v.producer() if v is not None else None

    def node(self, graph: ir.Graph, op: str, inputs, attrs=None, *, dtype=_FLOAT, shape=None, base="probe") -> ir.Value:
        out = ir.Value(name=self.names(f"{base}/{op}"), type=ir.TensorType(dtype), shape=ir.Shape(shape) if shape is not None else None)
        node = ir.node(op, inputs, attrs or {}, outputs=[out], name=self.names(f"{base}/{op}_node"))
        if self.anchor is not None and self.anchor.graph is graph:
            graph.insert_after(self.anchor, node)
        elif len(graph) > 0 and self.anchor is None:
            graph.insert_before(next(iter(graph)), node)
        else:
            graph.append(node)
        self.anchor = node
        return out

    def const(self, graph: ir.Graph, array: np.ndarray, base: str) -> ir.Value:
        array = np.asarray(array)
        t = ir.tensor(array, name=self.names(f"{base}/const"))
        return self.node(graph, "Constant", [], {"value": t}, dtype=t.dtype, shape=list(array.shape), base=base)

    def stats(self, graph: ir.Graph, v: ir.Value, want_sample: bool, nonnegative: bool = False) -> tuple[list[ir.Value], int | None]:
        """[min, max(, sample)] values computed in ``graph``; and the sample length."""
        base = f"{v.name}/probe"
        self.place_after(v)
        rank = len(v.shape) if v.shape is not None else None
        if rank is not None and rank >= 3:
            # GlobalMaxPool runs on ORT's blocked (NCHWc) layout: no reorder of the big
            # tensor; the per-channel result is then tiny
            top = self.node(graph, "GlobalMaxPool", [v], base=base)
            top = self.node(graph, "ReduceMax", [top], {"keepdims": 0}, shape=[], base=base)
        else:
            top = self.node(graph, "ReduceMax", [v], {"keepdims": 0}, shape=[], base=base)
        if nonnegative:  # a Relu/Clip(0, .) output: its minimum only matters through 0
            bottom = self.const(graph, np.array(0.0, np.float32), base)
        elif rank is not None and rank >= 3:
            neg = self.node(graph, "Neg", [v], base=base)
            bottom = self.node(graph, "GlobalMaxPool", [neg], base=base)
            bottom = self.node(graph, "ReduceMax", [bottom], {"keepdims": 0}, shape=[], base=base)
            bottom = self.node(graph, "Neg", [bottom], shape=[], base=base)
        else:
            bottom = self.node(graph, "ReduceMin", [v], {"keepdims": 0}, shape=[], base=base)
        outs = [bottom, top]
        if not want_sample:
            return outs, None
        sample, length = self.sample(graph, v)
        return outs + [sample], length

    def sample(self, graph: ir.Graph, v: ir.Value) -> tuple[ir.Value, int]:
        """A strided sample of about ``sample_size`` values of ``v``, flattened; its length."""
        base = f"{v.name}/probe"
        rank = len(v.shape) if v.shape is not None else None
        k = self.sample_size
        n = _static_size(v)
        if n is not None and n > k and rank == 4:
            # thin out the spatial grid first with a 1x1 MaxPool of stride s: it runs on
            # ORT's blocked layout, so only the thinned tensor is reordered and copied
            h, w = v.shape[2], v.shape[3]
            step = min(int(math.sqrt(n / k)), h, w)
            if step >= 2:
                v = self.node(graph, "MaxPool", [v], {"kernel_shape": [1, 1], "strides": [step, step]}, base=base)
                n = _thinned_size(n, h, w, step)
        flat = self.node(graph, "Reshape", [v, self.const(graph, np.array([-1], np.int64), base)], base=base)
        if n is not None:
            if n <= k:
                flat.shape = ir.Shape([n])
                return flat, n
            stride = math.ceil(n / k)
            stride += 1 - stride % 2  # odd strides alias less with power-of-two dimensions
            length = len(range(0, n, stride))
            sample = self.node(
                graph,
                "Slice",
                [
                    flat,
                    self.const(graph, np.array([0], np.int64), base),
                    self.const(graph, np.array([n], np.int64), base),
                    self.const(graph, np.array([0], np.int64), base),
                    self.const(graph, np.array([stride], np.int64), base),
                ],
                shape=[length],
                base=base,
            )
            return sample, length
        # dynamic size: k evenly spaced indices (mod n when the tensor is smaller than k)
        size = self.node(graph, "Size", [v], dtype=ir.DataType.INT64, shape=[], base=base)
        stride = self.node(graph, "Div", [size, self.const(graph, np.array(k, np.int64), base)], dtype=ir.DataType.INT64, shape=[], base=base)
        stride = self.node(graph, "Max", [stride, self.const(graph, np.array(1, np.int64), base)], dtype=ir.DataType.INT64, shape=[], base=base)
        idx = self.node(graph, "Mul", [self.const(graph, np.arange(k, dtype=np.int64), base), stride], dtype=ir.DataType.INT64, shape=[k], base=base)
        idx = self.node(graph, "Mod", [idx, size], dtype=ir.DataType.INT64, shape=[k], base=base)
        return self.node(graph, "Gather", [flat, idx], {"axis": 0}, shape=[k], base=base), k

    def centered_subsample(self, graph: ir.Graph, v: ir.Value, step: int) -> ir.Value:
        """``v[:, :, o::step, o::step]`` with ``o = step // 2`` for a 4-D map: a depthwise
        2x2 convolution with dilation ``o`` whose only non-zero tap (1.0) is the far corner,
        strided by ``step``, so the grid starts inside the map (a grid starting at row and
        column 0 over-represents the zero-padded border, whose values are atypical) and
        touches about 4/step**2 of the tensor in the blocked layout."""
        base = f"{v.name}/probe"
        channels = int(v.shape[1])
        h, w = int(v.shape[2]), int(v.shape[3])
        o = step // 2
        kernel = np.zeros((channels, 1, 2, 2), np.float32)
        kernel[:, :, 1, 1] = 1.0
        k = self.const(graph, kernel, base)
        out = self.node(
            graph, "Conv", [v, k],
            {"group": channels, "kernel_shape": [2, 2], "strides": [step, step], "dilations": [o, o]},
            base=base,
        )
        out.shape = ir.Shape([v.shape[0], channels, len(range(o, h, step)), len(range(o, w, step))])
        return out

    def channel_mean(self, graph: ir.Graph, v: ir.Value) -> ir.Value:
        """Per-channel means of a feature map (bias correction), over every 4th row and
        column when the map is large enough: a 1x1 MaxPool of stride 4 reads about a
        quarter of the blocked tensor, and the mean of thousands of positions per image is
        plenty for a bias correction."""
        base = f"{v.name}/probe"
        spatial = list(v.shape)[2:] if v.shape is not None else []
        if len(spatial) == 2 and all(isinstance(d, int) and d >= 16 for d in spatial):
            v = self.node(graph, "MaxPool", [v], {"kernel_shape": [1, 1], "strides": [4, 4]}, base=base)
        return self.node(graph, "GlobalAveragePool", [v], base=base)

    def replica(self, graph: ir.Graph, v: ir.Value, step: int) -> ir.Value | None:
        """For a Conv output that an Add consumes, a copy of the Conv with its strides times
        ``step``: its output is exactly ``v[:, :, ::step, ::step]`` at 1/step**2 of the cost.
        A second consumer of the Conv output would stop ONNX Runtime from fusing Conv + Add
        (+ Relu), which costs far more than the copy. None when this does not apply."""
        conv = v.producer()
        if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or conv.graph is not graph:
            return None
        if not any(u.op_type in ("Add", "Sum") for u, _ in v.uses()) or v.is_graph_output():
            return None
        if len(conv.inputs) < 2 or conv.inputs[1] is None or conv.inputs[1].const_value is None:
            return None
        x = conv.inputs[0]
        if x is None or x.shape is None or len(x.shape) != 4 or v.shape is None or len(v.shape) != 4:
            return None
        auto_pad = conv.attributes.get_string("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            return None
        spatial = list(v.shape)[2:]
        # small maps: the broken fusion costs little, and a subsample would be too thin
        if not all(isinstance(d, int) and d >= _REPLICA_MIN_SIDE for d in spatial):
            return None
        strides = list(conv.attributes.get_ints("strides", [1, 1]))
        attrs = {k: a.value for k, a in conv.attributes.items()}
        attrs["strides"] = [st * step for st in strides]
        shape = [v.shape[0], v.shape[1]] + [(d + step - 1) // step for d in spatial]
        self.place_after(v)
        out = self.node(graph, "Conv", list(conv.inputs), attrs, shape=shape, base=f"{v.name}/probe")
        return out

    def fast_path(self, v: ir.Value) -> bool:
        """Whether ``v`` can be observed with NCHWc-friendly ops only (see the module doc)."""
        if v.dtype != _FLOAT or v.shape is None or len(v.shape) < 3:
            return False
        c = v.shape[1]
        return isinstance(c, int) and c > 0

    def fast_stats(
        self, graph: ir.Graph, v: ir.Value, *, nonnegative: bool, want_sample: bool, want_mean: bool,
        exact: bool = True,
    ) -> dict[str, ir.Value | int | None]:
        """Per-channel max (and -min, mean) and a subsample of a feature map ``v``. With
        ``exact=False`` and a sample (histogram observers: their range comes from the
        distribution, the extremes only bound it) no extremes are computed in the graph:
        the observer takes them from the sample."""
        base = f"{v.name}/probe"
        self.place_after(v)
        rank, channels = len(v.shape), int(v.shape[1])
        out: dict[str, ir.Value | int | None] = {"max": None, "negmin": None}
        if exact or not want_sample:
            out["max"] = self.node(graph, "GlobalMaxPool", [v], base=base)
            if not nonnegative:
                w = self.const(graph, np.full((channels, 1) + (1,) * (rank - 2), -1.0, np.float32), base)
                neg = self.node(
                    graph, "Conv", [v, w], {"group": channels, "kernel_shape": [1] * (rank - 2)},
                    shape=list(v.shape), base=base,
                )
                out["negmin"] = self.node(graph, "GlobalMaxPool", [neg], base=base)
        out["mean"] = None
        out["sample"], out["length"] = None, None
        if want_sample:
            spatial = list(v.shape)[2:]
            per_sample = channels
            for d in spatial:
                per_sample = per_sample * d if isinstance(d, int) else None
                if per_sample is None:
                    break
            k = self.sample_size
            if per_sample is None or rank > 4:
                out["sample"], out["length"] = self.sample(graph, v)  # flattened, strided
            elif rank == 4:
                # one 1x1 MaxPool with a spatial stride: a plain subsample of about k values
                # per sample, computed in the blocked layout and returned as is
                h, w = spatial
                step = min(math.ceil(math.sqrt(per_sample / k)), h, w) if per_sample > k else 1
                x = v
                if step >= 2:
                    x = self.centered_subsample(graph, v, step)
                else:
                    x = self.node(graph, "Identity", [v], shape=list(v.shape), base=base)
                out["sample"] = x
                if want_mean:
                    out["mean"] = self.node(graph, "GlobalAveragePool", [x], base=base)
            else:
                n = per_sample
                flat = self.node(graph, "Reshape", [v, self.const(graph, np.array([-1], np.int64), base)], base=base)
                if n > k:  # every odd stride-th value (per-sample size known, batch may vary)
                    stride = math.ceil(n / k)
                    stride += 1 - stride % 2  # odd strides alias less with power-of-two dimensions
                    flat = self.node(
                        graph, "Slice",
                        [flat, self.const(graph, np.array([0], np.int64), base),
                         self.const(graph, np.array([np.iinfo(np.int64).max], np.int64), base),
                         self.const(graph, np.array([0], np.int64), base),
                         self.const(graph, np.array([stride], np.int64), base)],
                        base=base,
                    )
                out["sample"] = flat
        if want_mean and out["mean"] is None:
            out["mean"] = self.channel_mean(graph, v)
        return out

    def channel_reduce(self, graph: ir.Graph, v: ir.Value, op: str, axis: int, rank: int, opset: int) -> ir.Value:
        axes = [a for a in range(rank) if a != axis % rank]
        base = f"{v.name}/probe"
        self.place_after(v)
        if opset >= 18:
            return self.node(graph, op, [v, self.const(graph, np.array(axes, np.int64), base)], {"keepdims": 0}, base=base)
        return self.node(graph, op, [v], {"axes": axes, "keepdims": 0}, base=base)

    def placeholders(self, graph: ir.Graph, sample_length: int | None, base: str) -> list[ir.Value]:
        self.anchor = None
        outs = [
            self.const(graph, np.array(np.inf, np.float32), base),
            self.const(graph, np.array(-np.inf, np.float32), base),
        ]
        if sample_length is not None:
            outs.append(self.const(graph, np.full(sample_length, np.nan, np.float32), base))
        return outs


def build_probe_model(
    model: ir.Model,
    tensors: Mapping[str, bool],
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    channel_stats: Mapping[tuple[str, str], tuple[int, int, int]] | None = None,
    nonnegative: frozenset[str] = frozenset(),
    approximate: frozenset[str] = frozenset(),
) -> tuple[ir.Model, dict[str, Probe], dict[tuple[str, str], MeanProbe], Packed]:
    """A copy of ``model`` (weights shared, not copied) whose outputs are the statistics of
    ``tensors`` (name -> whether a value sample is needed) and per-channel statistics
    ``channel_stats`` ((name, "mean" | "max") -> (channel axis, rank, channels)). For
    tensors in ``nonnegative`` (Relu/Clip outputs) the minimum is reported as 0 without
    reading the tensor. For feature maps in ``approximate`` (watched by histogram
    observers, which also get a sample) no extremes are computed: the observer takes them
    from the sample (a probe with neither ``min_output``, ``max_output`` nor ``packed``). Feature maps of the main graph report through ``Packed`` (few outputs, reduced
    in numpy with a handful of vector operations per run). Raises OnnxqError for a tensor that
    does not exist or sits in a subgraph other than If/Loop."""
    probe = model.clone()
    values = value_map(probe)
    owners = subgraph_owners(probe)
    names = irutil.FreshNames(probe.graph)
    b = _Builder(names, sample_size)
    root = probe.graph
    opset = irutil.default_opset(probe)

    def lift(name: str, graph: ir.Graph, outs: list[ir.Value], placeholders) -> list[ir.Value]:
        while graph is not root:
            owner = owners.get(id(graph))
            if owner is None or owner.op_type not in ("If", "Loop") or owner.domain not in ("", "ai.onnx"):
                kind = owner.op_type if owner is not None else "unknown"
                raise OnnxqError(f"calibration: tensor {name!r} is inside a {kind} subgraph, which onnxq cannot observe")
            parent = owner.graph
            first_new = len(owner.outputs)
            graph.outputs.extend(outs)
            if owner.op_type == "If":
                then_g = owner.attributes["then_branch"].value
                else_g = owner.attributes["else_branch"].value
                other = else_g if graph is then_g else then_g
                other.outputs.extend(placeholders(other))
            owner.resize_outputs(first_new + len(outs))
            lifted = []
            for i, inner in enumerate(outs):
                out = owner.outputs[first_new + i]
                out.name = names(f"{inner.name}/lifted")
                out.type = ir.TensorType(_FLOAT)
                lifted.append(out)
            outs, graph = lifted, parent
        root.outputs.extend(outs)
        return outs

    def find(name: str) -> ir.Value:
        v = values.get(name)
        if v is None or v.graph is None:
            raise OnnxqError(f"calibration: the model has no tensor named {name!r}")
        return v

    stats = dict(channel_stats or {})
    probes: dict[str, Probe] = {}
    mean_probes: dict[tuple[str, str], MeanProbe] = {}
    # (kind group, rank, batch dim, blocked) -> [(tensor, kind, value, channels)], packed at the end
    pack: dict[tuple[str, int, str, bool], list[tuple[str, str, ir.Value, int]]] = {}

    done: set[tuple[str, str]] = set()  # channel statistics already packed

    def add_packed(group: str, name: str, kind: str, v: ir.Value, value: ir.Value) -> None:
        channels = int(v.shape[1])
        blocked = len(v.shape) == 4 and channels % _NCHWC_ALIGN == 0
        key = (group, len(v.shape), str(v.shape[0]), blocked)
        pack.setdefault(key, []).append((name, kind, value, channels))
        if kind in ("mean", "chmax"):
            done.add((name, "max" if kind == "chmax" else kind))

    for name, want_sample in tensors.items():
        v = find(name)
        nonneg = name in nonnegative
        if v.graph is root and b.fast_path(v):
            want_mean = (name, "mean") in stats and stats[(name, "mean")][0] % len(v.shape) == 1
            exact = name not in approximate
            seen = v
            if (name, "max") not in stats:
                seen = b.replica(root, v, 4) or v
            outs = b.fast_stats(
                root, seen, nonnegative=nonneg, want_sample=want_sample, want_mean=want_mean, exact=exact
            )
            if outs["max"] is not None:
                add_packed("extremes", name, "max", v, outs["max"])
            if outs["negmin"] is not None:
                add_packed("extremes", name, "negmin", v, outs["negmin"])
            if want_mean:
                add_packed("means", name, "mean", v, outs["mean"])
            if outs["max"] is not None and (name, "max") in stats and stats[(name, "max")][0] % len(v.shape) == 1:
                add_packed("extremes", name, "chmax", v, outs["max"])
            if outs["sample"] is not None:
                root.outputs.append(outs["sample"])
            probes[name] = Probe(
                name, None, None, outs["sample"].name if outs["sample"] is not None else None,
                packed=outs["max"] is not None,
            )
            continue
        outs, length = b.stats(v.graph, v, want_sample, nonneg)
        outs = lift(name, v.graph, outs, lambda g, n=name, L=length: b.placeholders(g, L, f"{n}/probe"))
        probes[name] = Probe(name, outs[0].name, outs[1].name, outs[2].name if len(outs) > 2 else None)
    for (name, kind), (axis, rank, channels) in stats.items():
        if (name, kind) in done:
            continue
        v = find(name)
        if v.graph is root and b.fast_path(v) and axis % len(v.shape) == 1:
            b.place_after(v)
            if kind == "mean":
                add_packed("means", name, "mean", v, b.channel_mean(root, v))
            elif kind == "negmax":
                neg = b.node(root, "Neg", [v], base=f"{name}/probe")
                add_packed("extremes", name, "negmax", v, b.node(root, "GlobalMaxPool", [neg], base=f"{name}/probe"))
            else:
                add_packed("extremes", name, "chmax", v, b.node(root, "GlobalMaxPool", [v], base=f"{name}/probe"))
            continue
        if kind == "negmax":
            b.place_after(v)
            v = b.node(v.graph, "Neg", [v], base=f"{name}/probe")
        out = b.channel_reduce(v.graph, v, {"mean": "ReduceMean", "max": "ReduceMax", "negmax": "ReduceMax"}[kind],
                               axis, rank, opset)
        (out,) = lift(
            name, v.graph, [out],
            lambda g, n=name, c=channels: [b.const(g, np.full(c, np.nan, np.float32), f"{n}/probe")],
        )
        mean_probes[(name, kind)] = MeanProbe(name, axis, out.name)
    segments: dict[tuple[str, str], tuple[str, int, int]] = {}
    packed_outputs: list[str] = []
    b.anchor = None
    for (group, rank, _, _), members in pack.items():
        inputs: list[ir.Value] = []
        offset = 0
        for name, kind, value, channels in members:
            if kind == "chmax" and (name, "max") in segments:  # the same GlobalMaxPool output
                segments[(name, kind)] = segments[(name, "max")]
                continue
            inputs.append(value)
            segments[(name, kind)] = ("", offset, offset + channels)
            offset += channels
        if len(inputs) == 1:
            out = inputs[0]
        else:
            out = ir.Value(name=names(f"onnxq_calibration_{group}"), type=ir.TensorType(_FLOAT))
            root.append(ir.node("Concat", inputs, {"axis": 1}, outputs=[out], name=names(f"onnxq_calibration_{group}_concat")))
        root.outputs.append(out)
        packed_outputs.append(out.name)
        for name, kind, _, _ in members:
            o, a, z = segments[(name, kind)]
            if o == "":
                segments[(name, kind)] = (out.name, a, z)
    return probe, probes, mean_probes, Packed(tuple(packed_outputs), segments)
