import pytest

from onnxq.errors import RecipeError
from onnxq.recipes import StaticInt8, load_recipe


def test_toml_static_recipe_with_tensor_overrides(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(
        'recipe = "int8-static"\ncalibration = "percentile"\nexclude = ["head.*"]\n'
        '[tensor_overrides."relu_1"]\nrange = [0.0, 6.0]\nactivation_type = "uint16"\n'
    )
    r = load_recipe(p)
    assert isinstance(r, StaticInt8) and r.calibration == "percentile"
    assert r.tensor_overrides == {"relu_1": {"range": (0.0, 6.0), "activation_type": "uint16"}}


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"tensor_overrides": {"t": {"scale": 1.0}}}, "unknown key"),
        ({"tensor_overrides": {"t": {"range": [2.0, 1.0]}}}, "lo <= hi"),
        ({"tensor_overrides": {"t": {"calibration": "kl"}}}, "bad calibration"),
        ({"op_types": ("Softmax",)}, "cannot quantize"),
        ({"calibration": "kl"}, "unknown calibration"),
    ],
)
def test_static_recipe_validation(kw, message):
    with pytest.raises(RecipeError, match=message):
        StaticInt8(**kw)


def test_recurrent_nodes_left_float_are_named_with_their_weight_share():
    import numpy as np

    import onnxq
    from tests.helpers import model_from_text

    rng = np.random.default_rng(2)
    hidden, feat = 8, 16
    make = lambda: model_from_text(  # noqa: E731
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[5, 1, 16] x) => (float[5, 1, 8] y) {
            h, last = LSTM <hidden_size: int = 8> (x, w, r)
            s = Squeeze(h, one)
            y = MatMul(s, proj)
        }
        """,
        {"w": rng.standard_normal((1, 4 * hidden, feat)).astype(np.float32),
         "r": rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32),
         "one": np.array([1], np.int64), "proj": rng.standard_normal((hidden, 8)).astype(np.float32)},
    )
    quantized, report = onnxq.quantize_with_report(make(), onnxq.DynamicInt8(min_weight_elements=1))
    assert not [n for n in report.notes if "recurrent" in n]  # int8-dynamic writes DynamicQuantizeLSTM
    assert [n.op_type for n in quantized.graph].count("DynamicQuantizeLSTM") == 1
    _, report = onnxq.quantize_with_report(
        make(), onnxq.DynamicInt8(min_weight_elements=1, op_types=("MatMul",))
    )
    note = next(n for n in report.notes if "recurrent" in n)
    # of the output's weight bytes: W 512 + R 256 float32 values against 64 int8 codes + 8 scales
    assert note.startswith("1 recurrent node(s) (LSTM, 97% of the weights) stay float: LSTM is not among"), note


def test_a_vision_transformer_gets_the_int8_dynamic_hint():
    """Attention (MatMuls of two activations, Softmax) and LayerNorm without input_ids: the
    int8-static summary suggests comparing with int8-dynamic (a ViT-S: 33.7 vs 23.9 dB)."""
    import numpy as np

    import onnxq
    from tests.helpers import model_from_text

    rng = np.random.default_rng(5)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        m (float[1, 6, 16] x) => (float[1, 6, 16] y) {
            q = MatMul(x, wq)
            k = MatMul(x, wk)
            v = MatMul(x, wv)
            kt = Transpose <perm: ints = [0, 2, 1]> (k)
            s = MatMul(q, kt)
            p = Softmax <axis: int = -1> (s)
            a = MatMul(p, v)
            y = LayerNormalization <axis: int = -1> (a, g, b)
        }
        """,
        {**{w: rng.standard_normal((16, 16)).astype(np.float32) for w in ("wq", "wk", "wv")},
         "g": np.ones(16, np.float32), "b": np.zeros(16, np.float32)},
    )
    data = [{"x": rng.standard_normal((1, 6, 16)).astype(np.float32)} for _ in range(4)]
    _, report = onnxq.quantize_with_report(model, onnxq.StaticInt8(), data)
    assert any(n.startswith("a transformer (2 attention MatMuls") for n in report.notes), report.notes
