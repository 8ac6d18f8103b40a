"""Synthetic fp32 ONNX models with random weights (numpy + onnx only, no torch).

Deterministic: the same arguments give byte-identical files (weights from
``numpy.random.default_rng(seed)``, fixed node names, no timestamps). Every file is written
to a temporary name and renamed into place.

- :func:`resnet50_like`: ResNet-50 architecture (bottlenecks 3-4-6-3), He-init weights,
  input ``input`` float [N, 3, 224, 224], output ``logits`` [N, 1000].
- :func:`matmul_stack`: ``layers`` MatMuls (optionally residual), input ``x`` [M, k]; with
  ``external_data`` the weights are streamed layer by layer into ``<name>.data`` beside the
  model, so a 2.5 GB model is written with one layer's worth of memory.
- :func:`mlp`: one LLaMA SwiGLU MLP block (gate/up [k, hidden], down [hidden, k]).
- :func:`cached`: build one of these into the model cache once, by name and arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.cache import atomic_path, cache_dir

__all__ = ["resnet50_like", "matmul_stack", "mlp", "cached", "OPSET", "ALIGN"]

OPSET = 17
ALIGN = 65536  # external-data offsets aligned so ORT can mmap each tensor


class _Weights:
    """Collects initializers: inline (raw_data) or appended to one external-data file."""

    def __init__(self, data_file: Path | None, location: str | None):
        self.data_file = data_file
        self.location = location
        self.fh = open(data_file, "wb") if data_file is not None else None
        self.offset = 0
        self.initializers: list[TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
        if self.fh is None:
            t = helper.make_tensor(name, dtype, array.shape, array.tobytes(), raw=True)
        else:
            pad = (-self.offset) % ALIGN
            if pad:
                self.fh.write(b"\0" * pad)
                self.offset += pad
            raw = array.tobytes()
            self.fh.write(raw)
            t = TensorProto(name=name, data_type=dtype, dims=list(array.shape))
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", self.location), ("offset", str(self.offset)),
                               ("length", str(len(raw)))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            self.offset += len(raw)
        self.initializers.append(t)
        return name

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _write(
    path: Path | str,
    external_data: bool,
    build_graph: Callable[[_Weights], onnx.GraphProto],
    doc: str,
) -> Path:
    """Run ``build_graph`` with a weight sink and save atomically (data file first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        location = path.name + ".data"
        with atomic_path(path.parent / location, suffix=".data") as tmp_data:
            sink = _Weights(tmp_data, location)
            try:
                graph = build_graph(sink)
            finally:
                sink.close()
    else:
        sink = _Weights(None, None)
        graph = build_graph(sink)
        stale = path.parent / (path.name + ".data")
        if stale.exists():
            stale.unlink()
    graph.initializer.extend(sink.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxq.models",
        doc_string=doc,
    )
    model.ir_version = 8
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
    return path


# --------------------------------------------------------------------------- ResNet-50


def resnet50_like(
    path: Path | str,
    seed: int = 0,
    width: int = 64,
    batchnorm: bool = False,
    num_classes: int = 1000,
    blocks: tuple[int, ...] = (3, 4, 6, 3),
    external_data: bool = False,
) -> Path:
    """A ResNet-50-architecture CNN with random He-init weights; returns ``path``.

    ``width=64`` is ResNet-50 (25.6 M parameters, ~102 MB); smaller widths give the same
    topology for fast tests. ``batchnorm=True`` keeps a BatchNormalization after every Conv
    (as before BN folding), else the Convs carry a bias. The last Conv of each bottleneck is
    scaled down so the residual stream stays O(1) through the 16 blocks.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    counter = {"n": 0}

    def uid(prefix: str) -> str:
        counter["n"] += 1
        return f"{prefix}_{counter['n']}"

    def build(w: _Weights) -> onnx.GraphProto:
        def conv(x, cin, cout, k, stride, relu, gain=1.0, name="conv"):
            n = uid(name)
            std = gain * np.sqrt(2.0 / (cin * k * k))
            wt = (rng.standard_normal((cout, cin, k, k), dtype=np.float32) * std).astype(np.float32)
            inputs = [x, w.add(f"{n}.weight", wt)]
            if not batchnorm:
                b = (rng.standard_normal(cout, dtype=np.float32) * 0.01).astype(np.float32)
                inputs.append(w.add(f"{n}.bias", b))
            y = f"{n}_out"
            nodes.append(helper.make_node(
                "Conv", inputs, [y], name=n, kernel_shape=[k, k], strides=[stride, stride],
                pads=[k // 2] * 4,
            ))
            if batchnorm:
                scale = (1.0 + 0.1 * rng.standard_normal(cout, dtype=np.float32)).astype(np.float32)
                bias = (0.01 * rng.standard_normal(cout, dtype=np.float32)).astype(np.float32)
                mean = (0.01 * rng.standard_normal(cout, dtype=np.float32)).astype(np.float32)
                var = (1.0 + 0.1 * np.abs(rng.standard_normal(cout, dtype=np.float32))).astype(np.float32)
                bn_in = [y] + [w.add(f"{n}.bn.{s}", a) for s, a in
                               (("scale", scale), ("bias", bias), ("mean", mean), ("var", var))]
                y = f"{n}_bn_out"
                nodes.append(helper.make_node("BatchNormalization", bn_in, [y], name=f"{n}_bn",
                                              epsilon=1e-5))
            if relu:
                r = f"{n}_relu_out"
                nodes.append(helper.make_node("Relu", [y], [r], name=f"{n}_relu"))
                y = r
            return y

        x = conv("input", 3, width, 7, 2, relu=True, name="stem")
        nodes.append(helper.make_node("MaxPool", [x], ["pool_out"], name="maxpool",
                                      kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
        x, cin = "pool_out", width
        n_blocks = sum(blocks)
        for stage, count in enumerate(blocks):
            planes = width * 2**stage
            for i in range(count):
                stride = 2 if (stage > 0 and i == 0) else 1
                tag = f"layer{stage + 1}.{i}"
                h = conv(x, cin, planes, 1, 1, relu=True, name=f"{tag}.conv1")
                h = conv(h, planes, planes, 3, stride, relu=True, name=f"{tag}.conv2")
                h = conv(h, planes, planes * 4, 1, 1, relu=False, name=f"{tag}.conv3",
                         gain=1.0 / np.sqrt(n_blocks))
                if i == 0:
                    skip = conv(x, cin, planes * 4, 1, stride, relu=False, name=f"{tag}.downsample")
                else:
                    skip = x
                s = f"{tag}_add_out"
                nodes.append(helper.make_node("Add", [h, skip], [s], name=f"{tag}.add"))
                x = f"{tag}_out"
                nodes.append(helper.make_node("Relu", [s], [x], name=f"{tag}.relu"))
                cin = planes * 4
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap_out"], name="avgpool"))
        nodes.append(helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten", axis=1))
        fc_w = (rng.standard_normal((num_classes, cin), dtype=np.float32) / np.sqrt(cin)).astype(np.float32)
        fc_b = (rng.standard_normal(num_classes, dtype=np.float32) * 0.01).astype(np.float32)
        nodes.append(helper.make_node(
            "Gemm", ["flat_out", w.add("fc.weight", fc_w), w.add("fc.bias", fc_b)], ["logits"],
            name="fc", transB=1,
        ))
        return helper.make_graph(
            nodes, "resnet50_like",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        )

    return _write(path, external_data, build,
                  f"resnet50_like seed={seed} width={width} batchnorm={batchnorm}")


# --------------------------------------------------------------------------- MatMul stacks


def matmul_stack(
    path: Path | str,
    k: int,
    n: int,
    layers: int,
    seed: int = 0,
    external_data: bool = True,
    residual: bool = True,
) -> Path:
    """``layers`` MatMuls: input ``x`` float [M, k], weights ``layers.i.weight`` [k, n] for the
    first and [n, n] after, output ``y`` [M, n]; returns ``path``.

    ``residual`` adds the layer input back (``x + x @ W``) wherever the shapes allow. Weights
    are N(0, 1/fan_in) (scaled down by sqrt(layers) on residual layers) so the output stays
    O(1). With ``external_data`` (the default) each weight is generated and appended to
    ``<path>.data`` one layer at a time (offsets aligned to 64 KiB): a 4096x4096x40 stack
    (2.7 GB) needs ~70 MB of RAM.
    """
    if min(k, n, layers) < 1:
        raise ValueError("k, n and layers must be >= 1")
    rng = np.random.default_rng(seed)

    def build(w: _Weights) -> onnx.GraphProto:
        nodes = []
        x, fan_in = "x", k
        for i in range(layers):
            res = residual and fan_in == n
            std = 1.0 / np.sqrt(fan_in) / (np.sqrt(layers) if res else 1.0)
            wt = rng.standard_normal((fan_in, n), dtype=np.float32)
            wt *= np.float32(std)
            name = w.add(f"layers.{i}.weight", wt)
            del wt
            last = i == layers - 1
            mm = "y" if last and not res else f"layers.{i}.matmul_out"
            nodes.append(helper.make_node("MatMul", [x, name], [mm], name=f"layers.{i}.matmul"))
            if res:
                out = "y" if last else f"layers.{i}.add_out"
                nodes.append(helper.make_node("Add", [x, mm], [out], name=f"layers.{i}.add"))
                mm = out
            x, fan_in = mm, n
        return helper.make_graph(
            nodes, "matmul_stack",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        )

    return _write(path, external_data, build,
                  f"matmul_stack k={k} n={n} layers={layers} seed={seed} residual={residual}")


def mlp(
    path: Path | str,
    k: int = 4096,
    hidden: int = 11008,
    seed: int = 0,
    external_data: bool = True,
) -> Path:
    """A LLaMA SwiGLU MLP: ``y = (silu(x @ Wg) * (x @ Wu)) @ Wd``, input ``x`` [M, k]."""
    rng = np.random.default_rng(seed)

    def build(w: _Weights) -> onnx.GraphProto:
        def weight(name, rows, cols):
            a = rng.standard_normal((rows, cols), dtype=np.float32)
            a *= np.float32(1.0 / np.sqrt(rows))
            return w.add(name, a)

        wg = weight("mlp.gate_proj.weight_T", k, hidden)
        wu = weight("mlp.up_proj.weight_T", k, hidden)
        wd = weight("mlp.down_proj.weight_T", hidden, k)
        nodes = [
            helper.make_node("MatMul", ["x", wg], ["gate"], name="mlp.gate_proj"),
            helper.make_node("MatMul", ["x", wu], ["up"], name="mlp.up_proj"),
            helper.make_node("Sigmoid", ["gate"], ["gate_sig"], name="mlp.act.sigmoid"),
            helper.make_node("Mul", ["gate", "gate_sig"], ["gate_act"], name="mlp.act.mul"),
            helper.make_node("Mul", ["gate_act", "up"], ["h"], name="mlp.mul"),
            helper.make_node("MatMul", ["h", wd], ["y"], name="mlp.down_proj"),
        ]
        return helper.make_graph(
            nodes, "mlp",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", k])],
        )

    return _write(path, external_data, build, f"mlp k={k} hidden={hidden} seed={seed}")


_BUILDERS = {"resnet50_like": resnet50_like, "matmul_stack": matmul_stack, "mlp": mlp}


def cached(kind: str, **kwargs) -> Path:
    """Build ``kind`` (resnet50_like, matmul_stack, mlp) into ``<cache>/synthetic`` once.

    The file name encodes the arguments, e.g. ``cached("matmul_stack", k=4096, n=4096,
    layers=40)`` -> ``<cache>/synthetic/matmul_stack-k4096-layers40-n4096.onnx``.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown synthetic model {kind!r}; one of {sorted(_BUILDERS)}")
    tag = "-".join(f"{key}{kwargs[key]}" for key in sorted(kwargs))
    out = cache_dir() / "synthetic" / (f"{kind}-{tag}.onnx" if tag else f"{kind}.onnx")
    if out.exists():
        return out
    return _BUILDERS[kind](out, **kwargs)
