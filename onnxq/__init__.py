"""onnxq: graph-level quantization for ONNX models."""

from __future__ import annotations

__version__ = "0.1.0"

from onnxq.api import QuantizeReport, quantize, quantize_with_report, save  # noqa: E402
from onnxq.errors import OnnxqError  # noqa: E402
from onnxq.modelio import load  # noqa: E402
from onnxq.recipes import DynamicInt8, StaticInt8, WeightOnlyInt4, load_recipe  # noqa: E402

__all__ = [
    "__version__",
    "quantize",
    "quantize_with_report",
    "save",
    "load",
    "load_recipe",
    "QuantizeReport",
    "OnnxqError",
    "DynamicInt8",
    "StaticInt8",
    "WeightOnlyInt4",
]
