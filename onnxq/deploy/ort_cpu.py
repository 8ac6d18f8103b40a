"""ORT CPU: load the model, find the quantized nodes ORT's graph optimizer did not fuse
into integer kernels (they run in float between DequantizeLinear and QuantizeLinear), run
it, and compare with the float reference.

ORT fuses a DQ→op→Q group into QLinearConv/QLinearMatMul/QGemm/QLinearAdd/... at the
"extended" optimization level; what is left next to a DequantizeLinear afterwards is the
float fallback. The optimized graph is saved with ``optimized_model_filepath``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping

from onnxq.deploy.graph import WEIGHTED_OPS
from onnxq.deploy.report import FALLBACK, DeployReport, Finding
from onnxq.targets import TargetProfile

__all__ = ["optimized_graph_fallbacks", "verify_ort_cpu", "quiet_session_options"]

logger = logging.getLogger(__name__)

_PASS_THROUGH = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")


def quiet_session_options(config: Mapping[str, str] | None = None, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    return so


def _graphs(graph):
    """``graph`` and its subgraphs (If/Loop bodies), as protos."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def optimized_graph_fallbacks(optimized_path: str | os.PathLike, quantizable: tuple[str, ...], rule: str,
                              source_path: str | os.PathLike | None = None) -> tuple[list[Finding], dict[str, int]]:
    """Findings for nodes of ``quantizable`` op types that still read a DequantizeLinear
    output in an ORT-optimized graph, and the optimized graph's op histogram. With
    ``source_path`` (the model ORT optimized), an elementwise op whose result the model does
    not compute with an op of that type is ORT's own (the Mul of a HardSwish it expanded,
    which the model runs in float by design), not a fallback."""
    import collections

    import onnx

    proto = onnx.load(str(optimized_path), load_external_data=False)
    source_values = None
    if source_path is not None:
        source = onnx.load(str(source_path), load_external_data=False)
        source_values = {o: n.op_type for g in _graphs(source.graph) for n in g.node for o in n.output}
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in proto.graph.node:
        for i in n.input:
            consumers[i].append(n)

    def requantized(node) -> bool:
        """Whether ``node``'s result reaches a QuantizeLinear (through reshapes/transposes)."""
        stack, seen = list(node.output), set()
        while stack:
            for c in consumers.get(stack.pop(), ()):
                if c.op_type == "QuantizeLinear":
                    return True
                if c.op_type in _PASS_THROUGH and id(c) not in seen:
                    seen.add(id(c))
                    stack.extend(c.output)
        return False

    hist = collections.Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
    findings = []
    for n in proto.graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in (*quantizable, *_PASS_THROUGH):
            continue
        dq_inputs = [i for i in n.input if i in producer and producer[i].op_type == "DequantizeLinear"]
        # a Conv/MatMul/Gemm left next to a DequantizeLinear runs in float whatever follows; an
        # elementwise op, Concat, pool or reshape only when its result is quantized again (one
        # that reads a dequantized value and hands on a float one is a float op by design)
        if n.op_type not in WEIGHTED_OPS and source_values is not None and not any(
                source_values.get(o) == n.op_type for o in n.output):
            continue  # a node ORT made (an expanded HardSwish's Mul), not one of the model's
        if dq_inputs and (n.op_type in WEIGHTED_OPS or requantized(n)):
            findings.append(Finding(rule, FALLBACK, n.name or f"<unnamed {n.op_type}>", n.op_type,
                                    "not fused into an integer kernel: runs in float between DequantizeLinear "
                                    "and QuantizeLinear"))
    return findings, dict(sorted(hist.items()))


def verify_ort_cpu(
    path: Path,
    profile: TargetProfile,
    report: DeployReport,
    feeds: list,
    float_path: Path | None,
    *,
    threads: int = 1,
    latency: bool = True,
    session_config: Mapping[str, str] | None = None,
) -> None:
    """Fill ``report`` for ORT CPU (also used by ort-mobile on the ``.ort`` file)."""
    import onnxruntime as ort

    from onnxq.deploy.common import compare_runners, interleaved_latency, ort_runner

    with tempfile.TemporaryDirectory(prefix="onnxq-ort-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        so = quiet_session_options(session_config, threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(opt)
        try:
            _register_onnxq_ops(path, so)
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            report.findings.append(Finding("ORT-LOAD", "error", "", "", f"ONNX Runtime cannot load the model: "
                                           f"{str(e).splitlines()[0][:300]}"))
            return
        findings, hist = optimized_graph_fallbacks(opt, profile.qdq_op_types, "ORT-FUSE", path)
    report.findings.extend(findings)
    report.metrics["optimized_ops"] = hist
    run, sess = ort_runner(path, threads=threads, options=quiet_session_options(session_config, threads))
    report.loaded = True
    names = [o.name for o in sess.get_outputs()]
    for feed in feeds[:1]:
        try:
            run(feed)
        except Exception as e:  # loads but cannot run (a shape, a kernel that refuses its inputs)
            report.findings.append(Finding("ORT-RUN", "error", "", "", f"ONNX Runtime loads the model but fails "
                                           f"running it: {str(e).splitlines()[0][:300]}"))
            return
    if float_path is not None:
        ref, _ = ort_runner(float_path, threads=threads, options=quiet_session_options(None, threads))
        report.metrics["error_vs_float"] = compare_runners(ref, run, feeds, names)
        if latency and feeds:
            ms = interleaved_latency({"float": ref, "model": run}, feeds[0])
            report.metrics["latency_ms"] = {k: round(v, 3) for k, v in ms.items()}
            report.metrics["speedup_vs_float"] = round(ms["float"] / ms["model"], 3)
    elif latency and feeds:
        ms = interleaved_latency({"model": run}, feeds[0])
        report.metrics["latency_ms"] = {k: round(v, 3) for k, v in ms.items()}


def _register_onnxq_ops(path, so) -> None:
    """Register the onnxq custom-op library for a model with com.onnxq nodes (--format onnxq)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    if any(o.domain == "com.onnxq" for o in proto.opset_import):
        from onnxq import runtime

        so.register_custom_ops_library(str(runtime.library_path("cpu")))
