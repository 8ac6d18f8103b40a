"""GPTQ int8 weight rounding (onnxq.calib.gptq8): the numpy reference, the ORT Hessian
path against it, and the int8-static recipe end to end."""

import logging

import numpy as np
import pytest

import onnxq
from onnxq import StaticInt8
from onnxq import qparams as qp
from onnxq.calib import gptq8
from onnxq.calib.static import calibrate_plan, gptq_weight_values
from onnxq.errors import RecipeError
from onnxq.passes.fold_scales import FoldScalesPass
from onnxq.passes.insert_qdq import InsertQdqPass, plan_static, quantize_weight
from tests.helpers import assert_pass_idempotent, model_from_text, run_ort

CNN = """
<ir_version: 8, opset_import: ["" : 17]>
cnn (float[N, 3, 12, 12] x) => (float[N, 10] y) {
    c = Conv <pads: ints = [1, 1, 1, 1], strides: ints = [2, 2]> (x, w1, b1)
    r = Relu(c)
    d = Conv <pads: ints = [1, 1, 1, 1], group: int = 16> (r, wd, bd)
    k = Clip(d, lo, hi)
    e = Conv (k, w2)
    g = Conv <pads: ints = [1, 1, 1, 1], group: int = 2> (e, wq)
    p = GlobalAveragePool(g)
    f = Flatten(p)
    y = Gemm <transB: int = 1> (f, wg, bg)
}
"""


def _cnn():
    rng = np.random.default_rng(1)
    return model_from_text(
        CNN,
        {
            "w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3,
            "b1": rng.standard_normal(16).astype(np.float32) * 0.1,
            "wd": rng.standard_normal((16, 1, 3, 3)).astype(np.float32),
            "bd": rng.standard_normal(16).astype(np.float32) * 0.1,
            "lo": np.array(0, np.float32),
            "hi": np.array(6, np.float32),
            "w2": rng.standard_normal((24, 16, 1, 1)).astype(np.float32) * 0.3,
            "wq": rng.standard_normal((8, 12, 3, 3)).astype(np.float32) * 0.2,
            "wg": rng.standard_normal((10, 8)).astype(np.float32),
            "bg": rng.standard_normal(10).astype(np.float32),
        },
    )


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    # correlated channels, nonzero mean: what makes Hessian-guided rounding matter
    mix = rng.standard_normal((3, 3)).astype(np.float32)
    return [
        {"x": (np.einsum("ij,njhw->nihw", mix, rng.standard_normal((1, 3, 12, 12))) + 0.5).astype(np.float32)}
        for _ in range(n)
    ]


def _correlated_inputs(rng, n, k):
    basis = rng.standard_normal((k, k)) * np.geomspace(1, 0.01, k)
    return rng.standard_normal((n, k)) @ basis + rng.standard_normal(k) * 0.1


@pytest.mark.parametrize("groups,rows,k", [(1, 32, 64), (24, 1, 9), (3, 4, 27)])
def test_gptq_lowers_layer_output_error_vs_round_to_nearest(groups, rows, k):
    rng = np.random.default_rng(groups * 100 + k)
    x = np.stack([_correlated_inputs(rng, 400, k) for _ in range(groups)])  # [G, n, K]
    w = rng.standard_normal((groups, rows, k))
    h = np.einsum("gnk,gnl->gkl", x, x) / x.shape[1]
    scale = np.abs(w).max(axis=2) / 127
    q = gptq8.gptq_quantize(w, h, scale, 127)
    rtn = np.clip(np.rint(w / scale[:, :, None]), -127, 127)
    assert q.dtype == np.int32 and q.shape == w.shape and np.abs(q).max() <= 127
    assert np.abs(q - w / scale[:, :, None]).max() < 127  # codes stay near the weights

    def err(codes):
        dw = codes * scale[:, :, None] - w
        return float(np.sum(np.einsum("grk,gnk->grn", dw, x) ** 2))

    assert err(q) < 0.8 * err(rtn), (err(q), err(rtn))
    np.testing.assert_array_equal(q, gptq8.gptq_quantize(w, h, scale, 127))  # deterministic
    for act_order in (False, True):  # both orders beat round to nearest
        assert err(gptq8.gptq_quantize(w, h, scale, 127, act_order=act_order)) < err(rtn)


