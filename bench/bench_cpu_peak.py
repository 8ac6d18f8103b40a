"""Single-thread compute peaks vs what the M=128 block-int4 MatMul achieves.

In one process, runs interleaved (thread CPU time, best of the rounds):

- the peak of 512-bit VPDPBUSD (int8 u8*s8 -> int32, 64 multiply-adds per instruction) and
  of 512-bit FMA (fp32, 16 per instruction): 16 independent accumulator chains in registers
  (bench/cpu_peak.cc, compiled here with the system C++ compiler and loaded with ctypes);
- ``ours4`` (com.onnxq.MatMulBlockInt4, accuracy_level 4: int8 VNNI) and ``fp32`` (MatMul on
  the dequantized weights, ORT MLAS) on the stack workload of bench_cpu_int4.py: 8 MatMuls
  4096x4096, M rows.

It reports each kernel's multiply-adds per second as a fraction of its peak, and the bound
the hardware puts on ours4/fp32: VNNI peak / fp32 achieved (ours4 at 100 % of its peak).

    python bench/bench_cpu_peak.py [--m 128] [--rounds 5]     (writes bench/results/bench_cpu_peak.json)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_cpu_int4 import BLOCK, build  # noqa: E402
from bench.common import write_results  # noqa: E402

PEAK_SRC = Path(__file__).with_name("cpu_peak.cc")
PEAK_ITERS = 20_000_000  # x 16 instructions: ~40-80 ms per measurement


def load_peak_library(tmp: Path) -> ctypes.CDLL:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512_vnni" not in flags:
        raise SystemExit("bench_cpu_peak: this CPU has no AVX-512 VNNI (avx512_vnni not in /proc/cpuinfo)")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        raise SystemExit("bench_cpu_peak: no C++ compiler (set CXX, or install g++)")
    so = tmp / "cpu_peak.so"
    subprocess.run([cxx, "-O2", "-shared", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vnni", str(PEAK_SRC), "-o", str(so)],
                   check=True)
    lib = ctypes.CDLL(str(so))
    lib.peak_vpdpbusd.argtypes = [ctypes.c_int64]
    lib.peak_vpdpbusd.restype = ctypes.c_int64
    lib.peak_fma.argtypes = [ctypes.c_int64]
    lib.peak_fma.restype = ctypes.c_double
    return lib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=128, help="rows of A")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best is kept)")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from onnxq import runtime
    from onnxq.formats import BlockInt4Format

    rng = np.random.default_rng(0)
    dims = [(4096, 4096)] * 8
    fmt = BlockInt4Format(BLOCK, symmetric=True)
    packs = [fmt.quantize((rng.standard_normal((k, n)) * 0.02).astype(np.float32)) for k, n in dims]
    sessions = {}
    for v in ("ours4", "fp32"):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        if v == "ours4":
            so.register_custom_ops_library(str(runtime.library_path("cpu")))
        sessions[v] = ort.InferenceSession(build("stack", v, packs, dims), so, providers=["CPUExecutionProvider"])
    del packs
    x = rng.standard_normal((args.m, dims[0][0])).astype(np.float32)
    macs = float(sum(args.m * k * n for k, n in dims))

    with tempfile.TemporaryDirectory() as tmp:
        lib = load_peak_library(Path(tmp))
        fns = {
            "vpdpbusd_peak": (lambda: lib.peak_vpdpbusd(PEAK_ITERS), PEAK_ITERS * 16 * 64.0),
            "fma_peak": (lambda: lib.peak_fma(PEAK_ITERS), PEAK_ITERS * 16 * 16.0),
            "ours4": (lambda: sessions["ours4"].run(None, {"X": x}), macs),
            "fp32": (lambda: sessions["fp32"].run(None, {"X": x}), macs),
        }
        for fn, _ in fns.values():  # warm-up
            fn()
        best = {k: 0.0 for k in fns}  # multiply-adds per second
        for _ in range(args.rounds):
            for k, (fn, n) in fns.items():
                t = time.thread_time()
                fn()
                best[k] = max(best[k], n / (time.thread_time() - t))

    g = {k: v / 1e9 for k, v in best.items()}
    res = {
        "ort": ort.__version__, "threads": 1, "M": args.m,
        "workload": "8 x 4096x4096, block 128",
        "GMACs": g,
        "vpdpbusd_vs_fma_peak": g["vpdpbusd_peak"] / g["fma_peak"],
        "ours4_fraction_of_vpdpbusd_peak": g["ours4"] / g["vpdpbusd_peak"],
        "fp32_fraction_of_fma_peak": g["fp32"] / g["fma_peak"],
        "ours4_vs_fp32": g["ours4"] / g["fp32"],
        "ours4_vs_fp32_ceiling": g["vpdpbusd_peak"] / g["fp32"],
    }
    print(f"single thread, best of {args.rounds} interleaved rounds (thread CPU time), M={args.m}, 8 x 4096x4096")
    print(f"  512-bit VPDPBUSD peak  {g['vpdpbusd_peak']:8.1f} GMAC/s (int8)")
    print(f"  512-bit FMA peak       {g['fma_peak']:8.1f} GMAC/s (fp32)   VNNI:FMA {res['vpdpbusd_vs_fma_peak']:.2f}")
    print(f"  ours4 (int8 VNNI)      {g['ours4']:8.1f} GMAC/s = {res['ours4_fraction_of_vpdpbusd_peak'] * 100:.0f} % of VNNI peak")
    print(f"  fp32 MatMul (MLAS)     {g['fp32']:8.1f} GMAC/s = {res['fp32_fraction_of_fma_peak'] * 100:.0f} % of FMA peak")
    print(f"  ours4/fp32 {res['ours4_vs_fp32']:.2f}x; ceiling with ours4 at 100 % of VNNI peak: "
          f"{res['ours4_vs_fp32_ceiling']:.2f}x")
    print(f"wrote {os.path.relpath(write_results('bench_cpu_peak', res))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
