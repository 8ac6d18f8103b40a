"""InsertQdqPass: QuantizeLinear/DequantizeLinear around the ops of a ``StaticInt8`` recipe.

The pass is structural: it needs no data. Activations get a Q→DQ pair whose scale and zero
point are placeholders (1.0 and the type's zero) shared by every tensor of a *scale group*;
``FoldScalesPass`` later writes the calibrated values into them and quantizes biases.
Weights need no calibration and are written here, already quantized: an int8 initializer
+ DequantizeLinear (per output channel, symmetric), so the file shrinks about 4x.

Per-op rules (the QDQ form that ORT's graph optimizer fuses into QLinearConv,
QLinearMatMul, QGemm, QLinearAdd/Mul, QLinearConcat, QLinearAveragePool,
QLinearGlobalAveragePool, and runs MaxPool/Resize/Reshape/... directly on uint8):

- Conv, ConvTranspose, MatMul, Gemm: DQ on the activation input(s) and on the weight,
  Q→DQ on the output. A single-use Relu, or Clip with constant bounds, right after the op
  is folded: the Q goes after the activation (ORT then removes the activation, since the
  quantized range already clips there, and fuses the op). MatMul with two activations
  quantizes both.
- Add, Mul: both inputs and the output (a constant input is stored quantized, per tensor,
  in the activation type).
- Concat: inputs and output share one scale. MaxPool, Resize: input and output share one
  scale. AveragePool, GlobalAveragePool: own scales.
- Reshape, Transpose, Flatten, Squeeze, Unsqueeze whose input is quantized: the output is
  quantized too, with the same scale (ORT drops the pair and moves int8 data).
- Everything else (Softmax, LayerNormalization, Pow/Sqrt/Div, ...) stays float; a float
  consumer of a tensor produced by a quantized op reads the dequantized value so that the
  producer can still be fused.

Nodes excluded by name (``exclude``) run in float: their weights stay float and their
activation inputs and outputs (and a Relu/Clip output right after them) get no Q/DQ pair,
so a quantized neighbour reads or writes those tensors in float (see ``kept_float_tensors``).

Nodes inside If/Loop bodies are handled like the others (calibration lifts their tensors
out); nodes in other subgraphs (Scan, custom ops) are skipped with a reason. Weights held in
``Constant`` nodes are quantized like initializers.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq import qparams as qp
from onnxq.errors import OnnxqError, RecipeError
from onnxq.recipes import StaticInt8
from onnxq.selection import Decision, select

__all__ = [
    "InsertQdqPass",
    "StaticPlan",
    "ScaleGroup",
    "plan_static",
    "kept_float_tensors",
    "group_qparams",
    "quantize_weight",
    "PASS_THROUGH_OPS",
    "MIN_OPSET",
]

logger = logging.getLogger(__name__)

MIN_OPSET = 13
PASS_THROUGH_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
_SHARED_SCALE_OPS = frozenset({"MaxPool", "Resize"})
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# weighted ops whose result may stay float when the model returns it or only float ops read
# it: ORT runs a MatMul with int8 inputs and a float result as MatMulIntegerToFloat, a Gemm
# as QGemm with a float output (see _float_result_runs_int8). A Conv without a quantized
# result would run entirely in float, so its output is always quantized.
_FLOAT_RESULT_OPS = frozenset({"MatMul", "Gemm"})
_FOLDABLE_PRODUCERS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Add"})
_OVERRIDE_KEYS = frozenset({"activation_type", "symmetric", "calibration", "percentile", "range"})


# -- plan ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScaleGroup:
    """Tensors quantized with one scale and zero point.

    ``observe``: the members calibration must look at (the others are derived from them:
    a Reshape output from its input, a Concat input from the Concat output).
    ``upper_bound``: when every member comes out of a Clip/Relu bounded above, that bound
    (the scale is kept so that the quantized range does not pass it, which lets ORT remove
    the Clip). ``override``: the recipe's ``tensor_overrides`` entry for the group."""

    key: str
    members: tuple[str, ...]
    observe: tuple[str, ...]
    qtype: qp.QType
    symmetric: bool
    upper_bound: float | None = None
    override: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def calibration(self) -> str | None:
        return self.override.get("calibration")

    @property
    def fixed_range(self) -> tuple[float, float] | None:
        r = self.override.get("range")
        return (float(r[0]), float(r[1])) if r is not None else None


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    node: ir.Node
    index: int
    axis: int | None  # None: per tensor
    qtype: qp.QType
    symmetric: bool


@dataclasses.dataclass(frozen=True)
class StaticPlan:
    """What InsertQdqPass will do: per-node decisions, scale groups, constant inputs."""

    decisions: tuple[Decision, ...]
    groups: tuple[ScaleGroup, ...]
    weights: tuple[WeightSpec, ...]
    quantized_inputs: Mapping[int, tuple[int, ...]]  # id(node) -> input indices read via DQ
    rewire_all: frozenset[str]  # tensors whose every consumer reads the DQ output
    notes: tuple[str, ...] = ()
    concats: tuple[tuple[ir.Node, tuple[str, ...]], ...] = ()  # quantized Concat, its input tensors

    def group_of(self, tensor: str) -> ScaleGroup | None:
        for g in self.groups:
            if tensor in g.members:
                return g
        return None

    @property
    def tensors(self) -> list[str]:
        return [t for g in self.groups for t in g.members]


