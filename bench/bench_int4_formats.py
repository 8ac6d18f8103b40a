"""SmolLM2-135M block-int4 in the three output formats: same logits, tokens/s side by side.

    python -m bench.bench_int4_formats [--algo rtn] [--threads 1] [--repeats 5]

One quantization (``--algo``, block 128 symmetric, every MatMul but none kept in float)
is written three ways from the same packed weights: opset-21 blocked ``DequantizeLinear``
→ ``MatMul`` (``qdq``), ORT's ``com.microsoft.MatMulNBits`` (``matmulnbits``, the
accuracy level onnxq chose) and onnxq's ``com.onnxq.MatMulBlockInt4`` (``onnxq``, the
custom-op library). Logits of each on real text (``bible_web_dev.txt``) are compared with
the ``qdq`` model's (relative L2 error and max abs error / max |logit|); tokens/s are forward
passes over 1, 32 and 256 tokens (no KV cache: the model is logits-only), all sessions with
the same thread count, timed round-robin in one process (median). fp32 is timed alongside.
Writes ``bench/results/int4_formats.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, interleaved_median_ms, markdown_table, write_results

BIBLE = REPO.parent / "shared" / "corpus" / "text" / "bible_web_dev.txt"
SEQ_LENS = (1, 32, 256)
REFERENCE = "qdq (unfused)"
# (row, format, fixed accuracy_level or None for the parity choice, ORT's accuracy level for
# the MatMulNBits it fuses a blocked DequantizeLinear -> MatMul into: None = ORT's default, 4)
# "off": graph optimizations disabled, so DequantizeLinear -> MatMul runs literally
VARIANTS = [
    ("qdq (unfused)", "qdq", None, "off"),
    ("qdq (exact)", "qdq", None, "0"),
    ("qdq (ORT default: fused, int8 activations)", "qdq", None, None),
    ("matmulnbits", "matmulnbits", None, None),
    ("onnxq (exact)", "onnxq", 0, None),
    ("onnxq", "onnxq", None, None),
]


def _session(path: Path, threads: int, fmt: str, fused_level: str | None):
    from onnxq import runtime

    import onnxruntime as ort

    so = runtime.session_options(threads)
    if fused_level == "off":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif fused_level is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", fused_level)
    if fmt == "onnxq":
        so.register_custom_ops_library(str(runtime.library_path("cpu")))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _logits(sess, ids: np.ndarray) -> np.ndarray:
    feed = {"input_ids": ids}
    if "attention_mask" in {i.name for i in sess.get_inputs()}:
        feed["attention_mask"] = np.ones_like(ids)
    return sess.run([sess.get_outputs()[0].name], feed)[0]


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", default="rtn", choices=["rtn", "hqq"], help="data-free algorithm (same weights in every format)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=512, help="real-text tokens whose logits are compared")
    args = ap.parse_args()
    if not BIBLE.exists():
        print(f"corpus text not found: {BIBLE}", file=sys.stderr)
        return 2

    import onnxq
    from models import smollm2

    fp32 = Path(smollm2.build())
    ids = smollm2.token_ids(BIBLE, args.tokens)[None, :]
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxq-int4-formats-") as tmp:
        base = onnxq.WeightOnlyInt4(block_size=128, symmetric=True, algorithm=args.algo)
        files: dict[tuple[str, int | None], tuple[Path, float]] = {}
        for _, fmt, level, _ in VARIANTS:
            if (fmt, level) in files:
                continue
            t0 = time.perf_counter()
            model = onnxq.quantize(fp32, dataclasses.replace(base, format=fmt, accuracy_level=level))
            path = Path(tmp) / f"smollm2_{fmt}_{level}.onnx"
            onnxq.save(model, path)
            files[(fmt, level)] = (path, time.perf_counter() - t0)
            del model
        sessions = {"fp32": _session(fp32, args.threads, "fp32", None)}
        paths = {"fp32": (fp32, 0.0)}
        for label, fmt, level, fused in VARIANTS:
            paths[label] = files[(fmt, level)]
            sessions[label] = _session(paths[label][0], args.threads, fmt, fused)
        logits = {k: _logits(s, ids).astype(np.float64) for k, s in sessions.items()}
        speed: dict[str, dict[int, float]] = {k: {} for k in sessions}
        for n in SEQ_LENS:
            x = ids[:, :n]
            ms = interleaved_median_ms(
                {k: (lambda s=s: _logits(s, x)) for k, s in sessions.items()}, repeats=args.repeats, warmup=1
            )
            for k, v in ms.items():
                speed[k][n] = n / (v / 1e3)
        ref, f32 = logits[REFERENCE], logits["fp32"]
        for k, (p, qs) in paths.items():
            got = logits[k]
            rows.append({
                "model": k,
                "rel_l2_vs_qdq": _rel(got, ref),
                "max_abs_vs_qdq_rel": float(np.abs(got - ref).max() / np.abs(ref).max()),
                "rel_l2_vs_fp32": _rel(got, f32),
                "argmax_agreement_vs_fp32": float((got.argmax(-1) == f32.argmax(-1)).mean()),
                **{f"tok_per_s_seq{n}": round(speed[k][n], 2) for n in SEQ_LENS},
                "size_mb": round(sum(f.stat().st_size for f in p.parent.glob(p.name + "*")) / 1e6, 1),
                "quantize_s": round(qs, 2),
            })
    exact = next(r for r in rows if r["model"] == "onnxq (exact)")
    notes = [
        f"{args.algo} block 128 symmetric, {args.threads} thread(s); logits on {args.tokens} tokens of "
        f"bible_web_dev.txt. Reference (*_vs_qdq): the qdq model run literally (ORT graph optimizations off: "
        f"DequantizeLinear -> MatMul in float). Acceptance, --format onnxq at accuracy level 0 vs --format qdq: "
        f"rel L2 {exact['rel_l2_vs_qdq']:.2e} ({'met' if exact['rel_l2_vs_qdq'] <= 1e-4 else 'NOT met'}: <= 1e-4)",
        "qdq (exact): ORT's fusion of DequantizeLinear -> MatMul into MatMulNBits at accuracy level 0 (session config); ORT by default fuses a blocked DequantizeLinear -> MatMul into MatMulNBits at accuracy level 4 (int8 "
        "activations everywhere); matmulnbits/onnxq rows use the per-layer level onnxq chose by measured parity",
        "tokens/s: one forward over seq tokens (no KV cache), median of round-robin repeats in one process",
    ]
    columns = list(rows[0])
    print(markdown_table(rows, columns))
    for n in notes:
        print("-", n)
    write_results("int4_formats", {
        "title": "SmolLM2-135M int4 in three formats: logits vs the qdq model, tokens/s (ORT CPU)",
        "command": "python -m bench.bench_int4_formats",
        "columns": columns, "rows": rows, "notes": notes,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
