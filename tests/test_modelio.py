import os

import numpy as np
import onnx
import pytest

from onnxq import modelio
from onnxq.errors import ModelLoadError, OnnxqError
from tests.helpers import model_from_text, run_ort

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[2, 4] x) => (float[2, 3] y) {
    y = MatMul(x, w)
}
"""


def _model():
    return model_from_text(TEXT, {"w": np.arange(12, dtype=np.float32).reshape(4, 3)})


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "m.onnx"
    modelio.save(_model(), out)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert modelio.load(out).graph.node(0).op_type == "MatMul"


def test_external_data_roundtrip_and_reload(tmp_path):
    out = tmp_path / "m.onnx"
    modelio.save(_model(), out, external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    x = np.ones((2, 4), np.float32)
    (y,) = run_ort(modelio.load(out), {"x": x})
    np.testing.assert_allclose(y, x @ np.arange(12, dtype=np.float32).reshape(4, 3))


def test_refuses_to_overwrite_input(tmp_path):
    src = tmp_path / "in.onnx"
    modelio.save(_model(), src)
    with pytest.raises(OnnxqError, match="refusing to overwrite"):
        modelio.save(modelio.load(src), src, protect=(src,))


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "missing.bin"])
def test_external_data_outside_folder_or_missing_is_refused(tmp_path, location):
    proto = onnx.parser.parse_model(TEXT)
    t = onnx.numpy_helper.from_array(np.zeros((4, 3), np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "48")):
        e = t.external_data.add()
        e.key, e.value = k, v
    proto.graph.initializer.append(t)
    p = tmp_path / "bad.onnx"
    p.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="external data"):
        modelio.load(p)


def test_garbage_and_missing_files(tmp_path):
    g = tmp_path / "g.onnx"
    g.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelLoadError):
        modelio.load(g)
    with pytest.raises(ModelLoadError, match="does not exist"):
        modelio.load(tmp_path / "nope.onnx")


def test_missing_output_folder(tmp_path):
    with pytest.raises(OnnxqError, match="does not exist"):
        modelio.save(_model(), tmp_path / "no" / "m.onnx")


def test_large_weights_go_to_external_data_automatically(tmp_path, monkeypatch):
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD_BYTES", 16)
    out = tmp_path / "big.onnx"
    text = TEXT.replace("float[2, 3] y", "float[2, 256] y")
    w = np.ones((4, 256), np.float32)
    modelio.save(model_from_text(text, {"w": w}), out)
    assert (tmp_path / "big.onnx.data").stat().st_size >= w.nbytes
    import onnxruntime as ort

    (y,) = ort.InferenceSession(str(out)).run(None, {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(y, np.full((2, 256), 4.0, np.float32))
    assert modelio.load(out).graph.initializers["w"].const_value.numpy().sum() == w.sum()


def test_output_data_file_may_not_be_the_inputs_weights(tmp_path):
    src = tmp_path / "a.onnx"
    big = model_from_text(TEXT.replace("float[2, 3] y", "float[2, 256] y"), {"w": np.ones((4, 256), np.float32)})
    modelio.save(big, src, external_data=True)  # writes a.onnx.data
    import onnx

    proto = onnx.load(str(src), load_external_data=False)
    # a model whose weights live in "b.onnx.data"
    (tmp_path / "a.onnx.data").rename(tmp_path / "b.onnx.data")
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "b.onnx.data"
    src.write_bytes(proto.SerializeToString())
    before = (tmp_path / "b.onnx.data").read_bytes()
    with pytest.raises(OnnxqError, match="where the input keeps its weights"):
        modelio.save(modelio.load(src), tmp_path / "b.onnx", external_data=True)
    assert (tmp_path / "b.onnx.data").read_bytes() == before


def test_unwritable_folder_is_a_clean_error():
    with pytest.raises(OnnxqError, match="cannot write|not writable"):
        modelio.save(_model(), "/proc/onnxq_test_output.onnx")


def test_external_data_layout_is_kept(tmp_path):
    src = tmp_path / "a.onnx"
    big = model_from_text(TEXT.replace("float[2, 3] y", "float[2, 256] y"), {"w": np.ones((4, 256), np.float32)})
    modelio.save(big, src, external_data=True)
    out = tmp_path / "b.onnx"
    modelio.save(modelio.load(src), out)
    assert (tmp_path / "b.onnx.data").stat().st_size >= 4 * 256 * 4


@pytest.mark.parametrize("out_name", ["b.onnx", "b.onnx.data"])
def test_output_may_not_land_on_the_inputs_external_data(tmp_path, out_name):
    """a.onnx keeps its weights in b.onnx.data: neither -o b.onnx (whose sidecar is
    b.onnx.data) nor -o b.onnx.data itself may write there, whatever the quantized model
    still reads lazily (the CLI's check, before anything runs)."""
    big = model_from_text(TEXT.replace("float[2, 3] y", "float[2, 256] y"), {"w": np.ones((4, 256), np.float32)})
    proto = onnx.load_from_string(__import__("tests.helpers", fromlist=["to_bytes"]).to_bytes(big))
    onnx.save(proto, tmp_path / "a.onnx", save_as_external_data=True, location="b.onnx.data", size_threshold=0)
    before = (tmp_path / "b.onnx.data").read_bytes()
    with pytest.raises(OnnxqError, match="keeps its weights"):
        modelio.check_output_path(tmp_path / out_name, protect=(tmp_path / "a.onnx",))
    assert (tmp_path / "b.onnx.data").read_bytes() == before


def test_a_former_outputs_sidecar_is_removed(tmp_path):
    out = tmp_path / "out.onnx"
    big = model_from_text(TEXT.replace("float[2, 3] y", "float[2, 256] y"), {"w": np.ones((4, 256), np.float32)})
    modelio.save(big, out, external_data=True)
    assert (tmp_path / "out.onnx.data").exists()
    modelio.save(_model(), out)  # no external data this time
    assert not (tmp_path / "out.onnx.data").exists()
    assert run_ort(modelio.load(out), {"x": np.ones((2, 4), np.float32)})[0].shape == (2, 3)


def test_sparse_initializers_are_read_as_dense_weights(tmp_path):
    from onnx import helper, numpy_helper

    w = np.zeros((4, 3), np.float32)
    w[0, 1], w[2, 2], w[3, 0] = 1.5, -2.0, 0.25
    flat = np.flatnonzero(w)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(w.ravel()[flat], "w"),
                                       numpy_helper.from_array(flat.astype(np.int64), "w_idx"), [4, 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
                              sparse_initializer=[sparse])
    path = tmp_path / "sparse.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = modelio.load(path)
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), w)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], x @ w)


