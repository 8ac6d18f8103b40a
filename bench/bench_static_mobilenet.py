"""int8-static on MobileNetV2: accuracy, agreement, speed and size, next to ORT's quantizer.

Calibrates on every photo under ../shared/corpus/images (sub-folders included), evaluates on
../shared/corpus/imagenet_dev (labels.json): top-1 agreement with fp32 and top-1 accuracy.
Speed: ORT CPU, 1 thread, fp32 and int8 timed in one process, interleaved (rounds of each),
median per-image latency. Also counts, in ORT's optimized graph, how many Conv stay float.

Rows: each calibration method, ``onnxq-default`` (``StaticInt8()`` as shipped), the default
with GPTQ weight rounding (``--weight-rounding gptq``), the default with ``--refine-biases``, the default
with ``--target-sqnr`` (sensitivity: nodes kept in float within ``--float-budget`` of the
multiply-adds, default 15 %, measured on the calibration photos), and ORT's ``quantize_static``.

    .venv/bin/python bench/bench_static_mobilenet.py [--methods minmax,percentile] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
MODEL = CORPUS / "models" / "mobilenet_v2_tv_imagenet.onnx"


def _session(path, threads=1, optimized_path=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def optimized_op_counts(path) -> collections.Counter:
    """Op histogram of the graph ORT actually runs (after its QDQ fusions)."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "opt.onnx"
        _session(path, optimized_path=out)
        m = onnx.load(str(out))
    return collections.Counter((f"{n.domain}." if n.domain else "") + n.op_type for n in m.graph.node)


def evaluate(paths: dict[str, Path], eval_dir: Path) -> dict[str, dict]:
    from onnxq.preprocess import load_image

    labels = json.loads((eval_dir / "labels.json").read_text())
    sessions = {k: _session(p, threads=2) for k, p in paths.items()}
    logits = {k: [] for k in paths}
    truth = []
    for e in labels:
        x = load_image(eval_dir / e["file"])
        truth.append(e["imagenet_idx"])
        for k, s in sessions.items():
            logits[k].append(s.run(None, {"input": x})[0][0])
    truth = np.array(truth)
    ref_logits = np.array(logits["fp32"], np.float64)
    ref = ref_logits.argmax(1)
    out = {}
    for k, z in logits.items():
        z = np.array(z, np.float64)
        p = z.argmax(1)
        noise = ((z - ref_logits) ** 2).sum()
        cos = (z * ref_logits).sum(1) / np.linalg.norm(z, axis=1) / np.linalg.norm(ref_logits, axis=1)
        out[k] = {
            "top1": float((p == truth).mean()), "agreement": float((p == ref).mean()), "n": len(truth),
            # over all evaluation photos: far less noisy than 42 top-1 decisions
            "sqnr_db": float(10 * np.log10((ref_logits**2).sum() / noise)) if noise else None,  # None: exact
            "cosine": float(cos.mean()),
        }
    return out


def latency(paths: dict[str, Path], rounds: int = 7, per_round: int = 10) -> dict[str, float]:
    """Median per-image latency (s), 1 thread, models interleaved round by round."""
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sessions = {k: _session(p, threads=1) for k, p in paths.items()}
    times = {k: [] for k in paths}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"input": x})
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(per_round):
                s.run(None, {"input": x})
            times[k].append((time.perf_counter() - t) / per_round)
    return {k: float(np.median(v)) for k, v in times.items()}


