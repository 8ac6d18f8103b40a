"""InferShapesPass: ONNX shape and type inference merged into the IR.

A thin, non-strict configuration of onnx_ir's ShapeInferencePass (which already reports
``modified`` exactly and strips large initializers before calling ONNX, so models over
2 GB work). Non-strict: a model with one op ONNX cannot infer still gets the rest."""

from __future__ import annotations

from onnx_ir.passes.common import ShapeInferencePass

__all__ = ["InferShapesPass"]


class InferShapesPass(ShapeInferencePass):
    def __init__(self, *, strict: bool = False, data_prop: bool = True) -> None:
        super().__init__(check_type=False, strict_mode=strict, data_prop=data_prop)