def test_gptq_without_data_is_round_to_nearest():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((1, 8, 16))
    scale = np.abs(w).max(axis=2) / 127
    q = gptq8.gptq_quantize(w, np.zeros((1, 16, 16)), scale, 127)
    np.testing.assert_array_equal(q, np.rint(w / scale[:, :, None]))


def test_ort_hessians_match_the_numpy_im2col_reference():
    model = _cnn()
    plan = plan_static(model, StaticInt8())
    targets = gptq8.gptq_targets(plan)
    assert {t.spec.node.op_type for t in targets} == {"Conv", "Gemm"} and len(targets) == 5
    data = _data(4)
    accs, _ = gptq8.collect_hessians(model, targets, data)
    # reference: numpy im2col on the layer inputs of the float model
    names = sorted({t.tensor for t in targets} - {"x"})
    import onnx_ir as ir

    probe = ir.from_proto(ir.to_proto(model))
    values = {v.name: v for n in probe.graph for v in n.outputs}
    probe.graph.outputs.extend(values[n] for n in names)
    refs = {t.key: gptq8.HessianAccumulator(t) for t in targets}
    for feed in data:
        outs = dict(zip(["y", *names], run_ort(probe, feed)))
        outs["x"] = feed["x"]
        for t in targets:
            refs[t.key].update(outs[t.tensor])
    for t in targets:
        got, ref = accs[t.key], refs[t.key]
        assert got.count == ref.count > 0
        for centered in (False, True):
            a, b = got.hessian(centered), ref.hessian(centered)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_conv_patches_reproduce_the_convolution():
    model = _cnn()
    plan = plan_static(model, StaticInt8())
    targets = {t.spec.node.inputs[1].name: t for t in gptq8.gptq_targets(plan)}
    rng = np.random.default_rng(5)
    for name, x in (("w1", rng.standard_normal((2, 3, 12, 12))), ("wq", rng.standard_normal((2, 24, 6, 6))),
                    ("wd", rng.standard_normal((2, 16, 6, 6)))):
        t = targets[name]
        w = onnxq.irutil.const_array(t.spec.node.inputs[1]).astype(np.float64)
        p = gptq8.conv_patches(x.astype(np.float32), t)  # [g, N*P, k]
        wg = gptq8.weight_groups(w, t)  # [g, R, k]
        y = np.einsum("gpk,grk->grp", p, wg)  # [g, R, N*P]
        text = f"""
        <ir_version: 8, opset_import: ["" : 17]>
        c (float[N, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}] x) => (float[N, {w.shape[0]}, A, B] y) {{
            y = Conv <pads: ints = {list(t.pads)}, strides: ints = {list(t.strides)}, group: int = {t.groups}> (x, w)
        }}"""
        (ref,) = run_ort(model_from_text(text, {"w": w.astype(np.float32)}), {"x": x.astype(np.float32)})
        n, o = ref.shape[:2]
        ref = ref.reshape(n, t.groups, o // t.groups, -1).transpose(1, 2, 0, 3).reshape(t.groups, o // t.groups, -1)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_static_gptq_changes_only_codes_beats_nearest_and_folds_idempotently():
    data = _data(16)
    x = _data(6, seed=9)  # held out
    model = _cnn()
    refs = [run_ort(model, f)[0] for f in x]
    recipe = StaticInt8(weight_rounding="gptq")
    plan = plan_static(model, recipe)
    codes = gptq_weight_values(model, plan, recipe, data)
    assert set(codes) == {t.key for t in gptq8.gptq_targets(plan)}
    changed = 0
    for t in gptq8.gptq_targets(plan):
        w = onnxq.irutil.const_array(t.spec.node.inputs[1]).astype(np.float32)
        q_rtn = quantize_weight(w, t.spec.axis, qp.INT8, True)[0]
        assert codes[t.key].dtype == q_rtn.dtype and codes[t.key].shape == q_rtn.shape
        assert np.abs(codes[t.key].astype(int) - q_rtn).max() <= 4
        changed += int((codes[t.key] != q_rtn).sum())
    assert changed > 0
    qparams, biases, weight_scales, _, _ = calibrate_plan(model, plan, recipe, data, weight_values=codes)
    out = InsertQdqPass(recipe)(model).model
    out = assert_pass_idempotent(lambda: FoldScalesPass(qparams, biases, weight_scales, weight_values=codes), out)
    written = {n.outputs[0].name: n for n in out.graph if n.op_type == "DequantizeLinear"}
    for t in gptq8.gptq_targets(plan_static(_cnn(), recipe)):
        dq = [v for v in written.values() if v.inputs[0].name.startswith(t.spec.node.inputs[1].name)]
        assert len(dq) == 1
        np.testing.assert_array_equal(dq[0].inputs[0].const_value.numpy(), codes[t.key])

    # each layer's output error on the calibration data (the quadratic form of its input
    # covariance, what GPTQ minimises): lower than round to nearest
    fresh = _cnn()
    fresh_targets = gptq8.gptq_targets(plan_static(fresh, recipe))
    accs, _ = gptq8.collect_hessians(fresh, fresh_targets, data)
    assert {t.key for t in fresh_targets} == set(codes)
    for t in fresh_targets:
        w = onnxq.irutil.const_array(t.spec.node.inputs[1]).astype(np.float32)
        q_rtn, scale, _, _ = quantize_weight(w, t.spec.axis, qp.INT8, True)
        shape = (-1,) + (1,) * (w.ndim - 1) if t.op_type == "Conv" else ((-1, 1) if t.spec.axis == 0 else (1, -1))
        h = accs[t.key].hessian(True)

        def err(q):
            dw = gptq8.weight_groups(q.astype(np.float64) * scale.reshape(shape) - w, t)
            return float(np.einsum("grk,gkl,grl->", dw, h, dw))

        assert err(codes[t.key]) < err(q_rtn), t.spec.node.name


def test_one_pass_iterable_falls_back_to_nearest(caplog):
    data = _data(6)
    near = onnxq.quantize(_cnn(), StaticInt8(weight_rounding="nearest"), data=data)
    with caplog.at_level(logging.WARNING):
        got = onnxq.quantize(_cnn(), StaticInt8(weight_rounding="gptq"), data=iter(data))
    assert "one pass only" in caplog.text
    f = _data(1, seed=4)[0]
    np.testing.assert_array_equal(run_ort(got, f)[0], run_ort(near, f)[0])


def test_weight_rounding_is_validated():
    assert StaticInt8().weight_rounding == "nearest"
    with pytest.raises(RecipeError, match="weight_rounding"):
        StaticInt8(weight_rounding="adaround")


def test_codes_are_reused_for_the_same_data_and_model_only(monkeypatch):
    """--target-sqnr re-quantizes with the same data once per round: the GPTQ codes of a layer
    are worked out once; a changed model or other data gets its own."""
    from onnxq.data import as_calibration_data

    calls = []
    real = gptq8.collect_hessians

    def counting(model, targets, data, **kw):
        calls.append(len(targets))
        return real(model, targets, data, **kw)

    monkeypatch.setattr(gptq8, "collect_hessians", counting)
    recipe = StaticInt8(weight_rounding="gptq")
    data = as_calibration_data(_data())
    model = _cnn()
    first = gptq_weight_values(model, plan_static(model, recipe), recipe, data)
    again = gptq_weight_values(model, plan_static(model, recipe), recipe, data)
    assert len(calls) == 1 and first.keys() == again.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    fewer = StaticInt8(weight_rounding="gptq", exclude=("^$",))  # same layers: still all cached
    gptq_weight_values(model, plan_static(model, fewer), fewer, data)
    assert len(calls) == 1
    other = _cnn()
    w1 = other.graph.initializers["w1"]
    w1.const_value = onnxq.api.ir.tensor(w1.const_value.numpy() * 1.5, name="w1")
    gptq_weight_values(other, plan_static(other, recipe), recipe, data)  # upstream weights changed: all again
    assert calls == [len(first), len(first)]
    gptq_weight_values(model, plan_static(model, recipe), recipe, as_calibration_data(_data()))
    assert len(calls) == 3


def test_gptq_on_a_model_without_conv_or_gemm_says_it_rounded_nothing():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[N, 8] x) => (float[N, 4] y) {
            y = MatMul(x, w)
        }
        """,
        {"w": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)},
    )
    data = [{"x": np.random.default_rng(i).standard_normal((2, 8)).astype(np.float32)} for i in range(4)]
    _, report = onnxq.quantize_with_report(model, StaticInt8(weight_rounding="gptq"), data)
    assert any("no int8 Conv/Gemm weight to round" in n for n in report.notes), report.notes
