"""The regression gate: every recipe of every --quant-model, against its unquantized reference (limits
per recipe in conftest.py) and against the baselines stored for this hardware (baselines/)."""

from __future__ import annotations

import pytest


@pytest.mark.perplexity_delta(vs="baseline")
@pytest.mark.kl_divergence(vs="baseline")
def test_quality(quant_model):
    """Perplexity, mean and 99th-percentile KL divergence, top-1 agreement."""
    assert quant_model.quality.tokens_scored > 0


@pytest.mark.vram_budget(vs="baseline")
def test_memory(quant_model):
    """Memory the loaded model holds on GPU (the torch allocator's, after loading); its footprint on CPU."""
    assert quant_model.vram.resident_bytes > 0


def test_speed(quant_model):
    """Median decode tokens/s after warm-up: gated against the baseline on GPU (see conftest.py), reported on CPU."""
    assert quant_model.throughput.decode_tokens_per_s > 0
