"""Recipes: a decode_mode pin (validated where the recipe is made, a user recipe's through its table), the FP4 recipes, and
--quant-recipes refusing a recipe that cannot run on the device."""

from __future__ import annotations

import pytest

from pytest_quant.backends import DEFAULT_REGISTRY
from pytest_quant.measure.throughput import CHAIN
from pytest_quant.recipes import BUILTIN_RECIPES, DECODE_MODES, Recipe, RecipeError, user_recipe


def test_the_recipe_modes_are_the_measured_chain() -> None:
    assert DECODE_MODES == CHAIN


def test_an_unknown_decode_mode_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(RecipeError, match="recipe x: decode_mode = 'graph' is not one of compiled, cuda-graph, eager"):
        Recipe("x", "reference", decode_mode="graph")
    with pytest.raises(RecipeError, match=r"\[tool.pytest-quant.recipes.my-ref\]: decode_mode = 'fast' is not one of "
                                          "compiled, cuda-graph, eager"):
        user_recipe("my-ref", {"backend": "reference", "decode_mode": "fast"}, DEFAULT_REGISTRY)


def test_a_user_recipe_pins_a_mode_with_its_reason() -> None:
    recipe = user_recipe("my-ref", {"backend": "reference", "decode_mode": "cuda-graph",
                                    "decode_mode_reason": "compiles for minutes"}, DEFAULT_REGISTRY)
    assert (recipe.decode_mode, recipe.decode_mode_reason, recipe.options) == ("cuda-graph", "compiles for minutes", {})
    assert user_recipe("plain", {"backend": "reference"}, DEFAULT_REGISTRY).decode_mode is None


def test_the_float8_recipe_pins_cuda_graph_kv_cache_recipes_eager_and_others_pin_nothing() -> None:
    assert BUILTIN_RECIPES["torchao-fp8"].decode_mode == "cuda-graph"
    assert "6 minutes" in BUILTIN_RECIPES["torchao-fp8"].decode_mode_reason
    kv = {n for n, r in BUILTIN_RECIPES.items() if r.kv_cache is not None}
    assert {BUILTIN_RECIPES[n].decode_mode for n in kv} == {"eager"}
    assert all("quantized KV cache" in BUILTIN_RECIPES[n].decode_mode_reason for n in kv)
    assert {r.decode_mode for n, r in BUILTIN_RECIPES.items() if n != "torchao-fp8" and n not in kv} == {None}


@pytest.mark.parametrize("recipe", ["modelopt-nvfp4", "ct-fp8-dynamic"])
def test_naming_a_recipe_its_library_cannot_run_on_cpu_is_a_usage_error(run_quant, recipe) -> None:
    result = run_quant("def test_q(quant_model):\n    pass\n", f"--quant-recipes=bnb-nf4,{recipe}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--quant-recipes: not on cpu: {recipe} runs on cuda only (*"])


def test_the_fp4_recipes_quantize_bfloat16_and_name_their_formats() -> None:
    from pytest_quant.backends import torchao

    for name in ("torchao-nvfp4", "torchao-mxfp4", "torchao-fp8"):
        torchao.validate(BUILTIN_RECIPES[name].options)
    with pytest.raises(ValueError, match="'mxfp4_dynamic' quantizes bfloat16 weights only .*: set dtype = 'bfloat16'"):
        torchao.validate({"quant_type": "mxfp4_dynamic"})
    # per-row float8 refuses float16 weights at load (torchao 0.18 on the H200): refused before any load instead
    with pytest.raises(ValueError, match=r"per-row float8 scaling\): set dtype = 'bfloat16' \(got 'float16'\)"):
        torchao.validate({"quant_type": "float8_dynamic_activation_float8_weight", "dtype": "float16"})
    assert BUILTIN_RECIPES["modelopt-nvfp4"].get("format") == "nvfp4"