def test_ctrl_c_between_the_data_file_and_the_model_replaces_both(tmp_path, monkeypatch):
    """An interrupt that lands after the new data file is in place but before the model is
    replaced takes effect only once both are: never an old model reading new data."""
    import signal

    out = tmp_path / "m.onnx"
    old = model_from_text(TEXT, {"w": np.zeros((4, 3), np.float32)})
    modelio.save(old, out, external_data=True)
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        real_replace(src, dst)
        if os.path.dirname(os.fspath(dst)) != os.fspath(tmp_path):
            return  # a library's own temp-file dance, not the commit
        calls.append(dst)
        if len(calls) == 1:  # the data file just moved in: Ctrl-C now (the handler a real one would run)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    monkeypatch.setattr(modelio.os, "replace", replace)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a plain Python run
    try:
        with pytest.raises(KeyboardInterrupt):
            modelio.save(_model(), out, external_data=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    assert len(calls) == 2  # the model was replaced too before the interrupt took effect
    monkeypatch.setattr(modelio.os, "replace", real_replace)
    x = np.ones((2, 4), np.float32)
    (y,) = run_ort(modelio.load(out), {"x": x})
    np.testing.assert_allclose(y, x @ np.arange(12, dtype=np.float32).reshape(4, 3))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]


def test_signals_deferred_restores_the_handler_and_delivers_late():
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with modelio.signals_deferred():
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # what a Ctrl-C runs
                done.append(True)  # the block runs to its end first
        assert done and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