def _is_float(v: ir.Value | None) -> bool:
    return v is not None and v.dtype in (None, ir.DataType.FLOAT)


def _not_float32(*values: ir.Value | None) -> str:
    """Why a node with non-float32 tensors is skipped, and what the user can do about it."""
    types = sorted({v.dtype.name for v in values if v is not None and v.dtype not in (None, ir.DataType.FLOAT)})
    if not types:
        return "not float32"
    what = "/".join(types)
    if set(types) & {"FLOAT16", "BFLOAT16"}:
        return f"tensors are {what}, not float32 (int8 QDQ needs float32 activations: convert the model to float32 first)"
    return f"tensors are {what}, not float32"


def _opset(model: ir.Model) -> int:
    return irutil.default_opset(model)


def _from_dq(v: ir.Value | None) -> bool:
    p = v.producer() if v is not None else None
    return p is not None and p.op_type == "DequantizeLinear"


def _to_q(v: ir.Value) -> bool:
    return any(u.node.op_type == "QuantizeLinear" for u in v.uses())


def _already_qdq(node: ir.Node) -> bool:
    return any(_from_dq(v) for v in node.inputs) or any(_to_q(v) for v in node.outputs)


def _unobservable_owner(node: ir.Node, owners: Mapping[int, ir.Node]) -> str | None:
    """The op type of the first ancestor subgraph holder that is not If/Loop, if any."""
    graph = node.graph
    while graph is not None and id(graph) in owners:
        owner = owners[id(graph)]
        if owner.op_type not in ("If", "Loop") or owner.domain not in ("", "ai.onnx"):
            return owner.op_type
        graph = owner.graph
    return None


def _check(node: ir.Node, owners: Mapping[int, ir.Node]) -> str | None:
    op = node.op_type
    holder = _unobservable_owner(node, owners)
    if holder is not None:
        return f"inside a {holder} subgraph, which calibration cannot observe"
    if _already_qdq(node):
        return "already in QDQ form"
    inputs = list(node.inputs)
    if not inputs or inputs[0] is None:
        return "no input"
    x = inputs[0]
    if op in _WEIGHTED_OPS:
        if irutil.is_constant(x):
            return "first input is a constant"
        if not _is_float(x) or not _is_float(node.outputs[0]):
            return _not_float32(x, node.outputs[0])
        w = inputs[1] if len(inputs) > 1 else None
        if w is None:
            return "no weight input"
        if op in ("MatMul",):
            if not irutil.is_constant(w):
                return None if _is_float(w) else _not_float32(w)
        elif not irutil.is_constant(w):
            return "weight is not a constant"
        warr = irutil.const_array(w)
        if warr is None or warr.dtype != np.float32:
            return "weight is not a float32 constant"
        if not np.all(np.isfinite(warr)):
            return "weight contains NaN or Inf"
        if op in ("Conv", "ConvTranspose") and warr.ndim < 3:
            return f"weight has rank {warr.ndim}"
        if op == "Gemm":
            if node.attributes.get_int("transA", 0):
                return "Gemm with transA=1 is left in float"
            if warr.ndim != 2:
                return "Gemm weight is not 2-D"
        if op in ("Conv", "ConvTranspose", "Gemm") and len(inputs) > 2 and inputs[2] is not None:
            if not irutil.is_constant(inputs[2]) and op != "Gemm":
                return "bias is not a constant"
        return None
    if op in ("Add", "Mul"):
        if len(inputs) != 2 or not all(_is_float(v) for v in inputs) or not _is_float(node.outputs[0]):
            return _not_float32(*inputs, node.outputs[0])
        if all(irutil.is_constant(v) for v in inputs):
            return "both inputs are constants (constant folding territory)"
        for v in inputs:
            if irutil.is_constant(v):
                a = irutil.const_array(v)
                if a is None or not np.all(np.isfinite(a)):
                    return "constant input is not finite"
        return None
    if op == "Concat":
        if not all(_is_float(v) for v in inputs) or not _is_float(node.outputs[0]):
            return _not_float32(*inputs, node.outputs[0])
        if any(v is None or irutil.is_constant(v) for v in inputs):
            return "has a constant input (would need the output's scale before calibration)"
        return None
    if op in ("MaxPool", "AveragePool", "GlobalAveragePool", "Resize"):
        if irutil.is_constant(x) or not _is_float(x) or not _is_float(node.outputs[0]):
            return "not a float32 activation"
        if op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].uses():
            return "MaxPool Indices output is used"
        if op == "AveragePool" and _ceil_windows_past_edge(node):
            return AVGPOOL_CEIL_PAD
        return None
    return f"{op} is not quantized by int8-static"


