"""SmolLM2-135M int8-dynamic: per-tensor vs per-token activation scales, and ORT's quantize_dynamic.

WEB perplexity on the first N tokens of bible_web_dev.txt (one window), file size, and the
time of one forward pass over 128 tokens and over 1 token (1 thread, interleaved in one
process). Rows: fp32, onnxq with ``token_scales`` none / products (default) / all, and ORT's
``quantize_dynamic`` (per-channel int8 weights, its defaults otherwise).

    python -m bench.bench_dynamic_smollm2 [--tokens 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import interleaved_median_ms, markdown_table, ort_session, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args()

    import onnxq
    from models import perplexity, smollm2
    from models.cache import corpus_dir
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = smollm2.build()
    ids = smollm2.token_ids(corpus_dir() / "text" / "bible_web_dev.txt", args.tokens)
    tmp = Path(tempfile.mkdtemp(prefix="onnxq-smollm2-dyn-"))
    paths: dict[str, Path] = {"fp32": fp32}
    seconds: dict[str, float] = {"fp32": 0.0}
    for mode in ("none", "products", "all"):
        label = f"onnxq int8-dynamic token_scales={mode}" + (" (default)" if mode == "products" else "")
        out = tmp / f"onnxq_{mode}.onnx"
        t0 = time.perf_counter()
        onnxq.save(onnxq.quantize(str(fp32), onnxq.DynamicInt8(token_scales=mode)), out)
        seconds[label] = time.perf_counter() - t0
        paths[label] = out
    out = tmp / "ort_dynamic.onnx"
    t0 = time.perf_counter()
    quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     use_external_data_format=True)
    seconds["ORT quantize_dynamic (per-channel)"] = time.perf_counter() - t0
    paths["ORT quantize_dynamic (per-channel)"] = out

    sessions = {k: ort_session(p) for k, p in paths.items()}
    ppl = {k: perplexity.perplexity(s, ids, n_tokens=args.tokens) for k, s in sessions.items()}
    times = {}
    for n in (128, 1):
        x = ids[None, :n].astype(np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x)}
        times[n] = interleaved_median_ms({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, repeats=7)

    def size_mb(p: Path) -> float:
        return sum(f.stat().st_size for f in p.parent.glob(p.name + "*")) / 1e6 + sum(
            f.stat().st_size for f in p.parent.glob(p.stem + ".data")) / 1e6

    rows = [
        {
            "model": k,
            "perplexity": ppl[k],
            "ppl / fp32": ppl[k] / ppl["fp32"],
            "size MB": size_mb(p),
            "quantize s": seconds[k],
            "ms 128 tokens": times[128][k],
            "ms 1 token": times[1][k],
            "speed-up 128 tokens": times[128]["fp32"] / times[128][k],
        }
        for k, p in paths.items()
    ]
    cols = list(rows[0])
    print(markdown_table(rows, cols))
    write_results(
        "dynamic_smollm2",
        {
            "title": f"SmolLM2-135M int8-dynamic: WEB perplexity on {args.tokens} tokens, 1 thread",
            "command": f"python -m bench.bench_dynamic_smollm2 --tokens {args.tokens}",
            "columns": cols,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
