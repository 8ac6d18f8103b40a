"""Fast tests of the numpy-only synthetic model builders (small sizes)."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import synthetic


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _run(path, feed):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


@pytest.mark.parametrize("batchnorm", [False, True])
def test_resnet50_like_topology_and_runs(tmp_path, batchnorm):
    p = synthetic.resnet50_like(tmp_path / "r.onnx", width=8, batchnorm=batchnorm)
    onnx.checker.check_model(str(p), full_check=True)
    ops = _ops(p)
    assert ops["Conv"] == 53 and ops["Gemm"] == 1 and ops["Add"] == 16
    assert ops["MaxPool"] == 1 and ops["GlobalAveragePool"] == 1 and ops["Relu"] == 49
    assert ops["BatchNormalization"] == (53 if batchnorm else 0)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    y = _run(p, {"input": x})
    assert y.shape == (2, 1000) and np.isfinite(y).all() and 0.01 < y.std() < 100


def test_resnet50_like_full_width_parameter_count(tmp_path):
    p = synthetic.resnet50_like(tmp_path / "r.onnx")
    n = sum(int(np.prod(t.dims)) for t in onnx.load(str(p)).graph.initializer)
    assert n == 25_530_472  # torchvision resnet50 with BN folded into conv biases


def test_builders_are_deterministic(tmp_path):
    a = synthetic.resnet50_like(tmp_path / "a.onnx", width=8, seed=3)
    b = synthetic.resnet50_like(tmp_path / "b.onnx", width=8, seed=3)
    c = synthetic.resnet50_like(tmp_path / "c.onnx", width=8, seed=4)
    assert _sha(a) == _sha(b) != _sha(c)
    m1 = synthetic.matmul_stack(tmp_path / "m1.onnx", 64, 64, 3)
    sha1 = (_sha(m1), _sha(tmp_path / "m1.onnx.data"))
    synthetic.matmul_stack(tmp_path / "m1.onnx", 64, 64, 3)  # rebuild in place: same bytes
    assert (_sha(m1), _sha(tmp_path / "m1.onnx.data")) == sha1


@pytest.mark.parametrize("external_data", [True, False])
@pytest.mark.parametrize("residual", [True, False])
def test_matmul_stack_matches_numpy(tmp_path, external_data, residual):
    p = synthetic.matmul_stack(tmp_path / "s.onnx", k=48, n=64, layers=4,
                               external_data=external_data, residual=residual)
    assert (tmp_path / "s.onnx.data").exists() == external_data
    model = onnx.load(str(p))  # loads external data too
    onnx.checker.check_model(str(p), full_check=True)
    ws = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
    assert [w.shape for w in ws] == [(48, 64)] + [(64, 64)] * 3
    assert _ops(p)["MatMul"] == 4 and _ops(p)["Add"] == (3 if residual else 0)
    x = np.random.default_rng(1).standard_normal((5, 48)).astype(np.float32)
    ref = x
    for i, w in enumerate(ws):
        ref = ref + ref @ w if residual and i > 0 else ref @ w
    np.testing.assert_allclose(_run(p, {"x": x}), ref, rtol=1e-4, atol=1e-4)


def test_matmul_stack_external_data_is_aligned_and_relative(tmp_path):
    p = synthetic.matmul_stack(tmp_path / "s.onnx", 40, 40, 3)
    model = onnx.load(str(p), load_external_data=False)
    for t in model.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        assert info["location"] == "s.onnx.data"
        assert int(info["offset"]) % synthetic.ALIGN == 0
        assert int(info["length"]) == 40 * 40 * 4
    assert p.stat().st_size < 10_000  # the weights are not inline


def test_mlp_matches_numpy(tmp_path):
    p = synthetic.mlp(tmp_path / "mlp.onnx", k=64, hidden=172, external_data=False)
    model = onnx.load(str(p))
    wg, wu, wd = (onnx.numpy_helper.to_array(t) for t in model.graph.initializer)
    assert wg.shape == wu.shape == (64, 172) and wd.shape == (172, 64)
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    g = x @ wg
    ref = (g / (1 + np.exp(-g)) * (x @ wu)) @ wd
    np.testing.assert_allclose(_run(p, {"x": x}), ref, rtol=1e-4, atol=1e-4)


def test_cached_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXQ_MODEL_CACHE", str(tmp_path))
    p = synthetic.cached("matmul_stack", k=32, n=32, layers=2)
    assert p == tmp_path / "synthetic" / "matmul_stack-k32-layers2-n32.onnx"
    mtime = p.stat().st_mtime_ns
    assert synthetic.cached("matmul_stack", k=32, n=32, layers=2) == p
    assert p.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError):
        synthetic.cached("nope")
