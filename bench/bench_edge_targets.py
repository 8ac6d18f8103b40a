"""MobileNetV2 int8-static per deployment target: accuracy in the target runtime and speed
against its own fp32 run.

For each target: ``apply_target(StaticInt8(), target)``, calibrate on the corpus'
``images/``, ``finalize_for_target``; then on ``imagenet_dev/`` (labels.json):

- ort-cpu: ORT CPU; openvino: OpenVINO CPU plugin; ort-mobile: the ``.ort`` file from
  ``convert_onnx_models_to_ort`` run by ORT (and compared with the ``.onnx``);
- tensorrt, qnn: structural rule check + the QDQ graph executed by ORT CPU (emulation);

top-1 agreement with the fp32 model (run in the same runtime), top-1 accuracy against the
labels, and latency int8 vs fp32 in one process, 1 thread, timed alternately.

    python -m bench.bench_edge_targets [--targets ort-cpu,openvino,ort-mobile,tensorrt,qnn] [--rounds 60]
        [--calibration minmax|percentile|entropy|mse]   (default: the recipe's; results:
        bench/results/edge_targets.json, or edge_targets_CAL.json with --calibration)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, interleaved_median_ms, markdown_table, write_results

CORPUS = REPO.parent / "shared" / "corpus"
MODEL = CORPUS / "models" / "mobilenet_v2_tv_imagenet.onnx"


def _dev_set():
    from onnxq.preprocess import load_image

    labels = json.loads((CORPUS / "imagenet_dev" / "labels.json").read_text())
    xs = [load_image(CORPUS / "imagenet_dev" / e["file"]) for e in labels]
    ys = np.array([e["imagenet_idx"] for e in labels])
    return xs, ys


def _logits(run, xs) -> np.ndarray:
    return np.concatenate([np.asarray(run({"input": x})[0]) for x in xs], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="ort-cpu,openvino,ort-mobile,tensorrt,qnn")
    ap.add_argument("--rounds", type=int, default=60, help="timed runs per model (interleaved)")
    ap.add_argument("--calibration", default=None, help="default: StaticInt8's own default")
    ap.add_argument("--weight-rounding", default=None, choices=("nearest", "gptq"),
                    help="default: StaticInt8's own default")
    ap.add_argument("--refine-biases", action="store_true", help="StaticInt8(refine_biases=True) for every target")
    args = ap.parse_args()

    import onnxq
    from onnxq.deploy import check_structure
    from onnxq.deploy.common import ort_runner
    from onnxq.deploy.ort_cpu import quiet_session_options
    from onnxq.deploy.ort_mobile import convert_to_ort
    from onnxq.preprocess import from_images
    from onnxq.targets import apply_target, finalize_for_target

    tmp = Path(tempfile.mkdtemp(prefix="onnxq-edge-"))
    xs, ys = _dev_set()
    feed0 = {"input": xs[0]}
    ort_fp32, _ = ort_runner(MODEL, threads=1, options=quiet_session_options())
    fp32_logits = _logits(ort_fp32, xs)
    fp32_pred = fp32_logits.argmax(1)
    rows = []
    details = {"fp32_top1_vs_labels": float(np.mean(fp32_pred == ys)), "samples": len(xs)}

    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        options = {k: v for k, v in (("calibration", args.calibration), ("weight_rounding", args.weight_rounding))
                   if v is not None}
        if args.refine_biases:
            options["refine_biases"] = True
        base = onnxq.StaticInt8(**options)
        recipe, notes = apply_target(base, target)
        t0 = time.perf_counter()
        qmodel, report = onnxq.quantize_with_report(MODEL, recipe, from_images(CORPUS / "images"))
        notes += finalize_for_target(qmodel, target)
        qpath = tmp / f"mobilenet_v2_{target}.onnx"
        onnxq.save(qmodel, qpath)
        quant_s = time.perf_counter() - t0
        findings = check_structure(qpath, target)
        row = {"target": target, "quantize s": round(quant_s, 1),
               "rule errors": sum(f.severity == "error" for f in findings),
               "fallbacks": sum(f.severity == "fallback" for f in findings)}
        extra: dict = {"notes": list(notes) + list(report.notes)}
        if target == "openvino":
            from onnxq.deploy.openvino import compile_openvino, runtime_layers

            ov_fp32, ov_q = compile_openvino(MODEL, threads=1), compile_openvino(qpath, threads=1)
            ref_logits = _logits(ov_fp32, xs)
            q_logits = _logits(ov_q, xs)
            ref_pred, q_pred = ref_logits.argmax(1), q_logits.argmax(1)
            ms = interleaved_median_ms({"fp32": lambda: ov_fp32(feed0), "int8": lambda: ov_q(feed0)},
                                       repeats=args.rounds, warmup=5)
            prec = [f"{d['type']}:{d['precision']}" for d in runtime_layers(ov_q)
                    if d["type"] in ("Convolution", "FullyConnected")]
            extra["runtime_precisions"] = {p: prec.count(p) for p in sorted(set(prec))}
            # the same file in ORT CPU: how far apart the two runtimes' int8 arithmetic is
            ort_q, _ = ort_runner(qpath, threads=1, options=quiet_session_options())
            ort_logits = _logits(ort_q, xs).astype(np.float64)
            diff = float(np.sum((q_logits.astype(np.float64) - ort_logits) ** 2))
            extra["same_file_in_ort_cpu"] = {
                "top1_same": float(np.mean(ort_logits.argmax(1) == q_pred)),
                "sqnr_db_openvino_vs_ort": float(10 * np.log10(float(np.sum(ort_logits**2)) / max(diff, 1e-30))),
                "ort_cpu_agreement": float(np.mean(ort_logits.argmax(1) == fp32_pred)),
            }
            row["runtime"] = "OpenVINO CPU"
        else:
            if target == "ort-mobile":
                conv = convert_to_ort(qpath, tmp / "ort")
                run_path = conv.ort_path
                extra["ort_file_bytes"] = conv.ort_path.stat().st_size
                extra["required_ops"] = conv.op_types()
                opts = quiet_session_options({"session.qdqisint8allowed": "1"})
                onnx_run, _ = ort_runner(qpath, threads=1, options=quiet_session_options())
            else:
                run_path = qpath
                opts = quiet_session_options()
            q_run, _ = ort_runner(run_path, threads=1, options=opts)
            q_logits = _logits(q_run, xs)
            q_pred = q_logits.argmax(1)
            ref_logits, ref_pred = fp32_logits, fp32_pred
            if target == "ort-mobile":
                onnx_logits = _logits(onnx_run, xs)
                extra["ort_vs_onnx_max_abs"] = float(np.max(np.abs(onnx_logits - q_logits)))
                extra["ort_vs_onnx_top1_same"] = float(np.mean(onnx_logits.argmax(1) == q_pred))
            ms = interleaved_median_ms({"fp32": lambda: ort_fp32(feed0), "int8": lambda: q_run(feed0)},
                                       repeats=args.rounds, warmup=5)
            row["runtime"] = {"ort-cpu": "ORT CPU", "ort-mobile": "ORT (.ort file)"}.get(target, "ORT CPU (emulation)")
        row["top-1 agreement"] = round(float(np.mean(q_pred == ref_pred)) * 100, 1)
        row["top-1 vs labels"] = round(float(np.mean(q_pred == ys)) * 100, 1)
        noise = float(np.sum((q_logits.astype(np.float64) - ref_logits) ** 2))
        row["output SQNR dB"] = round(10 * np.log10(float(np.sum(ref_logits.astype(np.float64) ** 2)) / max(noise, 1e-30)), 2)
        row["fp32 ms"] = round(ms["fp32"], 2)
        row["int8 ms"] = round(ms["int8"], 2)
        row["int8/fp32"] = round(ms["int8"] / ms["fp32"], 3)
        rows.append(row)
        details[target] = extra
        print(json.dumps(row), flush=True)

    columns = ["target", "runtime", "top-1 agreement", "top-1 vs labels", "output SQNR dB", "fp32 ms", "int8 ms", "int8/fp32",
               "rule errors", "fallbacks", "quantize s"]
    print(markdown_table(rows, columns))
    calibration = args.calibration or onnxq.StaticInt8().calibration
    suffix = "".join(f"_{v}" for v in (args.calibration, args.weight_rounding) if v is not None)
    suffix += "_refine_biases" if args.refine_biases else ""
    path = write_results(f"edge_targets{suffix}", {
        "title": f"MobileNetV2 int8-static ({calibration}) per target (imagenet_dev, 1 thread)",
        "command": "python -m bench.bench_edge_targets" + "".join(
            f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in options.items()),
        "columns": columns,
        "rows": rows,
        "details": details,
        "notes": [f"fp32 top-1 vs labels {details['fp32_top1_vs_labels']:.1%} on {len(xs)} photos",
                  "agreement is with the fp32 model run in the same runtime; tensorrt/qnn rows run the QDQ graph "
                  "in ORT CPU (those runtimes cannot run here)"]
                 + ([
                     "openvino vs ORT CPU on the same file: top-1 same on "
                     f"{details['openvino']['same_file_in_ort_cpu']['top1_same']:.1%} of the photos, logits "
                     f"{details['openvino']['same_file_in_ort_cpu']['sqnr_db_openvino_vs_ort']:.1f} dB apart. OpenVINO's "
                     "low-precision transformations add a Conv output to the residual Add without the Conv's own "
                     "requantization (measured on a Conv -> Q/DQ -> Add graph: OpenVINO matches the Add of the float "
                     "Conv output, ORT the QDQ semantics), so the two runtimes round differently from the first "
                     "residual block on"] if "openvino" in details else []),
    })
    print(f"results: {path}")


if __name__ == "__main__":
    main()
