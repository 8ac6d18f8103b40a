"""Block-int4 weight-only quantization algorithms (numpy only).

- :mod:`onnxq.int4.blocks`: the ``[K, N]`` working layout (:class:`BlockQuant`), RTN and the
  (importance-weighted) clip search; packing into :mod:`onnxq.formats`' layout.
- :mod:`onnxq.int4.hqq`: half-quadratic optimisation of scales / zero points (no data).
- :mod:`onnxq.int4.gptq`: GPTQ with lazy block updates, act-order, batched over layers.
- :mod:`onnxq.int4.awq`: activation-aware per-input-channel scale search.
- :mod:`onnxq.int4.calibrate`: ``X^T X`` and ``mean|x|`` of MatMul inputs, streamed
  through one ORT session.
- :mod:`onnxq.int4.accuracy`: MatMulNBits ``accuracy_level`` by measured parity.
- :mod:`onnxq.int4.driver`: the ``int4-weight-only`` recipe end to end.

The graph rewrite is ``onnxq.passes.quantize_matmul_int4.QuantizeMatMulInt4Pass``.
"""

from onnxq.int4.blocks import BlockQuant, Int4Spec, rtn

__all__ = ["BlockQuant", "Int4Spec", "rtn"]
