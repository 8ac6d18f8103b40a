"""ORT mobile: convert the model to the ``.ort`` format with the onnxruntime wheel's own
converter (``python -m onnxruntime.tools.convert_onnx_models_to_ort``), which also writes
the reduced-operator build config a minimal mobile build is made from; then load the
``.ort`` with ORT and check it answers like the ``.onnx``.

The conversion uses ``--target_platform arm`` (the converter then allows int8 QDQ
fusions, ``session.qdqisint8allowed=1``, and skips the x86-only NCHWc layout) and the
"Fixed" optimization style (optimizations baked in), with operator type reduction.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from onnxq.deploy.report import ERROR, WARNING, DeployReport, Finding
from onnxq.errors import OnnxqError
from onnxq.targets import TargetProfile

__all__ = ["convert_to_ort", "OrtConversion", "verify_ort_mobile"]

logger = logging.getLogger(__name__)

_ARM_SESSION_CONFIG = {"session.qdqisint8allowed": "1"}


class OrtConversion:
    """Paths the converter wrote: the ``.ort`` model, the reduced-ops config, and the
    optimized ONNX equivalent (same optimizations, for reading node names)."""

    def __init__(self, ort_path: Path, config_path: Path, optimized_onnx: Path | None, log: str) -> None:
        self.ort_path = ort_path
        self.config_path = config_path
        self.optimized_onnx = optimized_onnx
        self.log = log

    def op_types(self) -> dict[str, dict[str, list[str]]]:
        """``domain;opset`` -> {op type: the element types the config keeps for it (empty:
        every type)}, read from the type-reduced config's lines
        ``domain;opset;Op{"inputs": {"0": ["float"]}},Op2,...``."""
        import json

        out: dict[str, dict[str, list[str]]] = {}
        for line in self.config_path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            domain, opset, ops = line.split(";", 2)
            entries, depth, cur = [], 0, ""
            for ch in ops:
                if ch == "," and depth == 0:
                    entries.append(cur)
                    cur = ""
                    continue
                depth += ch == "{"
                depth -= ch == "}"
                cur += ch
            if cur:
                entries.append(cur)
            table = out.setdefault(f"{domain};{opset}", {})
            for e in entries:
                name, _, spec = e.partition("{")
                types: set[str] = set()
                if spec:
                    try:
                        info = json.loads("{" + spec)
                    except ValueError:
                        info = {}
                    for side in info.values():
                        for ts in side.values():
                            types |= set(ts)
                table[name.strip()] = sorted(types)
        return out


def convert_to_ort(
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    target_platform: str = "arm",
    save_optimized_onnx: bool = True,
) -> OrtConversion:
    """Run the onnxruntime wheel's converter on one model: ``<stem>.ort`` and
    ``<stem>.required_operators_and_types.config`` in ``output_dir`` (plus
    ``<stem>.optimized.onnx`` with ``save_optimized_onnx``). Raise OnnxqError with the
    converter's last output line when it fails."""
    path = Path(path).resolve()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
        "--output_dir", str(output_dir),
        "--optimization_style", "Fixed",
        "--enable_type_reduction",
        *(["--save_optimized_onnx_model"] if save_optimized_onnx else []),
        "--target_platform", target_platform,
        str(path),
    ]
    env = dict(os.environ, ORT_LOGGING_LEVEL="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = (proc.stdout or "") + (proc.stderr or "")
    ort_path = output_dir / (path.stem + ".ort")
    if proc.returncode != 0 or not ort_path.exists():
        lines = [ln for ln in log.splitlines() if ln.strip() and "[W:onnxruntime" not in ln]
        raise OnnxqError(f"converting {path.name} to the ORT format failed: {lines[-1][:300] if lines else proc.returncode}")
    config = output_dir / (path.stem + ".required_operators_and_types.config")
    optimized = output_dir / (path.stem + ".optimized.onnx")
    return OrtConversion(ort_path, config, optimized if optimized.exists() else None, log)


def verify_ort_mobile(
    path: Path,
    profile: TargetProfile,
    report: DeployReport,
    feeds: list,
    float_path: Path | None,
    *,
    workdir: Path,
    threads: int = 1,
    latency: bool = True,
) -> None:
    from onnxq.deploy.common import compare_runners, ort_runner
    from onnxq.deploy.ort_cpu import optimized_graph_fallbacks, quiet_session_options

    try:
        conv = convert_to_ort(path, workdir)
    except OnnxqError as e:
        message = str(e)
        if "com.onnxq" in message or "MatMulBlockInt4" in message:
            message += ("; ORT mobile builds do not carry onnxq's custom-op library: quantize with --format "
                        "matmulnbits (or qdq) for --target ort-mobile")
        report.findings.append(Finding("MOBILE-CONVERT", ERROR, "", "", message))
        return
    report.metrics["ort_file"] = str(conv.ort_path)
    report.metrics["ort_bytes"] = conv.ort_path.stat().st_size
    report.metrics["reduced_ops_config"] = str(conv.config_path)
    report.metrics["required_ops"] = conv.op_types()
    if conv.optimized_onnx is not None:
        findings, hist = optimized_graph_fallbacks(conv.optimized_onnx, profile.qdq_op_types, "MOBILE-FUSE", path)
        report.findings.extend(findings)
        report.metrics["optimized_ops"] = hist
    # the .ort loads and answers like the .onnx
    try:
        run_ort, sess = ort_runner(conv.ort_path, threads=threads, options=quiet_session_options(_ARM_SESSION_CONFIG, threads))
    except Exception as e:
        report.findings.append(Finding("MOBILE-LOAD", ERROR, "", "", f"ORT cannot load the .ort file: "
                                       f"{str(e).splitlines()[0][:300]}"))
        return
    report.loaded = True
    names = [o.name for o in sess.get_outputs()]
    run_onnx, _ = ort_runner(path, threads=threads, options=quiet_session_options(None, threads))
    match = compare_runners(run_onnx, run_ort, feeds, names)
    report.metrics["ort_vs_onnx"] = match
    for name, m in match.items():
        top1 = m.get("top1_agreement")
        if (top1 is not None and top1 < 1.0) or (m["cosine"] < 0.999):
            report.findings.append(Finding("MOBILE-MATCH", WARNING, "", "", f"output {name}: the .ort answers "
                                           f"differently from the .onnx (cosine {m['cosine']}, top-1 {top1})"))
    if float_path is not None:
        ref, _ = ort_runner(float_path, threads=threads, options=quiet_session_options(None, threads))
        report.metrics["error_vs_float"] = compare_runners(ref, run_ort, feeds, names)
    if latency and feeds:
        from onnxq.deploy.common import interleaved_latency

        ms = interleaved_latency({"onnx": run_onnx, "ort": run_ort}, feeds[0], rounds=20)
        report.metrics["latency_ms"] = {k: round(v, 3) for k, v in ms.items()}
