"""FoldScalesPass: write calibrated scales/zero points into the graph, quantize biases.

Config: ``qparams``, a mapping from tensor name to per-tensor :class:`onnxq.qparams.QParams`
(what calibration chose). Every activation QuantizeLinear in the graph quantizes a tensor
named by its input or by its DequantizeLinear's output (InsertQdqPass renames a graph output
that way); its scale and zero-point initializers (shared by the whole scale group) get the
values. A pair with no entry is an error: a placeholder scale must never reach a user.

``weight_scales`` (optional): per-channel scales for the weight DequantizeLinear of a node
(keyed like ``biases``): channel equalization moves a factor from one layer to the next
this way, exactly, without touching the int8 values.

``weight_values`` (optional): integer values for the quantized weight of a node (keyed
like ``biases``; same shape and dtype as what InsertQdqPass wrote), e.g. GPTQ rounding
instead of round to nearest; the scales stay as they are.

``biases`` (optional): float bias values to use instead of the graph's, keyed by the
node's output tensor name (bias correction computes them); a Conv without a bias gets one.

Then every Conv / ConvTranspose / Gemm whose activation and weight inputs come through
DequantizeLinear and whose bias is a float constant gets an int32 bias with scale
``s_x * s_w`` (per output channel) behind a DequantizeLinear, the form ORT folds into
QLinearConv / QGemm. A node whose activation input is float (a neighbour kept in float)
keeps a float bias: a given one is written as a float initializer. A second run with the
same qparams changes nothing.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq import qparams as qp
from onnxq.errors import OnnxqError

__all__ = ["FoldScalesPass"]

logger = logging.getLogger(__name__)

_INT32 = np.iinfo(np.int32)


def _set_constant(value: ir.Value, array: np.ndarray) -> bool:
    """Give an initializer a new value; True when it changed."""
    current = value.const_value.numpy() if value.const_value is not None else None
    if current is not None and current.dtype == array.dtype and np.array_equal(current, array):
        return False
    value.const_value = ir.tensor(np.require(array, requirements="C"), name=value.name)
    return True


def _widen_for_bias(node: ir.Node, dq_w: ir.Node, b: np.ndarray, s_x: float, s_w: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel weight scales raised where ``b / (s_x * s_w)`` would not fit int32 (a
    channel whose weights are all but zero and whose bias is not: its tiny scale makes the
    bias step tiny too); those channels' int8 codes are re-rounded to the wider scale, which
    only coarsens weights that are negligible next to the bias. Returns the scales in use."""
    limit = float(_INT32.max) * 0.999
    need = np.abs(b.astype(np.float64)) / (max(s_x, 1e-45) * limit)
    low = need > s_w.astype(np.float64)
    if not low.any() or any(len(v.uses()) != 1 for v in (dq_w.outputs[0], dq_w.inputs[0], dq_w.inputs[1])):
        return s_w  # codes or scales shared with another node: they cannot change alone
    codes = irutil.const_array(dq_w.inputs[0])
    zp = irutil.const_array(dq_w.inputs[2]) if len(dq_w.inputs) > 2 and dq_w.inputs[2] is not None else None
    if codes is None or codes.dtype.kind != "i" or (zp is not None and np.any(zp != 0)):
        return s_w
    new_s = np.where(low, need * 1.01, s_w.astype(np.float64)).astype(np.float32)
    info = np.iinfo(codes.dtype)
    c = np.moveaxis(codes.astype(np.float64), axis % codes.ndim, 0)
    ratio = (s_w.astype(np.float64) / new_s.astype(np.float64)).reshape((-1,) + (1,) * (c.ndim - 1))
    c = np.clip(np.rint(c * ratio), -info.max, info.max)
    _set_constant(dq_w.inputs[0], np.moveaxis(c, 0, axis % codes.ndim).astype(codes.dtype))
    _set_constant(dq_w.inputs[1], new_s.reshape(irutil.const_array(dq_w.inputs[1]).shape))
    logger.info("%s: %d channel(s) with near-zero weights and a large bias get a wider weight scale so that "
                "the bias fits int32", irutil.node_label(node), int(low.sum()))
    return new_s


