"""The embedded model is what its provenance says: its held-out perplexity matches the stated figure."""

from __future__ import annotations

import json

import pytest

from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare
from pytest_quant.models import TINY_DIR, embedded_eval_text


def test_reference_perplexity_matches_the_stated_figure(quant_pair, request):
    if quant_pair.model.name != "tiny" or quant_pair.recipe.backend != "reference":
        # gguf-reference too is a reference; its Δ perplexity against this one is the gate's (and the README's) figure
        pytest.skip("the stated figure is the embedded model's unquantized perplexity under transformers")
    quant_model = request.getfixturevalue("quant_model")
    stated = json.loads((TINY_DIR / "PROVENANCE.json").read_text())["heldout_perplexity"]["plugin_protocol"]
    windows = prepare(quant_model.tokenizer, EvalSpec(text_path=embedded_eval_text()),
                      max_positions=model_max_positions(quant_model.model))
    quality, _, _ = evaluate(quant_model.model, windows, batch_windows=8)
    assert quality.tokens_scored == stated["eval_tokens"]
    # fp32 on CPU reproduces the figure to rounding; fp16 on GPU within 0.1%
    assert quality.perplexity == pytest.approx(stated["perplexity"], rel=1e-3)
    assert quality.perplexity <= 100
