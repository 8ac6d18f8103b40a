"""onnxq.runtime: finding and registering the op library; `onnxq ops path`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxq import runtime
from onnxq.errors import OnnxqError
from tests.ops.opmodels import op_model, packed_weight, reference, rel_err


def test_library_path_and_session(ops_lib, tmp_path):
    assert Path(ops_lib).is_file() and Path(ops_lib).name == "libonnxq_ops.so"
    assert Path(ops_lib).parent.name == "_lib"
    p = packed_weight(256, 10, 64, False)
    path = tmp_path / "m.onnx"
    path.write_bytes(op_model(p))
    a = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    for model in (path, str(path), path.read_bytes()):
        y = runtime.session(model, threads=1).run(None, {"A": a})[0]
        assert rel_err(y, reference(a, p)) <= 1e-5
    assert runtime.session_options(threads=3).intra_op_num_threads == 3


def test_session_without_custom_ops_fails_clearly(ops_lib):
    p = packed_weight(64, 4, 32, True)
    with pytest.raises(OnnxqError, match="custom_ops=True"):
        runtime.session(op_model(p), custom_ops=False)


def test_missing_library_names_the_build_step(monkeypatch, tmp_path):
    (tmp_path / "build_info.txt").write_text("status=missing\nreason=ONNX Runtime C/C++ API headers not found at build time: x\n")
    monkeypatch.setattr(runtime, "_lib_dir", lambda: tmp_path)
    monkeypatch.setattr(runtime, "build_info", lambda: {"status": "missing", "reason": "ONNX Runtime C/C++ API headers not found"})
    with pytest.raises(OnnxqError, match="not built: ONNX Runtime C/C\\+\\+ API headers not found.*ONNXRUNTIME_INCLUDE_DIR"):
        runtime.library_path("cpu")
    with pytest.raises(OnnxqError, match="unknown device"):
        runtime.library_path("tpu")


def test_cli_ops_path(ops_lib, monkeypatch, tmp_path):
    from onnxq.cli import main

    r = CliRunner().invoke(main, ["ops", "path"])
    assert r.exit_code == 0 and r.output.strip() == ops_lib
    monkeypatch.setattr(runtime, "_lib_dir", lambda: tmp_path)
    r = CliRunner().invoke(main, ["ops", "path"])
    assert r.exit_code == 1
    assert "Error:" in r.output and "pip install" in r.output and "Traceback" not in r.output
