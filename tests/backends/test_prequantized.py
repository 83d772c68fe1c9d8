"""A --quant-model folder that already carries a quantization_config is gated as it is."""

from __future__ import annotations

import pytest

from pytest_quant import backends
from pytest_quant.models import TINY_DIR
from pytest_quant.recipes import BUILTIN_RECIPES

FAST = ("--quant-eval-tokens", "1024")  # small and fast: enough tokens to tell recipes apart


@pytest.fixture(scope="module")
def saved_nf4(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("models") / "tiny-nf4"
    loaded = backends.load(backends.LoadRequest(TINY_DIR, BUILTIN_RECIPES["bnb-nf4"], "cpu"))
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def test_prequantized_checkpoint_is_measured_and_gated(pytester: pytest.Pytester, saved_nf4) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.vram_budget("64 MiB")
@pytest.mark.perplexity_delta(max=1000)
def test_absolute_and_relative(quant_model):
    assert quant_model.recipe.name == "prequantized"

@pytest.mark.vram_budget("64 MiB")
def test_absolute_only(quant_model):
    pass
"""
    )
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", f"--quant-model={saved_nf4}", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_absolute_and_relative[[]tiny-nf4-prequantized[]]*",
            "*perplexity_delta(max=...) compares with the unquantized reference, and tiny-nf4 is a pre-quantized "
            "checkpoint without one*",
            "*tiny-nf4*prequantized*cpu*Linear4bit*",
        ]
    )
