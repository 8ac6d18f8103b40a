"""CUDA MatMulBlockInt4 kernels vs torch fp16 matmul (cuBLAS) and the HBM roofline.

Each point runs a stack of L distinct layers (weights together >= 4x the 50 MB L2, so every
layer's weights come from HBM), captured in one CUDA graph; the time per layer is the median
graph replay (CUDA events) over L. Roofline = (packed bytes + scale bytes) / --bw. Per shape
also the floors of that graph (bench/device/floor_kernels.cu): an empty kernel per launch and a
plain coalesced read of the packed bytes, each with and without PDL (row field floors_us).

    python3 bench/bench_cuda_int4.py [--out bench/results/cuda_int4.json] [--quick]

Needs torch + a CUDA GPU and the harness library (bench/device/build_cuda_harness.sh).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.device.cuda_int4_harness import (  # noqa: E402
    N_TC_CONFIGS,
    N_WG_CONFIGS,
    PATH_AUTO,
    PATH_SKINNY,
    PATH_TC,
    PATH_WG,
    Harness,
    find_or_build_lib,
    wgmma_device,
)

L2_BYTES = 50 * 2**20
STACK_BYTES = 4 * L2_BYTES
# A graph replay has a fixed start cost (~10 µs measured on H100) that time_graph spreads over the
# launches of one replay: the stack of distinct layers is cycled until a replay holds at least
# this many launches (each layer is reused only after >= STACK_BYTES of others, so from HBM).
MIN_LAUNCHES = 100


def cycles(layers: int) -> int:
    return max(1, math.ceil(MIN_LAUNCHES / layers))


def time_graph(fn, layers: int, reps: int = 30) -> float:
    """Median µs per layer of a CUDA graph holding `fn` (which launches `layers` layers)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    e0 = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    e1 = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        e0[i].record()
        g.replay()
        e1[i].record()
    torch.cuda.synchronize()
    ts = [a.elapsed_time(b) * 1e3 / layers for a, b in zip(e0, e1)]
    del g
    return statistics.median(ts)


def copy_bandwidth() -> float:
    n = 1 << 30
    x = torch.empty(n, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    x.random_(0, 255)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        y.copy_(x)
    e1.record()
    torch.cuda.synchronize()
    sec = e0.elapsed_time(e1) / 1e3 / 10
    del x, y
    return 2 * n / sec


class Floor:
    """bench/device/floor_kernels.cu: empty kernel (per-launch floor) and a plain stream read."""

    def __init__(self, lib_path: Path):
        import ctypes

        self.lib = ctypes.CDLL(str(lib_path))
        f = self.lib.onnxq_floor_launch
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]

    def launch(self, kind: int, src: int, nbytes: int, sink: int, pdl: bool, stream: int) -> None:
        if self.lib.onnxq_floor_launch(kind, src or None, nbytes, sink or None, 1 if pdl else 0, stream or None):
            raise RuntimeError("floor kernel launch failed")


def floor_times(fl: Floor, bufs: list, nbytes: int, log) -> dict:
    """µs per layer: empty kernel, and a plain read of each layer's packed bytes (+ PDL)."""
    sink = torch.zeros(4, dtype=torch.int32, device="cuda")
    stream = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731
    out = {}
    for name, kind in (("empty", 0), ("stream_read", 1)):
        for pdl in (False, True):
            def fn(kind=kind, pdl=pdl):
                s = stream()
                for _ in range(cycles(len(bufs))):
                    for b in bufs:
                        fl.launch(kind, b.data_ptr(), nbytes, sink.data_ptr(), pdl, s)
            key = name + ("_pdl" if pdl else "")
            try:
                out[key] = time_graph(fn, len(bufs) * cycles(len(bufs)))
            except Exception as e:  # noqa: BLE001
                log(f"  floor {key} failed: {e}")
                torch.cuda.synchronize()
    return out


def dequant_ref(packed: torch.Tensor, scales: torch.Tensor, k: int) -> torch.Tensor:
    """[N, nb, bs/2] uint8 + [N, nb] scales → float32 [N, K] (symmetric, zero code 8)."""
    n, nb, half = packed.shape
    codes = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(n, nb, 2 * half).float() - 8.0
    return (codes * scales.float()[:, :, None]).reshape(n, -1)[:, :k]


