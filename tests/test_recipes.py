"""A recipe's decode_mode pin: validated where the recipe is made, a user recipe's through its table."""

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