def _ceil_windows_past_edge(node: ir.Node) -> bool:
    """An AveragePool with ceil_mode and count_include_pad whose last window runs past the
    padded input (ceil gives more outputs than floor); True when the input's spatial size is
    unknown."""
    a = node.attributes
    if not (a.get_int("ceil_mode", 0) and a.get_int("count_include_pad", 0)):
        return False
    x = node.inputs[0]
    kernel = list(a.get_ints("kernel_shape", ()))
    if x is None or x.shape is None or len(x.shape) != len(kernel) + 2:
        return True
    spatial = list(x.shape[2:])
    if not all(isinstance(d, int) for d in spatial) or a.get_string("auto_pad", "NOTSET") != "NOTSET":
        return True
    strides = list(a.get_ints("strides", [1] * len(kernel)))
    dil = list(a.get_ints("dilations", [1] * len(kernel)))
    pads = list(a.get_ints("pads", [0] * (2 * len(kernel))))
    for i, (d, k, st, dl) in enumerate(zip(spatial, kernel, strides, dil)):
        span = d + pads[i] + pads[i + len(kernel)] - ((k - 1) * dl + 1)
        if span < 0 or span % st:
            return True
    return False


def _float_result_runs_int8(node: ir.Node) -> bool:
    """Whether ORT CPU still runs ``node`` on int8 inputs when its result is left float: a
    MatMul (MatMulIntegerToFloat; BiasSumPass keeps ORT's MatMul + Add fusion away), a Gemm
    with a C input, or a Gemm whose result no Add/Sum reads (ORT folds ``Gemm`` without C and
    a following Sum into a float Gemm on the dequantized weight)."""
    if node.op_type == "MatMul":
        return True
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        return True
    return not any(u.op_type in ("Add", "Sum") for v in node.outputs for u, _ in v.uses())


def _activation_bounds(act: ir.Node) -> tuple[float, float] | None:
    """(lo, hi) of a Relu, or of a Clip with constant bounds; None otherwise."""
    if act.op_type == "Relu":
        return (0.0, float("inf"))
    if act.op_type != "Clip":
        return None
    lo, hi = -float("inf"), float("inf")
    if "min" in act.attributes or "max" in act.attributes:  # opset < 11
        lo = act.attributes.get_float("min", lo)
        hi = act.attributes.get_float("max", hi)
    for i, which in ((1, "lo"), (2, "hi")):
        if len(act.inputs) > i and act.inputs[i] is not None:
            a = irutil.const_array(act.inputs[i])
            if a is None or a.size != 1:
                return None
            if which == "lo":
                lo = float(a.reshape(()))
            else:
                hi = float(a.reshape(()))
    return (lo, hi)


def _folded_activation(node: ir.Node) -> ir.Node | None:
    """The Relu/Clip that consumes this node's output alone, if its Q can go after it."""
    if node.op_type not in _FOLDABLE_PRODUCERS:
        return None
    y = node.outputs[0]
    uses = y.uses()
    if len(uses) != 1 or y.is_graph_output():
        return None
    act, index = uses[0]
    if index != 0 or act.domain not in ("", "ai.onnx") or act.graph is not node.graph:
        return None
    if act.op_type not in ("Relu", "Clip") or _activation_bounds(act) is None:
        return None
    if not _is_float(act.outputs[0]) or _to_q(act.outputs[0]):
        return None
    return act


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.order: dict[str, int] = {}

    def add(self, x: str) -> None:
        if x not in self.parent:
            self.parent[x] = x
            self.order[x] = len(self.order)

    def find(self, x: str) -> str:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        self.add(a)
        self.add(b)
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.order[ra] > self.order[rb]:
                ra, rb = rb, ra
            self.parent[rb] = ra


def _weight_axis(node: ir.Node, w: np.ndarray, per_channel: bool) -> int | None:
    if not per_channel:
        return None
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1 if node.attributes.get_int("group", 1) == 1 else None
    if op == "MatMul":
        return 1 if w.ndim == 2 else None
    if op == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    return None


EXCLUDED = "excluded by name"
# ORT's QLinearAveragePool divides a window that ceil_mode lets run past the padded edge by the
# whole kernel size, the float AveragePool by the part inside (HF EfficientNet's pooler: a
# 640x640 kernel over a 2x2 map came out ~0 in int8)
AVGPOOL_CEIL_PAD = "AveragePool with ceil_mode and count_include_pad: ORT's int8 kernel averages its edge windows differently"
ISLAND = "no quantized Conv/MatMul/Gemm next to it: int8 would only add Q/DQ (and error)"
MODEL_OUTPUT = "its output is a model output: int8 would only round it (no int8 consumer gains)"
FLOAT_CONSUMERS = "its result goes only to float ops (e.g. a LayerNorm or Softmax): int8 would only round it"
BIAS_ADD = ("the bias of the MatMul before it: added in float to the MatMul's float result (ORT's "
            "MatMulIntegerToFloat), not rounded to 8 bits on both sides")
NEVER_RAN = "saw no finite values during calibration (a branch the data never takes, or NaN/Inf): left in float"


def kept_float_tensors(excluded: Iterable[ir.Node]) -> frozenset[str]:
    """The activations that must stay float so that nodes excluded by name really run in
    float: their non-constant inputs, their outputs, and the output of a Relu/Clip that
    alone consumes one (quantizing after the activation would quantize the node's result).
    A quantized neighbour then reads or writes these tensors in float (its own weights
    stay int8), instead of handing the excluded node 8-bit data."""
    out: set[str] = set()
    for node in excluded:
        for v in node.inputs:
            if v is not None and v.name and not irutil.is_constant(v):
                out.add(v.name)
        for v in node.outputs:
            if not v.name:
                continue
            out.add(v.name)
            uses = v.uses()
            if len(uses) == 1 and uses[0][0].op_type in ("Relu", "Clip") and uses[0][0].outputs:
                out.add(uses[0][0].outputs[0].name)
    return frozenset(out)