def bench_shape(h: Harness, k: int, n: int, bs: int, ms: list[int], bw: float, sweep: bool, log,
                tc_sweep: bool = True, wg_sweep: bool = True, skinny_cfgs=(0, 4, 32, 288),
                floor: Floor | None = None, wg_cfgs=None) -> list[dict]:
    dev = "cuda"
    nb = math.ceil(k / bs)
    layer_bytes = n * nb * bs // 2 + n * nb * 2
    L = max(4, math.ceil(STACK_BYTES / layer_bytes))
    packed = [torch.randint(0, 256, (n, nb, bs // 2), dtype=torch.uint8, device=dev) for _ in range(L)]
    scales = [(torch.rand(n, nb, device=dev) * 0.02 + 0.001).half() for _ in range(L)]
    Lh = max(2, math.ceil(STACK_BYTES / (k * n * 2)))
    w16 = [torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02 for _ in range(Lh)]  # nn.Linear layout
    w16t = [w.t().contiguous() for w in w16]  # [K, N] for A @ W
    roof_us = layer_bytes / bw * 1e6
    stream = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731
    floors = {}
    if floor is not None:
        floors = floor_times(floor, packed, n * nb * bs // 2 // 16 * 16, log)
        log(f"K={k:5d} N={n:5d} bs={bs:3d} floors (µs/layer): "
            + " ".join(f"{kk}={v:.2f}" for kk, v in floors.items())
            + f" | packed-bytes roofline {n * nb * bs // 2 / bw * 1e6:.2f}")
    rows = []
    for m in ms:
        a = torch.randn(m, k, device=dev, dtype=torch.float16)
        y = torch.empty(m, n, device=dev, dtype=torch.float16)

        # correctness spot check on layer 0 (fp16 tolerance, see tests/ops_cuda)
        h.matmul(a, packed[0], scales[0], None, None, y, k=k, n=n, block_size=bs)
        ref = a.float() @ dequant_ref(packed[0], scales[0], k).t()
        rel = float((y.float() - ref).norm() / ref.norm())

        def ours(path=PATH_AUTO, cfg=-1, pdl=False):
            def fn():
                s = stream()
                for i in range(L * cycles(L)):
                    i %= L
                    h.matmul_raw(f16=True, a=a.data_ptr(), b=packed[i].data_ptr(), scales=scales[i].data_ptr(),
                                 zp=None, bias=None, y=y.data_ptr(), m=m, k=k, n=n, block_size=bs, path=path,
                                 config=cfg, pdl=pdl, stream=s)
            return fn

        variants = {"auto": ours(), "auto+pdl": ours(pdl=True)}
        if sweep:
            if m <= 16:
                for c in skinny_cfgs:
                    variants[f"skinny_c{c}"] = ours(PATH_SKINNY, c)
                    variants[f"skinny_c{c}+pdl"] = ours(PATH_SKINNY, c, pdl=True)
            if m >= 16 and tc_sweep:
                for c in range(N_TC_CONFIGS):
                    variants[f"tc{c}"] = ours(PATH_TC, c)
            if m >= 16 and wg_sweep and wgmma_device():
                for c in (range(N_WG_CONFIGS) if wg_cfgs is None else wg_cfgs):
                    variants[f"wg{c}"] = ours(PATH_WG, c)
        times = {}
        for name, fn in variants.items():
            try:
                times[name] = time_graph(fn, L * cycles(L))
            except Exception as e:  # noqa: BLE001 - record and go on (e.g. PDL not capturable)
                log(f"  {name} failed: {e}")
                torch.cuda.synchronize()
        if "auto+pdl" not in times:
            times["auto+pdl"] = float("nan")

        out16 = torch.empty(m, n, device=dev, dtype=torch.float16)

        def cublas_mm():
            for i in range(Lh * cycles(Lh)):
                torch.matmul(a, w16t[i % Lh], out=out16)

        def cublas_linear():
            for i in range(Lh * cycles(Lh)):
                torch.nn.functional.linear(a, w16[i % Lh])

        t_mm, t_lin = time_graph(cublas_mm, Lh * cycles(Lh)), time_graph(cublas_linear, Lh * cycles(Lh))
        t_cublas = min(t_mm, t_lin)
        t_auto = times["auto"]
        best = min((kk for kk in times if times[kk] == times[kk]), key=times.get)
        row = {
            "K": k, "N": n, "M": m, "block_size": bs, "layers": L, "layer_bytes": layer_bytes,
            "path": h.choose_path(True, m, k, n, bs), "rel_err_vs_fp32_ref": rel,
            "ours_us": t_auto, "ours_pdl_us": times["auto+pdl"], "variants_us": times, "best_variant": best,
            "cublas_fp16_us": t_cublas, "cublas_matmul_us": t_mm, "cublas_linear_us": t_lin,
            "roofline_us": roof_us, "pct_of_roofline": roof_us / t_auto * 100,
            "pct_of_roofline_pdl": roof_us / times["auto+pdl"] * 100,
            "speedup_vs_cublas": t_cublas / t_auto, "speedup_vs_cublas_pdl": t_cublas / times["auto+pdl"],
            "achieved_TBps": layer_bytes / t_auto / 1e6,
            "floors_us": floors,
        }
        rows.append(row)
        log(f"K={k:5d} N={n:5d} bs={bs:3d} M={m:3d} | ours {t_auto:7.2f} µs (pdl {times['auto+pdl']:7.2f}) "
            f"{row['pct_of_roofline']:5.1f}% roof | cuBLAS {t_cublas:7.2f} µs → {row['speedup_vs_cublas']:5.2f}x "
            f"| best {best} {times[best]:.2f} | rel {rel:.1e} | "
            + " ".join(f"{kk}={v:.2f}" for kk, v in times.items()))
        del a, y, out16
    del packed, scales, w16, w16t
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "cuda_int4.json"))
    ap.add_argument("--bw", type=float, default=3.0e12, help="HBM bandwidth for the roofline (bytes/s)")
    ap.add_argument("--ms", default="1,4,16,64,256")
    ap.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096", help="KxN list")
    ap.add_argument("--block-sizes", default="128,32")
    ap.add_argument("--no-sweep", action="store_true", help="time only the auto choice (and pdl)")
    ap.add_argument("--no-tc-sweep", action="store_true", help="sweep without the mma.sync tensor-core configs")
    ap.add_argument("--no-wg-sweep", action="store_true", help="sweep without the wgmma configs")
    ap.add_argument("--skinny-cfgs", default="0,4,32,40,160,288,296,416,928",
                    help="skinny configs to sweep for M <= 16 (each also with PDL)")
    ap.add_argument("--wg-cfgs", default="", help="wgmma configs to sweep (default: all)")
    args = ap.parse_args(argv)

    lib = find_or_build_lib()
    if lib is None:
        print("harness library not found; run bench/device/build_cuda_harness.sh", file=sys.stderr)
        return 2
    h = Harness(lib)
    floor_lib = Path(lib).parent / "libonnxq_cuda_floor.so"
    floor = Floor(floor_lib) if floor_lib.exists() else None
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    t0 = time.time()
    copy_bw = copy_bandwidth()
    print(f"device {props.name}, {props.multi_processor_count} SMs; d2d copy {copy_bw / 1e12:.2f} TB/s "
          f"(read+write); roofline at {args.bw / 1e12:.2f} TB/s", flush=True)
    ms = [int(x) for x in args.ms.split(",")]
    rows = []
    for bs in [int(x) for x in args.block_sizes.split(",")]:
        for shp in args.shapes.split(","):
            k, n = (int(x) for x in shp.split("x"))
            rows += bench_shape(h, k, n, bs, ms, args.bw, not args.no_sweep, lambda s: print(s, flush=True),
                                tc_sweep=not args.no_tc_sweep, wg_sweep=not args.no_wg_sweep,
                                skinny_cfgs=[int(c) for c in args.skinny_cfgs.split(",") if c],
                                floor=floor,
                                wg_cfgs=[int(c) for c in args.wg_cfgs.split(",")] if args.wg_cfgs else None)
    result = {
        "device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
        "cuda": torch.version.cuda, "host": platform.node(), "copy_bandwidth_TBps": copy_bw / 1e12,
        "roofline_bandwidth_TBps": args.bw / 1e12, "l2_bytes_assumed": L2_BYTES,
        "method": "CUDA graph of a stack of L distinct layers (>= 200 MB of weights), cycled to >= "
                  f"{MIN_LAUNCHES} launches per graph, median of 30 replays (CUDA events) / launches; "
                  "cuBLAS = min(torch.matmul(A, W[K,N]), F.linear(A, W[N,K])) fp16",
        "rows": rows, "seconds": time.time() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| K×N | bs | M | path | ours µs | +PDL µs | cuBLAS fp16 µs | roofline µs | % roof | × cuBLAS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['K']}×{r['N']} | {r['block_size']} | {r['M']} | {r['path']} | {r['ours_us']:.2f} | "
              f"{r['ours_pdl_us']:.2f} | {r['cublas_fp16_us']:.2f} | {r['roofline_us']:.2f} | "
              f"{r['pct_of_roofline']:.0f} | {r['speedup_vs_cublas']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
