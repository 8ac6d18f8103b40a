"""A CI-sized sample of the ONNX node-test sweep (bench/sweep_onnx_node_tests.py runs all)."""

import logging

import pytest

from onnxq.recipes import DynamicInt8
from onnxq.sweep import frozen_weights_variant, node_test_cases, run_case

PATTERN = r"^test_(conv|gemm|matmul|gather|convtranspose|einsum|relu|add|averagepool|maxpool|resize|concat|reshape)"


def _cases():
    for base in node_test_cases(PATTERN):
        yield base
        frozen = frozen_weights_variant(base)
        if frozen is not None:
            yield frozen


CASES = list(_cases())


@pytest.mark.parametrize("recipe", [DynamicInt8(min_weight_elements=0)], ids=lambda r: r.name)
def test_sweep_sample_has_no_crash_or_mismatch(recipe):
    logging.disable(logging.WARNING)
    try:
        outcomes = [run_case(c, recipe, calibrate=False) for c in CASES]
    finally:
        logging.disable(logging.NOTSET)
    bad = [o for o in outcomes if o.kind in ("crash", "mismatch")]
    assert not bad, bad[:5]
    assert sum(o.kind == "quantized" for o in outcomes) >= 10
    assert all(o.detail for o in outcomes if o.kind in ("nothing-to-quantize", "refused"))