# element-wise activations ORT runs in int8 when a DQ feeds them and a Q follows
# (com.microsoft QLinearLeakyRelu / QLinearSigmoid): an Add before one of them that feeds a
# Conv keeps its int8 (darknet/YOLO-style Add -> LeakyRelu -> Conv)
_INT8_ACTIVATIONS = frozenset({"LeakyRelu", "Sigmoid"})
_LINKS = PASS_THROUGH_OPS | {"Relu", "Clip"} | _INT8_ACTIVATIONS


def _linked_neighbours(node: ir.Node, chosen: Mapping[int, ir.Node]) -> Iterable[ir.Node]:
    """Chosen nodes that exchange an activation with ``node`` directly or through
    pass-through ops and Relu/Clip (producers of its inputs, consumers of its outputs)."""
    for v in node.inputs:
        p = v.producer() if v is not None and not irutil.is_constant(v) else None
        while p is not None and id(p) not in chosen and p.op_type in _LINKS and p.inputs and p.inputs[0] is not None:
            p = p.inputs[0].producer()
        if p is not None and id(p) in chosen:
            yield p
    yield from _chosen_consumers(node, chosen, _LINKS)


def _chosen_consumers(node: ir.Node, chosen: Mapping[int, ir.Node], through: frozenset[str]) -> Iterable[ir.Node]:
    """Chosen nodes that read an output of ``node``, directly or through ops in ``through``."""
    stack = list(node.outputs)
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        for user, _ in v.uses():
            if id(user) in chosen:
                yield user
            elif user.op_type in through and id(user) not in seen:
                seen.add(id(user))
                stack.extend(user.outputs)


# ops that hand (parts of) a value on unchanged: a quantized consumer behind them reads the
# producer's int8 values (ORT runs them on int8 data between a DQ and a Q with one scale) --
# YOLOv8's C2f blocks Split each SiLU output between two convs
_DATA_MOVEMENT = _LINKS | {"Split", "Slice", "Gather", "Identity", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
                           "Pad"}  # Pad: explicit padding before a Conv (TF exports)


def _feeds_chosen(node: ir.Node, chosen: Mapping[int, ir.Node]) -> bool:
    """Whether an output of ``node`` reaches a chosen node, directly or through
    pass-through, data-movement ops and Relu/Clip."""
    return next(iter(_chosen_consumers(node, chosen, _DATA_MOVEMENT)), None) is not None


def _bias_adds(selected: list[ir.Node]) -> set[int]:
    """ids of selected Adds of a constant bias vector (one value per feature of the last
    axis) to the result of a selected MatMul with a constant 2-D weight that nothing else
    reads: a dense layer on an N-D input (2-D ones became Gemms, FoldMatMulOutputAffinePass). With
    the Add in float the MatMul's result is not rounded to 8 bits, nor is the bias, nor the
    sum: a rank-3 MLP gained 2.7 dB, at the same speed in ORT CPU."""
    chosen = {id(n) for n in selected}
    out = set()
    for add in selected:
        if add.op_type != "Add" or len(add.inputs) != 2 or any(v is None for v in add.inputs):
            continue
        const = [irutil.is_constant(v) for v in add.inputs]
        if sorted(const) != [False, True]:
            continue
        x = add.inputs[const.index(False)]
        p = x.producer()
        if p is None or p.op_type != "MatMul" or id(p) not in chosen or len(x.uses()) != 1 or x.is_graph_output():
            continue
        w, b = irutil.const_array(p.inputs[1]), irutil.const_array(add.inputs[const.index(True)])
        if w is None or b is None or w.ndim != 2 or b.size != w.shape[1] or (b.ndim and b.shape[-1] != w.shape[1]):
            continue
        out.add(id(add))
    return out


def _float_fed(selected: list[ir.Node]) -> set[int]:
    """ids of selected Add/Mul/Concat/pool/Resize nodes whose results reach no selected
    node, repeated until nothing changes (an Add feeding only a float Add feeding a
    LayerNorm goes too): ORT would run them in int8 between a dequantize and a quantize
    that only round -- a transformer's residual Add before its LayerNorm, the mask Add
    before a Softmax. Rounding the residual stream per tensor costs BERT-style encoders
    most of their accuracy (its outlier channels set the scale of all the others)."""
    chosen = {id(n): n for n in selected}
    changed = True
    while changed:
        changed = False
        for key, n in list(chosen.items()):
            if n.op_type not in _WEIGHTED_OPS and not _feeds_chosen(n, chosen):
                del chosen[key]
                changed = True
    return {id(n) for n in selected} - chosen.keys()


def _islands(selected: list[ir.Node]) -> set[int]:
    """ids of selected nodes in groups (linked as in :func:`_linked_neighbours`) without a
    Conv/ConvTranspose/MatMul/Gemm: an Add, Mul, Concat or pool between float ops runs no
    faster in int8 (ORT would quantize its inputs and dequantize its output around it) and
    only adds rounding error -- e.g. the |x|^2 sum before a Sqrt, or the gates of an
    unrolled LSTM cell."""
    chosen = {id(n): n for n in selected}
    uf = _UnionFind()
    for key in chosen:
        uf.add(str(key))
    for n in selected:
        for m in _linked_neighbours(n, chosen):
            uf.union(str(id(n)), str(id(m)))
    anchored = {uf.find(str(id(n))) for n in selected if n.op_type in _WEIGHTED_OPS}
    return {key for key in chosen if uf.find(str(key)) not in anchored}


