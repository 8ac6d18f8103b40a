"""Target profiles: frozen, documented, applied to each recipe type; the README table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from onnxq.errors import RecipeError
from onnxq.recipes import DynamicInt8, StaticInt8, WeightOnlyInt4
from onnxq.targets import (
    DEFAULT_TARGET,
    TARGET_NAMES,
    TARGETS,
    apply_target,
    finalize_for_target,
    get_target,
    targets_table_markdown,
)

REPO = Path(__file__).resolve().parents[2]


def test_profiles_are_frozen_and_named():
    assert TARGET_NAMES == ("ort-cpu", "ort-mobile", "openvino", "tensorrt", "qnn")
    assert DEFAULT_TARGET == "ort-cpu"
    p = get_target("tensorrt")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.activation_type = "uint8"  # type: ignore[misc]
    for prof in TARGETS.values():
        assert prof.sources, f"{prof.name} cites no documentation"
        assert set(prof.qdq_op_types) <= StaticInt8._OP_TYPES


def test_unknown_target_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown target 'coreml'"):
        get_target("coreml")


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_static_recipe_takes_the_profile(name):
    prof = get_target(name)
    recipe, _ = apply_target(StaticInt8(), name)
    assert recipe.activation_type == prof.activation_type
    assert recipe.weight_type == prof.weight_type
    assert recipe.per_channel == prof.per_channel
    assert recipe.symmetric_activations == prof.symmetric_activations
    assert set(recipe.op_types) == set(prof.qdq_op_types)


def test_tensorrt_static_is_symmetric_int8_without_resize():
    recipe, _ = apply_target(StaticInt8(), "tensorrt")
    assert (recipe.activation_type, recipe.symmetric_activations) == ("int8", True)
    assert "Resize" not in recipe.op_types and "Mul" not in recipe.op_types


def test_explicit_choice_kept_when_the_target_runs_it():
    recipe, _ = apply_target(StaticInt8(activation_type="uint16"), "qnn")
    assert recipe.activation_type == "uint16"
    recipe, _ = apply_target(StaticInt8(activation_type="int8", symmetric_activations=True), "openvino")
    assert recipe.activation_type == "int8"


def test_explicit_choice_refused_when_the_target_cannot_run_it():
    with pytest.raises(RecipeError, match="openvino does not run int16"):
        apply_target(StaticInt8(activation_type="int16"), "openvino")
    with pytest.raises(RecipeError, match="tensorrt does not run uint16"):
        apply_target(StaticInt8(activation_type="uint16"), "tensorrt")
    with pytest.raises(RecipeError, match="asks for int16"):
        apply_target(StaticInt8(tensor_overrides={"t": {"activation_type": "int16"}}), "ort-mobile")


def test_user_op_list_is_narrowed_to_the_target():
    recipe, notes = apply_target(StaticInt8(op_types=("Conv", "Resize")), "tensorrt")
    assert recipe.op_types == ("Conv",)
    assert any("Resize" in n for n in notes)
    with pytest.raises(RecipeError, match="none of the requested op types"):
        apply_target(StaticInt8(op_types=("Resize",)), "tensorrt")


def test_dynamic_int8_only_where_it_runs():
    for name in ("ort-cpu", "ort-mobile"):
        assert apply_target(DynamicInt8(), name)[0] == DynamicInt8()
    assert apply_target(DynamicInt8(), "openvino")[0].fused is True  # only the fused form runs int8 there
    for name in ("tensorrt", "qnn"):
        with pytest.raises(RecipeError, match="does not run int8-dynamic"):
            apply_target(DynamicInt8(), name)


def test_int4_formats_per_target():
    assert apply_target(WeightOnlyInt4(), "ort-cpu")[0].format == "qdq"  # runs there: kept
    assert apply_target(WeightOnlyInt4(format="matmulnbits"), "openvino")[0].format == "matmulnbits"
    with pytest.raises(RecipeError, match="does not run int4 format 'matmulnbits'"):
        apply_target(WeightOnlyInt4(format="matmulnbits"), "tensorrt")
    with pytest.raises(RecipeError, match="symmetric int4"):
        apply_target(WeightOnlyInt4(symmetric=False), "tensorrt")


def test_readme_targets_table_is_generated_from_the_profiles():
    readme = (REPO / "README.md").read_text()
    assert targets_table_markdown() in readme, "README's targets table is stale: paste targets_table_markdown()"


def test_finalize_for_tensorrt_stores_biases_in_float():
    from tests.deploy.qdq_models import conv_model
    from tests.helpers import run_ort, to_bytes

    import numpy as np
    import onnx_ir as ir

    model = conv_model(act="int8", bias="int32")
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    before = run_ort(to_bytes(model), {"x": x})[0]
    notes = finalize_for_target(model, "tensorrt")
    assert any("float" in n for n in notes)
    dqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert all(n.inputs[0].dtype != ir.DataType.INT32 for n in dqs)
    assert not any(n.name == "b_DQ" for n in model.graph)
    np.testing.assert_allclose(run_ort(to_bytes(model), {"x": x})[0], before, rtol=0, atol=1e-6)
    assert finalize_for_target(model, "tensorrt") == ()  # nothing left to do, no rule breaks
