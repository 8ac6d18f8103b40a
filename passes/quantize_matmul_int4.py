"""QuantizeMatMulInt4Pass: block-int4 weight-only MatMul/Gemm, in one of three formats.

For each selected MatMul (or Gemm with ``transA=0``) whose weight is a constant 2-D float32
or float16 ``[K, N]``:

- ``format="qdq"``: ``DequantizeLinear`` (opset 21, ``axis=0``, ``block_size``) of an int4
  (symmetric) or uint4 + uint4 zero point (asymmetric) ``[K, N]`` weight → ``MatMul``; the
  model must be at opset 21 (``UpgradeOpsetPass`` first).
- ``format="matmulnbits"``: ORT's ``com.microsoft.MatMulNBits`` (packed ``[N, n_blocks,
  block_size / 2]``, scales ``[N, n_blocks]``, packed uint8 zero points when asymmetric),
  ``accuracy_level`` from the ``accuracy_levels`` map, else the recipe's, else unset.
- ``format="onnxq"``: ``com.onnxq.MatMulBlockInt4``, same inputs, bytes and ``accuracy_level``
  rule (the attribute means the same: 4 = int8 activations per block).

A Gemm's ``alpha``/``transB`` go into the weight and its bias ``beta * C`` into an ``Add``.
Nodes matching ``keep_8bit`` get int8 per-output-channel ``DequantizeLinear`` → ``MatMul``
(any format); ``keep_float`` nodes are left alone.

The algorithms (``onnxq.int4``) are deterministic numpy; GPTQ and AWQ read activation
statistics (``stats``: MatMul input name → ``ActivationStats``) computed beforehand by
``onnxq.int4.calibrate`` — the pass itself runs no session and reads no file. AWQ's
per-input-channel scales ``s`` are applied as ``W' = diag(s) W`` and ``x / s`` folded into
the op that produces ``x`` when every consumer of ``x`` is scaled (or only reads its shape):
a ``Mul`` by a constant (RMSNorm weight), a ``LayerNormalization``-style scale/bias, the
columns of a MatMul weight (also through the activation-times-activation ``Mul`` of a gated
MLP, e.g. into ``up_proj``); otherwise a ``Mul`` by ``1/s`` on the activation
(``awq_activation_mul``) or no scaling.

Weights are read one node at a time (memory-mapped when external) and each original weight
is dropped, and its mapping released, as soon as no node uses it, so peak memory stays near
the largest tensor.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Mapping

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq import qparams as qp
from onnxq.int4._blas import single_thread
from onnxq.int4.awq import awq_search
from onnxq.int4.blocks import BlockQuant, Int4Spec, rtn
from onnxq.int4.gptq import gptq, gptq_batch, refit_scales
from onnxq.int4.hqq import hqq
from onnxq.recipes import WeightOnlyInt4
from onnxq.selection import Decision, name_matches, select

__all__ = ["QuantizeMatMulInt4Pass", "plan_int4", "INT8_REASON", "INT8_REASONS", "ONNXQ_DOMAIN"]

logger = logging.getLogger(__name__)

INT8_REASON = "int8 (keep_8bit)"
RAGGED_INT8_REASON = "int8 (K is not a multiple of block_size; ragged_k = int8)"
INT8_REASONS = (INT8_REASON, RAGGED_INT8_REASON)
ONNXQ_DOMAIN = "com.onnxq"
_WEIGHT_DTYPES = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16}
_NORM_OPS = {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"}


HEAD_REASON = (
    "a small output head (classifier/pooler): int4 there costs the output much accuracy for almost no size; "
    "float_heads = false quantizes it"
)


def _check(node: ir.Node) -> str | None:
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return "missing inputs"
    w = node.inputs[1]
    if not irutil.is_constant(w) or ir.convenience.get_const_tensor(w) is None:
        return "second input is computed at run time, not a weight (activation x activation stays float)"
    tensor = ir.convenience.get_const_tensor(w)
    if tensor.dtype not in _WEIGHT_DTYPES:
        return f"weight is {tensor.dtype.name}, not float32/float16"
    if len(tensor.shape) != 2:
        return f"weight has rank {len(tensor.shape)}; only 2-D weights are quantized"
    if not np.all(np.isfinite(tensor.numpy())):
        return "weight contains NaN or Inf"
    x = node.inputs[0]
    if x.dtype is not None and x.dtype != tensor.dtype:
        return f"activation is {x.dtype.name} but the weight is {tensor.dtype.name}"
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return "Gemm with transA=1 is left in float"
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            if irutil.const_array(node.inputs[2]) is None and node.attributes.get_float("beta", 1.0) != 1.0:
                return "Gemm with a non-constant C and beta != 1 is left in float"
    return None


# layers on pooled features (rank-2 inputs) from which at most this share of the selected
# weights lies before a model output (with the layers after them) are "small output heads"
HEAD_SHARE = 0.05


def _weight_k(node: ir.Node) -> int:
    """The reduction length K of a MatMul/Gemm weight."""
    t = ir.convenience.get_const_tensor(node.inputs[1])
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    return int(t.shape[1] if trans_b else t.shape[0])


def _weight_size(node: ir.Node) -> int:
    t = ir.convenience.get_const_tensor(node.inputs[1])
    return int(np.prod(t.shape)) if t is not None else 0


_POOLING = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2"})
_PER_SAMPLE = frozenset({
    "Flatten", "Squeeze", "Reshape", "Transpose", "Identity", "Dropout", "Cast", "Tanh", "Relu", "Gelu", "Sigmoid",
    "Erf", "Clip", "HardSwish", "HardSigmoid", "Softmax", "LayerNormalization", "BatchNormalization", "Add", "Sub",
    "Mul", "Div", "MatMul", "Gemm",
})
_POOLED_DEPTH = 12


def _pooled(v: ir.Value | None, depth: int = 0) -> bool:
    """Whether ``v`` holds pooled features -- one row per sample -- by way of a pooling op
    (GlobalAveragePool, ReduceMean, ...) or a Gather of one position (BERT's [CLS] token), up
    a few per-sample ops (activations, norms, reshapes, head MatMul/Gemm layers). The
    [batch * tokens, hidden] input of a flattened decoder layer or MoE expert is not."""
    p = v.producer() if v is not None else None
    if p is None or depth > _POOLED_DEPTH or p.domain not in ("", "ai.onnx"):
        return False
    if p.op_type in _POOLING:
        return True
    if p.op_type == "AveragePool":
        y = p.outputs[0]
        return y.shape is not None and len(y.shape) > 2 and all(d == 1 for d in y.shape[2:])
    if p.op_type == "Gather":
        idx = irutil.const_array(p.inputs[1]) if len(p.inputs) > 1 and p.inputs[1] is not None else None
        return idx is not None and idx.ndim == 0 and p.attributes.get_int("axis", 0) != 0
    if p.op_type not in _PER_SAMPLE:
        return False
    return any(_pooled(x, depth + 1) for x in p.inputs if x is not None and not irutil.is_constant(x))


def _on_pooled_features(node: ir.Node) -> bool:
    x = node.inputs[0]
    rank2 = node.op_type == "Gemm" or (x is not None and x.shape is not None and len(x.shape) == 2)
    return x is not None and rank2 and _pooled(x)


def _small_output_heads(model: ir.Model, decisions: list[Decision]) -> dict[int, float]:
    """id(node) -> share of the weights, for selected int4 root-graph nodes on pooled
    features (see :func:`_pooled`) whose result reaches a model output while the
    MatMul/Gemm weights from it on (itself included, quantized or not) hold at most
    HEAD_SHARE of all of them: a BERT pooler + classifier, a ViT/Swin head. The heads
    together stay within HEAD_SHARE too. An LLM's lm_head reads every position (rank 3)."""
    size = {id(d.node): _weight_size(d.node) for d in decisions if d.node.op_type in ("MatMul", "Gemm")
            and len(d.node.inputs) > 1 and d.node.inputs[1] is not None and irutil.is_constant(d.node.inputs[1])}
    total = sum(size.values())
    budget = HEAD_SHARE * total
    found: dict[int, tuple[float, set[int]]] = {}
    for d in decisions:
        n = d.node
        if not d.selected or d.reason in INT8_REASONS or n.graph is not model.graph or size.get(id(n), 0) > budget:
            continue
        if not _on_pooled_features(n):
            continue
        acc, reaches_output, seen, stack = size[id(n)], False, {id(n)}, list(n.outputs)
        weighted = {id(n)}
        while stack and acc <= budget:
            v = stack.pop()
            reaches_output = reaches_output or (v.is_graph_output() and v.graph is model.graph)
            for user, _ in v.uses():
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if id(user) in size:
                    acc += size[id(user)]
                    weighted.add(id(user))
                stack.extend(user.outputs)  # into If/Loop: their outputs continue from the node
        if reaches_output and acc <= budget:
            found[id(n)] = (acc, weighted)
    # all heads together within the budget: drop the largest chains first
    chosen = dict(found)
    while chosen and sum(size[k] for k in set().union(*(w for _, w in chosen.values()))) > budget:
        del chosen[max(chosen, key=lambda k: chosen[k][0])]
    return {k: acc / total for k, (acc, _) in chosen.items()}


def plan_int4(model: ir.Model, recipe: WeightOnlyInt4) -> list[Decision]:
    """What ``QuantizeMatMulInt4Pass(recipe)`` would do: selected nodes are int4 (reason
    empty) or int8 (reason ``INT8_REASON``); the others say why they are skipped."""
    out = []
    for d in select(irutil.iter_nodes(model.graph), recipe.selection, _check):
        if d.selected and name_matches(d.node.name or "", recipe.keep_float):
            d = Decision(d.node, False, "kept float (keep_float)")
        elif d.selected and name_matches(d.node.name or "", recipe.keep_8bit):
            d = Decision(d.node, True, INT8_REASON)
        elif d.selected and recipe.ragged_k == "int8" and _weight_k(d.node) % recipe.block_size:
            d = Decision(d.node, True, RAGGED_INT8_REASON)
        out.append(d)
    if recipe.float_heads:
        heads = _small_output_heads(model, out)
        out = [
            Decision(d.node, False, f"{HEAD_REASON} ({heads[id(d.node)]:.2%} of the weights with the layers after it)")
            if id(d.node) in heads else d
            for d in out
        ]
    return out


@dataclasses.dataclass
class _Target:
    """One node to rewrite and how its float weight is transformed first."""

    node: ir.Node
    int8: bool
    stats_key: str = ""  # name of the MatMul input as calibrated (before any AWQ Mul)
    row_scale: np.ndarray | None = None  # AWQ: W' = diag(s) W (input is x / s)
    col_scale: np.ndarray | None = None  # a later AWQ folded 1/s into this weight's columns
    awq_alpha: float | None = None
    quantized: BlockQuant | None = None  # computed ahead (GPTQ runs batched)

    @property
    def n_cols(self) -> int:
        w = ir.convenience.get_const_tensor(self.node.inputs[1])
        transposed = self.node.op_type == "Gemm" and self.node.attributes.get_int("transB", 0)
        return int(w.shape[0] if transposed else w.shape[1])


def _weight_kn(node: ir.Node) -> tuple[np.ndarray, np.dtype]:
    """The node's weight as ``[K, N]`` (Gemm ``transB``/``alpha`` applied) and its dtype."""
    tensor = ir.convenience.get_const_tensor(node.inputs[1])
    w = tensor.numpy()
    dtype = np.dtype(_WEIGHT_DTYPES[tensor.dtype])
    if node.op_type == "Gemm":
        if node.attributes.get_int("transB", 0):
            w = w.T
        alpha = node.attributes.get_float("alpha", 1.0)
        if alpha != 1.0:
            w = w.astype(np.float32) * np.float32(alpha)
    return w, dtype


class QuantizeMatMulInt4Pass(ir.passes.InPlacePass):
    """Rewrite float MatMul/Gemm weights to block int4 (see the module docstring)."""

    def __init__(
        self,
        recipe: WeightOnlyInt4,
        stats: Mapping[str, object] | None = None,
        accuracy_levels: Mapping[str, int] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> None:
        super().__init__()
        self.recipe = recipe
        self.stats = dict(stats or {})
        self.accuracy_levels = dict(accuracy_levels or {})
        self.progress = progress
        self.spec = Int4Spec(recipe.block_size, recipe.symmetric, recipe.positive_scales)

    def requires(self, model: ir.Model) -> None:
        opset = irutil.default_opset(model)
        if self.recipe.format == "qdq" and opset < 21 and any(d.selected for d in plan_int4(model, self.recipe)):
            raise ir.passes.PreconditionError(
                f"blocked DequantizeLinear needs opset 21 but the model is at opset {opset}; "
                "run UpgradeOpsetPass(21) first (onnxq.quantize does)"
            )
        if opset < 13 and self.recipe.keep_8bit:
            raise ir.passes.PreconditionError(
                f"int8 per-channel DequantizeLinear needs opset 13 but the model is at opset {opset}"
            )

    # ------------------------------------------------------------------------------------

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # numpy's OpenBLAS threads fight each other (and any other process) on small
        # shared machines: 10x slower factorisations were measured; one thread is steady
        with single_thread():
            return self._call(model)

    def _call(self, model: ir.Model) -> ir.passes.PassResult:
        decisions = [d for d in plan_int4(model, self.recipe) if d.selected]
        if not decisions:
            return ir.passes.PassResult(model, modified=False)
        names = irutil.FreshNames(model.graph)
        targets = {
            id(d.node): _Target(d.node, d.reason in INT8_REASONS, d.node.inputs[0].name or "") for d in decisions
        }
        if "awq" in self.recipe.algorithm:
            self._apply_awq(model, targets, names)
        if self.recipe.algorithm.split("+")[-1] == "gptq":
            self._gptq_all([t for t in targets.values() if not t.int8])
        total = len(targets)
        cache: dict[tuple, tuple[ir.Value, ...]] = {}
        for i, target in enumerate(list(targets.values())):
            node = target.node
            t0 = time.perf_counter()
            label = node.name or (node.outputs[0].name or "matmul")
            w_value = node.inputs[1]
            c_value = node.inputs[2] if len(node.inputs) > 2 else None  # a Gemm's C, folded into a new bias
            graph = node.graph
            self._rewrite(graph, target, names, cache, label)
            dt = time.perf_counter() - t0
            logger.info("int4 [%d/%d] %s %s %.2fs", i + 1, total, label, "int8" if target.int8 else self.recipe.algorithm, dt)
            if self.progress is not None:
                self.progress(i + 1, total, label)
            self._drop_if_unused(graph, w_value)
            if c_value is not None:
                self._drop_if_unused(graph, c_value)
        for graph in irutil.iter_graphs(model.graph):
            for node in graph:
                if node.domain == "com.microsoft":
                    irutil.ensure_opset(model, "com.microsoft", 1)
                elif node.domain == ONNXQ_DOMAIN:
                    irutil.ensure_opset(model, ONNXQ_DOMAIN, 1)
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
        tensor = value.const_value
        if irutil.remove_if_unused(graph, value) and isinstance(tensor, ir.ExternalTensor):
            tensor.release()

    # -- AWQ ------------------------------------------------------------------------------

    def _apply_awq(self, model: ir.Model, targets: dict[int, _Target], names: irutil.FreshNames) -> None:
        groups: dict[tuple[int, int], list[_Target]] = {}
        for t in targets.values():
            if t.int8:
                continue
            x = t.node.inputs[0]
            groups.setdefault((id(t.node.graph), id(x)), []).append(t)
        for members in groups.values():
            x = members[0].node.inputs[0]
            st = self.stats.get(members[0].stats_key)
            if st is None:
                logger.warning("AWQ: no calibration statistics for %s; its MatMuls are not scaled", x.name)
                continue
            weights = [np.asarray(_weight_kn(t.node)[0], dtype=np.float32) for t in members]
            if any(w.shape[0] != st.k for w in weights):
                logger.warning("AWQ: statistics of %s do not match the weights; not scaled", x.name)
                continue
            res = awq_search(weights, st.hessian, st.mean_abs, self.spec, grid=self.recipe.awq_grid)
            del weights
            if res.alpha == 0.0:
                continue
            s = res.scales
            if not self._fold(x, members, s, targets, names):
                if not self.recipe.awq_activation_mul:
                    continue
                self._insert_mul(x, members, s, names)
            for t in members:
                t.row_scale = s
                t.awq_alpha = res.alpha
            logger.debug("AWQ %s: alpha %.2f, loss %.4g vs RTN %.4g", x.name, res.alpha, res.loss, res.loss_rtn)

    def _fold(self, x: ir.Value, members: list[_Target], s: np.ndarray, targets: dict[int, _Target], names) -> bool:
        """Fold ``x / s`` into the producer of ``x``; False when it cannot be done exactly."""
        member_ids = {id(t.node) for t in members}
        if x.is_graph_output() or x.is_graph_input():
            return False
        for use in x.uses():
            if id(use.node) in member_ids and use.idx == 0:
                continue
            if use.node.op_type in ("Shape", "Size") and use.node.domain in ("", "ai.onnx"):
                continue
            return False
        producer = x.producer()
        if producer is None or producer.graph is None:
            return False
        return self._fold_into(producer, x, s, targets, names, depth=0)

    def _fold_into(self, p: ir.Node, x: ir.Value, s: np.ndarray, targets, names, depth: int) -> bool:
        k = s.shape[0]
        graph = p.graph
        if p.domain not in ("", "ai.onnx", "com.microsoft"):
            return False
        if p.op_type == "Mul" and p.domain in ("", "ai.onnx") and len(p.inputs) == 2:
            consts = [i for i, v in enumerate(p.inputs) if irutil.is_constant(v)]
            if len(consts) == 1:
                c = irutil.const_array(p.inputs[consts[0]])
                if c.size not in (1, k) or (c.ndim and c.shape[-1] not in (1, k)):
                    return False
                other = p.inputs[1 - consts[0]]
                if other.shape is None or not len(other.shape) or other.shape[-1] != k:
                    return False
                new = (c.reshape(-1) / s).astype(c.dtype) if c.size == k else (c.reshape(-1)[0] / s).astype(c.dtype)
                self._replace_const_input(graph, p, consts[0], new.reshape((1,) * max(c.ndim - 1, 0) + (k,)), names)
                return True
            if not consts and depth == 0:
                # gated MLP: x = a * b; fold 1/s into a branch made by a MatMul with a constant weight
                for v in p.inputs:
                    q = v.producer()
                    if (
                        q is not None
                        and q.op_type == "MatMul"
                        and len(v.uses()) == 1
                        and not v.is_graph_output()
                        and v.shape is not None
                        and x.shape is not None
                        and v.shape == x.shape
                    ):
                        if self._fold_into(q, v, s, targets, names, depth + 1):
                            return True
            return False
        if p.op_type in _NORM_OPS:
            axis = p.attributes.get_int("axis", -1)
            rank = len(x.shape) if x.shape is not None else None
            if not (axis == -1 or (rank is not None and axis == rank - 1)):
                return False
            for i in range(1, len(p.inputs)):
                if p.inputs[i] is not None and irutil.const_array(p.inputs[i]) is None:
                    return False
            for i in range(1, len(p.inputs)):
                if p.inputs[i] is None:
                    continue
                c = irutil.const_array(p.inputs[i])
                if c.shape[-1] != k:
                    return False
            for i in range(1, len(p.inputs)):
                if p.inputs[i] is not None:
                    c = irutil.const_array(p.inputs[i])
                    self._replace_const_input(graph, p, i, (c / s).astype(c.dtype), names)
            return True
        if p.op_type == "MatMul" and p.domain in ("", "ai.onnx"):
            w_value = p.inputs[1]
            if not irutil.is_constant(w_value):
                return False
            w = irutil.const_array(w_value)
            if w.ndim != 2 or w.shape[1] != k:
                return False
            t = targets.get(id(p))
            if t is not None:
                t.col_scale = (1.0 / s) if t.col_scale is None else t.col_scale / s
            else:
                self._replace_const_input(graph, p, 1, (w / s[None, :]).astype(w.dtype), names)
            return True
        return False

    def _replace_const_input(self, graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, names) -> None:
        old = node.inputs[index]
        new = irutil.add_initializer(graph, names(f"{old.name or 'const'}_awq"), np.ascontiguousarray(array))
        node.replace_input_with(index, new)
        irutil.remove_if_unused(graph, old)

    def _insert_mul(self, x: ir.Value, members: list[_Target], s: np.ndarray, names) -> None:
        graph = members[0].node.graph
        dtype = _weight_kn(members[0].node)[1]
        inv = irutil.add_initializer(graph, names(f"{x.name or 'x'}_awq_inv_scale"), (1.0 / s).astype(dtype))
        b = irutil.NodeBuilder(names, f"{x.name or 'x'}_awq")
        y = b.op("Mul", [x, inv])
        if x.type is not None:
            y.type = x.type
        if x.shape is not None:
            y.shape = x.shape
        anchor = next(n for n in graph if any(n is t.node for t in members))
        b.insert_before(graph, anchor)
        for t in members:
            t.node.replace_input_with(0, y)

    # -- per-node rewrite -----------------------------------------------------------------

    def _quantize(self, t: _Target, w: np.ndarray) -> BlockQuant:
        recipe = self.recipe
        algo = recipe.algorithm.split("+")[-1]
        if t.quantized is not None:
            return t.quantized
        h = self._hessian(t, w.shape[0])
        if algo == "gptq":
            if h is None:
                logger.warning("GPTQ: no calibration statistics for %s; using RTN", t.node.name)
                return rtn(w, self.spec, mse=bool(recipe.scale_search))
            bq = gptq(
                w, h, self.spec, percdamp=recipe.percdamp, act_order=recipe.act_order,
                mse=recipe.scale_search is not False,
            )
            return refit_scales(w, h, bq) if recipe.refit_scales else bq
        if algo == "hqq":
            # HQQ's float zero points where the format stores them (MatMulNBits, com.onnxq);
            # opset-21 DequantizeLinear needs uint4 ones
            return hqq(w, self.spec, iters=recipe.hqq_iters, integer_zero=recipe.format == "qdq")
        if algo == "awq":
            # AWQ's clip search, weighted by how much each input channel feeds the output
            imp = None if h is None else np.diag(h).astype(np.float32)
            return rtn(w, self.spec, mse=True, importance=imp)
        imp = None if (h is None or not recipe.scale_search) else np.diag(h).astype(np.float32)
        return rtn(w, self.spec, mse=bool(recipe.scale_search), importance=imp)

    def _hessian(self, t: _Target, k: int) -> np.ndarray | None:
        """``X^T X`` of the node's (AWQ-scaled) input, or None without statistics."""
        st = self.stats.get(t.stats_key)
        if st is None or st.k != k:
            return None
        h = st.hessian
        if t.row_scale is not None:
            inv = 1.0 / t.row_scale.astype(np.float64)
            h = h * inv[:, None] * inv[None, :]
        return h

    def _float_weight(self, t: _Target) -> np.ndarray:
        w = np.asarray(_weight_kn(t.node)[0], dtype=np.float32)
        if t.row_scale is not None:
            w = w * t.row_scale[:, None]
        if t.col_scale is not None:
            w = w * t.col_scale[None, :].astype(np.float32)
        return w

    def _gptq_all(self, targets: list[_Target]) -> None:
        """GPTQ every target up front: weights sharing an input (and its AWQ scales) are
        concatenated along N into one problem; problems of one shape run as one batch."""
        recipe = self.recipe
        problems: dict[tuple, list[_Target]] = {}
        for t in targets:
            w = ir.convenience.get_const_tensor(t.node.inputs[1])
            k = w.shape[1] if t.node.op_type == "Gemm" and t.node.attributes.get_int("transB", 0) else w.shape[0]
            st = self.stats.get(t.stats_key)
            if st is None or st.k != k:
                logger.warning("GPTQ: no calibration statistics for %s; using RTN", t.node.name)
                continue
            key = (t.stats_key, id(t.row_scale) if t.row_scale is not None else None, k)
            problems.setdefault(key, []).append(t)
        # weights and Hessians are materialised one chunk at a time (a big model's do not
        # fit in memory together; spilled Hessians are read back here)
        by_shape: dict[tuple[int, int], list[list[_Target]]] = {}
        for (_, _, k), members in problems.items():
            by_shape.setdefault((k, sum(t.n_cols for t in members)), []).append(members)
        budget = 256 << 20
        for (k, n), groups in by_shape.items():
            per = 4 * (2 * k * k + 3 * k * n)
            step = max(1, budget // per)
            for i in range(0, len(groups), step):
                chunk = [
                    (members, np.concatenate([self._float_weight(t) for t in members], axis=1), self._hessian(members[0], k))
                    for members in groups[i : i + step]
                ]
                t0 = time.perf_counter()
                results = gptq_batch(
                    [w for _, w, _ in chunk], [h for _, _, h in chunk], self.spec,
                    percdamp=recipe.percdamp, act_order=recipe.act_order, mse=recipe.scale_search is not False,
                )
                if recipe.refit_scales:
                    results = [refit_scales(w, h, bq) for (_, w, h), bq in zip(chunk, results)]
                logger.info("GPTQ: %d problem(s) of %dx%d in %.2fs", len(chunk), k, n, time.perf_counter() - t0)
                for (members, _, _), bq in zip(chunk, results):
                    c0 = 0
                    for t in members:
                        c1 = c0 + t.n_cols
                        t.quantized = BlockQuant(
                            bq.spec, bq.codes[:, c0:c1], bq.scales[:, c0:c1],
                            None if bq.zeros is None else bq.zeros[:, c0:c1],
                        )
                        c0 = c1
                del chunk, results  # before the next chunk is built

    def _rewrite(self, graph: ir.Graph, t: _Target, names: irutil.FreshNames, cache: dict, label: str) -> None:
        node = t.node
        x = node.inputs[0]
        w_value = node.inputs[1]
        w, dtype = _weight_kn(node)
        k, n = w.shape
        transformed = t.row_scale is not None or t.col_scale is not None
        key = (id(w_value), node.op_type, node.attributes.get_int("transB", 0), node.attributes.get_float("alpha", 1.0), t.int8)
        # ORT's DQ -> MatMulNBits fusion fails on a DequantizeLinear whose int4 weight is an outer
        # graph's initializer (qdq_actions.cc TransposeDQWeightsForMatMulNBits): qdq gives each
        # graph its own copy
        outer_ok = self.recipe.format != "qdq"
        if not outer_ok:
            key += (id(graph),)
        b = irutil.NodeBuilder(names, label)
        # a weight shared by several nodes is quantized once, unless its quantization
        # depends on the node's input (calibration statistics) or on AWQ scales
        cacheable = not transformed and (t.int8 or not self.stats)
        if cacheable and key in cache:
            weight_inputs = cache[key]
        else:
            if transformed:
                w = self._float_weight(t)
            # a shared weight's quantized form sits beside the float one, where every reader
            # (If branches, a Loop body and the main graph) can see it
            home = (w_value.graph or graph) if cacheable and outer_ok else graph
            if t.int8:
                weight_inputs = self._int8_initializers(home, np.asarray(w, dtype=np.float32), dtype, names, label)
            else:
                bq = self._quantize(t, w)
                weight_inputs = self._int4_initializers(home, bq, dtype, names, label)
            if cacheable:
                cache[key] = weight_inputs
        del w
        if t.int8:
            q, scale = weight_inputs
            deq = b.op("DequantizeLinear", [q, scale], {"axis": 1})
            deq.dtype, deq.shape = ir.DataType(_dtype_enum(dtype)), ir.Shape([k, n])
            y = b.op("MatMul", [x, deq])
        elif self.recipe.format == "qdq":
            # one DequantizeLinear per node lets ORT fuse each pair into MatMulNBits; a weight
            # that several nodes read is not fused (the int4 initializer is shared), and a
            # DequantizeLinear per reader would dequantize it once per reader on every run (an
            # unrolled LSTM reading 4 weights 80 times: 6x slower than fp32): one for all of them
            deq = cache.get(("deq", *key)) if cacheable else None
            shared = deq is not None or (cacheable and len(w_value.uses()) > 1)
            if deq is None:
                deq = b.op("DequantizeLinear", list(weight_inputs), {"axis": 0, "block_size": self.recipe.block_size})
                deq.dtype, deq.shape = ir.DataType(_dtype_enum(dtype)), ir.Shape([k, n])
                if shared:  # its inputs are initializers: it can go first, before every reader
                    graph.insert_before(next(iter(graph)), b.nodes.pop())
                    cache[("deq", *key)] = deq
            y = b.op("MatMul", [x, deq])
        else:
            attrs = {"K": k, "N": n, "bits": 4, "block_size": self.recipe.block_size}
            level = self.accuracy_levels.get(node.name or "", self.recipe.accuracy_level)
            if level is not None:
                attrs["accuracy_level"] = int(level)
            if self.recipe.format == "matmulnbits":
                y = b.op("MatMulNBits", [x, *weight_inputs], attrs, domain="com.microsoft")
            else:
                y = b.op("MatMulBlockInt4", [x, *weight_inputs], attrs, domain=ONNXQ_DOMAIN)
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            beta = node.attributes.get_float("beta", 1.0)
            c = irutil.const_array(node.inputs[2])
            if c is not None and beta == 1.0:
                y = b.op("Add", [y, node.inputs[2]])
            elif c is not None:
                bias = irutil.add_initializer(graph, names(f"{label}_bias"), (c * np.float32(beta)).astype(dtype))
                y = b.op("Add", [y, bias])
            else:
                y = b.op("Add", [y, node.inputs[2]])
        b.insert_before(graph, node)
        irutil.replace_node_output(graph, node, y)

    def _int8_initializers(self, graph, w: np.ndarray, dtype, names, label) -> tuple[ir.Value, ir.Value]:
        params = qp.choose_qparams(w, qp.INT8, qp.per_channel(w.shape, 1), symmetric=True)
        q = qp.quantize(w, params)
        scale = params.scale.reshape(-1).astype(dtype)
        return (
            irutil.add_initializer(graph, names(f"{label}_weight_int8"), q),
            irutil.add_initializer(graph, names(f"{label}_weight_scale"), scale),
        )

    def _int4_initializers(self, graph, bq: BlockQuant, dtype, names, label) -> tuple[ir.Value | None, ...]:
        k, n = bq.codes.shape
        if self.recipe.format == "qdq":
            if bq.zeros is None:
                q = _packed_4bit(bq.codes ^ np.uint8(8), ir.DataType.INT4, (k, n), names(f"{label}_weight_int4"))
                zp = None
            else:
                q = _packed_4bit(bq.codes, ir.DataType.UINT4, (k, n), names(f"{label}_weight_uint4"))
                zp = _packed_4bit(
                    bq.zeros.astype(np.uint8), ir.DataType.UINT4, bq.zeros.shape, names(f"{label}_weight_zero_point")
                )
            scale = irutil.add_initializer(graph, names(f"{label}_weight_scale"), bq.scales.astype(dtype))
            for v in (q, zp):
                if v is not None:
                    graph.register_initializer(v)
            return (q, scale) if zp is None else (q, scale, zp)
        packed = bq.to_packed()
        b = irutil.add_initializer(graph, names(f"{label}_weight_packed"), packed.packed)
        s = irutil.add_initializer(graph, names(f"{label}_weight_scales"), packed.scales.astype(dtype))
        if packed.zero_points is None:
            return (b, s)
        zp = packed.zero_points if packed.zero_points.dtype == np.uint8 else packed.zero_points.astype(dtype)
        z = irutil.add_initializer(graph, names(f"{label}_weight_zero_points"), zp)
        return (b, s, z)


def _dtype_enum(dtype: np.dtype) -> ir.DataType:
    return ir.DataType.FLOAT16 if np.dtype(dtype) == np.float16 else ir.DataType.FLOAT


def _packed_4bit(codes: np.ndarray, dtype: ir.DataType, shape: tuple[int, ...], name: str) -> ir.Value:
    """An initializer value of ONNX (u)int4 ``shape`` from nibble values 0..15 (for INT4:
    the two's-complement nibble), packed two per byte, first element in the low nibble."""
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, dtype=np.uint8)])
    packed = (flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)
    tensor = ir.PackedTensor(packed, dtype, shape=ir.Shape(list(shape)), name=name)
    return ir.Value(name=name, shape=ir.Shape(list(shape)), type=ir.TensorType(dtype), const_value=tensor)
