import re

import pytest

from onnxq.errors import RecipeError
from onnxq.recipes import DynamicInt8, StaticInt8, WeightOnlyInt4, load_recipe, recipe_from_mapping


def test_recipes_are_frozen():
    r = DynamicInt8()
    with pytest.raises(Exception):
        r.per_channel = False  # type: ignore[misc]


def test_toml_roundtrip_and_unknown_key(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('recipe = "int8-dynamic"\nexclude = ["/pooler/.*"]\nfused = true\n')
    r = load_recipe(p)
    assert isinstance(r, DynamicInt8) and r.fused and r.exclude == ("/pooler/.*",)
    p.write_text('recipe = "int8-dynamic"\nextra_options = {}\n')
    with pytest.raises(RecipeError, match="unknown key.*extra_options"):
        load_recipe(p)


def test_validation_messages():
    with pytest.raises(RecipeError, match="choose one of"):
        recipe_from_mapping({"recipe": "int3"})
    with pytest.raises(RecipeError, match="calibration"):
        StaticInt8(calibration="magic")
    with pytest.raises(RecipeError, match="block_size"):
        WeightOnlyInt4(block_size=48)
    with pytest.raises(RecipeError, match="list"):
        DynamicInt8(exclude="abc")
    with pytest.raises(RecipeError, match="version"):
        recipe_from_mapping({"recipe": "int8-dynamic", "version": 99})


def test_switches_must_be_booleans(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('recipe = "int8-static"\nrefine_biases = 3\n')
    with pytest.raises(RecipeError, match="refine_biases must be true or false, not 3"):
        load_recipe(p)
    p.write_text('recipe = "int8-static"\nrefine_biases = true\nbias_correction = false\n')
    r = load_recipe(p)
    assert r.refine_biases is True and r.bias_correction is False


@pytest.mark.parametrize(
    "text, message",
    [
        ('recipe = "int4-weight-only"\nblock_size = 32.0\n', "block_size must be a whole number, not 32.0"),
        ('recipe = "int4-weight-only"\npercdamp = "x"\n', "percdamp must be a finite number, not 'x'"),
        ('recipe = "int8-static"\ncalibration = 3\n', "calibration must be a string"),
        ('recipe = "int8-static"\nexclude = [1, 2]\n', "exclude must be a list of strings"),
        ('recipe = "int8-static"\ntensor_overrides = "x"\n', "tensor_overrides must be a table"),
        ('recipe = "int8-static"\n[tensor_overrides.input]\nrange = [0.0, inf]\n', "finite numbers with lo <= hi"),
    ],
)
def test_wrong_value_types_are_one_line_recipe_errors(tmp_path, text, message):
    p = tmp_path / "r.toml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(p)


def test_a_recipe_file_that_is_not_utf8(tmp_path):
    p = tmp_path / "r.toml"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(RecipeError, match="not UTF-8 text"):
        load_recipe(p)
