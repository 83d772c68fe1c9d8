"""The regression gate: every recipe of every --quant-model, against its reference (limits in conftest.py)."""

from __future__ import annotations


def test_quality(quant_model):
    """Perplexity delta, mean KL divergence and top-1 agreement against the unquantized reference."""
    assert quant_model.quality.tokens_scored > 0


def test_memory(quant_model):
    """Peak memory (CPU: footprint) against the reference's."""
    assert quant_model.vram.peak_bytes > 0
