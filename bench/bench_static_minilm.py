"""all-MiniLM-L6-v2 int8-static: onnxq vs ORT's quantize_static on the same sentences.

Calibrates on sentences [0, C) of bible_web_dev.txt, evaluates the mean cosine between
fp32 and int8 sentence embeddings on the next N sentences; size and latency (1 thread,
interleaved in one process).

    python -m bench.bench_static_minilm [--calib 128] [--sentences 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


from bench.common import embedding_rows, markdown_table, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--methods", default="minmax,percentile,mse")
    args = ap.parse_args()

    import onnxq
    from models import minilm
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32 = minilm.build()
    calib_sentences = minilm.bible_sentences(args.calib)
    eval_sentences = minilm.bible_sentences(args.sentences, offset=args.calib)
    calib_feeds = [minilm.encode([s]) for s in calib_sentences]  # one sentence per sample: varying lengths
    tmp = Path(tempfile.mkdtemp(prefix="onnxq-minilm-static-"))
    paths: dict[str, Path] = {"fp32": fp32}
    seconds: dict[str, float] = {"fp32": 0.0}
    for method in args.methods.split(","):
        label = f"onnxq int8-static {method}"
        out = tmp / f"onnxq_{method}.onnx"
        t0 = time.perf_counter()
        onnxq.save(onnxq.quantize(fp32, onnxq.StaticInt8(calibration=method), data=calib_feeds), out)
        seconds[label] = time.perf_counter() - t0
        paths[label] = out

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib_feeds)

        def get_next(self):
            return next(self.it, None)

    out = tmp / "ort_static.onnx"
    t0 = time.perf_counter()
    quantize_static(
        str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
    )
    seconds["ORT quantize_static (MinMax, per-channel)"] = time.perf_counter() - t0
    paths["ORT quantize_static (MinMax, per-channel)"] = out

    rows = embedding_rows(paths, eval_sentences, repeats=8, seconds=seconds)
    cols = list(rows[0])
    print(markdown_table(rows, cols))
    write_results(
        "static_minilm",
        {
            "title": f"all-MiniLM-L6-v2 int8-static: calibrated on {args.calib} sentences, cosine on the next {len(eval_sentences)}",
            "command": f"python -m bench.bench_static_minilm --calib {args.calib} --sentences {args.sentences}",
            "columns": cols,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