def ort_quantize(out: Path, calib_dir: Path) -> float:
    """ORT's quantize_static on the same photos: MinMax, per-channel, QDQ, u8 activations."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from onnxq.preprocess import image_files, load_image

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(image_files(calib_dir))

        def get_next(self):
            p = next(self.it, None)
            return None if p is None else {"input": load_image(p)}

    t = time.perf_counter()
    quantize_static(
        str(MODEL), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
    )
    return time.perf_counter() - t


def onnxq_quantize(out: Path, calib_dir: Path, **recipe_kw) -> float:
    import onnxq
    from onnxq.preprocess import from_images

    t = time.perf_counter()
    model = onnxq.quantize(str(MODEL), onnxq.StaticInt8(**recipe_kw), data=from_images(calib_dir))
    onnxq.save(model, out)
    return time.perf_counter() - t


def onnxq_quantize_to_target(out: Path, calib_dir: Path, target_sqnr: float, float_budget: float,
                             **recipe_kw) -> tuple[float, list[str]]:
    """The recipe (default, or ``recipe_kw``) plus ``--target-sqnr`` (``--float-budget``: the
    share of the multiply-adds that may stay float): returns (seconds, the report's sensitivity notes)."""
    import onnxq
    from onnxq.preprocess import from_images
    from onnxq.sensitivity import AccuracyTarget, quantize_static_to_target

    t = time.perf_counter()
    model, report, _ = quantize_static_to_target(
        str(MODEL), onnxq.StaticInt8(**recipe_kw), from_images(calib_dir), AccuracyTarget(min_sqnr_db=target_sqnr),
        max_float_share=float_budget,
    )
    onnxq.save(model, out)
    return time.perf_counter() - t, [n for n in report.notes if n.startswith("sensitivity")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="minmax,percentile,entropy,mse")
    ap.add_argument("--activations", default="uint8", help="comma list: uint8,int8")
    ap.add_argument("--target-sqnr", type=float, default=25.0, help="row onnxq-default+target-sqnr (0: skip)")
    ap.add_argument("--float-budget", type=float, default=0.15, help="target row: share of the multiply-adds kept float at most")
    ap.add_argument("--gptq-target-sqnr", type=float, default=30.0,
                    help="row onnxq-gptq+target-sqnr: GPTQ weight rounding and this target (0: skip; ~7 min)")
    ap.add_argument("--gptq-float-budget", type=float, default=0.30, help="that row's share of multiply-adds kept float at most")
    ap.add_argument("--rounds", type=int, default=9, help="latency rounds (interleaved)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not MODEL.exists():
        print(f"{MODEL} not found; skipping", file=sys.stderr)
        return 0
    calib_dir, eval_dir = CORPUS / "images", CORPUS / "imagenet_dev"
    from onnxq.preprocess import image_files

    n_calib = len(image_files(calib_dir))
    tmp = Path(tempfile.mkdtemp(prefix="bench_mnv2_"))
    paths = {"fp32": MODEL}
    quant_seconds = {}
    for act in args.activations.split(","):
        for method in args.methods.split(","):
            key = f"onnxq-{method}" + ("" if act == "uint8" else f"-{act}")
            paths[key] = tmp / f"{key}.onnx"
            quant_seconds[key] = onnxq_quantize(paths[key], calib_dir, calibration=method, activation_type=act)
    paths["onnxq-default"] = tmp / "onnxq-default.onnx"
    quant_seconds["onnxq-default"] = onnxq_quantize(paths["onnxq-default"], calib_dir)
    paths["onnxq-default+weight-rounding=gptq"] = tmp / "onnxq-gptq.onnx"
    quant_seconds["onnxq-default+weight-rounding=gptq"] = onnxq_quantize(
        paths["onnxq-default+weight-rounding=gptq"], calib_dir, weight_rounding="gptq"
    )
    paths["onnxq-default+refine-biases"] = tmp / "onnxq-refine.onnx"
    quant_seconds["onnxq-default+refine-biases"] = onnxq_quantize(
        paths["onnxq-default+refine-biases"], calib_dir, refine_biases=True
    )
    notes: dict[str, list[str]] = {}
    if args.target_sqnr:
        key = f"onnxq-default+target-sqnr={args.target_sqnr:g}" + (
            "" if args.float_budget == 0.15 else f",float-budget={args.float_budget:.0%}"
        )
        paths[key] = tmp / "onnxq-target.onnx"
        quant_seconds[key], notes[key] = onnxq_quantize_to_target(paths[key], calib_dir, args.target_sqnr, args.float_budget)
    if args.gptq_target_sqnr:
        key = f"onnxq-gptq+target-sqnr={args.gptq_target_sqnr:g},float-budget={args.gptq_float_budget:.0%}"
        paths[key] = tmp / "onnxq-gptq-target.onnx"
        quant_seconds[key], notes[key] = onnxq_quantize_to_target(
            paths[key], calib_dir, args.gptq_target_sqnr, args.gptq_float_budget, weight_rounding="gptq"
        )
    paths["ort-minmax"] = tmp / "ort.onnx"
    quant_seconds["ort-minmax"] = ort_quantize(paths["ort-minmax"], calib_dir)

    acc = evaluate(paths, eval_dir)
    lat = latency(paths, rounds=args.rounds)
    fp32_bytes = MODEL.stat().st_size
    rows = []
    for k, p in paths.items():
        ops = optimized_op_counts(p)
        rows.append(
            {
                "model": k,
                "top1": acc[k]["top1"],
                "agreement": acc[k]["agreement"],
                "sqnr_db": acc[k]["sqnr_db"],
                "cosine": acc[k]["cosine"],
                "latency_ms": lat[k] * 1e3,
                "speedup_vs_fp32": lat["fp32"] / lat[k],
                "size_ratio": p.stat().st_size / fp32_bytes,
                "float_conv_in_ort": sum(n for op, n in ops.items() if op.endswith("Conv") and "QLinear" not in op),
                "qlinear_conv_in_ort": ops.get("com.microsoft.QLinearConv", 0),
                "quantize_s": quant_seconds.get(k, 0.0),
            }
        )
    print(f"MobileNetV2: calibration {n_calib} photos ({calib_dir}), evaluation {acc['fp32']['n']} labelled photos")
    print(f"{'model':<56}{'top-1':>7}{'agree':>8}{'SQNR dB':>8}{'ms/img':>8}{'speedup':>9}{'size':>7}{'float Conv':>11}{'QLinearConv':>12}{'quant s':>9}")
    for r in rows:
        print(
            f"{r['model']:<56}{r['top1']:>7.1%}{r['agreement']:>8.1%}{'exact' if r['sqnr_db'] is None else format(r['sqnr_db'], '.1f'):>8}{r['latency_ms']:>8.2f}{r['speedup_vs_fp32']:>8.2f}x"
            f"{r['size_ratio']:>7.1%}{r['float_conv_in_ort']:>11}{r['qlinear_conv_in_ort']:>12}{r['quantize_s']:>9.1f}"
        )
    fp32 = next(r for r in rows if r["model"] == "fp32")
    acceptance = {}
    for r in rows:
        if r["model"] == "fp32":
            continue
        acceptance[r["model"]] = {
            "agreement>=97%": r["agreement"] >= 0.97,
            "top1_within_1pt": r["top1"] >= fp32["top1"] - 0.01,
            "speedup>=1.5x": r["speedup_vs_fp32"] >= 1.5,
            "size<=30%": r["size_ratio"] <= 0.30,
        }
    for key, lines in notes.items():
        for line in lines:
            print(f"{key}: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"calibration_photos": n_calib, "evaluation_photos": acc["fp32"]["n"], "rows": rows,
             "acceptance": acceptance, "notes": notes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
