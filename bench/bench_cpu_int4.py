"""CPU block-int4 MatMul: com.onnxq.MatMulBlockInt4 vs ORT MatMulNBits vs fp32 MatMul.

One process, one thread, the same weights for every variant, runs interleaved. The
machine may be shared, so each run is timed twice: wall clock, and the CPU time of the
calling thread (with one intra-op thread ORT runs the graph on it; time slices given to
other processes do not count). Ratios and goals use the best CPU time; both are printed
and written. Workloads:

- ``stack``: 8 MatMuls 4096x4096 in a chain (68 MB of int4 weights: more than L3)
- ``mlp``:   4096 -> 11008 -> Relu -> 4096 (45 MB of int4 weights)

for M (rows of A) in 1, 16, 128. Variants: ``ours4`` (accuracy_level 4: int8 activations,
VNNI), ``ours0`` (exact fp32 activations), ``nbits4`` (com.microsoft.MatMulNBits, block 128,
accuracy_level 4), ``fp32`` (MatMul on the dequantized weights). The DRAM floor is the
int4 weight bytes (codes + scales) over the read bandwidth measured in this process: the
best of several numpy reductions over a 1 GiB array, taken once at the start and again
between the timed runs (the bandwidth left to this process varies on a shared machine).

    python bench/bench_cpu_int4.py [--reps N] [--out bench/results/bench_cpu_int4.json]

Goals (issue): M=1 >= 90 % of the floor and >= 1.2x MatMulNBits; M=128 >= 4x fp32 and
>= 1.8x MatMulNBits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BLOCK = 128
VARIANTS = ("ours4", "ours0", "nbits4", "fp32")


class ReadBandwidth:
    """Bytes/s of a streaming read of a 1 GiB array: the best of a few numpy reductions
    (a float sum is compute-bound; max and bitwise-or are not)."""

    def __init__(self, nbytes: int = 1 << 30) -> None:
        self.a = np.ones(nbytes // 8, dtype=np.uint64)
        self.best = 0.0

    def sample(self, reps: int = 1, quick: bool = False) -> float:
        f = self.a.view(np.float32)
        fns = (lambda: f.max(), lambda: self.a.max(), lambda: np.bitwise_or.reduce(self.a))
        for fn in fns[:1] if quick else fns:
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                self.best = max(self.best, self.a.nbytes / (time.perf_counter() - t))
        return self.best


def build(workload: str, variant: str, packs, dims) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "X"
    for i, (p, (k, n)) in enumerate(zip(packs, dims)):
        y = f"Y{i}"
        if variant == "fp32":
            inits.append(numpy_helper.from_array(p.dequantize(), f"W{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [y]))
        else:
            inits += [numpy_helper.from_array(p.packed, f"B{i}"), numpy_helper.from_array(p.scales, f"S{i}")]
            level = 0 if variant == "ours0" else 4
            op, dom = ("MatMulNBits", "com.microsoft") if variant.startswith("nbits") else ("MatMulBlockInt4", "com.onnxq")
            nodes.append(helper.make_node(op, [x, f"B{i}", f"S{i}"], [y], domain=dom, K=k, N=n, bits=4,
                                          block_size=BLOCK, accuracy_level=level))
        x = y
        if workload == "mlp" and i == 0:
            nodes.append(helper.make_node("Relu", [x], ["H"]))
            x = "H"
    nodes[-1].output[0] = "Y"
    k0, n_last = dims[0][0], dims[-1][1]
    graph = helper.make_graph(nodes, workload, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k0])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n_last])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1),
                                                    helper.make_opsetid("com.onnxq", 1)], ir_version=10)
    return model.SerializeToString()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=None, help="timed runs per variant and M (default: 40/8/4 for M=1/16/128)")
    ap.add_argument("--m", default="1,16,128", help="comma-separated M values")
    ap.add_argument("--workloads", default="stack,mlp")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_cpu_int4.json"))
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from onnxq import runtime
    from onnxq.formats import BlockInt4Format

    lib = str(runtime.library_path("cpu"))
    fmt = BlockInt4Format(BLOCK, symmetric=True)
    rng = np.random.default_rng(0)
    ms = [int(m) for m in args.m.split(",")]
    bwm = ReadBandwidth()
    print(f"read bandwidth (numpy, 1 GiB, best so far): {bwm.sample(3) / 1e9:.1f} GB/s; ORT {ort.__version__}; 1 thread",
          flush=True)

    results = {"machine": platform.processor() or platform.machine(), "ort": ort.__version__, "threads": 1,
               "block_size": BLOCK, "workloads": {}}
    for workload in args.workloads.split(","):
        dims = [(4096, 4096)] * 8 if workload == "stack" else [(4096, 11008), (11008, 4096)]
        packs = [fmt.quantize((rng.standard_normal((k, n)) * 0.02).astype(np.float32)) for k, n in dims]
        wbytes = sum(p.packed.nbytes + p.scales.nbytes for p in packs)
        sessions = {}
        for v in VARIANTS:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            if v.startswith("ours"):
                so.register_custom_ops_library(lib)
            sessions[v] = ort.InferenceSession(build(workload, v, packs, dims), so, providers=["CPUExecutionProvider"])
        del packs
        wres = {"int4_weight_MB": wbytes / 1e6, "M": {}}
        for m in ms:
            x = rng.standard_normal((m, dims[0][0])).astype(np.float32)
            reps = args.reps or (40 if m < 16 else 8 if m < 128 else 4)
            times = {v: [] for v in VARIANTS}
            cpu = {v: [] for v in VARIANTS}
            for v, s in sessions.items():  # warm-up
                s.run(None, {"X": x})
            for _ in range(reps):
                if m == 1:
                    bwm.sample(quick=True)
                for v, s in sessions.items():
                    c, t = time.thread_time(), time.perf_counter()
                    s.run(None, {"X": x})
                    times[v].append((time.perf_counter() - t) * 1e3)
                    cpu[v].append((time.thread_time() - c) * 1e3)
            wall = {v: min(t) for v, t in times.items()}
            med = {v: statistics.median(t) for v, t in times.items()}
            best = {v: min(t) for v, t in cpu.items()}
            floor_ms = wbytes / bwm.best * 1e3
            wres["floor_ms"] = floor_ms
            wres["read_bandwidth_GBps"] = bwm.best / 1e9
            row = {"best_ms": best, "best_wall_ms": wall, "median_wall_ms": med, "floor_ms": floor_ms,
                   "ours4_vs_nbits4": best["nbits4"] / best["ours4"], "ours4_vs_fp32": best["fp32"] / best["ours4"],
                   "ours0_vs_nbits4": best["nbits4"] / best["ours0"],
                   "ours4_floor_fraction": floor_ms / best["ours4"], "nbits4_floor_fraction": floor_ms / best["nbits4"]}
            wres["M"][str(m)] = row
            print(f"{workload:5s} M={m:<4d} cpu " + "  ".join(f"{v} {best[v]:8.2f}" for v in VARIANTS)
                  + "  | wall " + "  ".join(f"{v} {wall[v]:8.2f}" for v in VARIANTS)
                  + f"  | floor {floor_ms:.2f} ms", flush=True)
        results["workloads"][workload] = wres
        del sessions

    # table + goals
    print("\nbest thread-CPU time per run (ms), 1 thread")
    hdr = f"{'workload':8s} {'M':>4s} " + " ".join(f"{v + ' ms':>10s}" for v in VARIANTS) + \
        f" {'floor ms':>9s} {'%floor':>7s} {'x nbits':>8s} {'x fp32':>7s}"
    print(hdr)
    print("-" * len(hdr))
    goals = []
    for workload, wres in results["workloads"].items():
        for m, row in wres["M"].items():
            b = row["best_ms"]
            print(f"{workload:8s} {m:>4s} " + " ".join(f"{b[v]:10.2f}" for v in VARIANTS)
                  + f" {row['floor_ms']:9.2f} {row['ours4_floor_fraction'] * 100:6.0f}% {row['ours4_vs_nbits4']:8.2f} {row['ours4_vs_fp32']:7.2f}")
            if m == "1":
                goals.append((f"{workload} M=1 >= 90% of floor", row["ours4_floor_fraction"] >= 0.9))
                goals.append((f"{workload} M=1 >= 1.2x MatMulNBits", row["ours4_vs_nbits4"] >= 1.2))
            if m == "128":
                goals.append((f"{workload} M=128 >= 4x fp32", row["ours4_vs_fp32"] >= 4.0))
                goals.append((f"{workload} M=128 >= 1.8x MatMulNBits", row["ours4_vs_nbits4"] >= 1.8))
    print()
    for name, ok in goals:
        print(f"  [{'met' if ok else 'MISSED'}] {name}")
    results["goals"] = {name: ok for name, ok in goals}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
