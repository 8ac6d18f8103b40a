"""ORT CUDA session: a chain of L layers of com.onnxq MatMulBlockInt4 vs com.microsoft.MatMulNBits
(same packed bytes, fp16, K = N) vs fp16 MatMul. Time per layer = median session run (io binding,
device tensors) / L. Needs onnxruntime-gpu and libonnxq_ops_cuda.so ($ONNXQ_OPS_CUDA_LIB).

    python3 bench/device/ort_stack_bench.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def chain(op: str, layers: int, k: int, bs: int, rng) -> bytes:
    nb = k // bs
    nodes, inits = [], []
    x = "A"
    for i in range(layers):
        y = f"h{i}" if i + 1 < layers else "Y"
        if op == "MatMul":
            inits.append(numpy_helper.from_array((rng.standard_normal((k, k)) * 0.02).astype(np.float16), f"W{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [y]))
        else:
            inits.append(numpy_helper.from_array(rng.integers(0, 256, (k, nb, bs // 2), dtype=np.uint8), f"B{i}"))
            s = (rng.random((k, nb)) * 0.002 + 0.0005).astype(np.float16)
            inits.append(numpy_helper.from_array(s.reshape(-1) if op == "MatMulNBits" else s, f"S{i}"))
            dom = "com.microsoft" if op == "MatMulNBits" else "com.onnxq"
            nodes.append(helper.make_node(op, [x, f"B{i}", f"S{i}"], [y], domain=dom, K=k, N=k, bits=4, block_size=bs))
        x = y
    g = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("A", TensorProto.FLOAT16, [None, k])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [None, k])], inits)
    ops = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("com.onnxq", 1)]
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = 9
    return m.SerializeToString()


def time_session(model: bytes, m: int, k: int, lib: str | None, reps: int = 50) -> float:
    so = ort.SessionOptions()
    if lib:
        so.register_custom_ops_library(lib)
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    s = ort.InferenceSession(model, so, providers=["CUDAExecutionProvider"])
    a = (np.random.default_rng(1).standard_normal((m, k)) * 0.1).astype(np.float16)
    io = s.io_binding()
    io.bind_ortvalue_input("A", ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0))
    io.bind_output("Y", "cuda", 0)
    for _ in range(5):
        s.run_with_iobinding(io)
    io.synchronize_outputs()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        s.run_with_iobinding(io)
        io.synchronize_outputs()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="ort_stack.json")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--ms", default="1,16,256")
    args = ap.parse_args()
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    lib = os.environ["ONNXQ_OPS_CUDA_LIB"]
    rng = np.random.default_rng(0)
    models = {op: chain(op, args.layers, args.k, args.bs, rng) for op in ("MatMulBlockInt4", "MatMulNBits", "MatMul")}
    rows = []
    for m in (int(x) for x in args.ms.split(",")):
        r = {"M": m, "K": args.k, "N": args.k, "block_size": args.bs, "layers": args.layers}
        for op, model in models.items():
            r[f"{op}_us_per_layer"] = time_session(model, m, args.k, lib if op == "MatMulBlockInt4" else None) / args.layers
        rows.append(r)
        print(json.dumps(r), flush=True)
    with open(args.out, "w") as f:
        json.dump({"ort": ort.__version__, "method": "chain of L layers in one session, io binding, median of 50 runs / L",
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
