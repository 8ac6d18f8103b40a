"""A CNN + bidirectional-LSTM OCR model (ddddocr 1.6.1, PyPI) in int8: onnxq vs ORT's quantizer.

The model's LSTM holds 31 % of its weights. Rows: fp32; onnxq int8-dynamic (the LSTM as
ORT's DynamicQuantizeLSTM, MatMul/Gemm dynamic, Conv float); onnxq int8-static (Conv QDQ
calibrated on photos, the LSTM as DynamicQuantizeLSTM); ORT quantize_dynamic (its defaults:
Conv too, as ConvInteger). Accuracy on held-out corpus photos read as 64-pixel grey text
lines: output SQNR against fp32 and the share of CTC time steps whose argmax class agrees.
Latency: 1 thread, all models interleaved in one process, median per line.

    python -m bench.bench_dynamic_lstm_ocr [--width 160]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import interleaved_median_ms, markdown_table, ort_session, write_results

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def _lines(files, width):
    from PIL import Image

    out = []
    for path in files:
        grey = Image.open(path).convert("L").resize((width, 64))
        out.append({"input1": ((np.asarray(grey, np.float32) / 255 - 0.5) / 0.5)[None, None]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=160)
    args = ap.parse_args()

    import onnxq
    from models import packaged
    from onnxq.preprocess import image_files
    from onnxruntime.quantization import quantize_dynamic

    fp32 = packaged.path("ddddocr_ocr")
    files = image_files(CORPUS / "images")
    calib, held = _lines(files[: len(files) // 2], args.width), _lines(files[len(files) // 2:], args.width)
    tmp = Path(tempfile.mkdtemp(prefix="onnxq-ocr-"))
    paths, seconds = {"fp32": fp32}, {"fp32": 0.0}
    for label, recipe, data in (
        ("onnxq int8-dynamic", onnxq.DynamicInt8(), None),
        ("onnxq int8-static", onnxq.StaticInt8(), calib),
    ):
        t = time.perf_counter()
        paths[label] = tmp / (label.replace(" ", "_") + ".onnx")
        onnxq.save(onnxq.quantize(fp32, recipe, data=data), paths[label])
        seconds[label] = time.perf_counter() - t
    t = time.perf_counter()
    paths["ORT quantize_dynamic"] = tmp / "ort_dynamic.onnx"
    quantize_dynamic(str(fp32), str(paths["ORT quantize_dynamic"]))
    seconds["ORT quantize_dynamic"] = time.perf_counter() - t

    sessions = {k: ort_session(p, threads=1) for k, p in paths.items()}
    outputs = {k: [s.run(None, f)[0].astype(np.float64) for f in held] for k, s in sessions.items()}
    ms = interleaved_median_ms({k: (lambda s=s: s.run(None, held[0])) for k, s in sessions.items()}, repeats=30)
    rows = []
    ref = outputs["fp32"]
    for k, outs in outputs.items():
        noise = sum(((r - o) ** 2).sum() for r, o in zip(ref, outs))
        signal = sum((r**2).sum() for r in ref)
        agree = np.concatenate([(r.argmax(-1) == o.argmax(-1)).ravel() for r, o in zip(ref, outs)]).mean()
        rows.append({
            "model": k,
            "size_MB": round(Path(paths[k]).stat().st_size / 1e6, 2),
            "size_ratio": round(Path(paths[k]).stat().st_size / Path(fp32).stat().st_size, 3),
            "sqnr_db": round(10 * np.log10(signal / noise), 2) if noise else None,
            "argmax_agreement": round(float(agree), 4),
            "latency_ms": round(ms[k], 2),
            "speedup_vs_fp32": round(ms["fp32"] / ms[k], 2),
            "quantize_s": round(seconds[k], 1),
        })
    cols = list(rows[0])
    print(markdown_table(rows, cols))
    write_results("dynamic_lstm_ocr", {
        "title": f"ddddocr CNN+LSTM OCR, int8 (held-out: {len(held)} corpus photos as 64x{args.width} grey lines; "
                 f"static calibrated on the other {len(calib)}; 1 thread)",
        "command": f"python -m bench.bench_dynamic_lstm_ocr --width {args.width}",
        "columns": cols,
        "rows": rows,
    })


if __name__ == "__main__":
    main()
