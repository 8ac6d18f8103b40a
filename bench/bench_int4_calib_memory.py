"""Peak memory of int4 GPTQ calibration under ``calib_memory_mb``: the whole
``onnxq.quantize`` call (load, calibration, GPTQ block 128, save) in a fresh process per
budget; peak RSS (``ru_maxrss``), wall time, and the output's quality (the same for every
budget: the statistics are identical).

- ``smollm2``: SmolLM2-135M, 16x512 calibration tokens, perplexity on the bench's text.
  Its Hessians are ~0.8 GB (float64), less than the rest of the peak.
- ``stack``: a residual MatMul stack (``models.synthetic``, 6 layers of 6144x6144: 0.9 GB of
  weights, 1.8 GB of Hessians -- the shape of a big LLM, where Hessians dominate), 8 random
  calibration samples of 64 rows; output SQNR vs fp32 on other random rows.

    python -m bench.bench_int4_calib_memory [--model smollm2|stack] [--budgets 0,128]

Writes ``bench/results/int4_calib_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import markdown_table, peak_rss_of, write_results


STACK_K, STACK_LAYERS = 6144, 6


def _stack_rows(seed: int, n: int = 8):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((64, STACK_K), dtype=np.float32)} for _ in range(n)]


def _stack_sqnr(fp32: Path, out: Path) -> float:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref, got = (ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in (fp32, out))
    sig = err = 0.0
    for feed in _stack_rows(1, 2):
        a = ref.run(None, feed)[0].astype(np.float64)
        b = got.run(None, feed)[0].astype(np.float64)
        sig += float((a**2).sum())
        err += float(((a - b) ** 2).sum())
    return 10 * float(np.log10(sig / err))


def _child(kind: str, fp32: str, out: str, mb: int) -> None:
    import onnxq

    t0 = time.perf_counter()
    recipe = onnxq.WeightOnlyInt4(algorithm="gptq", block_size=128, format="matmulnbits", calib_memory_mb=mb)
    if kind == "stack":
        data = _stack_rows(0)
    else:
        from bench.bench_int4_smollm2 import _ids
        from onnxq.calib_text import lm_feeds

        data = lm_feeds(["input_ids", "attention_mask"], _ids()[1])
    model, report = onnxq.quantize_with_report(fp32, recipe, data)
    onnxq.save(model, out)
    print(json.dumps({"total_s": time.perf_counter() - t0, "notes": list(report.notes)}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("smollm2", "stack"), default="smollm2")
    ap.add_argument("--budgets", default="0,128", help="calib_memory_mb values (0: no bound)")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "FP32", "OUT", "MB"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], args.child[2], int(args.child[3]))
        return 0
    if args.model == "stack":
        from models import synthetic

        fp32 = synthetic.cached("matmul_stack", k=STACK_K, n=STACK_K, layers=STACK_LAYERS)
    else:
        from models import smollm2

        fp32 = smollm2.build()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxq-calibmem-") as tmp:
        for mb in [int(b) for b in args.budgets.split(",")]:
            out = Path(tmp) / f"q{mb}.onnx"
            rc, rss, text = peak_rss_of([sys.executable, "-m", "bench.bench_int4_calib_memory", "--child", args.model,
                                         str(fp32), str(out), str(mb)])
            if rc:
                raise SystemExit(f"child with calib_memory_mb={mb} failed ({rc})")
            info = json.loads(text.strip().splitlines()[-1])
            calib = next((n for n in info["notes"] if n.startswith("calibrated")), "")
            if args.model == "stack":
                quality = {"output_sqnr_db": round(_stack_sqnr(fp32, out), 2)}
            else:
                from bench.bench_int4_smollm2 import _ppl

                quality = {"ppl": round(_ppl(out), 4)}
            rows.append({"model": args.model, "calib_memory_mb": mb or "no bound", "peak_rss_gib": round(rss, 3),
                         "total_s": round(info["total_s"], 1), **quality, "calibration": calib})
            print(json.dumps(rows[-1]), flush=True)
    columns = ["model", "calib_memory_mb", "peak_rss_gib", "total_s", "ppl" if args.model == "smollm2" else "output_sqnr_db",
               "calibration"]
    print(markdown_table(rows, columns))
    what = "SmolLM2-135M" if args.model == "smollm2" else f"MatMul stack {STACK_LAYERS}x{STACK_K}x{STACK_K}"
    path = write_results(f"int4_calib_memory_{args.model}", {
        "title": f"{what} GPTQ (block 128): peak RSS of the whole quantize call by calib_memory_mb",
        "command": f"python -m bench.bench_int4_calib_memory --model {args.model} --budgets {args.budgets}",
        "columns": columns, "rows": rows,
    })
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
