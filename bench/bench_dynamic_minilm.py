"""all-MiniLM-L6-v2 int8-dynamic: onnxq vs ORT's quantize_dynamic, same sentences.

Mean cosine between fp32 and int8 sentence embeddings on N sentences of
bible_web_dev.txt, file size, and latency (1 thread, interleaved in one process).

    python -m bench.bench_dynamic_minilm [--sentences 512]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


from bench.common import embedding_rows, markdown_table, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=512)
    args = ap.parse_args()

    import onnxq
    from models import minilm
    from onnxruntime.quantization import quantize_dynamic

    fp32 = minilm.build()
    sentences = minilm.bible_sentences(args.sentences)
    tmp = Path(tempfile.mkdtemp(prefix="onnxq-minilm-"))
    variants = {
        "onnxq int8-dynamic": onnxq.DynamicInt8(),
        "onnxq int8-dynamic --fused": onnxq.DynamicInt8(fused=True),
    }
    paths = {"fp32": fp32}
    for label, recipe in variants.items():
        out = tmp / (label.replace(" ", "_").replace("-", "") + ".onnx")
        onnxq.save(onnxq.quantize(fp32, recipe), out)
        paths[label] = out
    ort_out = tmp / "ort_dynamic.onnx"
    quantize_dynamic(str(fp32), str(ort_out))
    paths["ORT quantize_dynamic"] = ort_out

    rows = embedding_rows(paths, sentences, repeats=10)
    cols = list(rows[0])
    print(f"all-MiniLM-L6-v2, {len(sentences)} sentences of bible_web_dev.txt")
    print(markdown_table(rows, cols))
    write_results(
        "dynamic_minilm",
        {
            "title": f"all-MiniLM-L6-v2 int8-dynamic, {len(sentences)} sentences of bible_web_dev.txt (1 thread)",
            "command": f"python -m bench.bench_dynamic_minilm --sentences {args.sentences}",
            "columns": cols,
            "rows": rows,
            "sentences": len(sentences),
        },
    )


if __name__ == "__main__":
    main()
