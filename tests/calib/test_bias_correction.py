"""Bias correction's fast rounding-error sums against the reference weight quantization."""

import numpy as np
import pytest

from onnxq import qparams as qp
from onnxq.calib.static import _rounding_error_sums
from onnxq.passes.insert_qdq import WeightSpec, quantize_weight


# the last two span several blocks of output channels (one block: about 16K weights)
@pytest.mark.parametrize("shape", [(16, 8, 1, 1), (32, 1, 3, 3), (8, 4, 5, 5), (6, 3, 7), (300, 64, 3, 3), (5, 5000, 1, 1)])
def test_rounding_error_sums_match_the_reference(shape):
    rng = np.random.default_rng(sum(shape))
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 3, (shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)
    w[0] = 0.0  # an all-zero channel
    spec = WeightSpec(node=None, index=1, axis=0, qtype=qp.INT8, symmetric=True)
    ref = (quantize_weight(w, 0, qp.INT8, True)[3].astype(np.float64) - w).reshape(shape[0], shape[1], -1).sum(axis=2)
    got = _rounding_error_sums(w, spec)
    assert got.shape == ref.shape
    scale = np.abs(w).reshape(shape[0], -1).max(axis=1) / 127
    # the error sums are a few scale units at most; agree to float32 precision of w / scale
    np.testing.assert_allclose(got, ref, rtol=0, atol=float(scale.max()) * 1e-4)
    assert np.abs(ref).max() > float(scale.max()) * 0.1  # non-trivial sums
