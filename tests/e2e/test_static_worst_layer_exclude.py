"""Issue #6: `onnxq compare` names the worst layers of an int8 MobileNetV2, and keeping the
worst one in float with --exclude really keeps it in float and raises the output SQNR."""

import json

import onnx
import pytest
from click.testing import CliRunner

from onnxq.cli import main
from onnxq.preprocess import image_files


def _quantize(model, calib, out, *extra):
    r = CliRunner().invoke(
        main,
        ["quantize", str(model), "-o", str(out), "--recipe", "int8-static", "--calib-images", str(calib),
         "--preprocess", "imagenet", "--no-verify", *extra],
    )
    assert r.exit_code == 0, r.output
    return out


def _compare(model, quant, images):
    r = CliRunner().invoke(
        main, ["compare", str(model), str(quant), "--images", str(images), "--preprocess", "imagenet",
               "--max-samples", "16", "--json"],
    )
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.fixture(scope="module")
def calib(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for p in image_files(corpus / "images")[::2]:
        (folder / p.name).symlink_to(p)
    return folder


def test_worst_layer_kept_in_float_raises_output_sqnr(mobilenet_path, corpus, calib, tmp_path):
    images = corpus / "imagenet_dev"
    q = _quantize(mobilenet_path, calib, tmp_path / "q.onnx")
    report = _compare(mobilenet_path, q, images)
    worst = report["worst_layers"]
    assert len(worst) == 5 and len(set(worst)) == 5
    by_name = {layer["name"]: layer for layer in report["layers"]}
    assert all(by_name[w]["node"] for w in worst)  # each names the float model's node
    node = by_name[worst[0]]["node"]

    q2 = _quantize(mobilenet_path, calib, tmp_path / "q_excluded.onnx", "--exclude", node)
    after = _compare(mobilenet_path, q2, images)
    gain = after["outputs"][0]["sqnr_db"] - report["outputs"][0]["sqnr_db"]
    assert gain > 0.5, (node, gain)

    # "kept in float" means float: float weights, no DequantizeLinear feeding it, no
    # QuantizeLinear on its output (nor after the Relu/Clip that follows it)
    g = onnx.load(str(q2)).graph
    producer = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    (kept,) = [n for n in g.node if n.name == node]
    inits = {i.name: i for i in g.initializer}
    assert inits[kept.input[1]].data_type == onnx.TensorProto.FLOAT
    assert all(i not in producer or producer[i].op_type != "DequantizeLinear" for i in kept.input if i)
    outs = list(kept.output)
    for o in kept.output:
        uses = consumers.get(o, [])
        if len(uses) == 1 and uses[0].op_type in ("Relu", "Clip"):
            outs += list(uses[0].output)
    for o in outs:
        assert all(c.op_type != "QuantizeLinear" for c in consumers.get(o, [])), o