class FoldScalesPass(ir.passes.InPlacePass):
    """Fill in QDQ scales from calibration and quantize float biases to int32."""

    def __init__(
        self,
        qparams: Mapping[str, qp.QParams],
        biases: Mapping[str, np.ndarray] | None = None,
        weight_scales: Mapping[str, np.ndarray] | None = None,
        weight_values: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.qparams = dict(qparams)
        self.biases = {k: np.asarray(v, dtype=np.float32) for k, v in (biases or {}).items()}
        self.weight_scales = {k: np.asarray(v, dtype=np.float32) for k, v in (weight_scales or {}).items()}
        self.weight_values = {k: np.asarray(v) for k, v in (weight_values or {}).items()}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        names = irutil.FreshNames(model.graph)
        for node in list(irutil.iter_nodes(model.graph)):
            if node.op_type == "QuantizeLinear" and not irutil.is_constant(node.inputs[0]):
                modified |= self._fold_pair(node)
        originals: list[tuple[ir.Graph, ir.Value]] = []
        if self.weight_scales or self.weight_values:
            for node in list(irutil.iter_nodes(model.graph)):
                if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                    continue
                given = self._given(node, self.weight_scales)
                if given is not None:
                    modified |= self._set_weight_scale(node, given)
                given = self._given(node, self.weight_values)
                if given is not None:
                    modified |= self._set_weight_values(node, given)
        for node in list(irutil.iter_nodes(model.graph)):
            if node.op_type in ("Conv", "ConvTranspose", "Gemm") and node.domain in ("", "ai.onnx"):
                modified |= self._quantize_bias(node, names, originals)
        for graph, value in originals:
            irutil.remove_if_unused(graph, value)
        return ir.passes.PassResult(model, modified=modified)

    def _lookup(self, q: ir.Node) -> tuple[str, qp.QParams] | None:
        candidates = [q.inputs[0].name]
        for user, _ in q.outputs[0].uses():
            if user.op_type == "DequantizeLinear":
                candidates.append(user.outputs[0].name)
        for name in candidates:
            if name in self.qparams:
                return name, self.qparams[name]
        return None

    def _fold_pair(self, q: ir.Node) -> bool:
        found = self._lookup(q)
        if found is None:
            raise OnnxqError(
                f"no calibrated quantization parameters for tensor {q.inputs[0].name!r} (QuantizeLinear "
                f"{q.name!r}); calibration must cover every tensor InsertQdqPass quantized"
            )
        name, p = found
        if not p.is_per_tensor:
            raise OnnxqError(f"activation {name!r} needs per-tensor quantization parameters")
        scale_v, zp_v = q.inputs[1], (q.inputs[2] if len(q.inputs) > 2 else None)
        if scale_v is None or not scale_v.is_initializer() or zp_v is None or not zp_v.is_initializer():
            raise OnnxqError(f"QuantizeLinear {q.name!r} has no scale/zero-point initializers to write")
        zp_dtype = zp_v.const_value.numpy().dtype
        if zp_dtype != p.qtype.storage_dtype:
            raise OnnxqError(
                f"tensor {name!r} is quantized to {zp_dtype} in the graph but its parameters are for {p.qtype}"
            )
        scale = np.asarray(p.scale, dtype=np.float32).reshape(())
        if not (np.isfinite(scale) and scale > 0):
            raise OnnxqError(f"tensor {name!r}: scale {scale} is not a positive finite number")
        changed = _set_constant(scale_v, scale)
        changed |= _set_constant(zp_v, np.asarray(p.zero_point, dtype=zp_dtype).reshape(()))
        return changed

    def _set_weight_scale(self, node: ir.Node, scale: np.ndarray) -> bool:
        dq = irutil.producer_of(node.inputs[1] if len(node.inputs) > 1 else None, "DequantizeLinear")
        if dq is None or not dq.inputs[1].is_initializer():
            raise OnnxqError(f"weight_scales: {irutil.node_label(node)} has no quantized weight")
        if len(dq.outputs[0].uses()) != 1:
            raise OnnxqError(f"weight_scales: the weight of {irutil.node_label(node)} is shared; its scale cannot change alone")
        current = dq.inputs[1].const_value.numpy()
        if current.shape != scale.shape:
            raise OnnxqError(f"weight_scales: {irutil.node_label(node)} needs a scale of shape {current.shape}, got {scale.shape}")
        return _set_constant(dq.inputs[1], scale)

    def _set_weight_values(self, node: ir.Node, values: np.ndarray) -> bool:
        dq = irutil.producer_of(node.inputs[1] if len(node.inputs) > 1 else None, "DequantizeLinear")
        if dq is None or not dq.inputs[0].is_initializer():
            raise OnnxqError(f"weight_values: {irutil.node_label(node)} has no quantized weight")
        if len(dq.outputs[0].uses()) != 1 or len(dq.inputs[0].uses()) != 1:
            raise OnnxqError(f"weight_values: the weight of {irutil.node_label(node)} is shared; its values cannot change alone")
        current = dq.inputs[0].const_value.numpy()
        if current.shape != values.shape or current.dtype != values.dtype:
            raise OnnxqError(
                f"weight_values: {irutil.node_label(node)} needs {current.dtype} values of shape {current.shape}, "
                f"got {values.dtype} {values.shape}"
            )
        return _set_constant(dq.inputs[0], values)

    def _given_bias(self, node: ir.Node) -> np.ndarray | None:
        return self._given(node, self.biases)

    def _given(self, node: ir.Node, table: Mapping[str, np.ndarray]) -> np.ndarray | None:
        if not node.outputs or not table:
            return None
        y = node.outputs[0]
        candidates = [y.name]
        for q, _ in y.uses():
            if q.op_type == "QuantizeLinear":
                candidates += [dq.outputs[0].name for dq, _ in q.outputs[0].uses() if dq.op_type == "DequantizeLinear"]
        for name in candidates:
            if name in table:
                return table[name]
        return None

    def _set_float_bias(self, node: ir.Node, given: np.ndarray, names: irutil.FreshNames, originals) -> bool:
        bias_v = node.inputs[2] if len(node.inputs) > 2 else None
        if bias_v is not None:
            current = irutil.const_array(bias_v)
            if current is None:
                raise OnnxqError(f"{irutil.node_label(node)}: a corrected bias was computed but its bias is not a constant")
            if current.dtype == given.dtype and np.array_equal(current, given):
                return False
        label = bias_v.name if bias_v is not None else f"{node.outputs[0].name}_bias"
        new = irutil.add_initializer(node.graph, names(f"{label}_corrected"), given)
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, new)
        if bias_v is not None:
            originals.append((bias_v.graph or node.graph, bias_v))
        return True

    def _quantize_bias(self, node: ir.Node, names: irutil.FreshNames, originals) -> bool:
        dq_x, dq_w = irutil.producer_of(node.inputs[0], "DequantizeLinear"), irutil.producer_of(node.inputs[1], "DequantizeLinear")
        bias_v = node.inputs[2] if len(node.inputs) > 2 else None
        given = self._given_bias(node)
        if dq_x is None or dq_w is None:
            # a float input (its producer is kept in float): the bias stays float, but a
            # given one (bias correction, equalization) must still be written
            return self._set_float_bias(node, given, names, originals) if given is not None else False
        if bias_v is None:
            if given is None or node.op_type not in ("Conv", "ConvTranspose"):
                return False
        elif not irutil.is_constant(bias_v):
            return False
        if node.op_type == "Gemm" and (
            node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_float("beta", 1.0) != 1.0
        ):
            return False
        b = given if given is not None else irutil.const_array(bias_v)
        s_x = irutil.const_array(dq_x.inputs[1])
        s_w = irutil.const_array(dq_w.inputs[1])
        if b is None or b.dtype != np.float32 or b.ndim != 1 or s_x is None or s_w is None or s_x.size != 1:
            return False
        if s_w.size not in (1, b.size):
            return False
        w_axis = dq_w.attributes.get_int("axis", 1)
        expected_axis = {"Conv": 0, "ConvTranspose": 1}.get(node.op_type)
        if node.op_type == "Gemm":
            expected_axis = 0 if node.attributes.get_int("transB", 0) else 1
        if s_w.size > 1 and w_axis != expected_axis:
            return False
        if s_w.size == b.size and s_w.size > 1:
            s_w = _widen_for_bias(node, dq_w, b, float(s_x.reshape(())), s_w.reshape(-1), w_axis)
        scale = (s_x.reshape(()).astype(np.float64) * np.broadcast_to(s_w.reshape(-1), b.shape).astype(np.float64)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
        q = np.rint(b.astype(np.float64) / scale.astype(np.float64))
        if np.any((q < _INT32.min) | (q > _INT32.max)):
            logger.warning("bias of %s saturates int32; clipped", irutil.node_label(node))
        q = np.clip(q, _INT32.min, _INT32.max).astype(np.int32)
        graph = node.graph
        label = bias_v.name if bias_v is not None else f"{node.outputs[0].name}_bias"
        q_v = irutil.add_initializer(graph, names(f"{label}_quantized"), q)
        s_v = irutil.add_initializer(graph, names(f"{label}_scale"), scale)
        z_v = irutil.add_initializer(graph, names(f"{label}_zero_point"), np.zeros(b.shape, np.int32))
        nb = irutil.NodeBuilder(names, f"{label}_dq")
        out = nb.op("DequantizeLinear", [q_v, s_v, z_v], {"axis": 0})
        out.dtype = ir.DataType.FLOAT
        out.shape = ir.Shape(list(b.shape))
        nb.insert_before(graph, node)
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, out)
        if bias_v is not None:
            originals.append((bias_v.graph or graph, bias_v))
        return True
