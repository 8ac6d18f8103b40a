"""OpenVINO CPU: read the QDQ model with OpenVINO's ONNX frontend, compile it for the CPU
plugin, check which layers execute in int8, run it, and compare with the float model run
in OpenVINO too (same process, same thread count, timed alternately).

The runtime model (``compiled_model.get_runtime_model()``) lists the executed layers;
each op's rt_info carries ``layerType``, ``runtimePrecision`` (``u8``/``i8`` for int8
kernels) and ``originalLayersNames`` (the ONNX nodes fused into it). A Convolution /
FullyConnected / MatMul built from an ONNX node that had Q/DQ on its inputs but that
executes in f32/bf16 is a float fallback: OpenVINO's low-precision transformations did not
accept its quantization (e.g. per-channel activation scales, a float weight, an
unsupported zero point).

Needs the ``openvino`` package (``pip install onnxq[openvino]``).
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from onnxq.deploy.report import ERROR, FALLBACK, DeployReport, Finding
from onnxq.errors import OnnxqError

__all__ = ["OpenVinoModel", "compile_openvino", "verify_openvino", "runtime_layers", "INT8_PRECISIONS"]

logger = logging.getLogger(__name__)

INT8_PRECISIONS = ("u8", "i8")
_INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QLinearConv", "QLinearMatMul")
_COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


def _openvino():
    try:
        import openvino
    except ImportError:
        raise OnnxqError("verifying for openvino needs the openvino package: pip install 'onnxq[openvino]'") from None
    return openvino


class OpenVinoModel:
    """A compiled OpenVINO model as a runner: ``model(feed) -> [outputs]``."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.outputs = list(compiled.outputs)

    def __call__(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer(dict(feed))
        return [np.array(res[o]) for o in self.outputs]

    @property
    def output_names(self) -> list[str]:
        return [o.get_any_name() for o in self.outputs]


def compile_openvino(path: str | Path, *, threads: int = 1) -> OpenVinoModel:
    """Read an ONNX file with the ONNX frontend and compile it for CPU: ``threads``
    inference threads, one stream, latency hint, float layers in f32 (not bf16)."""
    ov = _openvino()
    core = ov.Core()
    model = core.read_model(str(path))
    config = {
        "INFERENCE_NUM_THREADS": int(threads),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    return OpenVinoModel(core.compile_model(model, "CPU", config))


def _rt(op, key: str) -> str:
    info = op.get_rt_info()
    if key not in info:
        return ""
    v = info[key]
    return v.astype(str) if hasattr(v, "astype") else str(v)


def runtime_layers(model: OpenVinoModel) -> list[dict[str, object]]:
    """The executed layers: type, runtime precision, the ONNX nodes fused into each."""
    out = []
    for op in model.compiled.get_runtime_model().get_ordered_ops():
        out.append({
            "name": op.get_friendly_name(),
            "type": _rt(op, "layerType"),
            "precision": _rt(op, "runtimePrecision"),
            "original": [s for s in _rt(op, "originalLayersNames").split(",") if s],
        })
    return out


def _quantized_onnx_nodes(path: Path) -> dict[str, str]:
    """ONNX nodes meant to compute in int8: weighted nodes whose data input comes from a
    DequantizeLinear, and integer ops (MatMulInteger, DynamicQuantizeMatMul, ...)."""
    from onnxq import modelio
    from onnxq.deploy.graph import WEIGHTED_OPS, QdqView

    view = QdqView(modelio.load(path))
    return {n.name: n.op_type for n in view.compute_nodes if n.name and (
        (n.op_type in WEIGHTED_OPS and view.input_dq(n, 0) is not None) or n.op_type in _INTEGER_OPS)}


def _onnx_name(original: str, known: Mapping[str, str]) -> str | None:
    """The ONNX node an OpenVINO layer name comes from: the frontend names a Conv's bias-free
    part ``<node>/WithoutBiases`` and so on, so strip ``/suffix`` parts until one matches."""
    name = original
    while name:
        if name in known:
            return name
        if "/" not in name:
            return None
        name = name.rsplit("/", 1)[0]
    return None


# OpenVINO this many dB below ORT CPU on the same file and data: worth a note (its int8 kernels
# and QDQ fusions are its own; a YOLOv8n detector's box rows lost 15 dB there)
OPENVINO_GAP_DB = 3.0


def _against_ort_cpu(path: Path, float_path: Path, report, feeds, names, threads: int) -> None:
    """ORT CPU's error on the same model, files and data, beside OpenVINO's
    (``metrics["ort_cpu_error_vs_float"]``), and a note for each output where OpenVINO is
    :data:`OPENVINO_GAP_DB` or more below it."""
    from onnxq.deploy.common import compare_runners, ort_runner

    try:
        ort_ref, _ = ort_runner(float_path, threads=threads)
        ort_run, _ = ort_runner(path, threads=threads)
        ort_err = compare_runners(ort_ref, ort_run, feeds, names)
    except Exception as e:  # noqa: BLE001 - ORT is only the yardstick here
        report.notes.append(f"ORT CPU could not run the model for comparison: {str(e).splitlines()[0][:160]}")
        return
    report.metrics["ort_cpu_error_vs_float"] = ort_err
    for name, ov in report.metrics["error_vs_float"].items():
        a, b = ov.get("sqnr_db"), ort_err.get(name, {}).get("sqnr_db")
        if a is not None and b is not None and a < b - OPENVINO_GAP_DB:
            report.notes.append(
                f"output {name!r}: OpenVINO runs it {b - a:.1f} dB further from the float model than ORT CPU does on "
                f"the same file ({a:.1f} vs {b:.1f} dB): check it on real data in OpenVINO, and try "
                "`onnxq compare` / --exclude on the layers that feed it"
            )


def verify_openvino(
    path: Path,
    report: DeployReport,
    feeds: list,
    float_path: Path | None,
    *,
    threads: int = 1,
    latency: bool = True,
) -> None:
    from onnxq.deploy.common import compare_runners, interleaved_latency

    ov = _openvino()
    report.runtime = f"OpenVINO {ov.__version__.split('-')[0]} CPU"
    try:
        model = compile_openvino(path, threads=threads)
    except OnnxqError:
        raise
    except Exception as e:
        report.findings.append(Finding("OV-LOAD", ERROR, "", "", f"OpenVINO cannot read/compile the model: "
                                       f"{str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__}"))
        return
    report.loaded = True
    layers = runtime_layers(model)
    hist = collections.Counter(f"{d['type']}:{d['precision']}" for d in layers if d["type"] in _COMPUTE_LAYERS)
    report.metrics["compute_layers"] = dict(sorted(hist.items()))
    int8 = sum(n for k, n in hist.items() if k.split(":")[1] in INT8_PRECISIONS)
    total = sum(hist.values())
    report.metrics["int8_compute_layers"] = f"{int8}/{total}"
    quantized = _quantized_onnx_nodes(path)
    seen: set[str] = set()
    for d in layers:
        if d["type"] not in _COMPUTE_LAYERS:
            continue
        names = sorted({m for m in (_onnx_name(o, quantized) for o in d["original"]) if m})
        seen.update(names)
        if names and d["precision"] not in INT8_PRECISIONS:
            for n in names:
                report.findings.append(Finding("OV-PRECISION", FALLBACK, n, quantized[n],
                                               f"is quantized but executes in {d['precision'] or '?'} "
                                               f"({d['type']}): OpenVINO did not take its quantization"))
    run = model
    for feed in feeds[:1]:
        run(feed)
    if float_path is not None:
        try:
            ref = compile_openvino(float_path, threads=threads)
        except Exception as e:
            raise OnnxqError(f"OpenVINO cannot compile the float model {float_path}: {str(e)[:200]}") from None
        report.metrics["error_vs_float"] = compare_runners(ref, run, feeds, run.output_names)
        _against_ort_cpu(path, float_path, report, feeds, run.output_names, threads)
        if latency and feeds:
            ms = interleaved_latency({"float": ref, "model": run}, feeds[0])
            report.metrics["latency_ms"] = {k: round(v, 3) for k, v in ms.items()}
            report.metrics["speedup_vs_float"] = round(ms["float"] / ms["model"], 3)
    elif latency and feeds:
        ms = interleaved_latency({"model": run}, feeds[0])
        report.metrics["latency_ms"] = {k: round(v, 3) for k, v in ms.items()}
