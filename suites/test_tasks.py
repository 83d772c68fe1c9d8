"""Task accuracy and which layer broke: every recipe answers the embedded cloze task (400 next-word items written
from the held-out text) beside its reference, and each decoder layer's own error is compared with the
reference's (limits per recipe in conftest.py; no stored baselines: both are judged against the reference
measured in the same session)."""

from __future__ import annotations


def test_task(quant_model):
    """The paired drop of cloze accuracy against the reference's (the reference: its own accuracy's floor)."""
    tasks = quant_model.measure({"tasks"}).tasks
    assert tasks.items == tasks.acc.items > 0


def test_layers(quant_model):
    """Each decoder layer's and the lm_head's own SQNR on the reference's input to it (ONNX Runtime: skipped)."""
    layers = quant_model.measure({"layers"}).layers
    assert layers.layers or layers.skipped
