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
