"""Helpers shared by the benchmark scripts: timing side by side, results out."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def ort_session(path, threads: int = 1, **kw):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kw)


def interleaved_median_ms(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 2) -> dict[str, float]:
    """Median wall time of each callable, measured round-robin so that machine noise hits
    every candidate alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def write_results(name: str, payload: dict) -> Path:
    """bench/results/<name>.json. For the suite summary give ``title``, ``command``,
    ``columns`` and ``rows`` (a list of dicts), optionally ``notes``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": _cpu_name(), "python": platform.python_version(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def peak_rss_of(cmd: list[str], cwd: Path = REPO) -> tuple[int, float, str]:
    """Run ``cmd`` in a fresh process; (return code, its peak RSS in GiB, its stdout)."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    return proc.returncode, usage.ru_maxrss / 2**20, text  # ru_maxrss is KiB on Linux


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def embedding_rows(paths: dict, eval_sentences: list[str], *, repeats: int, seconds: dict | None = None) -> list[dict]:
    """MiniLM sentence-embedding rows for each model in ``paths`` (label -> path, "fp32"
    first): cosine of its embeddings with fp32's over ``eval_sentences``, file size, optional
    quantization seconds, and 1-thread latency on 32 sentences (round-robin, one process)."""
    import numpy as np

    from models import minilm

    fp32 = paths["fp32"]
    ref = minilm.embed(fp32, eval_sentences)
    feeds = minilm.encode(eval_sentences[:32])
    sessions = {k: ort_session(p) for k, p in paths.items()}
    names = {k: {i.name for i in s.get_inputs()} for k, s in sessions.items()}
    latency = interleaved_median_ms(
        {k: (lambda s=s, n=names[k]: s.run(None, {i: v for i, v in feeds.items() if i in n})) for k, s in sessions.items()},
        repeats=repeats,
    )
    rows = []
    for label, path in paths.items():
        emb = ref if label == "fp32" else minilm.embed(path, eval_sentences)
        cos = np.sum(emb * ref, axis=1)  # both L2-normalised
        row = {"model": label, "mean cosine": float(cos.mean()), "min cosine": float(cos.min()),
               "size MB": Path(path).stat().st_size / 1e6}
        if seconds is not None:
            row["quantize s"] = seconds.get(label, 0.0)
        row["latency ms (32 sent., 1 thr)"] = latency[label]
        row["speed-up vs fp32"] = latency["fp32"] / latency[label]
        rows.append(row)
    return rows
