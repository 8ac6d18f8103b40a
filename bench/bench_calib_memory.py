"""Streaming calibration on a ResNet-50-class model: peak RSS and wall time.

Memory: each (method, N) runs in a fresh subprocess (peak RSS = the child's ru_maxrss),
next to a child doing plain fp32 inference over the same N samples.

Time: in one process (the machine is noisy and shared), per method and repetition:
- plain fp32 inference over N samples (session + runs), the yardstick, and
- onnxq's calibration of every int8-static scale group over the same N samples (probe
  model + session + runs + choosing the ranges),
interleaved sample by sample: the calibration's data stream runs the plain session on each
sample just before handing it over, and that plain run's time is taken out of the
calibration's clock (each sample is generated once; its generation time is counted in both
clocks, as a stream's would be). Load that comes and goes on the machine then hits both
sides alike. Both sessions use ORT's default threads. The median of the per-repetition
ratios is reported.

Samples are generated on the fly (seeded), never held together, as a stream would be.

    .venv/bin/python bench/bench_calib_memory.py [--samples 32,128,512] [--methods ...] [--json out.json]
    .venv/bin/python bench/bench_calib_memory.py --rss-methods ""   # the time table only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _samples(n: int):
    def gen():
        for i in range(n):
            rng = np.random.default_rng(i)
            yield {"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)}

    return gen


def _input_name(path: str) -> str:
    import onnx

    return onnx.load(path, load_external_data=False).graph.input[0].name


def child_infer(model: str, n: int) -> dict:
    import onnxruntime as ort

    t = time.perf_counter()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = _input_name(model)
    t_runs = time.perf_counter()
    for feed in _samples(n)():
        sess.run(None, {name: feed["input"]})
    end = time.perf_counter()
    return {"seconds": end - t, "run_seconds": end - t_runs}


def child_calib(model: str, n: int, method: str) -> dict:
    import onnxq
    from onnxq.calib.static import _infer_shapes, calibrate_plan
    from onnxq.passes.insert_qdq import plan_static

    m = onnxq.load(model)
    _infer_shapes(m)
    recipe = onnxq.StaticInt8(calibration=method)
    plan = plan_static(m, recipe)
    name = _input_name(model)
    gen = _samples(n)

    def data():
        for feed in gen():
            yield {name: feed["input"]}

    t = time.perf_counter()
    qparams, _, _, _, stats = calibrate_plan(m, plan, recipe, data)
    end = time.perf_counter()
    return {"seconds": end - t, "groups": len(plan.groups), "runs": stats.feeds}


def timed_pair(model: str, n: int, method: str) -> dict:
    """(plain fp32 seconds, calibration seconds) over the same ``n`` samples, interleaved
    sample by sample (see the module docstring)."""
    import onnxruntime as ort

    import onnxq
    from onnxq.calib.static import _infer_shapes, calibrate_plan
    from onnxq.passes.insert_qdq import plan_static

    m = onnxq.load(model)
    _infer_shapes(m)
    recipe = onnxq.StaticInt8(calibration=method)
    plan = plan_static(m, recipe)
    name = _input_name(model)
    t = time.perf_counter()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    plain = time.perf_counter() - t
    gen_s = plain_runs = 0.0
    runs = 0
    gen = _samples(n)

    def data():
        nonlocal gen_s, plain_runs, runs
        it = gen()
        while True:
            t0 = time.perf_counter()
            feed = next(it, None)
            t1 = time.perf_counter()
            gen_s += t1 - t0
            if feed is None:
                return
            sess.run(None, {name: feed["input"]})
            plain_runs += time.perf_counter() - t1
            runs += 1
            yield {name: feed["input"]}

    t = time.perf_counter()
    calibrate_plan(m, plan, recipe, data)
    calib = time.perf_counter() - t - plain_runs
    if runs != n:
        raise RuntimeError(f"the calibration read {runs} samples, not {n}: the clocks would not compare")
    return {"fp32_s": plain + plain_runs + gen_s, "calib_s": calib}


def _child(args) -> None:
    if args.child == "infer":
        out = child_infer(args.model, args.n)
    else:
        out = child_calib(args.model, args.n, args.method)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def _spawn(*argv: str) -> dict:
    r = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["infer", "calib"])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--method", default="entropy")
    ap.add_argument("--samples", default="32,128,512")
    ap.add_argument("--methods", default="minmax,percentile,entropy,mse")
    ap.add_argument("--rss-methods", default="entropy")
    ap.add_argument("--time-samples", type=int, default=64)
    ap.add_argument("--time-reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return 0
    sys.path.insert(0, str(REPO))
    from models.synthetic import resnet50_like

    tmp = Path(tempfile.mkdtemp(prefix="bench_calib_"))
    model = str(resnet50_like(tmp / "resnet50_like.onnx", seed=0))
    size_mb = Path(model).stat().st_size / 1e6
    rows = []
    methods = args.methods.split(",")
    print(f"ResNet-50-like ({size_mb:.0f} MB), 2 cores")
    print("peak RSS, each cell a fresh process:")
    print(f"{'method':<11}{'samples':>8}{'peak RSS MiB':>14}{'fp32 inference RSS':>20}")
    for n in [int(v) for v in args.samples.split(",") if v] if args.rss_methods else []:
        base = _spawn("--child", "infer", "--model", model, "--n", str(n))
        for method in [v for v in args.rss_methods.split(",") if v]:  # "": time only
            r = _spawn("--child", "calib", "--model", model, "--n", str(n), "--method", method)
            rows.append({"kind": "rss", "method": method, "samples": n, "peak_rss_mib": r["peak_rss_mib"],
                         "fp32_peak_rss_mib": base["peak_rss_mib"]})
            print(f"{method:<11}{n:>8}{r['peak_rss_mib']:>14.0f}{base['peak_rss_mib']:>20.0f}", flush=True)
    for method in args.rss_methods.split(","):
        rss = [r["peak_rss_mib"] for r in rows if r["method"] == method and r["kind"] == "rss"]
        if len(rss) > 1:
            print(f"{method}: peak RSS spread {max(rss) / min(rss) - 1:.1%} across {args.samples} samples")
    n = args.time_samples
    print(f"calibration time / fp32 inference time over {n} samples, one process, interleaved per sample, "
          f"median of {args.time_reps} reps:")
    print(f"{'method':<11}{'calib s':>9}{'fp32 s':>8}{'ratio':>7}")
    for method in methods:
        ratios, cal, inf = [], [], []
        for _ in range(args.time_reps):
            r = timed_pair(model, n, method)
            a, b = r["fp32_s"], r["calib_s"]
            inf.append(a)
            cal.append(b)
            ratios.append(b / a)
        row = {"kind": "time", "method": method, "samples": n, "calib_s": float(np.median(cal)),
               "fp32_s": float(np.median(inf)), "ratio": float(np.median(ratios))}
        rows.append(row)
        print(f"{method:<11}{row['calib_s']:>9.2f}{row['fp32_s']:>8.2f}{row['ratio']:>7.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
