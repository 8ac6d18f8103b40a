"""Block-int4 RTN on large MatMul stacks: weights streamed from external data, peak RSS,
quantization time against ONNX Runtime's C++ RTN, and the output reloads and runs.

    python -m bench.bench_int4_big [--layers 40] [--dim 4096] [--format matmulnbits]

1. ``models.synthetic`` builds a ``dim x dim x layers`` MatMul stack with external data
   (4096 x 4096 x 40: 2.7 GB; its largest tensor 64 MiB).
2. A child process quantizes it with ``onnxq`` (RTN, block 128, symmetric) and saves it;
   its peak RSS (``ru_maxrss``) is checked against ``2 x largest tensor + 1 GiB``.
3. Another child reloads the output in ONNX Runtime and runs it; its output is compared
   with the fp32 model's.
4. RTN time on ~0.8 GB of weights (a 12-layer stack): our pass vs ORT's
   ``DefaultWeightOnlyQuantConfig`` (C++) ``process()``, each in its own process, best of 3.

Writes ``bench/results/int4_big.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.common import markdown_table, peak_rss_of, write_results

GIB = 2**30


def _child_quantize(src: str, dst: str, fmt: str) -> None:
    import resource

    import onnxq
    from onnxq import modelio
    from onnxq.passes.quantize_matmul_int4 import QuantizeMatMulInt4Pass
    from onnxq.recipes import WeightOnlyInt4

    t0 = time.perf_counter()
    model = modelio.load(src)
    recipe = WeightOnlyInt4(format=fmt, algorithm="rtn", accuracy_level=0)
    if fmt == "qdq":
        from onnxq.passes.upgrade_opset import UpgradeOpsetPass

        UpgradeOpsetPass(21)(model)
    t1 = time.perf_counter()
    QuantizeMatMulInt4Pass(recipe)(model)
    t2 = time.perf_counter()
    rss_quantize = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # keep the input's layout: external data streams tensor by tensor to <dst>.data, where
    # one inline protobuf would hold every packed weight twice more while serialising
    modelio.save(model, dst, external_data=True)
    t3 = time.perf_counter()
    print(json.dumps({
        "load_s": t1 - t0, "quantize_s": t2 - t1, "save_s": t3 - t2, "total_s": t3 - t0,
        "peak_rss_after_pass_gib": rss_quantize,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))


def _child_quantize_api(src: str, dst: str, fmt: str) -> None:
    """The user path: onnxq.quantize (shape inference, plan, pass) + save."""
    import resource

    import onnxq
    from onnxq.recipes import WeightOnlyInt4

    t0 = time.perf_counter()
    from onnxq import modelio

    model = onnxq.quantize(src, WeightOnlyInt4(format=fmt, algorithm="rtn", accuracy_level=0))
    modelio.save(model, dst, external_data=True)
    print(json.dumps({"total_s": time.perf_counter() - t0,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def _child_ort_rtn(src: str, dst: str) -> None:
    import resource

    import logging

    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    model = onnx.load(src)
    t1 = time.perf_counter()
    q = mnq.MatMulNBitsQuantizer(model, block_size=128, is_symmetric=True,
                                 algo_config=mnq.DefaultWeightOnlyQuantConfig(block_size=128, is_symmetric=True))
    q.process()
    t2 = time.perf_counter()
    q.model.save_model_to_file(dst, use_external_data_format=True)
    print(json.dumps({"load_s": t1 - t0, "quantize_s": t2 - t1, "total_s": time.perf_counter() - t0,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def _child_run(fp32: str, quant: str, dim: str) -> None:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    x = np.random.default_rng(0).standard_normal((4, int(dim))).astype(np.float32)
    t0 = time.perf_counter()
    q = ort.InferenceSession(quant, so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    yq = q.run(None, {"x": x})[0]
    del q
    ref = ort.InferenceSession(fp32, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rel = float(np.linalg.norm(yq - ref) / np.linalg.norm(ref))
    print(json.dumps({"ort_load_s": load_s, "rel_error_vs_fp32": rel, "finite": bool(np.isfinite(yq).all())}))


def _child(cmd: list[str]) -> tuple[dict, float]:
    rc, rss, out = peak_rss_of([sys.executable, "-m", "bench.bench_int4_big", *cmd])
    if rc != 0:
        raise RuntimeError(f"child {cmd[:2]} failed with exit {rc}:\n{out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), rss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--format", default="matmulnbits", choices=["qdq", "matmulnbits"])
    ap.add_argument("--time-layers", type=int, default=12, help="layers of the ~0.8 GB stack timed against ORT")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        {"quantize": _child_quantize, "api": _child_quantize_api, "ort": _child_ort_rtn, "run": _child_run}[kind](*rest)
        return 0

    import tempfile

    from models import synthetic

    big = synthetic.cached("matmul_stack", k=args.dim, n=args.dim, layers=args.layers)
    largest = args.dim * args.dim * 4
    weights = largest * args.layers
    bound = 2 * largest + GIB
    print(f"model {big} ({weights / 1e9:.2f} GB of weights, largest tensor {largest / 2**20:.0f} MiB); "
          f"RSS bound {bound / GIB:.2f} GiB", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int4-big-", dir=big.parent) as tmpdir:
        tmp = Path(tmpdir)
        out = tmp / f"big_{args.format}.onnx"
        res, rss = _child(["--child", "quantize", str(big), str(out), args.format])
        run, _ = _child(["--child", "run", str(big), str(out), str(args.dim)])
        rows.append({"case": f"onnxq RTN pass, {weights / 1e9:.1f} GB stack", **res, "child_peak_rss_gib": rss,
                     "rss_bound_gib": bound / GIB, "within_bound": rss * GIB <= bound,
                     "out_mb": (out.stat().st_size + sum(p.stat().st_size for p in tmp.glob("*.data"))) / 1e6, **run})
        print(json.dumps(rows[-1]), flush=True)
        out.unlink()
        res, rss = _child(["--child", "api", str(big), str(out), args.format])
        rows.append({"case": f"onnxq.quantize() (shape inference + pass), {weights / 1e9:.1f} GB stack", **res,
                     "child_peak_rss_gib": rss, "rss_bound_gib": bound / GIB, "within_bound": rss * GIB <= bound})
        print(json.dumps(rows[-1]), flush=True)

        small = synthetic.cached("matmul_stack", k=args.dim, n=args.dim, layers=args.time_layers)
        size = args.dim * args.dim * 4 * args.time_layers
        ours, theirs = [], []
        for i in range(args.repeats):  # interleaved, so machine noise hits both alike
            o, o_rss = _child(["--child", "quantize", str(small), str(tmp / f"o{i}.onnx"), "matmulnbits"])
            t, t_rss = _child(["--child", "ort", str(small), str(tmp / f"t{i}.onnx")])
            ours.append((o, o_rss))
            theirs.append((t, t_rss))
            for p in tmp.glob("[ot]*.onnx*"):
                p.unlink()
        best_o = min(ours, key=lambda r: r[0]["quantize_s"])
        best_t = min(theirs, key=lambda r: r[0]["quantize_s"])
        rows.append({"case": f"onnxq RTN, {size / 1e9:.2f} GB stack (best of {args.repeats})", **best_o[0], "child_peak_rss_gib": best_o[1]})
        rows.append({"case": f"ORT C++ RTN, {size / 1e9:.2f} GB stack (best of {args.repeats})", **best_t[0], "child_peak_rss_gib": best_t[1]})
        print(json.dumps(rows[-2:]), flush=True)
    columns = ["case", "quantize_s", "total_s", "peak_rss_after_pass_gib", "child_peak_rss_gib", "rss_bound_gib", "within_bound", "rel_error_vs_fp32"]
    print(markdown_table([{c: (f"{r[c]:.3f}" if isinstance(r.get(c), float) else r.get(c, "")) for c in columns} for r in rows], columns))
    write_results("int4_big", {
        "title": "block-int4 RTN on big MatMul stacks: time, peak RSS, reload",
        "command": "python -m bench.bench_int4_big",
        "columns": columns, "rows": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
