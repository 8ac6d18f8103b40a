"""int4 calibration under a memory budget: several passes, Hessians spilled to disk, the
same statistics and the same quantized model as one unbounded pass."""

from __future__ import annotations

import gc

import numpy as np
import onnx_ir as ir

import onnxq
from onnxq.int4.calibrate import _groups, collect_activation_stats
from onnxq.recipes import WeightOnlyInt4
from tests.helpers import model_from_text

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[B, 512] x) => (float[B, 256] y) {
    a = MatMul(x, w1)
    r = Relu(a)
    b = MatMul(r, w2)
    y = MatMul(b, w3)
}
"""


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return model_from_text(TEXT, {
        "w1": (rng.standard_normal((512, 384)) * 0.05).astype(np.float32),
        "w2": (rng.standard_normal((384, 512)) * 0.05).astype(np.float32),
        "w3": (rng.standard_normal((512, 256)) * 0.05).astype(np.float32),
    })


def _feeds(n=5):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((16, 512)).astype(np.float32)} for _ in range(n)]


def _values(model):
    return [(node.inputs[0], int(node.inputs[1].const_value.shape[0])) for node in model.graph if node.op_type == "MatMul"]


def test_groups_fit_the_budget_in_graph_order():
    ks = {"a": 512, "b": 384, "c": 512}
    assert _groups(list(ks), ks, None) == [["a", "b", "c"]]
    assert _groups(list(ks), ks, 8 * (512 * 512 + 384 * 384)) == [["a", "b"], ["c"]]
    assert _groups(list(ks), ks, 1) == [["a"], ["b"], ["c"]]  # a tensor over budget: a group of its own


def test_budgeted_passes_give_the_same_statistics_and_spill_to_disk():
    model = _model()
    whole = collect_activation_stats(model, _values(model), _feeds())
    # a one-shot generator: the later passes reuse the samples kept from the first
    split = collect_activation_stats(model, _values(model), (f for f in _feeds()), memory_budget_bytes=1)
    assert set(whole) == set(split)
    for name, st in whole.items():
        other = split[name]
        assert other.on_disk and not st.on_disk
        np.testing.assert_array_equal(other.hessian, st.hessian)
        np.testing.assert_array_equal(other.abs_sum, st.abs_sum)
        np.testing.assert_array_equal(other.samples, st.samples)
        assert other.n_tokens == st.n_tokens == 5 * 16
    folder = next(iter(split.values()))._folder.path
    assert folder.is_dir() and len(list(folder.glob("*.npy"))) == 3
    del split, other
    gc.collect()
    assert not folder.exists()


def _initializer_bytes(model: ir.Model) -> dict[str, bytes]:
    return {name: v.const_value.tobytes() for name, v in model.graph.initializers.items()}


def test_quantized_model_is_the_same_with_a_small_budget():
    feeds = _feeds()
    outs = {}
    for mb in (0, 1):  # 0: unbounded; 1 MB < one 512x512 float64 Hessian (2 MB)
        model, report = onnxq.quantize_with_report(
            _model(), WeightOnlyInt4(algorithm="awq+gptq", block_size=128, format="matmulnbits",
                                     accuracy_level=1, calib_memory_mb=mb), feeds,
        )
        outs[mb] = _initializer_bytes(model)
        on_disk = any("kept on disk" in n for n in report.notes)
        assert on_disk == (mb == 1), report.notes
    assert outs[0] == outs[1]