def plan_static(model: ir.Model, recipe: StaticInt8, float_nodes: Mapping[str, str] | None = None) -> StaticPlan:
    """Decide, without touching the model, what InsertQdqPass(recipe) will rewrite.
    ``float_nodes``: node name -> reason, for nodes calibration found must stay float (never
    run: in an If branch the data never takes; a Concat of very different ranges): they
    stay float like nodes excluded by name."""
    from onnxq.calib.probe import subgraph_owners

    owners = subgraph_owners(model)
    float_nodes = dict(float_nodes or {})

    def check(node: ir.Node) -> str | None:
        return float_nodes[node.name] if node.name and node.name in float_nodes else _check(node, owners)

    # Gather tables and LSTMs are int8-dynamic's rewrites, after the QDQ (onnxq.api._run_static)
    nodes = (n for n in irutil.iter_nodes(model.graph) if n.op_type not in ("Gather", "LSTM"))
    decisions = select(nodes, recipe.selection, check)
    if not recipe.quantize_islands and recipe.float_matmul_results:
        biases = _bias_adds([d.node for d in decisions if d.selected])
        decisions = [Decision(d.node, False, BIAS_ADD) if id(d.node) in biases else d for d in decisions]
    if not recipe.quantize_islands:
        # a Concat/Add/Mul/pool/Resize whose result the model returns: rounding it to 8 bits
        # saves no work downstream (YOLO's Concat of box coordinates and class scores into
        # one output would share one scale: the scores round to 0 or one step)
        decisions = [
            Decision(d.node, False, MODEL_OUTPUT)
            if d.selected and d.node.op_type not in _WEIGHTED_OPS and any(v.is_graph_output() for v in d.node.outputs)
            else d
            for d in decisions
        ]
        islands = _islands([d.node for d in decisions if d.selected])
        decisions = [Decision(d.node, False, ISLAND) if id(d.node) in islands else d for d in decisions]
        float_fed = _float_fed([d.node for d in decisions if d.selected])
        decisions = [Decision(d.node, False, FLOAT_CONSUMERS) if id(d.node) in float_fed else d for d in decisions]
    selected = [d.node for d in decisions if d.selected]
    chosen = {id(n): n for n in selected}
    float_tensors = kept_float_tensors(  # AVGPOOL_CEIL_PAD too: DQ -> AveragePool -> Q would fuse anyway
        d.node for d in decisions
        if d.reason in (EXCLUDED, AVGPOOL_CEIL_PAD) or (d.node.name and d.node.name in float_nodes)
    )
    act_type = qp.qtype_named(recipe.activation_type)
    w_type = qp.qtype_named(recipe.weight_type)

    uf = _UnionFind()
    derived: set[str] = set()  # members whose values follow from another member's
    bounds: dict[str, float] = {}  # tensor -> known upper bound (Relu: inf, Clip: max)
    quantized_inputs: dict[int, list[int]] = collections.defaultdict(list)
    quantized_producers: set[int] = set()  # id(node) of nodes whose output is Q'd for fusion
    weights: list[WeightSpec] = []
    concats: list[tuple[ir.Node, tuple[str, ...]]] = []

    for node in selected:
        op = node.op_type
        inputs = list(node.inputs)
        if op in _SHARED_SCALE_OPS and (inputs[0].name in float_tensors or node.outputs[0].name in float_tensors):
            continue  # one scale for input and output: both float, or neither
        act_inputs: list[int] = []
        if op in _WEIGHTED_OPS:
            act_inputs.append(0)
            w_value = inputs[1]
            if irutil.is_constant(w_value):
                w = irutil.const_array(w_value)
                axis = _weight_axis(node, w, recipe.per_channel)
                weights.append(WeightSpec(node, 1, axis, w_type, True))
            else:
                act_inputs.append(1)  # MatMul of two activations
        elif op in ("Add", "Mul"):
            for i, v in enumerate(inputs):
                if irutil.is_constant(v):
                    weights.append(WeightSpec(node, i, None, act_type, recipe.symmetric_activations))
                else:
                    act_inputs.append(i)
        elif op == "Concat":
            act_inputs = list(range(len(inputs)))
        else:  # pools, Resize
            act_inputs.append(0)
        act_inputs = [i for i in act_inputs if inputs[i].name not in float_tensors]
        for i in act_inputs:
            uf.add(inputs[i].name)
        quantized_inputs[id(node)].extend(act_inputs)
        out = node.outputs[0]
        act = _folded_activation(node)
        if act is not None:
            out = act.outputs[0]
        if out.name in float_tensors:  # read (or computed) by a node kept in float
            continue
        if (op in _FLOAT_RESULT_OPS and out.name not in recipe.tensor_overrides and not recipe.quantize_islands
                and ((out.is_graph_output() and out.graph is model.graph)
                     or (recipe.float_matmul_results and irutil.is_constant(inputs[1])
                         and _float_result_runs_int8(node) and not _feeds_chosen(act or node, chosen)))):
            # a MatMul/Gemm result the model returns (logits), or that only float ops read (a
            # transformer's output projections into the float residual stream): not rounded
            # to 8 bits -- ORT runs int8 inputs with a float result (MatMulIntegerToFloat,
            # QGemm), where it keeps them int8 (_float_result_runs_int8)
            continue
        if (recipe.float_conv_results and op in ("Conv", "ConvTranspose") and irutil.is_constant(inputs[1])
                and out.name not in recipe.tensor_overrides and not recipe.quantize_islands
                and not _feeds_chosen(act or node, chosen)):
            continue  # a runtime that runs the Conv int8 without a Q on its result (the openvino target)
        if act is not None:
            b = _activation_bounds(act)
            bounds[out.name] = b[1]
            quantized_producers.add(id(act))
        uf.add(out.name)
        quantized_producers.add(id(node))
        if op == "Concat":
            for i in act_inputs:
                uf.union(out.name, inputs[i].name)
                derived.add(inputs[i].name)
            concats.append((node, tuple(inputs[i].name for i in act_inputs)))
        elif op in _SHARED_SCALE_OPS:
            uf.union(inputs[0].name, out.name)
            derived.add(out.name)

    # pass-through ops carry the quantized data on (graph order is topological)
    notes: list[str] = []
    for node in irutil.iter_nodes(model.graph):
        if node.op_type not in PASS_THROUGH_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if not node.inputs or node.inputs[0] is None or node.inputs[0].name not in uf.parent:
            continue
        if _already_qdq(node) or not _is_float(node.outputs[0]) or _unobservable_owner(node, owners):
            continue
        x, y = node.inputs[0], node.outputs[0]
        if y.name in float_tensors:
            continue
        uf.union(x.name, y.name)
        derived.add(y.name)
        if x.name in bounds:
            bounds[y.name] = bounds[x.name]
        quantized_inputs[id(node)].append(0)
        quantized_producers.add(id(node))

    # groups, in order of first appearance
    members: dict[str, list[str]] = collections.defaultdict(list)
    for t in sorted(uf.parent, key=uf.order.__getitem__):
        members[uf.find(t)].append(t)
    overrides = dict(recipe.tensor_overrides)
    known = set(uf.parent)
    groups = []
    for root, ms in members.items():
        group_over: dict[str, Any] = {}
        for t in ms:
            if t in overrides:
                for k, v in overrides[t].items():
                    if k in group_over and group_over[k] != v:
                        raise RecipeError(
                            f"tensor_overrides disagree on {k!r} within one scale group ({', '.join(ms)}); "
                            "these tensors share a scale"
                        )
                    group_over[k] = v
        qtype = qp.qtype_named(group_over["activation_type"]) if "activation_type" in group_over else act_type
        symmetric = bool(group_over.get("symmetric", recipe.symmetric_activations))
        observe = tuple(t for t in ms if t not in derived) or (ms[0],)
        ub = None
        if all(t in bounds for t in ms):
            ub = min(bounds[t] for t in ms)
            if not np.isfinite(ub):
                ub = None
        groups.append(ScaleGroup(ms[0], tuple(ms), observe, qtype, symmetric, ub, group_over))
    unknown = sorted(set(overrides) - known)
    if unknown:
        all_names = {v.name for g in irutil.iter_graphs(model.graph) for n in g for v in n.outputs}
        all_names |= {v.name for g in irutil.iter_graphs(model.graph) for v in g.inputs}
        missing = [t for t in unknown if t not in all_names]
        if missing:
            raise RecipeError(f"tensor_overrides name tensors the model does not have: {', '.join(missing)}")
        notes.append(f"tensor_overrides for tensors that stay float (ignored): {', '.join(unknown)}")

    # which tensors have every consumer rewired (their producer is quantized: ORT fuses it
    # only when the Q is its sole consumer)
    rewire_all = set()
    for g in irutil.iter_graphs(model.graph):
        for node in g:
            if id(node) in quantized_producers:
                out = node.outputs[0]
                if out.name in known:
                    rewire_all.add(out.name)
    return StaticPlan(
        decisions=tuple(decisions),
        groups=tuple(groups),
        weights=tuple(weights),
        quantized_inputs={k: tuple(v) for k, v in quantized_inputs.items()},
        rewire_all=frozenset(rewire_all),
        notes=tuple(notes),
        concats=tuple((n, ins) for n, ins in concats if n.outputs[0].name in known),
    )


