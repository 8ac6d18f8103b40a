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
