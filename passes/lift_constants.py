"""LiftConstantsPass: tensor-valued ``Constant`` nodes become initializers.

Exporters such as Paddle2ONNX keep weights in Constant nodes; quantization passes look
for weights among initializers, so this runs first. Scalars and small constants are lifted
too (ORT folds them anyway). Subgraph constants stay in their subgraph."""

from __future__ import annotations

from onnx_ir.passes.common import LiftConstantsToInitializersPass

__all__ = ["LiftConstantsPass"]


class LiftConstantsPass(LiftConstantsToInitializersPass):
    def __init__(self) -> None:
        super().__init__(lift_all_constants=True, size_limit=0)
