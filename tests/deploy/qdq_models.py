"""Tiny QDQ models for the deployment checkers: one weighted op with its Q/DQ, every
format choice a parameter, so each rule gets a failing and a passing variant."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

_T = {
    "uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "uint16": TensorProto.UINT16,
    "int16": TensorProto.INT16, "int32": TensorProto.INT32, "int4": TensorProto.INT4,
}
_NP = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16, "int32": np.int32}


def _tensor(name: str, qtype: str, values) -> onnx.TensorProto:
    a = np.asarray(values)
    if qtype == "int4":
        return helper.make_tensor(name, TensorProto.INT4, list(a.shape), a.reshape(-1).astype(np.int64).tolist())
    return numpy_helper.from_array(a.astype(_NP[qtype]), name)


def conv_model(
    *,
    act: str = "int8",
    act_zp: int = 0,
    act_scale: float = 0.05,
    act_axis_channels: bool = False,
    out_act: str | None = None,
    weight: str = "int8",
    weight_axis: int | None = 0,
    weight_zp: int = 0,
    weight_block: int = 0,
    weight_input: str = "dq",  # dq | float | runtime
    activation_dq: bool = True,
    output_q: bool = True,
    bias: str | None = None,  # None | float | int32
    scale_input: bool = False,
    opset: int = 13,
    qdq_domain: str = "",
    in_shape=(1, 4, 8, 8),
    conv_attrs: dict | None = None,
    check: bool = True,
) -> ir.Model:
    """x → Q → DQ → Conv(W via DQ) → Q → DQ → y, every piece switchable."""
    rng = np.random.default_rng(0)
    cin, cout = in_shape[1], 4
    kernel = (cout, cin) + (3,) * (len(in_shape) - 2)
    nodes, inits, inputs = [], [], []
    x_shape = list(in_shape)
    inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape))
    qd = qdq_domain

    def q_params(prefix: str, qtype: str, scale, zp):
        inits.append(numpy_helper.from_array(np.asarray(scale, np.float32), f"{prefix}_s"))
        inits.append(_tensor(f"{prefix}_z", qtype, zp))

    x_in = "x"
    if activation_dq:
        if act_axis_channels:
            q_params("x", act, np.full((cin,), act_scale), np.full((cin,), act_zp))
            axis = {"axis": 1}
        else:
            q_params("x", act, act_scale, act_zp)
            axis = {}
        scale_name = "x_s"
        if scale_input:
            inits.pop(-2)
            inputs.append(helper.make_tensor_value_info("x_s", TensorProto.FLOAT, []))
        nodes.append(helper.make_node("QuantizeLinear", ["x", scale_name, "x_z"], ["xq"], domain=qd, name="x_Q", **axis))
        nodes.append(helper.make_node("DequantizeLinear", ["xq", scale_name, "x_z"], ["xd"], domain=qd, name="x_DQ", **axis))
        x_in = "xd"
    w = rng.standard_normal(kernel).astype(np.float32)
    if weight_input == "dq":
        if weight_block:
            nb = (cin + weight_block - 1) // weight_block
            s = np.full((cout, nb) + kernel[2:], 0.01, np.float32)
            z = np.full(s.shape, weight_zp)
            attrs = {"axis": 1, "block_size": weight_block}
        elif weight_axis is None:
            s, z, attrs = np.float32(0.01), weight_zp, {}
        else:
            n = kernel[weight_axis]
            s, z, attrs = np.full((n,), 0.01, np.float32), np.full((n,), weight_zp), {"axis": weight_axis}
        lo, hi = (-7, 7) if weight == "int4" else (-127, 127) if weight == "int8" else (0, 255)
        wq = rng.integers(lo, hi + 1, kernel)
        inits.append(_tensor("wq", weight, wq))
        inits.append(numpy_helper.from_array(np.asarray(s, np.float32), "w_s"))
        inits.append(_tensor("w_z", weight, z))
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "w_s", "w_z"], ["wd"], domain=qd, name="w_DQ", **attrs))
        w_in = "wd"
    elif weight_input == "float":
        inits.append(numpy_helper.from_array(w, "w"))
        w_in = "w"
    else:  # runtime
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(kernel)))
        w_in = "w"
    conv_in = [x_in, w_in]
    if bias == "float":
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
        conv_in.append("b")
    elif bias == "int32":
        inits.append(numpy_helper.from_array(np.zeros(cout, np.int32), "bq"))
        inits.append(numpy_helper.from_array(np.full(cout, 0.0005, np.float32), "b_s"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.int32), "b_z"))
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "b_s", "b_z"], ["bd"], domain=qd, name="b_DQ", axis=0))
        conv_in.append("bd")
    pads = [1] * (2 * (len(in_shape) - 2))
    nodes.append(helper.make_node("Conv", conv_in, ["c"], name="conv", pads=pads, **(conv_attrs or {})))
    out_shape = [in_shape[0], cout, *in_shape[2:]]
    if output_q:
        ot = out_act or act
        q_params("y", ot, 0.1, 0 if ot in ("int8", "int16") else (128 if ot == "uint8" else 32768))
        nodes.append(helper.make_node("QuantizeLinear", ["c", "y_s", "y_z"], ["yq"], domain=qd, name="y_Q"))
        nodes.append(helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"], domain=qd, name="y_DQ"))
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    if qd:
        opsets.append(helper.make_opsetid(qd, 1))
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10 if opset >= 21 else 8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return ir.serde.deserialize_model(model)


def single_op_model(op: str, *, act: str = "uint8", wrap: bool = True, attrs: dict | None = None, opset: int = 13,
                    out_scale: float = 0.1, out_zp: int | None = None, x_shape=(1, 8), out_act: str | None = None,
                    domain: str = "", check: bool = True) -> ir.Model:
    """x → Q → DQ → op → Q → DQ (``wrap``) or x → Q → DQ → op (float output)."""
    nodes, inits = [], []
    zp = 0 if act in ("int8", "int16") else 128 if act == "uint8" else 32768
    inits += [numpy_helper.from_array(np.asarray(0.05, np.float32), "x_s"), _tensor("x_z", act, zp)]
    nodes += [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="x_Q"),
              helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="x_DQ")]
    nodes.append(helper.make_node(op, ["xd"], ["o"], name="op", domain=domain, **(attrs or {})))
    if wrap:
        ot = out_act or act
        z = out_zp if out_zp is not None else (0 if ot in ("int8", "int16") else 128 if ot == "uint8" else 32768)
        inits += [numpy_helper.from_array(np.asarray(out_scale, np.float32), "y_s"), _tensor("y_z", ot, z)]
        nodes += [helper.make_node("QuantizeLinear", ["o", "y_s", "y_z"], ["yq"], name="y_Q"),
                  helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"], name="y_DQ")]
    else:
        nodes.append(helper.make_node("Identity", ["o"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x_shape))], initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10 if opset >= 21 else 8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return ir.serde.deserialize_model(model)


def matmul_model(*, a: str = "uint8", b: str = "uint8", b_axis: int | None = None, opset: int = 13,
                 check: bool = True) -> ir.Model:
    """x[1,8] → Q → DQ → MatMul(W[8,4] via DQ) → Q → DQ."""
    rng = np.random.default_rng(0)
    za = 0 if a == "int8" else 128 if a == "uint8" else 32768
    inits = [numpy_helper.from_array(np.asarray(0.05, np.float32), "x_s"), _tensor("x_z", a, za)]
    lo, hi = (-127, 127) if b == "int8" else (0, 255)
    inits.append(_tensor("wq", b, rng.integers(lo, hi + 1, (8, 4))))
    zb = 0 if b == "int8" else 128
    if b_axis is None:
        inits += [numpy_helper.from_array(np.asarray(0.01, np.float32), "w_s"), _tensor("w_z", b, zb)]
        w_attrs = {}
    else:
        n = (8, 4)[b_axis]
        inits += [numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_s"), _tensor("w_z", b, np.full(n, zb))]
        w_attrs = {"axis": b_axis}
    inits += [numpy_helper.from_array(np.asarray(0.1, np.float32), "y_s"), _tensor("y_z", a, za)]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="x_DQ"),
        helper.make_node("DequantizeLinear", ["wq", "w_s", "w_z"], ["wd"], name="w_DQ", **w_attrs),
        helper.make_node("MatMul", ["xd", "wd"], ["m"], name="matmul"),
        helper.make_node("QuantizeLinear", ["m", "y_s", "y_z"], ["yq"], name="y_Q"),
        helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"], name="y_DQ"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return ir.serde.deserialize_model(model)