def quantize_weight(
    w: np.ndarray, axis: int | None, qtype: qp.QType, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(quantized, scale, zero point, dequantized) of a constant: per channel along
    ``axis`` (scale/zero point 1-D) or per tensor (0-d). Same numbers as
    ``qp.choose_qparams`` + ``qp.quantize`` + ``qp.dequantize`` (the reference), computed
    with broadcasting instead of expanded scale tensors (bias correction calls this for
    every weight during calibration)."""
    w = np.asarray(w, dtype=np.float32)
    if axis is None or w.ndim == 0 or w.size == 0:
        block = qp.per_tensor(w.shape) if axis is None or w.ndim == 0 else qp.per_channel(w.shape, axis)
        p = qp.choose_qparams(w, qtype, block, symmetric=symmetric)
        q = qp.quantize(w, p)
        if axis is None or w.ndim == 0:
            return q, p.scale.reshape(()), p.zero_point.reshape(()), qp.dequantize(q, p)
        return q, p.scale.reshape(-1), p.zero_point.reshape(-1), qp.dequantize(q, p)
    axis = axis % w.ndim
    others = tuple(a for a in range(w.ndim) if a != axis)
    rmin, rmax = w.min(axis=others), w.max(axis=others)
    p = qp.qparams_from_range(rmin, rmax, qtype, symmetric=symmetric)
    shape = [1] * w.ndim
    shape[axis] = -1
    scale = p.scale.astype(np.float32).reshape(shape)
    zp_f = p.zero_point.astype(np.float32).reshape(shape)
    q = np.clip(np.rint(w / scale) + zp_f, qtype.qmin, qtype.qmax).astype(qtype.storage_dtype)
    zp_i = p.zero_point.astype(np.int32).reshape(shape)
    dq = ((q.astype(np.int32) - zp_i).astype(np.float32) * scale).astype(np.float32)
    return q, p.scale.reshape(-1), p.zero_point.reshape(-1), dq


def group_qparams(group: ScaleGroup, rmin: float, rmax: float) -> qp.QParams:
    """Per-tensor qparams for a group from its chosen range, kept inside the group's upper
    bound (a Clip's max) so that ORT can drop the Clip: ORT accepts the fusion only when
    ``scale * (qmax - zero_point)`` does not pass the bound by more than float epsilon."""
    if group.fixed_range is not None:
        rmin, rmax = group.fixed_range
    if group.upper_bound is not None:
        rmax = min(rmax, group.upper_bound)
    p = qp.qparams_from_range(np.float64(rmin), np.float64(rmax), group.qtype, symmetric=group.symmetric)
    if group.upper_bound is not None:
        ub = np.float32(group.upper_bound)
        scale = np.float32(p.scale)
        top = np.float32(group.qtype.qmax - int(p.zero_point))
        while np.float32(scale * top) - ub > np.finfo(np.float32).eps and scale > 0:
            scale = np.nextafter(scale, np.float32(0))
        p = dataclasses.replace(p, scale=np.asarray(scale, dtype=np.float32))
    return p


# -- the pass -----------------------------------------------------------------------------


def _placeholder_zero_point(qtype: qp.QType, symmetric: bool) -> int:
    if symmetric and not qtype.signed:
        return (qtype.qmax + qtype.qmin + 1) // 2
    return 0


class InsertQdqPass(ir.passes.InPlacePass):
    """Insert Q/DQ pairs (placeholder scales) and quantized weights per ``plan_static``."""

    def __init__(self, recipe: StaticInt8, float_nodes: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.float_nodes = MappingProxyType(dict(float_nodes or {}))

    def requires(self, model: ir.Model) -> None:
        opset = _opset(model)
        if opset < MIN_OPSET:
            raise OnnxqError(
                f"int8-static needs opset >= {MIN_OPSET} (per-channel QuantizeLinear); the model imports opset "
                f"{opset}: convert it first with onnx.version_converter.convert_version(model, 13)"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan = plan_static(model, self.recipe, self.float_nodes)
        if not plan.groups and not plan.weights:
            return ir.passes.PassResult(model, modified=False)
        names = irutil.FreshNames(model.graph)
        opset = _opset(model)
        root = model.graph
        wide = any(g.qtype.bits > 8 for g in plan.groups) or any(sp.qtype.bits > 8 for sp in plan.weights)
        qdq_domain = "" if opset >= 21 or not wide else "com.microsoft"
        if qdq_domain:
            irutil.ensure_opset(model, qdq_domain, 1)

        originals: list[tuple[ir.Graph, ir.Value]] = []
        weight_cache: dict[tuple, ir.Value] = {}
        for spec in plan.weights:
            self._quantize_constant(spec, names, weight_cache, originals, qdq_domain if spec.qtype.bits > 8 else "")

        quantized_consumers: set[tuple[int, int]] = {
            (node_id, i) for node_id, idxs in plan.quantized_inputs.items() for i in idxs
        }
        from onnxq.calib.probe import value_map

        values = value_map(model)
        for group in plan.groups:
            zp0 = _placeholder_zero_point(group.qtype, group.symmetric)
            scale = irutil.add_initializer(root, names(f"{group.key}_scale"), np.array(1.0, np.float32))
            zp = irutil.add_initializer(
                root, names(f"{group.key}_zero_point"), np.array(zp0, dtype=group.qtype.storage_dtype)
            )
            for t in group.members:
                self._insert_pair(
                    values[t], scale, zp, group.qtype, names, qdq_domain,
                    rewire_all=t in plan.rewire_all, quantized_consumers=quantized_consumers,
                )
        for graph, value in originals:
            irutil.remove_if_unused(graph, value)
        logger.debug("insert QDQ: %d scale groups, %d constants", len(plan.groups), len(plan.weights))
        return ir.passes.PassResult(model, modified=True)

    # -- constants --------------------------------------------------------------------------

    def _quantize_constant(self, spec: WeightSpec, names, cache, originals, domain: str = "") -> None:
        """``domain``: of the DequantizeLinear (com.microsoft for 16-bit constants below opset 21,
        e.g. an Add's constant operand quantized with 16-bit activations)."""
        node = spec.node
        graph = node.graph
        value = node.inputs[spec.index]
        key = (id(graph), id(value), spec.axis, spec.qtype.name, spec.symmetric)
        if key not in cache:
            w = irutil.const_array(value).astype(np.float32)
            q, scale_arr, zp_arr, _ = quantize_weight(w, spec.axis, spec.qtype, spec.symmetric)
            label = value.name or node.name or "w"
            home = root_of(graph)
            q_v = irutil.add_initializer(home, names(f"{label}_quantized"), q)
            s_v = irutil.add_initializer(home, names(f"{label}_scale"), scale_arr.astype(np.float32))
            z_v = irutil.add_initializer(home, names(f"{label}_zero_point"), zp_arr.astype(spec.qtype.storage_dtype))
            attrs = {"axis": spec.axis} if spec.axis is not None else {}
            b = irutil.NodeBuilder(names, f"{label}_dq")
            dq = b.op("DequantizeLinear", [q_v, s_v, z_v], attrs, domain=domain)
            dq.dtype = ir.DataType.FLOAT
            dq.shape = ir.Shape(list(w.shape))
            b.insert_before(graph, node)
            cache[key] = dq
            originals.append((value.graph or graph, value))
        node.replace_input_with(spec.index, cache[key])

    # -- activations ------------------------------------------------------------------------

    def _insert_pair(self, t: ir.Value, scale, zp, qtype, names, domain, *, rewire_all, quantized_consumers) -> None:
        graph = t.graph
        producer = t.producer()
        base = t.name
        q_node = ir.node(
            "QuantizeLinear", [t, scale, zp], domain=domain,
            outputs=[ir.Value(name=names(f"{base}_quantized"), type=ir.TensorType(qtype_dtype(qtype)), shape=t.shape)],
            name=names(f"{base}_QuantizeLinear"),
        )
        dq_node = ir.node(
            "DequantizeLinear", [q_node.outputs[0], scale, zp], domain=domain,
            outputs=[ir.Value(name=names(f"{base}_dequantized"), type=ir.TensorType(ir.DataType.FLOAT), shape=t.shape)],
            name=names(f"{base}_DequantizeLinear"),
        )
        if producer is not None:
            graph.insert_after(producer, [q_node, dq_node])
        elif len(graph) > 0:
            graph.insert_before(next(iter(graph)), [q_node, dq_node])
        else:
            graph.append(q_node)
            graph.append(dq_node)
        dq = dq_node.outputs[0]
        for user, index in t.uses():
            if user is q_node:
                continue
            if (id(user), index) in quantized_consumers:
                user.replace_input_with(index, dq)
            elif rewire_all:
                pinned = self._float_input(user, index, q_node.outputs[0], scale, zp, names, domain)
                user.replace_input_with(index, pinned if pinned is not None else dq)
        if rewire_all and t.is_graph_output():
            owner = t.graph
            for i, out in enumerate(owner.outputs):
                if out is t:
                    owner.outputs[i] = dq
            name = t.name
            t.name = names(f"{name}_float")
            dq.name = name


    @staticmethod
    def _float_input(user: ir.Node, index: int, q: ir.Value, scale, zp, names, domain) -> ir.Value | None:
        """A DequantizeLinear for a Conv/ConvTranspose/Gemm kept in float, whose scale is
        per channel (the calibrated scale repeated): ONNX Runtime (>= 1.20, its
        WeightBiasQuantization optimizer) quantizes the float weights of a Conv/Gemm fed by
        a per-tensor DequantizeLinear to int8 *per tensor*, which would undo "keep this
        node in float" and lose more accuracy than our per-channel weights. None when the
        rule does not apply or the channel count is unknown."""
        if index != 0 or user.op_type not in ("Conv", "ConvTranspose", "Gemm") or user.domain not in ("", "ai.onnx"):
            return None
        shape = q.shape
        if shape is None or len(shape) < 2:
            return None
        axis = 1
        if user.op_type == "Gemm" and user.attributes.get_int("transA", 0):
            axis = 0
        channels = shape[axis]
        if not isinstance(channels, int) or channels < 2:
            return None
        graph = user.graph
        b = irutil.NodeBuilder(names, f"{q.name}_float_input")
        target = irutil.add_initializer(graph, names(f"{q.name}_channels"), np.array([channels], np.int64))
        scale_c = b.op("Expand", [scale, target])
        scale_c.dtype, scale_c.shape = ir.DataType.FLOAT, ir.Shape([channels])
        zp_c = b.op("Expand", [zp, target])
        zp_c.dtype, zp_c.shape = zp.dtype, ir.Shape([channels])
        out = b.op("DequantizeLinear", [q, scale_c, zp_c], {"axis": axis}, domain=domain)
        out.dtype, out.shape = ir.DataType.FLOAT, q.shape
        b.insert_before(graph, user)
        return out


def qtype_dtype(qtype: qp.QType) -> ir.DataType:
    return ir.DataType(qtype.onnx_dtype)


def root_of(graph: ir.Graph) -> ir.Graph:
    """Initializers go in the graph itself (subgraph initializers are valid and keep the
    quantized weight next to its DequantizeLinear)."""
    return graph
