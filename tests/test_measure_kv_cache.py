"""measure.kv_cache and measure.kv_decode: the formats a recipe's kv_cache names, the recipe field's checks, and the
token-by-token decoding evaluation (the reference decoded through its own cache agrees with its one forward pass;
a quantized cache moves the figures, int2 more than int4)."""

from __future__ import annotations

import pytest

from pytest_quant.backends import DEFAULT_REGISTRY
from pytest_quant.measure import kv_cache
from pytest_quant.recipes import BUILTIN_RECIPES, RecipeError, user_recipe


@pytest.mark.parametrize("value, words", [
    ("int3", ["'int3'", "'int8'", "'int4'", "'int2'"]),
    (4, ["4", "int", "string", "'int4'"]),
    (["int4"], ["['int4']", "list", "string"]),
])
def test_a_bad_kv_cache_names_the_value_and_what_is_accepted(value, words) -> None:
    with pytest.raises(RecipeError) as info:
        user_recipe("my-kv", {"backend": "reference", "kv_cache": value}, DEFAULT_REGISTRY)
    message = str(info.value)
    assert "[tool.pytest-quant.recipes.my-kv]" in message and "kv_cache" in message
    assert all(word in message for word in words), message


def test_a_kv_cache_recipe_is_decoded_eagerly_and_is_no_reference() -> None:
    recipe = user_recipe("nf4-kv", {"backend": "bitsandbytes", "load_in_4bit": True, "kv_cache": "int4"},
                         DEFAULT_REGISTRY)
    assert (recipe.kv_cache, recipe.decode_mode, recipe.is_reference) == ("int4", "eager", False)
    assert "quantized KV cache" in recipe.decode_mode_reason
    with pytest.raises(RecipeError, match="decode_mode = 'compiled' with kv_cache = 'int2'"):
        user_recipe("kv-compiled", {"backend": "reference", "kv_cache": "int2", "decode_mode": "compiled"},
                    DEFAULT_REGISTRY)
    assert not BUILTIN_RECIPES["reference-kv-int4"].is_reference and BUILTIN_RECIPES["reference"].is_reference
    assert {r.kv_cache for r in BUILTIN_RECIPES.values()} == {None, *kv_cache.FORMATS}


def test_the_residual_must_be_shorter_than_the_eval_window() -> None:
    fmt = kv_cache.FORMATS["int4"]
    kv_cache.check_window(fmt, fmt.residual_length + 1)
    with pytest.raises(ValueError, match="residual of 128 unquantized tokens is not shorter than the eval window of 128"):
        kv_cache.check_window(fmt, 128)


def test_a_missing_hqq_skips_the_recipe_naming_the_kv_extra(run_quant, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hqq" else real(name, *a))
    assert kv_cache.missing(kv_cache.FORMATS["int2"]) == ["hqq"]
    result = run_quant("def test_q(quant_model):\n    pass\n", "--quant-recipes=reference-kv-int2", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*reference-kv-int2: hqq not installed*pip install 'pytest-quant[[]kv[]]'*"])


# -- decoding through a cache ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def decoded(tiny, tmp_path_factory):
    """The reference's kept predictions over 4 windows of 160 tokens, and the decoding figures of the reference
    through transformers' dynamic cache and through the int4 and int2 caches."""
    from transformers import DynamicCache

    from pytest_quant.measure.kv_decode import evaluate_decoding
    from pytest_quant.measure.quality import EvalSpec, evaluate, prepare
    from pytest_quant.models import embedded_eval_text

    model, tokenizer = tiny
    windows = prepare(tokenizer, EvalSpec(embedded_eval_text(), max_tokens=640, context_tokens=160))
    full, kept, _ = evaluate(model, windows, 4, keep_reference_top_k="exact")
    figures = {"dynamic": evaluate_decoding(model, windows, lambda: DynamicCache(config=model.config), kept)[0]}
    for name in ("int4", "int2"):
        figures[name] = evaluate_decoding(model, windows, kv_cache.cache_factory(kv_cache.FORMATS[name], model), kept)[0]
    return full, figures


def test_decoding_the_reference_through_its_own_cache_agrees_with_its_forward_pass(decoded) -> None:
    full, figures = decoded
    dynamic = figures["dynamic"]
    assert dynamic.tokens_scored == full.tokens_scored == 640
    assert dynamic.mean_kl_nats < 1e-6 and dynamic.top1_agreement_percent > 99.8
    assert dynamic.perplexity == pytest.approx(full.perplexity, rel=1e-5)


def test_a_quantized_cache_moves_the_next_token_distributions_int2_more_than_int4(decoded) -> None:
    _, figures = decoded
    assert figures["dynamic"].mean_kl_nats < figures["int4"].mean_kl_nats < figures["int2"].mean_kl_nats
    assert figures["int4"].mean_kl_nats > 1e-5  # 32 tokens past the residual of 128: the cache was quantized


def test_a_kv_cache_of_the_wrong_kind_in_pyproject_is_a_usage_error_before_any_model_loads(pytester) -> None:
    pytester.makepyprojecttoml('[tool.pytest-quant.recipes.nf4-kv]\nbackend = "bitsandbytes"\nload_in_4bit = true\n'
                               'kv_cache = 4\n')
    pytester.makepyfile("def test_q(quant_model):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-recipes=nf4-kv")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]tool.pytest-quant.recipes.nf4-kv[]]*field 'kv_cache' is 4 (int)*'int4'*"])
    assert "loading tiny" not in result.stdout.str()


def test_generation_and_decode_timing_run_through_the_cache_factory(tiny) -> None:
    from transformers import DynamicCache

    from pytest_quant.measure.generation import greedy_generate
    from pytest_quant.measure.throughput import measure_throughput

    model, tokenizer = tiny
    prompts = [tokenizer("It was a truth", add_special_tokens=False)["input_ids"]]
    plain = greedy_generate(model, tokenizer, prompts, 12)
    through_own = greedy_generate(model, tokenizer, prompts, 12, new_cache=lambda: DynamicCache(config=model.config))
    int2 = greedy_generate(model, tokenizer, prompts, 12, new_cache=kv_cache.cache_factory(kv_cache.FORMATS["int2"], model))
    assert through_own.token_ids == plain.token_ids and len(int2.token_ids[0]) == len(plain.token_ids[0])
    factory = kv_cache.cache_factory(kv_cache.FORMATS["int4"], model)
    timed = measure_throughput(model, list(range(1, 140)), decode_tokens=4, repeats=1, warmup_runs=0, mode="eager",
                               new_cache=factory)
    assert timed.decode_mode == "eager" and timed.decode_tokens_per_s > 0
    with pytest.raises(ValueError, match="decoded eagerly only; mode 'compiled'"):
        measure_throughput(model, [1, 2, 3], decode_tokens=2, repeats=1, warmup_runs=0, mode="compiled", new_cache=factory)
