"""Each decoder layer's own error on a live model, against the reference's layer data (the ``layers`` need)."""

from __future__ import annotations

from typing import Callable

import pytest

from .inputs import Inputs
from .ledger import Ledger
from .live import LiveModel


def sample_ids(inputs: Inputs, live: LiveModel) -> tuple[int, ...]:
    """The tokens layers are compared on: the start of the first eval window (its prefix token first)."""
    from ..measure.layers import SAMPLE_TOKENS

    return tuple(inputs.windows(live.pair.model, live.tokenizer).windows[0].input_ids[:SAMPLE_TOKENS])


def measure_layers(live: LiveModel, inputs: Inputs, ledger: Ledger, reference, progress: Callable[[str], None],
                   required: bool = False):
    """Record the pair's layer errors; returns the reference's layer data when ``live`` is the reference. A runtime
    that exposes no hidden states is recorded as skipped with the reason, and a test that asked for layers
    (``required``: a layer_error marker) skips with it."""
    from ..measure.layers import LayerErrors, capture, layer_errors, unsupported

    from ..models.vision import is_image_text_to_text

    pair = live.pair
    problem = ("an image-text-to-text model: its layers are not compared on its image prompts (the eval text's "
               "windows would pass its vision tower's layers for the decoder's)") \
        if is_image_text_to_text(pair.model.path) else unsupported(live.model)
    if problem:
        ledger.record(pair, layers=LayerErrors(skipped=problem, unsupported=True))
        if required:
            pytest.skip(f"layer_error: {pair.id}: {problem}")
        return None
    if pair.recipe.is_reference:
        kept = capture(live.model, sample_ids(inputs, live))
        ledger.record(pair, layers=LayerErrors(skipped="the reference itself: the yardstick of every layer"))
        return kept
    if reference is None or reference.layers is None:
        why = "a pre-quantized checkpoint has no reference" if reference is None else "the reference kept no layer data"
        ledger.record(pair, layers=LayerErrors(skipped=why))
        return None
    found = layer_errors(live.model, reference.layers)
    ledger.record(pair, layers=found)
    if found.layers:
        progress(f"{pair.id}: {found.sentence()}")
    return None
